"""The embedded NFSv3 server, its codecs and an async client.

Layers, bottom up:
- ``xdr`` and ``rpc`` (pure codecs, record marking); ``nfs3_codec``, ``mount_codec``,
  ``portmap_codec`` (pure program codecs); ``names`` (which file names are allowed).
- ``handles`` (HMAC file handles); ``zero_copy`` (READ data spliced file -> pipe -> socket).
- ``filesystem`` (``Filesystem``, the base class a served tree implements, with default methods
  for optional capabilities such as ``read_file_range``); ``localfs`` and ``composite``
  (implementations: a local directory; an export root of published folders).
- ``exports`` (``ExportRegistry``: what is exported to whom, persisted export ids, handle
  minting and resolution, the ``NfsExporter`` contract).
- one module per RPC program: ``nfs3_program`` (one handler per procedure, one dispatch table,
  one error map), ``mount_program``, ``portmap_program``; ``dispatch`` (a record to the program
  registered for its (program, version)).
- ``connection`` (one client connection: records in, concurrent calls, replies out of order,
  spliced replies; ``listen``); ``server`` (``NfsServer``, the assembled whole: listeners,
  lifecycle, the program table).
- ``client`` (``NfsClient``).

Nothing is imported here: ``liverecovery.backends`` imports ``nfs.filesystem`` and
``nfs.exports``, so eager imports of the server would pull it into every import of the contracts.
"""
