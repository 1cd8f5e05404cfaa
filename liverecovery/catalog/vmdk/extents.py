"""Readers for the extent types a VMDK descriptor lists: FLAT/VMFS, ZERO and hosted SPARSE
(including streamOptimized's compressed grains).

Each reader is synchronous and safe to call from many threads at once: file access goes through
``os.pread`` (no shared seek position) and the only shared mutable state, the inflated-grain
LRU, has its own lock. Offsets and lengths are relative to the extent. A read returns a list of
buffers ("pieces") whose lengths add up to the request, so the caller joins them with one copy:
file runs come straight from ``os.pread``, holes are views of one shared zero block, and ranges
the extent does not hold come from ``fallback`` (the parent disk of a delta, or zeros).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from liverecovery.backends import RunKind
from liverecovery.catalog.vmdk.confine import inside
from liverecovery.catalog.vmdk.descriptor import MAX_DESCRIPTOR_BYTES
from liverecovery.catalog.vmdk.grain_cache import GrainCache
from liverecovery.catalog.vmdk.sparse_header import (
    GD_AT_END,
    MARKER_FOOTER,
    SECTOR,
    SparseHeader,
    parse_sparse_header,
)
from liverecovery.errors import CatalogError

if TYPE_CHECKING:
    from liverecovery.catalog.vmdk.files import ByteSource

__all__ = [
    "Fallback",
    "ExtentReader",
    "FlatExtent",
    "SparseExtent",
    "FileWindow",
    "ZeroExtent",
]

Piece = bytes | memoryview
Fallback = Callable[[int, int], list[Piece]]
"""What lies beneath (offset, length) of an extent that does not hold it (a delta's parent)."""

_ZEROS = bytes(1 << 20)
_ZERO_VIEW = memoryview(_ZEROS)


def zeros(length: int) -> list[Piece]:
    """``length`` zero bytes as views of one shared block (no allocation for small runs)."""
    if length <= len(_ZEROS):
        return [_ZERO_VIEW[:length]]
    return [bytes(length)]


Run = tuple[int, int, RunKind]

_GTE_ZERO = 1
_GRAIN_MARKER = struct.Struct("<QI")
_LITTLE = sys.byteorder == "little"
_FIRST_COMPRESSED_READ = 32768
_INLINE_HEAD = 16384  # heads shorter than this inflate faster than a thread hand-off
_BATCH_BYTES = 4 << 20  # grain tables read with one pread when mapping
_CHUNK_TABLES = 32  # tables compared with zeros at once
_SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: int | None = getattr(os, "SEEK_HOLE", None)

_Group = tuple[int, int, bool]
"""(first table, how many, all empty) for the mapping loop."""


def _contiguous(gd: array[int], first: int, stop: int, gt_sectors: int) -> int:
    """How many tables from ``first`` on (before ``stop``) lie back to back in the file."""
    start = gd[first]
    n = stop - first
    last = start + (n - 1) * gt_sectors
    if last <= 0xFFFF_FFFF and gd[first:stop] == array("I", range(start, last + 1, gt_sectors)):
        return n  # the usual layout, checked at C speed
    count = 1
    while first + count < stop and gd[first + count] == start + count * gt_sectors:
        count += 1
    return count


def _add_group(groups: list[_Group], first: int, count: int, empty: bool) -> None:
    """Append a group, merging it into the previous one when both are empty (groups come in
    table order, without gaps)."""
    if empty and groups and groups[-1][2]:
        groups[-1] = (groups[-1][0], groups[-1][1] + count, True)
    else:
        groups.append((first, count, empty))


class ExtentReader(Protocol):
    """**Protocol:** one extent of a disk, ``size`` bytes long."""

    size: int

    def read(self, offset: int, length: int, fallback: Fallback | None) -> list[Piece]: ...

    def runs(self) -> Iterator[Run]: ...

    def close(self) -> None: ...


class FileWindow:
    """``size`` bytes of a file from byte ``start`` on: a whole file, or a member of a tar.

    Reads use ``os.pread`` so any number of threads can read at once. ``close()`` while reads
    are in flight defers closing the descriptor until the last one returns, so a recycled
    descriptor number can never be read by mistake; reads after ``close()`` are refused.
    """

    def __init__(
        self, path: str, start: int = 0, size: int | None = None, *, root: str | None = None
    ) -> None:
        """``root``: a real folder the opened file must lie in, checked again on the open
        descriptor (``/proc/self/fd``), so a path swapped for a symlink between the caller's
        check and the open is refused, not read."""
        self.path = path
        self.start = start
        # O_NONBLOCK: a FIFO planted in a backup must not hang the open; only regular files
        # are read (a device node inside the backup folder is refused too).
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(path, flags)
        except FileNotFoundError:
            raise CatalogError("extent file is missing", path=path) from None
        except OSError as exc:
            raise CatalogError(f"cannot open extent file: {exc.strerror}", path=path) from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            raise CatalogError("not a regular file (a device, FIFO or socket)", path=path)
        if root is not None:
            opened = _opened_path(self._fd)
            if opened is not None and not inside(root, opened):
                os.close(self._fd)
                raise CatalogError(
                    f"opened {opened!r}, outside the backup folder {root!r}", path=path
                )
        file_size = info.st_size
        self.size = max(0, file_size - start) if size is None else min(size, file_size - start)
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False

    def _enter(self) -> int:
        with self._lock:
            if self._closed:
                raise CatalogError("read from a closed disk", path=self.path)
            self._users += 1
            return self._fd

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._closed and not self._users and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _pread(self, offset: int, length: int) -> bytes:
        fd = self._enter()
        try:
            return os.pread(fd, length, self.start + offset)
        except OSError as exc:
            raise CatalogError(
                f"read failed at byte {offset}: {exc.strerror}", path=self.path
            ) from None
        finally:
            self._leave()

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short at the end of the window)."""
        length = max(0, min(length, self.size - offset))
        return self._pread(offset, length) if length else b""

    def read_bytes(self, offset: int, length: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset``. :raises CatalogError: past the end."""
        if offset < 0 or offset + length > self.size:
            raise CatalogError(
                f"{what} at byte {offset} lies past the end of the file", path=self.path
            )
        data = self._pread(offset, length)
        done = len(data)
        if done == length:
            return data
        parts = [data]
        while done < length:  # a short read inside the file: keep going until EOF
            more = self._pread(offset + done, length - done)
            if not more:
                raise CatalogError(
                    f"{what} at byte {offset} lies past the end of the file", path=self.path
                )
            parts.append(more)
            done += len(more)
        return b"".join(parts)

    def seek(self, offset: int, whence: int) -> int:
        """``lseek`` relative to the window (for SEEK_DATA/SEEK_HOLE), absolute result."""
        fd = self._enter()
        try:
            return os.lseek(fd, self.start + offset, whence) - self.start
        finally:
            self._leave()

    def close(self) -> None:
        """Close now, or when the reads in flight return."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._users:
                os.close(self._fd)
                self._fd = -1


class ZeroExtent:
    """A ``ZERO`` extent: reads as zeros, holds no file."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read(self, offset: int, length: int, fallback: Fallback | None) -> list[Piece]:
        return zeros(length)

    def runs(self) -> Iterator[Run]:
        if self.size:
            yield (0, self.size, RunKind.ZERO)

    def close(self) -> None:
        return None


class FlatExtent:
    """A ``FLAT``/``VMFS`` extent: ``size`` bytes of a raw file from byte ``base`` on."""

    def __init__(self, file: ByteSource, size: int, base: int) -> None:
        self.path = file.path
        self.size = size
        self.base = base
        self._file = file
        if file.size < base + size:
            file.close()
            raise CatalogError(
                f"flat extent file is {file.size} bytes, the descriptor needs {base + size}",
                path=file.path,
            )

    def read(self, offset: int, length: int, fallback: Fallback | None) -> list[Piece]:
        return [self._file.read_bytes(self.base + offset, length, "flat data")]

    def runs(self) -> Iterator[Run]:
        """Data and holes of the file (SEEK_DATA/SEEK_HOLE), as DATA and ZERO runs."""
        end = self.base + self.size
        pos = self.base
        seek_data = getattr(os, "SEEK_DATA", None)
        seek_hole = getattr(os, "SEEK_HOLE", None)
        if seek_data is None or seek_hole is None:
            if self.size:
                yield (0, self.size, RunKind.DATA)
            return
        while pos < end:
            try:
                data = self._file.seek(pos, seek_data)
            except OSError:
                data = end  # ENXIO: only a hole remains
            data = min(data, end)
            if data > pos:
                yield (pos - self.base, data - pos, RunKind.ZERO)
            if data >= end:
                break
            hole = min(self._file.seek(data, seek_hole), end)
            yield (data - self.base, hole - data, RunKind.DATA)
            pos = hole

    def close(self) -> None:
        self._file.close()


class SparseExtent:
    """A hosted sparse extent (``KDMV``): grain directory, grain tables, grains.

    Handles the redundant grain directory, zero grains (GTE 1), and streamOptimized files
    (deflate-compressed grains behind markers, grain directory in a footer at the end).
    """

    def __init__(
        self,
        file: ByteSource,
        size: int | None = None,
        *,
        grain_cache_bytes: int = 64 << 20,
    ) -> None:
        self.path = file.path
        self._file = file
        self._file_size = file.size
        try:
            self.header = self._load_header()
            self.size = size if size is not None else self.header.capacity * SECTOR
            self._gd = self._load_gd()
        except BaseException:
            file.close()
            raise
        hdr = self.header
        self._grain_bytes = hdr.grain_bytes
        self._grain_sectors = hdr.grain_size
        self._gtes = hdr.gtes_per_gt
        self._capacity_bytes = hdr.capacity * SECTOR
        self._compressed = hdr.compressed
        self._markers = hdr.markers
        self._gts: list[array[int] | None] = [None] * len(self._gd)
        self._empty_gt = array("I", bytes(self._gtes * 4))
        self._runs: list[Run] | None = None
        self._inflated = GrainCache(grain_cache_bytes)

    # -- metadata --------------------------------------------------------------------------

    def _pread(self, offset: int, length: int, what: str) -> bytes:
        return self._file.read_bytes(offset, length, what)

    def _load_header(self) -> SparseHeader:
        head = self._file.pread(0, SECTOR)
        header = parse_sparse_header(head, path=self.path, file_size=self._file_size)
        if header.gd_offset == GD_AT_END:
            # streamOptimized: the footer (a copy of the header with the real GD offset) sits
            # before the end-of-stream marker, behind a footer marker.
            if self._file_size < 3 * SECTOR:
                raise CatalogError("streamOptimized file too short for its footer", path=self.path)
            marker = self._file.pread(self._file_size - 3 * SECTOR, SECTOR)
            _, size, kind = struct.unpack_from("<QII", marker)
            if size != 0 or kind != MARKER_FOOTER:
                raise CatalogError("streamOptimized footer marker missing", path=self.path)
            footer = self._file.pread(self._file_size - 2 * SECTOR, SECTOR)
            header = parse_sparse_header(footer, path=self.path, file_size=self._file_size)
            if header.gd_offset == GD_AT_END:
                raise CatalogError("streamOptimized footer has no grain directory", path=self.path)
        return header

    def _gd_fits(self, sector: int, entries: int) -> bool:
        return sector > 0 and sector * SECTOR + entries * 4 <= self._file_size

    def _load_gd(self) -> array[int]:
        hdr = self.header
        entries = hdr.gd_entries
        sector = hdr.gd_offset
        if not self._gd_fits(sector, entries):
            if hdr.rgd_offset and self._gd_fits(hdr.rgd_offset, entries):
                sector = hdr.rgd_offset
            else:
                raise CatalogError(
                    f"grain directory ({entries} entries at sector {hdr.gd_offset}) lies past "
                    "the end of the file",
                    path=self.path,
                )
        gd = array("I")
        gd.frombytes(self._pread(sector * SECTOR, entries * 4, "grain directory"))
        if not _LITTLE:
            gd.byteswap()
        gt_bytes = hdr.gtes_per_gt * 4
        if gd and max(gd) * SECTOR + gt_bytes > self._file_size:  # C speed; then find which
            for index, gt_sector in enumerate(gd):
                if gt_sector and gt_sector * SECTOR + gt_bytes > self._file_size:
                    raise CatalogError(
                        f"grain table {index} at sector {gt_sector} lies past the end of the file",
                        path=self.path,
                    )
        return gd

    def _gt(self, index: int) -> array[int] | None:
        gt = self._gts[index]
        if gt is None:
            sector = self._gd[index]
            if not sector:
                return None
            gt = array("I")
            gt.frombytes(self._pread(sector * SECTOR, self._gtes * 4, "grain table"))
            if not _LITTLE:
                gt.byteswap()
            self._check_gt(index, gt)
            self._gts[index] = gt  # a racing thread loads identical bytes: benign
        return gt

    def _load_batch(self, first: int, stop: int, max_bytes: int = _BATCH_BYTES) -> list[_Group]:
        """Load grain tables from ``first`` on (before ``stop``) and group them for mapping.

        One batch is a run of absent tables (directory entry 0), or the tables lying back to
        back in the file (writers lay them out contiguously), up to ``max_bytes``, read with one
        ``pread``. Empty tables are found in bulk, at C speed: tables in a hole of the file
        (``SEEK_DATA``/``SEEK_HOLE``; qemu-img and our writer leave unused tables unwritten)
        are not read at all, and what is read is compared with zeros 32 tables at a time. Only tables holding
        entries become arrays of their own; empty ones share one array. Mapping a 1 TiB disk
        (32,768 tables) then costs a few system calls, not a Python step per table.
        """
        gd = self._gd
        sector = gd[first]
        if not sector:
            count = 1
            while first + count < stop and not gd[first + count]:
                count += 1
            return [(first, count, True)]
        gt_bytes = self._gtes * 4
        gt_sectors = -(-gt_bytes // SECTOR)
        count = 1
        if gt_sectors * SECTOR == gt_bytes:
            count = _contiguous(
                gd, first, min(stop, first + max(1, max_bytes // gt_bytes)), gt_sectors
            )
        offset = sector * SECTOR
        empty_gts = self._gts
        data_start, data_end = self._data_span(offset, count * gt_bytes)
        hole_tables = (data_start - offset) // gt_bytes
        if hole_tables:  # tables in a hole of the file: unwritten, so empty
            empty_gts[first : first + hole_tables] = [self._empty_gt] * hole_tables
            return [(first, hole_tables, True)]
        count = min(count, max(1, -(-(data_end - offset) // gt_bytes)))  # up to the next hole
        nbytes = count * gt_bytes
        data = self._pread(offset, nbytes, "grain table" if count == 1 else "grain tables")
        view = memoryview(data)
        groups: list[_Group] = []
        chunk_bytes = _CHUNK_TABLES * gt_bytes
        zero_chunk = bytes(chunk_bytes)
        empty_table = zero_chunk[:gt_bytes]
        for chunk_first in range(0, count, _CHUNK_TABLES):
            n = min(_CHUNK_TABLES, count - chunk_first)
            at = chunk_first * gt_bytes
            if view[at : at + n * gt_bytes].tobytes() == zero_chunk[: n * gt_bytes]:
                _add_group(groups, first + chunk_first, n, True)
                empty_gts[first + chunk_first : first + chunk_first + n] = [self._empty_gt] * n
                continue
            for i in range(chunk_first, chunk_first + n):
                raw = view[i * gt_bytes : (i + 1) * gt_bytes].tobytes()
                if raw == empty_table:
                    _add_group(groups, first + i, 1, True)
                    empty_gts[first + i] = self._empty_gt
                    continue
                gt = array("I")
                gt.frombytes(raw)
                if not _LITTLE:
                    gt.byteswap()
                self._check_gt(first + i, gt)
                empty_gts[first + i] = gt
                groups.append((first + i, 1, False))
        return groups

    def _check_gt(self, index: int, gt: array[int]) -> None:
        """Every grain a table points at must lie in the file (as ``qemu-img check`` demands):
        a truncated or damaged file is refused when the table is loaded, with the grain named,
        instead of failing somewhere later. One ``max`` at C speed when all is well."""
        need = 1 if self._compressed else self._grain_bytes
        limit = self._file_size - need  # the last byte offset a grain may start at
        if not gt or max(gt) * SECTOR <= limit:
            return
        for i, entry in enumerate(gt):
            if entry > _GTE_ZERO and entry * SECTOR > limit:
                grain = index * self._gtes + i
                raise CatalogError(
                    f"grain {grain} (virtual byte {grain * self._grain_bytes}) points at byte "
                    f"{entry * SECTOR}, past the end of the file ({self._file_size} bytes): "
                    "the file is truncated or damaged",
                    path=self.path,
                )

    def _data_span(self, offset: int, length: int) -> tuple[int, int]:
        """Where the first data of the file within ``offset:offset+length`` starts and ends
        (``SEEK_DATA``/``SEEK_HOLE``, at the filesystem's block granularity): ``(end, end)``
        when it is all a hole, the whole range when the filesystem cannot tell."""
        end = offset + length
        if _SEEK_DATA is None or _SEEK_HOLE is None:
            return offset, end
        try:
            start = min(self._file.seek(offset, _SEEK_DATA), end)
            if start == end:
                return end, end
            return start, min(self._file.seek(start, _SEEK_HOLE), end)
        except OSError as exc:  # ENXIO: no data from offset on; others: no SEEK_DATA here
            return (end, end) if exc.errno == errno.ENXIO else (offset, end)

    def _entry(self, grain: int) -> int:
        gt = self._gt(grain // self._gtes)
        return 0 if gt is None else gt[grain % self._gtes]

    # -- data ------------------------------------------------------------------------------

    def read(self, offset: int, length: int, fallback: Fallback | None) -> list[Piece]:
        gbytes = self._grain_bytes
        gsectors = self._grain_sectors
        end = offset + length
        capacity = min(end, self._capacity_bytes)
        entry_of = self._entry
        pieces: list[Piece] = []
        inflates: list[tuple[int, int, int, int, int]] = []
        pos = offset
        while pos < capacity:
            grain, within = divmod(pos, gbytes)
            stop = min(pos - within + gbytes, capacity)
            entry = entry_of(grain)
            if entry == 0:
                # coalesce unallocated grains into one fallback call
                while stop < capacity and entry_of(grain + 1) == 0:
                    grain += 1
                    stop = min(stop + gbytes, capacity)
                pieces.extend(
                    fallback(pos, stop - pos) if fallback is not None else zeros(stop - pos)
                )
            elif entry == _GTE_ZERO:
                while stop < capacity and entry_of(grain + 1) == _GTE_ZERO:
                    grain += 1
                    stop = min(stop + gbytes, capacity)
                pieces.extend(zeros(stop - pos))
            elif self._compressed:
                # a read that needs only the head of a grain inflates only that much
                want = within + stop - pos
                inflates.append((len(pieces), grain, entry, within, want if want < gbytes else 0))
                pieces.append(b"")  # filled in below
            else:
                # coalesce grains stored back to back in the file into one read
                expect = entry + gsectors
                while stop < capacity and entry_of(grain + 1) == expect:
                    grain += 1
                    expect += gsectors
                    stop = min(stop + gbytes, capacity)
                pieces.append(
                    self._file.read_bytes(entry * SECTOR + within, stop - pos, "grain data")
                )
            pos = stop
        if end > pos:
            pieces.extend(zeros(end - pos))  # beyond the header's capacity
        if inflates:
            self._inflate_all(inflates, pieces)
        return pieces

    def _inflate_all(self, jobs: list[tuple[int, int, int, int, int]], pieces: list[Piece]) -> None:
        """Inflate the grains a read needs. Cached grains and short heads are done here; when
        two or more big inflations remain, all but one go to other cores (zlib releases the
        GIL) while this thread does the last."""
        big = []
        for job in jobs:
            _, grain, _, _, head_only = job
            if (0 < head_only < _INLINE_HEAD) or self._inflated.get(grain) is not None:
                index, piece = self._inflate_piece(job)
                pieces[index] = piece
            else:
                big.append(job)
        if not big:
            return
        pool = _claim_pool() if len(big) > 1 else None
        try:
            futures = [pool.submit(self._inflate_piece, job) for job in big[:-1]] if pool else []
            for job in big[-1:] if pool else big:
                index, piece = self._inflate_piece(job)
                pieces[index] = piece
            for future, job in zip(futures, big, strict=False):
                # a worker that has not started yet (busy cores) loses the job to this thread
                index, piece = self._inflate_piece(job) if future.cancel() else future.result()
                pieces[index] = piece
        finally:
            if pool is not None:
                _release_pool()

    def _inflate_piece(self, job: tuple[int, int, int, int, int]) -> tuple[int, Piece]:
        index, grain, entry, within, head_only = job
        data = self._inflate(grain, entry, head_only)
        stop = head_only or self._grain_bytes
        return index, memoryview(data)[within:stop]

    def _inflate(self, grain: int, sector: int, head_only: int = 0) -> bytes:
        """The grain's inflated bytes; with ``head_only``, at least that many (not cached)."""
        cached = self._inflated.get(grain)
        if cached is not None:
            return cached
        where = sector * SECTOR
        head = self._file.pread(where, _FIRST_COMPRESSED_READ)
        if self._markers:
            if len(head) < _GRAIN_MARKER.size:
                raise CatalogError(f"grain {grain} lies past the end of the file", path=self.path)
            _lba, size = _GRAIN_MARKER.unpack_from(head)
            start = _GRAIN_MARKER.size
        else:
            size = len(head)
            start = 0
        if size > 2 * self._grain_bytes + 1024:
            raise CatalogError(
                f"grain {grain} has implausible compressed size {size}", path=self.path
            )
        need = start + size
        if len(head) < need:
            head = self._pread(where, need, f"grain {grain}")
        payload = memoryview(head)[start:need]
        try:
            if head_only:
                data = zlib.decompressobj().decompress(payload, head_only)
            else:
                data = zlib.decompress(payload, zlib.MAX_WBITS, self._grain_bytes)
        except zlib.error as exc:
            raise CatalogError(f"grain {grain} does not inflate: {exc}", path=self.path) from None
        if head_only:
            if len(data) < head_only:
                data += bytes(head_only - len(data))
            return data
        if len(data) < self._grain_bytes:
            data += bytes(self._grain_bytes - len(data))
        self._inflated.put(grain, data)
        return data

    def runs(self) -> Iterator[Run]:
        """DATA/ZERO/UNALLOCATED runs from the grain tables alone, merged (computed once).

        Empty tables come from ``_load_batch`` in bulk; whole tables that are all data or all
        zero are classified at C speed (``min``/``max`` over the table), so big disks, empty or
        fully allocated, map quickly.
        """
        if self._runs is None:
            self._runs = self._map_runs()
        return iter(self._runs)

    def _map_runs(self) -> list[Run]:
        gbytes = self._grain_bytes
        span = gbytes * self._gtes
        limit = min(self.size, self._capacity_bytes)
        tables = min(len(self._gd), -(-limit // span))
        out: list[Run] = []
        run_start = 0
        run_kind: RunKind | None = None

        def add(start: int, kind: RunKind) -> None:
            """A run of ``kind`` starts at ``start`` (it ends where the next kind starts)."""
            nonlocal run_start, run_kind
            if kind is not run_kind:
                if run_kind is not None:
                    out.append((run_start, start - run_start, run_kind))
                run_start, run_kind = start, kind

        index = 0
        while index < tables:
            groups = self._load_batch(index, tables)
            for first, _count, empty in groups:
                base = first * span
                if empty:
                    add(base, RunKind.UNALLOCATED)
                    continue
                gt = self._gts[first]
                assert gt is not None
                low, high = min(gt), max(gt)
                if low > _GTE_ZERO:
                    add(base, RunKind.DATA)
                elif low == high == _GTE_ZERO:
                    add(base, RunKind.ZERO)
                else:
                    pos = base
                    for entry in gt:
                        if pos >= limit:
                            break
                        add(
                            pos,
                            RunKind.UNALLOCATED
                            if entry == 0
                            else RunKind.ZERO
                            if entry == _GTE_ZERO
                            else RunKind.DATA,
                        )
                        pos += gbytes
            index = groups[-1][0] + groups[-1][1]
        end = min(tables * span, limit)
        if run_kind is not None:
            out.append((run_start, end - run_start, run_kind))
        if self.size > limit:
            out.append((limit, self.size - limit, RunKind.ZERO))
        return out

    def embedded_descriptor(self) -> str | None:
        """The descriptor text stored inside a monolithic sparse file, if any."""
        hdr = self.header
        if not hdr.descriptor_offset or not hdr.descriptor_size:
            return None
        if hdr.descriptor_size * SECTOR > MAX_DESCRIPTOR_BYTES:
            raise CatalogError("embedded descriptor is implausibly large", path=self.path)
        raw = self._pread(
            hdr.descriptor_offset * SECTOR, hdr.descriptor_size * SECTOR, "descriptor"
        )
        return _decode(raw.split(b"\x00", 1)[0])

    def close(self) -> None:
        self._file.close()
        self._inflated.clear()


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


_CORES = os.cpu_count() or 1
_POOL_USERS = 0


def _claim_pool() -> ThreadPoolExecutor | None:
    """The process-wide inflate pool, or None when as many reads as there are cores already
    use it: with many concurrent reads (an NFS server under load) the cores are busy anyway
    and a hand-off would only add latency."""
    global _POOL, _POOL_USERS
    with _POOL_LOCK:
        if _CORES < 2 or _POOL_USERS >= _CORES:
            return None
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_CORES, thread_name_prefix="vmdk-inflate")
        _POOL_USERS += 1
        return _POOL


def _release_pool() -> None:
    global _POOL_USERS
    with _POOL_LOCK:
        _POOL_USERS -= 1


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _opened_path(fd: int) -> str | None:
    """The path the kernel opened for ``fd`` (Linux ``/proc``), None where it cannot tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
