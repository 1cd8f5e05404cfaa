"""Read-ahead for the storage vMotion pattern: one disk's sequential misses stream from the backup.

A storage vMotion reads the whole disk once, in order, with many READs in flight. Filling the
cache with every block it passes would cost a block file write before each reply and leave a
second copy of the disk in the circular cache, pushing out the VM's own working set. So once
``trigger`` consecutive blocks missed (``SequentialDetector``), the disk reads the next blocks
ahead (``ReadAhead``): up to ``keep`` blocks at once, ``depth`` backup reads in flight (the
reader's decompression runs in the read threads, so these use every core), held in memory until
served once, then dropped. A READ never waits for a cache block file to be written: the fetch
hands the block to the cache (``store``) only after its readers have it (a block being stored
counts against the window; while ``keep`` stores are under way a block is served and not
stored, so a cache slower than the backup never piles up bytes in memory nor slows the
stream), and the disk stores it as the cache's coldest block, so a storage vMotion's pass does not push out the VM's working set,
and the backup is read once per block while the cache keeps up. The window starts at ``trigger`` blocks
and grows by one with each block served, so a short sequential run (a boot reading its first
megabytes) reads little ahead and a storage vMotion soon has ``keep`` blocks coming. A block is fetched by at most one task
at a time (its slot is made before the fetch starts, and readers of the block wait on it), and
the fetch asks the cache first, so a block the VM already cached is not read from the backup.

The fetches are tasks of their own (asyncio tasks the disk cancels when it closes) so a READ
never waits for blocks other than its own. Readers of a block that is not read ahead take the
usual cache path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio

from liverecovery.io.threads import background_reads

__all__ = ["ReadAhead", "SequentialDetector", "Slot"]

log = logging.getLogger(__name__)


class SequentialDetector:
    """Whether a miss continues a run of ``trigger`` consecutive block misses (pure).

    ``next_data(index)``, when given, names the first block at or after ``index`` that holds
    data: a reader that jumps over a hole (whose READs never miss) is still sequential.
    """

    __slots__ = ("_last", "_next_data", "_run", "trigger")

    def __init__(self, trigger: int, next_data: Callable[[int], int] | None = None) -> None:
        self.trigger = trigger
        self._next_data = next_data
        self._last = -2
        self._run = 0

    def observe(self, index: int) -> bool:
        follows = index == self._last + 1 or (
            self._next_data is not None
            and index > self._last >= 0
            and self._next_data(self._last + 1) == index
        )
        if follows:
            self._run += 1
        elif index != self._last:
            self._run = 1
        self._last = index
        return self._run >= self.trigger


class _Stopped(Exception):
    """The read-ahead stopped before this block arrived (the disk is closing)."""


class Slot:
    """One block read ahead: its bytes once fetched, or the error the fetch failed with."""

    __slots__ = ("data", "error", "event", "served")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.error: Exception | None = None
        self.event = anyio.Event()
        self.served = 0


class ReadAhead:
    """The blocks one disk reads ahead of its sequential reader.

    ``fetch(index)`` returns a block's bytes (the cache's, or the backup's without filling the
    cache); ``has_data(index)`` says whether a block holds any data (holes are never fetched);
    ``next_data`` as for ``SequentialDetector``.
    """

    def __init__(
        self,
        fetch: Callable[[int], Awaitable[bytes]],
        has_data: Callable[[int], bool],
        *,
        store: Callable[[int, bytes | None], Awaitable[None]] | None = None,
        next_data: Callable[[int], int] | None = None,
        blocks: int,
        keep: int,
        depth: int,
        trigger: int = 3,
    ) -> None:
        self._fetch = fetch
        self._store = store
        self._has_data = has_data
        self._blocks = blocks
        self.keep = keep
        self._limit = anyio.Semaphore(depth)
        self._detector = SequentialDetector(trigger, next_data)
        self._next_data = next_data
        self._slots: dict[int, Slot] = {}
        self._storing = 0  # blocks served and not yet stored by ``store``
        self._tasks: set[asyncio.Task[None]] = set()
        self._next = 0  # the next block to read ahead while streaming
        self._pos = 0  # the highest block served from a slot
        self._streaming = False
        self._trigger = trigger
        self._window = trigger  # grows by one per block served, up to keep
        self._closed = False
        self.fetched = 0
        """Blocks fetched ahead (for tests and statistics)."""
        self.unstored = 0
        """Blocks served but not handed to the cache: ``keep`` stores were under way."""

    @property
    def slots(self) -> int:
        return len(self._slots)

    def get(self, index: int) -> Slot | None:
        return self._slots.get(index)

    def claim(self, index: int) -> Slot | None:
        """A miss of block ``index`` whose caller is the cache's filler: the block's slot when
        the miss continues a sequential run (the caller then abandons the cache fill and
        ``take``s from the slot), else None (the usual miss path). Call it without awaiting
        in between the miss and the abandon."""
        if self._closed:
            return None
        slot = self._slots.get(index)
        if slot is not None:
            return slot
        if self._streaming and self._just_ahead(index):
            # A reader ahead of the window (it raced over a hole): the window reaches it now.
            self._advance(index + 1)
            return self._slots[index]
        if not self._detector.observe(index):
            return None
        self._streaming = True
        self._window = self._trigger
        self._next = index
        self._pos = index
        self._advance(index + 1)
        self._fill_window()
        return self._slots[index]

    def _just_ahead(self, index: int) -> bool:
        """Whether ``index`` is at most ``keep`` blocks with data ahead of the window."""
        if index < self._next:
            return False
        j = self._next
        for _ in range(self.keep + 1):
            j = self._data_from(j)
            if j >= index:
                return j == index
            j += 1
        return False

    def _data_from(self, index: int) -> int:
        return index if self._next_data is None else self._next_data(index)

    def _advance(self, end: int) -> None:
        """Read ahead every block with data from the window's cursor up to ``end``."""
        while self._next < min(end, self._blocks):
            index = self._data_from(self._next)
            self._next = index + 1
            if index < self._blocks and index not in self._slots and self._has_data(index):
                self._start(index)

    async def take(self, index: int, slot: Slot, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset + length)`` of the block in ``slot``, once fetched; None when
        the read-ahead stopped first (read it the usual way).

        :raises Exception: the error the fetch failed with.
        """
        if not slot.event.is_set():
            await slot.event.wait()
        data = slot.data
        if data is None:
            if isinstance(slot.error, _Stopped) or slot.error is None:
                return None
            raise slot.error
        part = data if offset == 0 and length >= len(data) else data[offset : offset + length]
        slot.served += len(part)
        if slot.served >= len(data) and self._slots.get(index) is slot:
            del self._slots[index]
            self._pos = max(self._pos, index)
            self._window = min(self.keep, self._window + 1)
            self._fill_window()
        return part

    def _fill_window(self) -> None:
        if not self._streaming or self._closed:
            return
        if len(self._slots) >= self.keep:  # drop blocks the readers passed without reading
            stale = self._pos - 2 * self.keep
            for old in [i for i, s in self._slots.items() if i < stale and s.event.is_set()]:
                del self._slots[old]
        while len(self._slots) + self._storing < self._window and self._next < self._blocks:
            self._advance(self._next + 1)

    def _start(self, index: int) -> None:
        slot = self._slots[index] = Slot()
        task = asyncio.get_running_loop().create_task(self._run(index, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, index: int, slot: Slot) -> None:
        data: bytes | None = None
        handed = False  # whether ``store`` got the block (or was told to give it up)
        try:
            try:
                async with self._limit:
                    if self._closed:
                        raise _Stopped()
                    with background_reads():  # a running VM's READs go first
                        data = slot.data = await self._fetch(index)
                self.fetched += 1
            except asyncio.CancelledError:
                slot.error = _Stopped()
                self._drop(index, slot)
                raise
            except Exception as exc:  # handed to the block's readers; a later read tries again
                slot.error = exc
                self._drop(index, slot)
            finally:
                slot.event.set()
            if self._store is not None and data is not None:
                if self._storing >= self.keep:  # the cache is behind: serve, do not pile up
                    self.unstored += 1
                    return
                self._storing += 1
                handed = True
                try:
                    await self._store(index, data)  # after the readers have it: off their path
                finally:
                    self._storing -= 1
                    self._fill_window()
        except Exception:  # a block the cache could not keep is still served
            log.warning("read-ahead: block %d not stored in the cache", index, exc_info=True)
        finally:
            if self._store is not None and not handed:
                with anyio.CancelScope(shield=True):
                    await self._store(index, None)

    def _drop(self, index: int, slot: Slot) -> None:
        if self._slots.get(index) is slot:
            del self._slots[index]

    async def aclose(self) -> None:
        """Stop reading ahead: cancel the fetches under way and wait for them."""
        self._closed = True
        self._streaming = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*tasks, return_exceptions=True)
        self._slots.clear()
