"""Zeros for holes: shared zero bytes, and ranges of one sealed zero file the server splices.

ESXi reads a thin disk end to end during a storage vMotion (NFSv3 cannot ask where the holes
are), so a 256 GiB disk holding 1 GiB of data is mostly READs of holes. Those never touch the
cache or the backup: the copying path answers them with one shared ``bytes`` object per length,
and the splicing path with a ``FileRange`` of a process-wide memfd that holds ``MAX_DATA`` zero
bytes and is sealed against every change (``F_SEAL_WRITE``, ``F_SEAL_SHRINK``, ``F_SEAL_GROW``),
so the pages a pipe references can never change under a reply.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from typing import Final

from liverecovery.io.ranges import FileRange
from liverecovery.nfs.nfs3_codec import MAX_DATA

__all__ = ["ZERO_FILE_SIZE", "zero_bytes", "zero_range"]

ZERO_FILE_SIZE: Final = MAX_DATA
"""Bytes in the zero file: the largest READ the server answers."""

_KEPT_LENGTHS: Final = 8  # shared zero objects kept, by length (READ sizes are few)
_MIN_SHARED: Final = 4096  # below this, making zeros costs less than the lookup

_zero_objects: dict[int, bytes] = {}
_lock = threading.Lock()
_zero_fd: int | None = None
_zero_failed = False


def zero_bytes(length: int) -> bytes:
    """``length`` zero bytes, one shared object per length for the common READ sizes."""
    if length < _MIN_SHARED:
        return bytes(length)
    data = _zero_objects.get(length)
    if data is None:
        if len(_zero_objects) >= _KEPT_LENGTHS:
            _zero_objects.clear()
        data = _zero_objects[length] = bytes(length)
    return data


def _make_zero_file() -> int:
    """A sealed memfd of ``ZERO_FILE_SIZE`` zero bytes (pages written, so a splice references
    resident pages rather than allocating them)."""
    fd = os.memfd_create("liverecovery-zeros", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(bytes(ZERO_FILE_SIZE))
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _zero_file() -> int | None:
    global _zero_fd, _zero_failed
    if _zero_fd is not None or _zero_failed:
        return _zero_fd
    with _lock:
        if _zero_fd is None and not _zero_failed:
            try:
                _zero_fd = _make_zero_file()
            except (OSError, AttributeError):  # no memfd or no seals here: copy zeros instead
                _zero_failed = True
    return _zero_fd


def zero_range(length: int, eof: bool) -> FileRange | None:
    """``length`` zero bytes as a range of the shared zero file (a descriptor the caller owns),
    or None: longer than the file, or no zero file on this platform."""
    if length <= 0 or length > ZERO_FILE_SIZE:
        return None
    fd = _zero_file()
    if fd is None:
        return None
    with contextlib.suppress(OSError):
        return FileRange(os.dup(fd), 0, length, eof)
    return None
