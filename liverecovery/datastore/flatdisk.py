"""One disk presented as a flat ``-flat.vmdk``: reads merge overlay ▶ cache ▶ backup.

Reads go through the circular cache block by block; a block that lies entirely in a hole of the
backup (unallocated or zero runs of the allocation map) is never fetched and reads as zeros, so
the bytes fetched before power-on do not depend on the disk's size. Writes go to the job's
overlay, never to the backup. Foreground reads register with a ``ForegroundGate`` so background
restore can step aside while the VM waits.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

from liverecovery.backends import (
    AllocationRun,
    BlockCache,
    BlockKey,
    DiskReader,
    DiskStats,
    RunKind,
)
from liverecovery.io.ranges import FileRange
from liverecovery.nfs.filesystem import Stability, WriteData

__all__ = ["DiskOverlay", "DiskStats", "FlatDisk", "ForegroundGate", "HoleMap"]

ReadBase = Callable[[int, int], Awaitable[bytes]]

_KEPT_KEYS = 4096  # cache keys of recently read blocks kept for reuse


def _holds_everything(_offset: int, _length: int) -> bool:
    return True


@runtime_checkable
class DiskOverlay(Protocol):
    """**Protocol:** the copy-on-write layer that receives the VM's writes to one disk.

    It is opened with the disk's ``read_base`` (the backup's bytes through the cache), which it
    reads to fill partially written blocks and to serve what it does not hold.
    """

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``: overlay blocks over the base's bytes."""
        ...

    async def write(self, offset: int, data: bytes, stability: Stability) -> Stability:
        """Store ``data``; durable before returning unless UNSTABLE."""
        ...

    async def commit(self) -> None:
        """Make every UNSTABLE write durable."""
        ...

    async def aclose(self) -> None: ...

    @property
    def written_bytes(self) -> int: ...


@runtime_checkable
class RangeCache(Protocol):
    """A ``BlockCache`` that can also serve part of a block it already verified
    (``DiskBlockCache.read_range``): a 64 KiB read then costs 64 KiB, not a whole 1 MiB block
    read and checked."""

    async def read_range(self, key: BlockKey, start: int, length: int) -> bytes | None: ...


@runtime_checkable
class FileRangeCache(Protocol):
    """A ``BlockCache`` whose verified blocks can be handed out as ranges of their files
    (``DiskBlockCache.file_range``), for the NFS server to splice without copying."""

    async def file_range(
        self, key: BlockKey, start: int, length: int, *, eof: bool = False
    ) -> FileRange | None: ...


@runtime_checkable
class OverlayRanges(Protocol):
    """A ``DiskOverlay`` that can say a range holds none of its writes (so the range may be
    served from the cache's block file as it is)."""

    def holds_any(self, offset: int, length: int) -> bool: ...


OverlayOpener = Callable[[ReadBase], Awaitable[DiskOverlay]]
"""Opens a disk's overlay given the disk's ``read_base``."""


class ForegroundGate:
    """Counts foreground reads in flight; background work waits until there are none.

    ``enter``/``leave`` run on every foreground read, so they only count: the event a waiter
    sleeps on is made by the waiter (an ``anyio.Event`` costs more than a cache-hit read's
    bookkeeping) and set by the last ``leave``.
    """

    __slots__ = ("_active", "_idle", "_last_left")

    def __init__(self) -> None:
        self._active = 0
        self._idle: anyio.Event | None = None
        self._last_left = 0.0

    @property
    def active(self) -> int:
        return self._active

    def enter(self) -> None:
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        self._last_left = time.monotonic()
        if self._active == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Return once no foreground read is in flight."""
        while self._active:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def wait_quiet(self, grace_s: float) -> bool:
        """Return once no foreground read has been in flight for ``grace_s``; True if it waited.

        A VM issues reads back to back with short gaps; background work that starts in such a
        gap makes the VM's next read queue behind it.
        """
        waited = False
        while True:
            if self._active:
                waited = True
                await self.wait_idle()
            remaining = grace_s - (time.monotonic() - self._last_left)
            if remaining <= 0:
                return waited
            waited = True
            await anyio.sleep(remaining)


class HoleMap:
    """Answers "does this byte range hold any data?" from an allocation map, in O(log n)."""

    def __init__(self, extents: Sequence[AllocationRun]) -> None:
        runs = sorted((e.offset, e.offset + e.length) for e in extents if e.kind is RunKind.DATA)
        merged: list[tuple[int, int]] = []
        for start, end in runs:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            elif end > start:
                merged.append((start, end))
        self._starts = [s for s, _ in merged]
        self._runs = merged

    @property
    def data_runs(self) -> list[tuple[int, int]]:
        """(start, end) of every run holding data, sorted and merged."""
        return list(self._runs)

    def has_data(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and self._runs[i][1] > start:
            return True
        return i + 1 < len(self._runs) and self._runs[i + 1][0] < end


class FlatDisk:
    """The bytes of one disk as the ESX host sees them."""

    def __init__(
        self,
        *,
        source: str,
        reader: DiskReader,
        holes: HoleMap,
        cache: BlockCache,
        overlay: DiskOverlay | None = None,
        gate: ForegroundGate | None = None,
    ) -> None:
        self.source = source
        self.size = reader.size
        self._reader = reader
        self._holes = holes
        self._cache = cache
        self._block = cache.block_size
        self._set_overlay(overlay)
        self._ranges = cache if isinstance(cache, RangeCache) else None
        self._file_ranges = cache if isinstance(cache, FileRangeCache) else None
        self.gate = gate or ForegroundGate()
        self.stats = DiskStats()
        self._keys: dict[int, BlockKey] = {}

    @classmethod
    async def open(
        cls,
        *,
        source: str,
        reader: DiskReader,
        cache: BlockCache,
        overlay: OverlayOpener | None = None,
        gate: ForegroundGate | None = None,
    ) -> FlatDisk:
        """Read the allocation map (metadata only), build the disk, open its overlay."""
        holes = HoleMap(await reader.allocation())
        disk = cls(source=source, reader=reader, holes=holes, cache=cache, gate=gate)
        if overlay is not None:
            disk._set_overlay(await overlay(disk.read_base))
        return disk

    @property
    def overlay_bytes(self) -> int:
        """Bytes the VM has written to this disk's overlay."""
        return self._overlay.written_bytes if self._overlay is not None else 0

    @property
    def holes(self) -> HoleMap:
        return self._holes

    @property
    def block_size(self) -> int:
        return self._block

    @property
    def data_runs(self) -> Sequence[tuple[int, int]]:
        """``(start, end)`` byte runs that hold data, ascending: what a restore must copy."""
        return self._holes.data_runs

    async def wait_quiet(self, grace_s: float) -> bool:
        """Wait until no foreground read has been in flight for ``grace_s``; whether it waited."""
        return await self.gate.wait_quiet(grace_s)

    async def _block_bytes(self, index: int, *, background: bool = False) -> bytes:
        start = index * self._block
        end = min(self.size, start + self._block)
        if not self._holes.has_data(start, end):
            self.stats.holes_skipped += 1
            return bytes(end - start)
        fetched = False

        async def fetch() -> bytes:
            nonlocal fetched
            fetched = True
            data = await self._reader.read(start, end - start)
            self.stats.bytes_fetched += len(data)
            if background:
                self.stats.bytes_restored += len(data)
            return data

        data = await self._cache.get_or_fetch(self._key(index), fetch)
        if fetched:
            self.stats.cache_misses += 1
        else:
            self.stats.cache_hits += 1
        return data

    def _set_overlay(self, overlay: DiskOverlay | None) -> None:
        """Use ``overlay``; whether it holds a range is looked up once here, not per READ (an
        overlay that cannot say counts as holding every range: nothing is spliced past it)."""
        self._overlay = overlay
        self._overlay_holds: Callable[[int, int], bool] | None
        if overlay is None:
            self._overlay_holds = None
        elif isinstance(overlay, OverlayRanges):
            self._overlay_holds = overlay.holds_any
        else:
            self._overlay_holds = _holds_everything

    def _key(self, index: int) -> BlockKey:
        """The cache key of block ``index``, reused while hot (making one costs more than a
        cache-hit read's bookkeeping)."""
        key = self._keys.get(index)
        if key is None:
            if len(self._keys) >= _KEPT_KEYS:
                self._keys.clear()
            key = self._keys[index] = BlockKey(self.source, index)
        return key

    async def _block_part(self, index: int, lo: int, hi: int, *, ranges: bool = True) -> bytes:
        """Bytes ``lo:hi`` of block ``index``: straight from the cache file when the block was
        verified in this process (whole blocks too), else through ``get_or_fetch``.

        ``read_range`` comes first (unless the caller just tried it), without consulting the
        hole map: a block verified in this process was fetched or checked through
        ``_block_bytes``, so it holds data.
        """
        if ranges and self._ranges is not None:
            data = await self._ranges.read_range(self._key(index), lo, hi - lo)
            if data is not None:
                self.stats.cache_hits += 1
                return data
        block = await self._block_bytes(index)
        return block if lo == 0 and hi >= len(block) else block[lo:hi]

    async def read_base(self, offset: int, length: int) -> bytes:
        """The backup's bytes (through the cache) at ``offset``, ignoring the overlay."""
        end = offset + length
        if end > self.size:
            end = self.size
        if end <= offset:
            return b""
        bs = self._block
        first = offset // bs
        lo = offset - first * bs
        if lo + end - offset <= bs:  # within one block: the cache-hit path, kept short
            if self._ranges is not None:
                data = await self._ranges.read_range(self._key(first), lo, end - offset)
                if data is not None:
                    self.stats.cache_hits += 1
                    return data
            return await self._block_part(first, lo, lo + end - offset, ranges=False)
        last = (end - 1) // bs
        parts: list[bytes] = [b""] * (last - first + 1)

        async def one(i: int) -> None:
            lo, hi = max(offset, i * bs) - i * bs, min(end, (i + 1) * bs) - i * bs
            parts[i - first] = await self._block_part(i, lo, hi)

        async with anyio.create_task_group() as tg:
            for i in range(first, last + 1):
                tg.start_soon(one, i)
        return b"".join(parts)

    async def read(self, offset: int, count: int) -> tuple[bytes, bool]:
        """A foreground read: exactly ``count`` bytes unless the end of the disk is reached."""
        if offset >= self.size or count <= 0:
            await anyio.lowlevel.checkpoint()
            return b"", offset + max(count, 0) >= self.size
        length = count if count < self.size - offset else self.size - offset
        gate = self.gate
        gate.enter()
        try:
            if self._overlay is not None:
                data = await self._overlay.read(offset, length)
            else:
                data = await self.read_base(offset, length)
        finally:
            gate.leave()
        self.stats.bytes_served += len(data)
        return data, offset + len(data) >= self.size

    async def read_file_range(self, offset: int, count: int) -> FileRange | None:
        """A foreground read as a range of one cache block file (see ``FileRangeReader``), or
        None: the range spans blocks, the overlay holds part of it, the block is not verified
        in the cache yet, or the cache cannot give file ranges. No bytes enter Python."""
        cache = self._file_ranges
        if cache is None or offset >= self.size or count <= 0:
            return None
        length = count if count < self.size - offset else self.size - offset
        bs = self._block
        index = offset // bs
        lo = offset - index * bs
        if lo + length > bs:
            return None
        holds = self._overlay_holds
        if holds is not None and holds(offset, length):
            return None
        eof = offset + length >= self.size
        rng = await cache.file_range(self._key(index), lo, length, eof=eof)
        if rng is not None:
            self.stats.cache_hits += 1
            self.stats.bytes_served += length
        return rng

    async def write(self, offset: int, data: WriteData, stability: Stability) -> Stability:
        """Write into the overlay (the backup is never written).

        ``data`` is copied once for the overlay (which may keep it while it fills a block).

        :raises PermissionError: the disk has no overlay (a read-only presentation).
        """
        if self._overlay is None:
            raise PermissionError(f"{self.source} is read-only")
        payload = data if isinstance(data, bytes) else bytes(data)
        return await self._overlay.write(offset, payload, stability)

    async def commit(self) -> None:
        if self._overlay is not None:
            await self._overlay.commit()

    async def restore_block(self, index: int) -> None:
        """Bring one block into the cache for the background restore."""
        await self._block_bytes(index, background=True)

    async def aclose(self) -> None:
        try:
            if self._overlay is not None:
                await self._overlay.aclose()
        finally:
            await self._reader.aclose()
