"""The embedded NFSv3 server, its codecs and an async client.

Layers, bottom up: ``xdr`` and ``rpc`` (pure codecs, record marking), ``nfs3_codec``,
``mount_codec``, ``portmap_codec`` (pure program codecs), ``handles`` (HMAC file handles),
``filesystem`` (the interface a served tree implements), ``inline_io`` (when blocking file I/O
may run on the event loop, and lean worker hand-offs), ``localfs`` and ``composite``
(implementations), ``connection`` and ``server`` (sockets, dispatch, ``NfsServer``), ``client``
(``NfsClient``) and ``serve_cli`` (``liverecovery serve``).

Nothing is imported here: ``liverecovery.backends`` imports ``nfs.filesystem``, and the server
imports ``backends``, so eager imports would be circular.
"""
