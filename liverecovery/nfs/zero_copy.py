"""Zero-copy READ data: file bytes moved into a pipe with ``splice``, later from the pipe to the
socket, without passing through Python's memory.

Why a pipe and not ``sendfile``: the RPC record mark and the READ reply header (byte count, eof
flag) go out *before* the data, so the exact count must be known first. ``sendfile`` learns it
only while sending: a file truncated in between would leave the stream short of the promised
bytes. Splicing into a pipe first takes references to the page-cache pages (no copy) and tells
exactly how many bytes there are; only then is the header encoded. This is how knfsd does it.

The file-to-pipe splice reads the disk when the pages are not cached, so it runs inline only
when ``cachestat`` (Linux 6.5+) says every page of the range is in the page cache; otherwise in
a worker thread. A pipe holds at most ``slots`` pages; a range spanning more is not loaded.

The pages are referenced, not copied: a WRITE to the same range that lands before the reply
has left the socket shows in that reply, as for any READ concurrent with a WRITE (knfsd's
spliced READs behave the same). A truncate after the splice does not shorten the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import threading
from typing import Any, Final

from liverecovery.io.ranges import FileRange
from liverecovery.io.threads import submit_read

__all__ = ["PipePool", "PipedData", "load", "resident", "zero_copy_supported"]

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ: Final = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_SPLICE_F_NONBLOCK: Final = getattr(os, "SPLICE_F_NONBLOCK", 2)
_CACHESTAT_NR: Final = {"x86_64": 451, "aarch64": 451}.get(platform.machine())


def zero_copy_supported() -> bool:
    """Whether this platform has ``splice`` (Linux)."""
    return hasattr(os, "splice") and hasattr(os, "pipe2")


class _CachestatRange(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Cachestat(ctypes.Structure):
    _fields_ = (
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    )


class _Residency:
    """``cachestat(2)`` through ``syscall``; disabled for good after the first ENOSYS/EPERM."""

    def __init__(self) -> None:
        self._syscall = None
        if _CACHESTAT_NR is not None and platform.system() == "Linux":
            with contextlib.suppress(OSError, AttributeError):
                self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._local = threading.local()  # the call's structures, one set per thread

    def __call__(self, fd: int, offset: int, length: int) -> bool:
        syscall = self._syscall
        if syscall is None or length <= 0:
            return False
        local = self._local
        try:
            range_, stat_ = local.structs
        except AttributeError:
            range_, stat_ = local.structs = (_CachestatRange(), _Cachestat())
        first = offset // _PAGE
        pages = (offset + length - 1) // _PAGE - first + 1
        range_.off = first * _PAGE
        range_.len = pages * _PAGE
        if syscall(_CACHESTAT_NR, fd, ctypes.byref(range_), ctypes.byref(stat_), 0) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
                self._syscall = None  # an old kernel or a seccomp filter: always use threads
            return False
        return int(stat_.nr_cache) >= pages


resident = _Residency()
"""``resident(fd, offset, length)``: True when every page of the range is in the page cache
(reading it will not wait for the disk); False when unknown."""


class _Pipe:
    __slots__ = ("read_fd", "write_fd")

    def __init__(self, size: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for want in (size + _PAGE, size):
            try:
                fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, want)
                break
            except OSError:  # above pipe-max-size without CAP_SYS_RESOURCE, or a user limit
                continue

    @property
    def slots(self) -> int:
        return int(fcntl.fcntl(self.write_fd, _F_GETPIPE_SZ)) // _PAGE

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class PipePool:
    """Pipes for READ data: at most ``max_pipes`` loaded at once (each holds page-cache
    references to one READ's bytes until they are sent). ``keep_idle`` empty pipes are made at
    the start and kept for reuse; pipes beyond them are closed when given back, so a burst of
    reads leaves no descriptors behind."""

    def __init__(self, pipe_size: int, max_pipes: int = 32, keep_idle: int = 4) -> None:
        self._pipe_size = pipe_size
        self._max = max_pipes
        self._keep = keep_idle
        self._free: list[_Pipe] = []
        self._slots = 0
        self._out = 0
        self._closed = False
        self.loaded = 0
        """Ranges moved into pipes so far (what tests and statistics look at)."""
        for _ in range(keep_idle):
            pipe = self._new()
            if pipe is None:
                break
            self._free.append(pipe)

    @property
    def in_use(self) -> int:
        """Pipes handed out and not given back yet."""
        return self._out

    def _new(self) -> _Pipe | None:
        try:
            pipe = _Pipe(self._pipe_size)
            slots = pipe.slots
        except OSError:  # out of file descriptors: the copying path still works
            return None
        self._slots = slots if not self._slots else min(self._slots, slots)
        return pipe

    def acquire(self, offset: int, length: int) -> _Pipe | None:
        """An empty pipe that can hold the range, or None (pool exhausted or range too wide)."""
        if self._closed or self._out >= self._max:
            return None
        pages = (offset + length - 1) // _PAGE - offset // _PAGE + 1
        if self._slots and pages > self._slots:
            return None
        pipe = self._free.pop() if self._free else self._new()
        if pipe is None:
            return None
        if pages > self._slots:
            self._give_idle(pipe)
            return None
        self._out += 1
        return pipe

    def give_back(self, pipe: _Pipe, empty: bool) -> None:
        """Return a pipe; one that still holds bytes (a dropped reply) is closed instead."""
        self._out -= 1
        if empty:
            self._give_idle(pipe)
        else:
            pipe.close()

    def _give_idle(self, pipe: _Pipe) -> None:
        if self._closed or len(self._free) >= self._keep:
            pipe.close()
        else:
            self._free.append(pipe)

    def close(self) -> None:
        """Close the idle pipes; those in use are closed when given back."""
        self._closed = True
        while self._free:
            self._free.pop().close()


class PipedData:
    """``nbytes`` of READ data waiting in a pipe (an ``xdr.Payload``): the connection splices
    them to its socket, then ``release``-s the pipe. Sent bytes are counted in ``remaining``."""

    __slots__ = ("_pipe", "_pool", "nbytes", "remaining")

    def __init__(self, pool: PipePool, pipe: _Pipe, nbytes: int) -> None:
        self._pool = pool
        self._pipe: _Pipe | None = pipe
        self.nbytes = nbytes
        self.remaining = nbytes

    @property
    def fd(self) -> int:
        """The pipe's read end (only valid before ``release``)."""
        assert self._pipe is not None
        return self._pipe.read_fd

    def take_bytes(self) -> bytes:
        """Read the remaining bytes out of the pipe (a copy: for a sender that cannot splice)."""
        parts: list[bytes] = []
        while self.remaining > 0:
            chunk = os.read(self.fd, self.remaining)
            if not chunk:  # cannot happen for a pipe we filled; never loop forever
                raise OSError(errno.EIO, "READ data pipe ran dry")
            parts.append(chunk)
            self.remaining -= len(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the pipe back (idempotent)."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            self._pool.give_back(pipe, self.remaining == 0)


def _fill(pipe: _Pipe, rng: FileRange) -> tuple[int, bool]:
    """Splice the range into the pipe: the bytes there (fewer at end of file) and the eof flag."""
    got = 0
    while got < rng.length:
        try:
            n = os.splice(
                rng.fd,
                pipe.write_fd,
                rng.length - got,
                offset_src=rng.offset + got,
                flags=_SPLICE_F_NONBLOCK,
            )
        except BlockingIOError:  # the pipe is full: a short (legal) READ of what is in it
            break
        if n == 0:
            break
        got += n
    if rng.eof is not None:  # part of a larger file: its end is not this file's end
        return got, rng.eof and got == rng.length
    size = os.fstat(rng.fd).st_size
    return got, rng.offset + got >= size


async def load(pool: PipePool, rng: FileRange) -> tuple[PipedData, bool] | None:
    """Move a file range into a pipe: the data as a payload and the eof flag, or None when it
    cannot be done (no pipe free, the range too wide, an I/O error: read the bytes instead).

    Takes ownership of ``rng`` (its descriptor is closed).
    """
    pipe = pool.acquire(rng.offset, rng.length) if rng.length > 0 else None
    if pipe is None:
        rng.close()
        return None
    try:
        if resident(rng.fd, rng.offset, rng.length):
            got, eof = _fill(pipe, rng)
        else:
            future = submit_read(_fill, pipe, rng)
            try:
                got, eof = await asyncio.shield(future)
            except asyncio.CancelledError:
                # The thread still uses the pipe and the descriptor: let go of them after it.
                future.add_done_callback(lambda f: _abandon(pool, pipe, rng, f))
                raise
    except OSError:
        _abandon(pool, pipe, rng)
        return None
    rng.close()
    pool.loaded += 1
    return PipedData(pool, pipe, got), eof


def _abandon(
    pool: PipePool, pipe: _Pipe, rng: FileRange, done: asyncio.Future[Any] | None = None
) -> None:
    if done is not None and not done.cancelled():
        done.exception()  # retrieved: nobody waits for it any more
    rng.close()
    pool.give_back(pipe, empty=False)
