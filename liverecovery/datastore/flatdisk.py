"""One disk presented as a flat ``-flat.vmdk``: reads merge overlay ▶ cache ▶ backup.

``FlatDisk`` composes the three layers itself and visits each at most once per READ; none of them
calls back up. It asks the overlay which parts of the range it holds, the cache for the rest
(block by block), and on a miss reads the block from the backup (``DiskReader``) and fills the
cache with it; then it splices the overlay's bytes over the cache's. A block that lies entirely
in a hole of the backup (unallocated or zero runs of the allocation map) is never fetched and
reads as zeros, so the bytes fetched before power-on do not depend on the disk's size.

The hole check comes first and costs one bisection: a READ of a range without data never asks
the cache or the backup; it is answered with shared zero bytes, or spliced from the sealed zero
file (``zeros.py``), since ESXi reads a thin disk end to end during a storage vMotion. A run of
sequential misses switches the disk to read-ahead (``readahead.py``): the blocks ahead are read
from the backup in parallel and served from memory; only then do they go into the cache, as its
coldest blocks (``fill_cold``), off the READ's path.

Writes go to the overlay, never to the backup: the flat disk hands it the base bytes a partially
written new block needs. Foreground reads register with a ``ForegroundGate`` so background
restore can step aside while the VM waits.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import AsyncResource

from liverecovery.backends import (
    AllocationRun,
    BlockCache,
    BlockKey,
    DiskReader,
    DiskStats,
    RunKind,
)
from liverecovery.config import MiB
from liverecovery.datastore.readahead import ReadAhead
from liverecovery.datastore.zeros import zero_bytes, zero_range
from liverecovery.errors import BackupUnavailableError, CatalogError, NfsError, NfsStatus
from liverecovery.io.ranges import FileRange
from liverecovery.nfs.filesystem import Stability, WriteData

__all__ = ["DiskOverlay", "DiskStats", "FlatDisk", "ForegroundGate", "HoleMap", "OverlayOpener"]

log = logging.getLogger(__name__)

_KEPT_KEYS = 4096  # cache keys of recently read blocks kept for reuse
_READAHEAD_BYTES = 16 * MiB  # read ahead of a sequential reader, per disk
_READAHEAD_DEPTH = 8  # backup reads in flight for it


class DiskOverlay(Protocol):
    """**Protocol:** the copy-on-write layer that receives the VM's writes to one disk.

    It never reads the backup: its user asks which parts of a range it holds (``held``) and
    reads the rest elsewhere, and hands it the base bytes of each new block a write covers only
    partly (``to_fill``). ``holds_any`` has a default; subclass explicitly to inherit it.
    """

    def held(self, offset: int, length: int) -> Sequence[tuple[int, int]]:
        """``(offset, length)`` runs of ``[offset, offset + length)`` the overlay holds,
        ascending and merged (empty: it holds none of it).

        :raises OverlayError: the overlay is closed.
        """
        ...

    def holds_any(self, offset: int, length: int) -> bool:
        """Whether the overlay holds any byte of ``[offset, offset + length)``."""
        return bool(self.held(offset, length))

    def to_fill(self, offset: int, length: int) -> Sequence[tuple[int, int]]:
        """``(offset, length)`` of each block a write of ``[offset, offset + length)`` would
        create without covering it whole: the base bytes ``write`` needs.

        :raises ValueError: the range is outside the disk.
        """
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """The overlay's bytes of ``[offset, offset + length)``, zeros where it holds none."""
        ...

    async def write(
        self,
        offset: int,
        data: bytes,
        stability: Stability,
        base: Mapping[int, bytes] | None = None,
    ) -> Stability:
        """Store ``data``; durable before returning unless UNSTABLE. ``base`` maps the offset of
        each block ``to_fill`` named to its base bytes."""
        ...

    async def commit(self) -> None:
        """Make every UNSTABLE write durable."""
        ...

    async def aclose(self) -> None: ...

    @property
    def written_bytes(self) -> int: ...


OverlayOpener = Callable[[], Awaitable[DiskOverlay]]
"""Opens a disk's overlay (once the disk's allocation map was read)."""


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

    def next_data(self, pos: int) -> int | None:
        """The first byte at or after ``pos`` that lies in a data run, or None."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and self._runs[i][1] > pos:
            return pos
        return self._runs[i + 1][0] if i + 1 < len(self._runs) else None

    def has_data(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and self._runs[i][1] > start:
            return True
        return i + 1 < len(self._runs) and self._runs[i + 1][0] < end


class FlatDisk(AsyncResource):
    """The bytes of one disk as the ESX host sees them (a ``ServedDisk``)."""

    def __init__(
        self,
        *,
        source: str,
        reader: DiskReader,
        holes: HoleMap,
        cache: BlockCache,
        overlay: DiskOverlay | None = None,
        gate: ForegroundGate | None = None,
        readahead_bytes: int = _READAHEAD_BYTES,
    ) -> None:
        """``readahead_bytes``: how far the disk reads ahead of a sequential reader (0: never;
        at least two blocks otherwise)."""
        self.source = source
        self.size = reader.size
        self._reader = reader
        self._holes = holes
        self._cache = cache
        self._block = cache.block_size
        self._overlay = overlay
        self.gate = gate or ForegroundGate()
        self.stats = DiskStats()
        self._keys: dict[int, BlockKey] = {}
        self._readahead: ReadAhead | None = None
        self._claimed: set[int] = set()
        """Blocks the read-ahead fetched from the backup and has yet to hand to the cache."""
        self._passed: set[int] = set()
        """Blocks the read-ahead served but could not store (the cache was behind): the
        background restore leaves them to the storage vMotion that read them."""
        if readahead_bytes > 0:
            bs = self._block
            self._readahead = ReadAhead(
                self._fetch_ahead,
                self._block_has_data,
                store=self._store_ahead,
                next_data=self._next_data_block,
                blocks=(self.size + bs - 1) // bs,
                keep=max(2, readahead_bytes // bs),
                depth=_READAHEAD_DEPTH,
            )

    @classmethod
    async def open(
        cls,
        *,
        source: str,
        reader: DiskReader,
        cache: BlockCache,
        overlay: OverlayOpener | None = None,
        gate: ForegroundGate | None = None,
        readahead_bytes: int = _READAHEAD_BYTES,
    ) -> FlatDisk:
        """Read the allocation map (metadata only), open the overlay, build the disk."""
        holes = HoleMap(await reader.allocation())
        opened = None if overlay is None else await overlay()
        return cls(
            source=source,
            reader=reader,
            holes=holes,
            cache=cache,
            overlay=opened,
            gate=gate,
            readahead_bytes=readahead_bytes,
        )

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

    def _key(self, index: int) -> BlockKey:
        """The cache key of block ``index``, reused while hot (making one costs more than a
        cache-hit read's bookkeeping)."""
        key = self._keys.get(index)
        if key is None:
            if len(self._keys) >= _KEPT_KEYS:
                self._keys.clear()
            key = self._keys[index] = BlockKey(self.source, index)
        return key

    # -- the backup's bytes: cache ▶ backup --------------------------------------------------

    async def _miss(
        self, index: int, key: BlockKey, lo: int, length: int, *, background: bool = False
    ) -> bytes:
        """Bytes ``lo:lo + length`` of block ``index``, whose lookup missed: this task is the
        block's filler. A block in a hole is zeros (and never cached); any other is read from
        the backup and filled into the cache."""
        start = index * self._block
        end = min(self.size, start + self._block)
        cache = self._cache
        if not self._holes.has_data(start, end):
            cache.abandon(key)
            self.stats.holes_skipped += 1
            return bytes(min(length, end - start - lo))
        try:
            block = await self._reader.read(start, end - start)
        except BaseException as exc:
            cache.abandon(key, exc if isinstance(exc, Exception) else None)
            raise
        stats = self.stats
        stats.cache_misses += 1
        stats.bytes_fetched += len(block)
        if background:
            stats.bytes_restored += len(block)
        await cache.fill(key, block)
        return block if lo == 0 and length >= len(block) else block[lo : lo + length]

    def _block_has_data(self, index: int) -> bool:
        start = index * self._block
        return self._holes.has_data(start, min(self.size, start + self._block))

    def _next_data_block(self, index: int) -> int:
        """The first block at or after ``index`` holding data (past the end: the block count)."""
        pos = self._holes.next_data(index * self._block)
        bs = self._block
        return (self.size + bs - 1) // bs if pos is None else pos // bs

    async def _fetch_ahead(self, index: int) -> bytes:
        """Block ``index`` for the read-ahead: the cache's copy, else the backup's (this task
        is then the block's filler until ``_store_ahead``)."""
        start = index * self._block
        length = min(self.size, start + self._block) - start
        key = self._key(index)
        cache = self._cache
        data = await cache.lookup(key, 0, length)
        if data is not None:
            self.stats.cache_hits += 1
            return data
        try:
            block = await self._reader.read(start, length)
        except BaseException as exc:
            cache.abandon(key, exc if isinstance(exc, Exception) else None)
            raise
        self._claimed.add(index)
        self.stats.cache_misses += 1
        self.stats.bytes_fetched += len(block)
        return block

    async def _store_ahead(self, index: int, block: bytes | None) -> None:
        """After the block's readers got it: into the cache as its coldest block (``fill_cold``:
        what a storage vMotion streams past is evicted before the VM's working set, and the
        backup is read once per block); ``None``: the fetch stopped or the cache is behind,
        give up the fill."""
        if index not in self._claimed:
            return
        self._claimed.discard(index)
        key = self._key(index)
        if block is None:
            self._cache.abandon(key)
            self._passed.add(index)
            return
        await self._cache.fill_cold(key, block)

    async def _missed(self, index: int, key: BlockKey, lo: int, length: int) -> bytes:
        """After a lookup of block ``index`` missed (this task is its filler): read it ahead
        with the blocks after it when the miss continues a sequential run, else the usual miss."""
        ra = self._readahead
        if ra is not None:
            slot = ra.claim(index)
            if slot is not None:
                self._cache.abandon(key)
                data = await ra.take(index, slot, lo, length)
                if data is not None:
                    return data
                return await self._block_part(index, lo, length)  # it stopped: the usual way
        return await self._miss(index, key, lo, length)

    async def _block_part(self, index: int, lo: int, length: int) -> bytes:
        """Bytes ``lo:lo + length`` of block ``index``: zeros in a hole, else from the
        read-ahead, the cache or (on a miss) the backup."""
        start = index * self._block + lo
        if not self._holes.has_data(start, start + length):
            self.stats.holes_skipped += 1
            return zero_bytes(length)
        ra = self._readahead
        while ra is not None and (slot := ra.get(index)) is not None:
            data = await ra.take(index, slot, lo, length)
            if data is not None:
                return data
        key = self._key(index)
        data = await self._cache.lookup(key, lo, length)
        if data is not None:
            self.stats.cache_hits += 1
            return data
        return await self._missed(index, key, lo, length)

    async def _base(self, offset: int, length: int) -> bytes:
        """The backup's bytes (through the cache) of ``[offset, offset + length)``, within the
        disk, ignoring the overlay. A range without data is zeros, asking nothing below."""
        end = offset + length
        if not self._holes.has_data(offset, end):
            self.stats.holes_skipped += 1
            return zero_bytes(length)
        bs = self._block
        first = offset // bs
        lo = offset - first * bs
        if lo + length <= bs:  # within one block: the cache-hit path, kept short
            ra = self._readahead
            if ra is not None and ra.get(first) is not None:
                return await self._block_part(first, lo, length)
            key = self._key(first)
            data = await self._cache.lookup(key, lo, length)
            if data is not None:
                self.stats.cache_hits += 1
                return data
            return await self._missed(first, key, lo, length)
        last = (end - 1) // bs
        parts: list[bytes] = [b""] * (last - first + 1)

        async def one(i: int) -> None:
            lo, hi = max(offset, i * bs) - i * bs, min(end, (i + 1) * bs) - i * bs
            parts[i - first] = await self._block_part(i, lo, hi - lo)

        async with anyio.create_task_group() as tg:
            for i in range(first, last + 1):
                tg.start_soon(one, i)
        return b"".join(parts)

    async def _merged(
        self, overlay: DiskOverlay, held: Sequence[tuple[int, int]], offset: int, length: int
    ) -> bytes:
        """The overlay's bytes where it holds ``held``, the base's elsewhere."""
        data = await overlay.read(offset, length)
        if len(held) == 1 and held[0] == (offset, length):
            return data
        out = bytearray(data)
        pos, end = offset, offset + length
        for start, n in (*held, (end, 0)):
            if start > pos:
                out[pos - offset : start - offset] = await self._base(pos, start - pos)
            pos = start + n
        return bytes(out)

    # -- the served file ------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> tuple[bytes, bool]:
        """A foreground read: exactly ``length`` bytes unless the end of the disk is reached."""
        if offset >= self.size or length <= 0:
            await anyio.lowlevel.checkpoint()
            return b"", offset + max(length, 0) >= self.size
        if length > self.size - offset:
            length = self.size - offset
        gate = self.gate
        gate.enter()
        try:
            overlay = self._overlay
            if overlay is not None and (held := overlay.held(offset, length)):
                data = await self._merged(overlay, held, offset, length)
            else:
                data = await self._base(offset, length)
        except (CatalogError, BaseExceptionGroup) as exc:
            unavailable = _unavailable(exc)
            if unavailable is not None:  # concurrent block reads while the store is down
                raise unavailable from None
            damage = _catalog_error(exc)
            if damage is None:
                raise
            # damage in the backup where this read lands: an I/O error for this read, one log
            # line naming the file and where; the server goes on serving everything else
            log.warning("READ of %s at byte %d (%d bytes): %s", self.source, offset, length, damage)
            raise NfsError(NfsStatus.IO, damage.problem) from None
        finally:
            gate.leave()
        self.stats.bytes_served += len(data)
        return data, offset + len(data) >= self.size

    async def read_file_range(self, offset: int, length: int) -> FileRange | None:
        """A foreground read as a range of a file to splice (see
        ``Filesystem.read_file_range``): of the shared zero file for a range without data, else
        of one cache block file. None: the range spans blocks, the overlay holds part of it, the
        block is read ahead or not verified in the cache yet, or the cache cannot give file
        ranges. No bytes enter Python."""
        if offset >= self.size or length <= 0:
            return None
        if length > self.size - offset:
            length = self.size - offset
        overlay = self._overlay
        if overlay is not None and overlay.holds_any(offset, length):
            return None
        eof = offset + length >= self.size
        if not self._holes.has_data(offset, offset + length):
            rng = zero_range(length, eof)
            if rng is not None:
                self.stats.holes_skipped += 1
                self.stats.bytes_served += length
            return rng
        bs = self._block
        index = offset // bs
        lo = offset - index * bs
        if lo + length > bs:
            return None
        if self._readahead is not None and self._readahead.get(index) is not None:
            return None  # read ahead: in memory, not in a file
        rng = await self._cache.file_range(self._key(index), lo, length, eof=eof)
        if rng is not None:
            self.stats.cache_hits += 1
            self.stats.bytes_served += length
        return rng

    async def write(self, offset: int, data: WriteData, stability: Stability) -> Stability:
        """Write into the overlay (the backup is never written), with the base bytes of the
        new blocks it covers only partly (read through the cache).

        ``data`` is copied once for the overlay (which may keep it while it fills a block).

        :raises PermissionError: the disk has no overlay (a read-only presentation).
        """
        overlay = self._overlay
        if overlay is None:
            raise PermissionError(f"{self.source} is read-only")
        payload = data if isinstance(data, bytes) else bytes(data)
        base: dict[int, bytes] | None = None
        for start, n in overlay.to_fill(offset, len(payload)):
            if base is None:
                base = {}
            base[start] = await self._base(start, min(n, self.size - start))
        return await overlay.write(offset, payload, stability, base)

    async def commit(self) -> None:
        if self._overlay is not None:
            await self._overlay.commit()

    async def restore_block(self, index: int) -> None:
        """Bring one block into the cache for the background restore."""
        start = index * self._block
        length = min(self.size, start + self._block) - start
        if self._readahead is not None and (
            self._readahead.get(index) is not None or index in self._passed
        ):
            return  # read ahead: into the cache once its readers have it, or streamed past
        key = self._key(index)
        if await self._cache.lookup(key, 0, length) is not None:
            self.stats.cache_hits += 1
            return
        await self._miss(index, key, 0, length, background=True)

    async def aclose(self) -> None:
        try:
            if self._readahead is not None:
                await self._readahead.aclose()
            if self._overlay is not None:
                await self._overlay.aclose()
        finally:
            await self._reader.aclose()


def _unavailable(exc: BaseException) -> BackupUnavailableError | None:
    """The first ``BackupUnavailableError`` of a group holding nothing else (a READ spanning
    blocks fetched at once while the backup's store is down: the client retries it whole)."""
    if isinstance(exc, BackupUnavailableError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_unavailable(e) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None


def _catalog_error(exc: BaseException) -> CatalogError | None:
    """The backup damage ``exc`` reports: itself, or the only kind of error in a group of
    concurrent block reads (anything else in the group is not damage: None)."""
    if isinstance(exc, CatalogError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_catalog_error(e) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None
