"""Where a VMDK's bytes come from: the smallest seam between the readers and the storage.

The readers (flat, sparse, streamOptimized, seSparse) read through a ``ByteSource``: positional
reads, ``SEEK_DATA``/``SEEK_HOLE`` for mapping, close. Opening a disk needs three more things
of the namespace its files live in (``Files``): a real path (symlinks resolved), whether a file
exists, and opening one. ``LOCAL_FILES`` is the OS: ``FileWindow`` over ``os.pread``, the same
objects and the same speed as before the seam; ``catalog/objects.py`` gives object storage.
"""

from __future__ import annotations

import os
from typing import Protocol

from liverecovery.catalog.vmdk.extents import FileWindow

__all__ = ["LOCAL_FILES", "ByteSource", "Files", "LocalFiles"]


class ByteSource(Protocol):
    """**Protocol:** ``size`` bytes of one file, read at any offset from any thread."""

    path: str
    start: int
    size: int

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short at the end)."""
        ...

    def read_bytes(self, offset: int, length: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset``. :raises CatalogError: past the end."""
        ...

    def seek(self, offset: int, whence: int) -> int:
        """``SEEK_DATA``/``SEEK_HOLE`` from ``offset``; a source without holes answers
        ``offset`` for data and its size for a hole."""
        ...

    def close(self) -> None: ...


class Files(Protocol):
    """**Protocol:** the namespace a disk's descriptor, extents and parents are found in."""

    def real(self, path: str) -> str:
        """``path`` absolute and normalised, symlinks resolved."""
        ...

    def exists(self, real: str) -> bool: ...

    def open(self, real: str, root: str | None) -> ByteSource:
        """Open ``real`` (which must lie in the folder ``root``). :raises CatalogError:"""
        ...


class LocalFiles:
    """Files of the local filesystem, read with ``os.pread``."""

    def real(self, path: str) -> str:
        return os.path.realpath(path)

    def exists(self, real: str) -> bool:
        return os.path.exists(real)

    def open(self, real: str, root: str | None) -> ByteSource:
        return FileWindow(real, root=root)


LOCAL_FILES = LocalFiles()
