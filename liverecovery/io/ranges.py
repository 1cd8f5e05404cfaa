"""A byte range of an open file: how a layer hands bytes to the NFS server without copying them.

It lives on the floor because the cache produces ranges (of its block files), the datastore
forwards them and the NFS server splices them into sockets: none of them may import another
for it.
"""

from __future__ import annotations

import os

import attrs

__all__ = ["FileRange"]


@attrs.frozen
class FileRange:
    """The bytes of a READ as a range of one regular file, so an NFS server can move them
    from the file to the socket without copying them through Python (``splice``).

    ``fd`` is owned by whoever receives the value (a private duplicate): ``close`` it once done.
    ``length`` may exceed what the file holds by the time the bytes are sent (a concurrent
    truncate); the server then sends what is there and sets the eof flag.

    ``eof`` is for a range of a file that holds part of the served one (a cache block of a
    virtual disk): whether the range reaches the end of the served file. None: the end of the
    range's own file decides.
    """

    fd: int
    offset: int
    length: int
    eof: bool | None = None

    def close(self) -> None:
        os.close(self.fd)
