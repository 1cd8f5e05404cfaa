"""seSparse extents: the snapshot (delta) format ESXi 6.5+ writes on VMFS6 and for disks over
2 TB. Read-only, read as qemu reads them.

Layout (all little-endian, offsets and sizes in 512-byte sectors): a constant header in sector
0 (magic ``0xcafebabe``, version ``0x0000000200000001``, capacity, grain size 8 sectors, grain
table size 64 sectors, then where each region lies: volatile header, journal, grain directory,
grain tables, free bitmap, back map, grains); a volatile header (magic ``0xcafecafe``; its
``replay_journal`` must be 0: a dirty file needs ESXi's journal replay first). Directory and
table entries are 64 bits:

- directory entry: 0 = no table; else the top 32 bits are ``0x10000000`` and the low 32 bits
  index a table in the grain tables region (64 sectors = 4096 entries each, 16 MiB of disk);
- table entry, by its top nibble: 0 unallocated (the parent's bytes: the whole entry must be 0),
  1 unmapped and 2 zero (zeros), 3 allocated: grain number ``(e >> 48 & 0xfff) | (e & 2^48-1)
  << 12`` in the grains region; anything else is damage.

The constants are checked as strictly as qemu checks them (the format is not documented).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING

from liverecovery.backends import RunKind
from liverecovery.catalog.vmdk.extents import Fallback, Piece, Run, zeros
from liverecovery.errors import CatalogError

if TYPE_CHECKING:
    from liverecovery.catalog.vmdk.files import ByteSource

__all__ = [
    "CONST_MAGIC",
    "SESPARSE_VERSION",
    "VOLATILE_MAGIC",
    "SeSparseExtent",
    "SeSparseHeader",
    "decode_grain_entry",
    "parse_sesparse_header",
]

SECTOR = 512
CONST_MAGIC = 0xCAFEBABE
VOLATILE_MAGIC = 0xCAFECAFE
SESPARSE_VERSION = 0x0000000200000001
GRAIN_SECTORS = 8
GT_SECTORS = 64
GTES_PER_GT = GT_SECTORS * SECTOR // 8  # 4096
_CONST = struct.Struct("<26Q304x")
_VOLATILE = struct.Struct("<4Q480x")
_GD_ALLOCATED = 0x10000000_00000000
_MAX_CAPACITY_SECTORS = 64 << 31  # 64 TiB: the format's ceiling
_LITTLE = sys.byteorder == "little"

UNALLOCATED, ZERO, DATA = 0, 1, 2


class SeSparseHeader:
    """The constant header's fields a reader uses, in sectors."""

    __slots__ = (
        "capacity",
        "grain_dir_offset",
        "grain_dir_size",
        "grain_tables_offset",
        "grain_tables_size",
        "grains_offset",
        "volatile_offset",
    )

    def __init__(self, fields: tuple[int, ...]) -> None:
        self.capacity = fields[2]
        self.volatile_offset = fields[10]
        self.grain_dir_offset = fields[16]
        self.grain_dir_size = fields[17]
        self.grain_tables_offset = fields[18]
        self.grain_tables_size = fields[19]
        self.grains_offset = fields[24]


def parse_sesparse_header(data: bytes, *, path: str, file_size: int) -> SeSparseHeader:
    """Decode and check the constant header (sector 0). :raises CatalogError:"""
    if len(data) < _CONST.size:
        raise CatalogError("file too short for a seSparse header", path=path)
    fields = _CONST.unpack_from(data)
    magic, version, capacity, grain, gt_size, flags = fields[:6]
    if magic != CONST_MAGIC:
        raise CatalogError(f"bad seSparse magic 0x{magic:016x}", path=path)
    if version != SESPARSE_VERSION:
        raise CatalogError(f"unsupported seSparse version 0x{version:016x}", path=path)
    if grain != GRAIN_SECTORS:
        raise CatalogError(f"unsupported seSparse grain size {grain} sectors", path=path)
    if gt_size != GT_SECTORS:
        raise CatalogError(f"unsupported seSparse grain table size {gt_size} sectors", path=path)
    if flags or any(fields[6:10]):
        raise CatalogError("unsupported seSparse flags or reserved fields set", path=path)
    if any(data[_CONST.size - 304 : _CONST.size]):
        raise CatalogError("seSparse header padding is not zero", path=path)
    if capacity > _MAX_CAPACITY_SECTORS:
        raise CatalogError(f"implausible seSparse capacity {capacity} sectors", path=path)
    header = SeSparseHeader(fields)
    for name, offset, size in (
        ("volatile header", header.volatile_offset, 1),
        ("grain directory", header.grain_dir_offset, header.grain_dir_size),
    ):
        if offset <= 0 or (offset + size) * SECTOR > file_size:
            raise CatalogError(f"seSparse {name} lies past the end of the file", path=path)
    needed = -(-capacity // (GRAIN_SECTORS * GTES_PER_GT))
    if header.grain_dir_size * SECTOR // 8 < needed:
        raise CatalogError(
            f"seSparse grain directory has {header.grain_dir_size * SECTOR // 8} entries, "
            f"the capacity needs {needed}",
            path=path,
        )
    return header


def decode_grain_entry(entry: int) -> tuple[int, int]:
    """(kind, grain number) of a table entry; the number is meaningful for DATA only.

    :raises ValueError: an entry no seSparse writer makes.
    """
    nibble = entry >> 60
    if nibble == 0:
        if entry:
            raise ValueError("unallocated entry with bits set")
        return UNALLOCATED, 0
    if nibble in (1, 2):
        return ZERO, 0
    if nibble == 3:
        return DATA, ((entry >> 48) & 0xFFF) | ((entry & 0xFFFF_FFFF_FFFF) << 12)
    raise ValueError(f"unknown entry type {nibble}")


def _whole_kind(gt: array[int] | None) -> int | None:
    """The kind of every entry of ``gt`` when they all share one (None for no table: all
    unallocated), else None."""
    if gt is None:
        return UNALLOCATED
    low, high = min(gt), max(gt)
    if high == 0:
        return UNALLOCATED
    if low >= 3 << 60 and high < 4 << 60:
        return DATA
    if low >= 1 << 60 and high < 3 << 60:
        return ZERO
    return None


class SeSparseExtent:
    """A ``SESPARSE`` extent of a descriptor (see the module docstring)."""

    def __init__(self, file: ByteSource, size: int | None = None) -> None:
        self.path = file.path
        self._file = file
        try:
            self.header = parse_sesparse_header(
                file.pread(0, SECTOR), path=self.path, file_size=file.size
            )
            hdr = self.header
            volatile = _VOLATILE.unpack_from(
                file.read_bytes(hdr.volatile_offset * SECTOR, SECTOR, "volatile header")
            )
            if volatile[0] != VOLATILE_MAGIC:
                raise CatalogError(
                    f"bad seSparse volatile header magic 0x{volatile[0]:016x}", path=self.path
                )
            if volatile[3]:
                raise CatalogError(
                    "seSparse file is dirty (its journal needs replaying by ESXi)", path=self.path
                )
            gd = array("Q")
            gd.frombytes(
                file.read_bytes(
                    hdr.grain_dir_offset * SECTOR, hdr.grain_dir_size * SECTOR, "grain directory"
                )
            )
            if not _LITTLE:
                gd.byteswap()
        except BaseException:
            file.close()
            raise
        self._gd = gd
        self._capacity = hdr.capacity * SECTOR
        self.size = size if size is not None else self._capacity
        self._gts: dict[int, array[int]] = {}
        self._grain = GRAIN_SECTORS * SECTOR
        self._span = GTES_PER_GT * self._grain

    def _table(self, index: int) -> array[int] | None:
        gt = self._gts.get(index)
        if gt is not None:
            return gt
        entry = self._gd[index] if index < len(self._gd) else 0
        if not entry:
            return None
        if entry & 0xFFFFFFFF_00000000 != _GD_ALLOCATED:
            raise CatalogError(
                f"grain directory entry {index} is damaged (0x{entry:016x})", path=self.path
            )
        table = entry & 0xFFFFFFFF
        sector = self.header.grain_tables_offset + table * GT_SECTORS
        gt = array("Q")
        gt.frombytes(self._file.read_bytes(sector * SECTOR, GT_SECTORS * SECTOR, "grain table"))
        if not _LITTLE:
            gt.byteswap()
        self._check(index, gt)
        self._gts[index] = gt  # a racing thread loads identical bytes: benign
        return gt

    def _check(self, index: int, gt: array[int]) -> None:
        """Every entry must be one a writer makes, every grain inside the file."""
        limit = self._file.size - self._grain
        for i, entry in enumerate(gt):
            if not entry:
                continue
            grain = index * GTES_PER_GT + i
            try:
                kind, number = decode_grain_entry(entry)
            except ValueError as exc:
                raise CatalogError(
                    f"grain {grain} (virtual byte {grain * self._grain}): {exc} (0x{entry:016x})",
                    path=self.path,
                ) from None
            if kind == DATA:
                at = (self.header.grains_offset + number * GRAIN_SECTORS) * SECTOR
                if at > limit:
                    raise CatalogError(
                        f"grain {grain} (virtual byte {grain * self._grain}) points at byte "
                        f"{at}, past the end of the file ({self._file.size} bytes): the file "
                        "is truncated or damaged",
                        path=self.path,
                    )

    def _entry(self, grain: int) -> tuple[int, int]:
        gt = self._table(grain // GTES_PER_GT)
        if gt is None:
            return UNALLOCATED, 0
        return decode_grain_entry(gt[grain % GTES_PER_GT])

    def read(self, offset: int, length: int, fallback: Fallback | None) -> list[Piece]:
        gbytes = self._grain
        end = offset + length
        capacity = min(end, self._capacity)
        pieces: list[Piece] = []
        pos = offset
        base = self.header.grains_offset * SECTOR
        while pos < capacity:
            grain, within = divmod(pos, gbytes)
            stop = min(pos - within + gbytes, capacity)
            kind, first = self._entry(grain)
            last = first
            # coalesce neighbours of the same kind (and, for data, back to back in the file)
            while stop < capacity:
                next_kind, number = self._entry(grain + 1)
                if next_kind != kind or (kind == DATA and number != last + 1):
                    break
                grain += 1
                last = number
                stop = min(stop + gbytes, capacity)
            if kind == UNALLOCATED:
                pieces.extend(
                    fallback(pos, stop - pos) if fallback is not None else zeros(stop - pos)
                )
            elif kind == ZERO:
                pieces.extend(zeros(stop - pos))
            else:
                at = base + first * gbytes + within
                pieces.append(self._file.read_bytes(at, stop - pos, "grain data"))
            pos = stop
        if end > pos:
            pieces.extend(zeros(end - pos))  # beyond the header's capacity
        return pieces

    def runs(self) -> Iterator[Run]:
        """DATA/ZERO/UNALLOCATED runs from the grain tables, merged."""
        limit = min(self.size, self._capacity)
        kinds = {UNALLOCATED: RunKind.UNALLOCATED, ZERO: RunKind.ZERO, DATA: RunKind.DATA}
        start, current = 0, None
        pos = 0
        while pos < limit:
            gt = self._table(pos // self._span)
            whole = _whole_kind(gt)  # a table of one kind is one step, at C speed
            if whole is not None:
                kind, step = kinds[whole], self._span - pos % self._span
            else:
                assert gt is not None
                kind = kinds[decode_grain_entry(gt[(pos // self._grain) % GTES_PER_GT])[0]]
                step = self._grain
            if kind is not current:
                if current is not None:
                    yield (start, pos - start, current)
                start, current = pos, kind
            pos = min(pos + step, limit)
        if current is not None:
            yield (start, limit - start, current)
        if self.size > limit:
            yield (limit, self.size - limit, RunKind.ZERO)

    def close(self) -> None:
        self._file.close()
