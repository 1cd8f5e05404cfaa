"""Every hand-off of blocking work from the event loop to a thread goes through here.

Which one to use:

- ``run_read`` (abandoned on cancel) and ``run_write`` (waited for, shielded): the data path's
  lean pools (disk extents, cache blocks, overlays, NFS files), where a hand-off's cost shows in
  every READ and WRITE. ``submit_read`` when the caller must know when the thread is done.
- ``background_reads()``: reads handed off inside it (a storage vMotion's read-ahead) wait
  behind every foreground read (a running VM's): the read threads take a queued foreground read
  first, so a VM's random READ never queues behind a copy's stream of 1 MiB fetches.
- ``InlineWrites``: a page-cache write that may run on the loop while writes stay fast.
- ``run_sync``: everything else that blocks, off the data path: a directory scan, a small
  metadata file, a pyVmomi SOAP call, a fsync of a journal. It is ``anyio.to_thread.run_sync``
  (capacity limiter, cancellation policy), named once here so there is one way to hand off.
- Not here: small control-plane files read or written whole (.vmx, ``catalog.json``) use
  ``aiofiles``, whose file API reads better than a hand-off per call and costs the same.

The data path's hand-offs, measured:

``InlineWrites``: when a page-cache write may run on the event loop instead of a worker thread.
``run_read``/``run_write``: a lean hand-off of a blocking call to a worker thread (a thread round
trip costs 80 microseconds on the 2-core benchmark VM through ``anyio.to_thread``, two thirds of
a whole 4 KiB NFS round trip of NFS-Ganesha; this one takes about 45).

A buffered write that only copies into the page cache takes microseconds; the two thread
hand-offs of ``anyio.to_thread`` cost more than the copy. But the kernel can make a buffered
write wait (dirty-page throttling, a busy journal, memory reclaim), and a blocked event loop
delays every other call, among them the ESX host's heartbeat. So writes run inline only while
they are fast: one that takes longer than ``slow_s`` sends the following writes to worker threads
for ``backoff_s``, which bounds a stall to one write per back-off period.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeAlias, TypeVar

import anyio
import anyio.to_thread
from anyio import CapacityLimiter

__all__ = [
    "InlineWrites",
    "background_reads",
    "run_read",
    "run_sync",
    "run_write",
    "submit_read",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class InlineWrites:
    """Runs small page-cache writes inline until one turns out slow."""

    __slots__ = ("_after", "backoff_s", "max_bytes", "slow_s")

    def __init__(self, max_bytes: int, *, slow_s: float = 0.005, backoff_s: float = 5.0) -> None:
        self.max_bytes = max_bytes
        self.slow_s = slow_s
        self.backoff_s = backoff_s
        self._after = 0.0

    def allowed(self, nbytes: int) -> bool:
        """Whether a write of ``nbytes`` may run inline now."""
        return nbytes <= self.max_bytes and time.monotonic() >= self._after

    def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call ``fn`` inline; if it was slow, send writes to threads for a while."""
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            end = time.monotonic()
            if end - start > self.slow_s:
                self._after = end + self.backoff_s


class _Pool:
    """A few daemon threads fed through two ``SimpleQueue``s: a lighter hand-off than
    ``anyio.to_thread`` (no capacity limiter or run-var lookups per call), for the blocking
    calls of the hot path. A thread takes the oldest foreground job first, a background one only
    when no foreground job waits."""

    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._background: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[None] = queue.SimpleQueue()
        """One token per job queued (a C queue: cheaper than a ``threading.Semaphore``, whose
        release costs the submitting event loop a Python-level condition): a thread that takes a
        token finds a job in one of the queues."""
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, job: _Job, *, background: bool = False) -> None:
        (self._background if background else self._queue).put(job)
        self._jobs.put(None)
        with self._lock:
            if self._idle > 0 or self._threads >= self._max:
                return
            self._threads += 1
        threading.Thread(target=self._work, name="liverecovery-read", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            loop, future, fn, args = self._take()
            with self._lock:
                self._idle -= 1
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # delivered to the awaiting task
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)
            del loop, future, fn, args, result, error

    def _take(self) -> _Job:
        self._jobs.get()
        while True:  # the count says a job is queued; a racing put may sit in the other queue
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                return self._background.get_nowait()
            except queue.Empty:
                time.sleep(0)


_Job: TypeAlias = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]
]


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


_READS = _Pool(max_threads=16)
_WRITES = _Pool(max_threads=8)  # its own threads: a slow fsync never queues a read


_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "liverecovery_background_reads", default=False
)


@contextlib.contextmanager
def background_reads() -> Iterator[None]:
    """Reads handed off (``run_read``/``submit_read``) in this context, and in tasks started
    from it, wait behind every foreground read: for work nobody is waiting on yet (read-ahead)."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


def on_own_fd(fn: Callable[..., _T], fd: int, *args: Any) -> _T:
    """``fn(fd, *args)``, then close ``fd``: for a worker thread given a private duplicate.

    The event loop may close its own descriptor (an LRU eviction, a REMOVE, a close) while a
    thread waits or runs, and the number may then be reused by any file the process opens: a
    thread using the shared number could read, write or fsync the wrong file. A thread that
    ``run_read`` abandoned still closes its duplicate when it ends.
    """
    try:
        return fn(fd, *args)
    finally:
        os.close(fd)


async def run_read(fn: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking *read* in a worker thread and return its result.

    Only for calls that are harmless to abandon: when the awaiting task is cancelled, this
    returns at once and the thread's result is dropped (``anyio.to_thread`` would wait for it),
    so never use it for a write.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()
    _READS.submit((loop, future, fn, args), background=_BACKGROUND.get())
    return await future


def submit_read(fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """Start a blocking read in a worker thread; its future (for callers that must know when
    the thread is done even if they stop waiting, e.g. through ``asyncio.shield``)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()
    _READS.submit((loop, future, fn, args), background=_BACKGROUND.get())
    return future


async def run_write(fn: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking write or sync in a worker thread and return its result.

    Like ``anyio.to_thread.run_sync``, the caller is shielded from anyio cancellation until the
    thread is done: a write is never left running behind a caller that has moved on.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()
    _WRITES.submit((loop, future, fn, args))
    with anyio.CancelScope(shield=True):
        result = await future
    return result


async def run_sync(
    fn: Callable[..., _T],
    *args: Any,
    limiter: CapacityLimiter | None = None,
    abandon_on_cancel: bool = False,
) -> _T:
    """Run a blocking call that is not on the data path in a worker thread; its result.

    anyio's default thread pool (40 threads, or ``limiter``). By default the caller waits for
    the thread even when cancelled (a started call is never left running behind it); with
    ``abandon_on_cancel`` it returns at once and the thread's result is dropped, for calls that
    are harmless to abandon (a logout, a task's cancel request, a read of metadata).
    """
    return await anyio.to_thread.run_sync(
        fn, *args, limiter=limiter, abandon_on_cancel=abandon_on_cancel
    )
