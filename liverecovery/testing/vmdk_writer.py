"""A pure-Python VMDK writer, so sample backups exist on machines without qemu-img.

Follows VMware's "Virtual Disk Format 1.1": hosted sparse extents (monolithicSparse), stream-optimized
extents (deflate-compressed grains with markers, grain directory and footer at the end) and flat disks
(a descriptor plus a ``-flat.vmdk`` written with seek/truncate). Only grains that hold non-zero data are
written, grain by grain, so a 1 TiB disk with a few MiB of data costs a few MiB of memory and disk.

Disk contents are given as *runs*: a mapping ``offset -> data`` or an iterable of ``(offset, data)``
pairs, where data is ``bytes`` or anything with ``len()`` and slicing to bytes (:class:`RunData`, e.g.
:class:`~liverecovery.testing.samples.PatternData`, which makes GiBs of data without holding them).
Runs may overlap; a later run wins where they do. Everything else reads as zeros.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Final, Protocol, TypeAlias

import attrs

__all__ = [
    "GRAIN_SIZE",
    "SECTOR",
    "RunData",
    "Runs",
    "allocated_grains",
    "descriptor",
    "normalize_runs",
    "write_monolithic_flat",
    "write_monolithic_sparse",
    "write_raw",
    "write_se_sparse",
    "write_stream_optimized",
]

SECTOR: Final = 512
GRAIN_SECTORS: Final = 128
GRAIN_SIZE: Final = GRAIN_SECTORS * SECTOR  # 64 KiB
GTES_PER_GT: Final = 512
GT_SECTORS: Final = GTES_PER_GT * 4 // SECTOR  # 4
DESCRIPTOR_SECTORS: Final = 20

MAGIC: Final = 0x564D444B  # "KDMV" in the file
FLAG_NL_DETECT: Final = 1 << 0
FLAG_RGD: Final = 1 << 1
FLAG_COMPRESSED: Final = 1 << 16
FLAG_MARKERS: Final = 1 << 17
COMPRESS_DEFLATE: Final = 1
GD_AT_END: Final = 0xFFFFFFFFFFFFFFFF

MARKER_EOS: Final = 0
MARKER_GT: Final = 1
MARKER_GD: Final = 2
MARKER_FOOTER: Final = 3

# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT,
# rgdOffset, gdOffset, overHead, uncleanShutdown, four newline-test chars, compressAlgorithm.
_HEADER = struct.Struct("<IIIQQQQIQQQB4sH")


class RunData(Protocol):
    """The data of a run: a length and slices of bytes (``bytes`` is one; lazy patterns are others)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> bytes: ...


Runs: TypeAlias = Mapping[int, RunData] | Iterable[tuple[int, RunData]]
_CHUNK: Final = 1024 * 1024


def normalize_runs(size: int, runs: Runs) -> list[tuple[int, RunData]]:
    """Runs as a list of ``(offset, data)`` in the caller's order, checked against the disk size."""
    pairs = list(runs.items()) if isinstance(runs, Mapping) else list(runs)
    out: list[tuple[int, RunData]] = []
    for offset, data in pairs:
        if offset < 0 or offset + len(data) > size:
            raise ValueError(
                f"run at offset {offset} of {len(data)} bytes lies outside the disk of {size} bytes"
            )
        if data:
            out.append((offset, data))
    return out


def _check_size(size: int) -> None:
    if size <= 0 or size % SECTOR:
        raise ValueError(f"disk size {size} must be a positive multiple of {SECTOR} bytes")


def _grains(size: int, runs: Runs) -> Iterator[tuple[int, bytes]]:
    """``(grain index, 64 KiB of content)`` for each grain holding non-zero data, in disk order."""
    pairs = normalize_runs(size, runs)
    touching: dict[int, list[int]] = {}
    for i, (offset, data) in enumerate(pairs):
        for grain in range(offset // GRAIN_SIZE, (offset + len(data) - 1) // GRAIN_SIZE + 1):
            touching.setdefault(grain, []).append(i)
    zero = bytes(GRAIN_SIZE)
    for grain in sorted(touching):
        base = grain * GRAIN_SIZE
        buf = bytearray(GRAIN_SIZE)
        for i in touching[grain]:  # in caller order: later runs win
            offset, data = pairs[i]
            lo = max(offset, base)
            hi = min(offset + len(data), base + GRAIN_SIZE)
            buf[lo - base : hi - base] = data[lo - offset : hi - offset]
        if buf != zero:
            yield grain, bytes(buf)


def allocated_grains(size: int, runs: Runs) -> list[int]:
    """Indices of the 64 KiB grains a sparse writer allocates (those holding non-zero bytes)."""
    _check_size(size)
    return [grain for grain, _ in _grains(size, runs)]


def _header(
    *,
    version: int,
    flags: int,
    capacity: int,
    descriptor_sectors: int,
    rgd_offset: int,
    gd_offset: int,
    overhead: int,
    compress: int,
) -> bytes:
    packed = _HEADER.pack(
        MAGIC,
        version,
        flags,
        capacity,
        GRAIN_SECTORS,
        1 if descriptor_sectors else 0,
        descriptor_sectors,
        GTES_PER_GT,
        rgd_offset,
        gd_offset,
        overhead,
        0,
        b"\n \r\n",
        compress,
    )
    return packed.ljust(SECTOR, b"\0")


def _content_id(name: str, size: int) -> str:
    return hashlib.blake2b(f"{name}:{size}".encode(), digest_size=4).hexdigest()


def _uuid_ddb(name: str, size: int) -> str:
    raw = hashlib.blake2b(f"uuid:{name}:{size}".encode(), digest_size=16).digest()
    hexes = [f"{b:02x}" for b in raw]
    return " ".join(hexes[:8]) + "-" + " ".join(hexes[8:])


def descriptor(
    name: str,
    size: int,
    *,
    create_type: str,
    extent_line: str,
    adapter_type: str = "lsilogic",
) -> str:
    """A disk descriptor in the style ESXi and Workstation write."""
    sectors = size // SECTOR
    cylinders = min(max(sectors // (255 * 63), 1), 65535)
    cid = _content_id(name, size)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid}\n"
        "parentCID=ffffffff\n"
        'isNativeSnapshot="no"\n'
        f'createType="{create_type}"\n'
        "\n"
        "# Extent description\n"
        f"{extent_line}\n"
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.adapterType = "{adapter_type}"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "255"\n'
        'ddb.geometry.sectors = "63"\n'
        f'ddb.longContentID = "{hashlib.blake2b(cid.encode(), digest_size=16).hexdigest()}"\n'
        f'ddb.uuid = "{_uuid_ddb(name, size)}"\n'
        'ddb.virtualHWVersion = "13"\n'
    )


def _embedded_descriptor(path: Path, size: int, create_type: str) -> bytes:
    text = descriptor(
        path.stem,
        size,
        create_type=create_type,
        extent_line=f'RW {size // SECTOR} SPARSE "{path.name}"',
    ).encode()
    limit = DESCRIPTOR_SECTORS * SECTOR
    if len(text) >= limit:  # pragma: no cover - the descriptor is a few hundred bytes
        raise ValueError(f"descriptor for {path} is larger than {limit} bytes")
    return text.ljust(limit, b"\0")


def _geometry(size: int) -> tuple[int, int, int]:
    """(capacity in sectors, grain tables, sectors of one grain directory)."""
    capacity = size // SECTOR
    grains = -(-capacity // GRAIN_SECTORS)
    gt_count = -(-grains // GTES_PER_GT)
    gd_sectors = -(-gt_count * 4 // SECTOR)
    return capacity, gt_count, gd_sectors


def write_monolithic_sparse(path: str | os.PathLike[str], size: int, runs: Runs) -> Path:
    """Write a hosted sparse extent (createType monolithicSparse) holding ``runs``; zeros elsewhere.

    Layout as VMware and qemu lay it out: header, embedded descriptor, redundant grain directory and
    its grain tables, grain directory and its grain tables, then the grains. Grain tables that map no
    grain are left as holes in the file, so a huge empty disk costs almost nothing on disk.
    """
    _check_size(size)
    out = Path(path)
    meta = _Metadata.for_size(size)
    tables: dict[int, list[int]] = {}
    next_sector = meta.overhead
    with out.open("wb") as f:
        f.write(
            _header(
                version=1,
                flags=FLAG_NL_DETECT | FLAG_RGD,
                capacity=meta.capacity,
                descriptor_sectors=DESCRIPTOR_SECTORS,
                rgd_offset=meta.rgd_offset,
                gd_offset=meta.gd_offset,
                overhead=meta.overhead,
                compress=0,
            )
        )
        f.write(_embedded_descriptor(out, size, "monolithicSparse"))
        f.seek(next_sector * SECTOR)
        for grain, data in _grains(size, runs):
            table = tables.setdefault(grain // GTES_PER_GT, [0] * GTES_PER_GT)
            table[grain % GTES_PER_GT] = next_sector
            f.write(data)
            next_sector += GRAIN_SECTORS
        meta.write_tables(f, tables)
        f.truncate(next_sector * SECTOR)
    return out


@attrs.frozen
class _Metadata:
    """Where a hosted sparse extent keeps its directories and (preallocated) grain tables, in sectors.

    Header, descriptor, redundant directory and its tables, directory and its tables, then grains.
    """

    capacity: int
    gt_count: int
    gd_sectors: int
    rgd_offset: int
    rgt_offset: int
    gd_offset: int
    gt_offset: int
    overhead: int

    @classmethod
    def for_size(cls, size: int) -> _Metadata:
        capacity, gt_count, gd_sectors = _geometry(size)
        rgd_offset = 1 + DESCRIPTOR_SECTORS
        rgt_offset = rgd_offset + gd_sectors
        gd_offset = rgt_offset + gt_count * GT_SECTORS
        gt_offset = gd_offset + gd_sectors
        overhead = -(-(gt_offset + gt_count * GT_SECTORS) // GRAIN_SECTORS) * GRAIN_SECTORS
        return cls(
            capacity, gt_count, gd_sectors, rgd_offset, rgt_offset, gd_offset, gt_offset, overhead
        )

    def write_tables(self, f: BinaryIO, tables: Mapping[int, list[int]]) -> None:
        """Both directories in full; only the grain tables that map a grain (the rest stay holes)."""
        for directory, tables_at in (
            (self.rgd_offset, self.rgt_offset),
            (self.gd_offset, self.gt_offset),
        ):
            entries = [tables_at + i * GT_SECTORS for i in range(self.gt_count)]
            f.seek(directory * SECTOR)
            f.write(struct.pack(f"<{self.gt_count}I", *entries))
            for index, table in tables.items():
                f.seek((tables_at + index * GT_SECTORS) * SECTOR)
                f.write(struct.pack(f"<{GTES_PER_GT}I", *table))


def _marker(num_sectors: int, kind: int) -> bytes:
    return struct.pack("<QII", num_sectors, 0, kind).ljust(SECTOR, b"\0")


def _compressed_grain(grain: int, data: bytes) -> bytes:
    """A grain marker (LBA, compressed size), the zlib stream, zero padding to a whole sector."""
    packed = zlib.compress(data)
    record = struct.pack("<QI", grain * GRAIN_SECTORS, len(packed)) + packed
    return record + bytes(-len(record) % SECTOR)


def write_stream_optimized(
    path: str | os.PathLike[str], size: int, runs: Runs, *, directory_at_end: bool = True
) -> Path:
    """Write a stream-optimized extent (createType streamOptimized, the OVF/backup format).

    With ``directory_at_end`` (VMware's streaming layout, the default) the header says the grain
    directory is at the end; grains follow as deflate (zlib) streams, each behind a grain marker
    (LBA, compressed size) and padded to a sector; then a marker and the grain tables that map
    something, a marker and the grain directory, a footer (the header with the real directory offset)
    behind its marker, and the end-of-stream marker. Without it, the layout qemu-img writes: the
    directories and tables sit in the header area as in a hosted sparse extent, the compressed grains
    follow, then the end-of-stream marker.
    """
    _check_size(size)
    out = Path(path)
    meta = _Metadata.for_size(size)
    overhead = GRAIN_SECTORS if directory_at_end else meta.overhead

    def header(gd_offset: int) -> bytes:
        flags = FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS
        return _header(
            version=3,
            flags=flags if directory_at_end else flags | FLAG_RGD,
            capacity=meta.capacity,
            descriptor_sectors=DESCRIPTOR_SECTORS,
            rgd_offset=0 if directory_at_end else meta.rgd_offset,
            gd_offset=gd_offset,
            overhead=overhead,
            compress=COMPRESS_DEFLATE,
        )

    tables: dict[int, list[int]] = {}
    with out.open("wb") as f:
        f.write(header(GD_AT_END if directory_at_end else meta.gd_offset))
        f.write(_embedded_descriptor(out, size, "streamOptimized"))
        sector = overhead
        f.seek(sector * SECTOR)
        for grain, data in _grains(size, runs):
            record = _compressed_grain(grain, data)
            table = tables.setdefault(grain // GTES_PER_GT, [0] * GTES_PER_GT)
            table[grain % GTES_PER_GT] = sector
            f.write(record)
            sector += len(record) // SECTOR
        if not directory_at_end:
            meta.write_tables(f, tables)
            f.seek(sector * SECTOR)
            f.write(_marker(0, MARKER_EOS))
            return out
        directory = [0] * meta.gt_count
        for index in sorted(tables):
            f.write(_marker(GT_SECTORS, MARKER_GT))
            directory[index] = sector + 1
            f.write(struct.pack(f"<{GTES_PER_GT}I", *tables[index]))
            sector += 1 + GT_SECTORS
        f.write(_marker(meta.gd_sectors, MARKER_GD))
        gd_offset = sector + 1
        f.write(
            struct.pack(f"<{meta.gt_count}I", *directory).ljust(meta.gd_sectors * SECTOR, b"\0")
        )
        f.write(_marker(1, MARKER_FOOTER))
        f.write(header(gd_offset))
        f.write(_marker(0, MARKER_EOS))
    return out


def write_monolithic_flat(
    directory: str | os.PathLike[str],
    name: str,
    size: int,
    runs: Runs,
    *,
    create_type: str = "vmfs",
    adapter_type: str = "lsilogic",
) -> Path:
    """Write ``<name>.vmdk`` (a descriptor) and ``<name>-flat.vmdk`` (the raw bytes, sparse on disk).

    ``create_type`` is ``"vmfs"`` (what ESXi writes: a VMFS extent) or ``"monolithicFlat"`` (hosted:
    a FLAT extent at offset 0). Returns the descriptor's path.
    """
    if create_type not in ("vmfs", "monolithicFlat"):
        raise ValueError(
            f"flat create type must be 'vmfs' or 'monolithicFlat', not {create_type!r}"
        )
    _check_size(size)
    folder = Path(directory)
    flat = folder / f"{name}-flat.vmdk"
    write_raw(flat, size, runs)
    sectors = size // SECTOR
    extent = (
        f'RW {sectors} VMFS "{flat.name}"'
        if create_type == "vmfs"
        else f'RW {sectors} FLAT "{flat.name}" 0'
    )
    desc = folder / f"{name}.vmdk"
    desc.write_text(
        descriptor(
            name, size, create_type=create_type, extent_line=extent, adapter_type=adapter_type
        )
    )
    return desc


def write_raw(path: str | os.PathLike[str], size: int, runs: Runs) -> Path:
    """Write the raw disk image ``runs`` describe (same overlap rule), as a sparse file."""
    out = Path(path)
    pairs = normalize_runs(size, runs)
    with out.open("wb") as f:
        for offset, data in pairs:
            f.seek(offset)
            for start in range(0, len(data), _CHUNK):
                f.write(data[start : start + _CHUNK])
        f.truncate(size)
    return out


# -- seSparse (ESXi 6.5+ snapshots on VMFS6) ---------------------------------------------------

SE_GRAIN: Final = 4096
SE_GTES: Final = 4096
_SE_CONST = struct.Struct("<26Q304x")
_SE_VOLATILE = struct.Struct("<4Q480x")


def _se_entries(
    size: int, runs: Runs, zero: Iterable[tuple[int, int]], unmapped: Iterable[tuple[int, int]]
) -> dict[int, tuple[int, bytes]]:
    """Grain -> (kind nibble, data) of a seSparse delta: every grain a run touches is
    allocated (a delta holds what was written, zeros included); ``zero``/``unmapped`` ranges
    (grain-aligned, applied after the runs) mark grains 2 and 1."""
    out: dict[int, tuple[int, bytes]] = {}
    for offset, data in normalize_runs(size, runs):
        for grain in range(offset // SE_GRAIN, (offset + len(data) - 1) // SE_GRAIN + 1):
            base = grain * SE_GRAIN
            buf = bytearray(out[grain][1] if grain in out else bytes(SE_GRAIN))
            lo, hi = max(offset, base), min(offset + len(data), base + SE_GRAIN)
            buf[lo - base : hi - base] = data[lo - offset : hi - offset]
            out[grain] = (3, bytes(buf))
    for nibble, ranges in ((2, zero), (1, unmapped)):
        for offset, length in ranges:
            if offset % SE_GRAIN or length % SE_GRAIN or offset + length > size:
                raise ValueError(f"range ({offset}, {length}) is not whole grains of the disk")
            for grain in range(offset // SE_GRAIN, (offset + length) // SE_GRAIN):
                out[grain] = (nibble, b"")
    return out


def write_se_sparse(
    directory: str | os.PathLike[str],
    name: str,
    size: int,
    runs: Runs,
    *,
    parent: str | None = None,
    parent_cid: str = "ffffffff",
    zero: Iterable[tuple[int, int]] = (),
    unmapped: Iterable[tuple[int, int]] = (),
    first_grain: int = 0,
) -> Path:
    """Write ``<name>.vmdk`` (a seSparse descriptor, a delta of ``parent`` when given) and
    ``<name>-sesparse.vmdk``, as ESXi 6.5+ lays out a snapshot on VMFS6.

    4 KiB grains, 4096-entry (64-bit) grain tables. Tables are stored in reverse order and
    grains are numbered from ``first_grain`` on (leaving a hole in the file), so readers must
    follow the directory's indirection and decode both halves of a grain number. Returns the
    descriptor's path.
    """
    _check_size(size)
    folder = Path(directory)
    extent = folder / f"{name}-sesparse.vmdk"
    capacity = size // SECTOR
    gt_count = -(-size // (SE_GRAIN * SE_GTES))
    entries = _se_entries(size, runs, zero, unmapped)
    used_tables = sorted({grain // SE_GTES for grain in entries}, reverse=True)
    table_of = {index: number for number, index in enumerate(used_tables)}
    gd_offset = 8
    gd_sectors = max(1, -(-gt_count * 8 // SECTOR))
    gts_offset = -(-(gd_offset + gd_sectors) // 8) * 8
    gts_sectors = max(1, gt_count) * 64
    grains_offset = gts_offset + gts_sectors
    data_grains = [g for g in sorted(entries) if entries[g][0] == 3]
    number_of = {grain: first_grain + i for i, grain in enumerate(data_grains)}
    grains_sectors = (first_grain + len(data_grains)) * (SE_GRAIN // SECTOR)
    header = _SE_CONST.pack(
        0xCAFEBABE, 0x0000000200000001, capacity, SE_GRAIN // SECTOR, 64, 0, 0, 0, 0, 0,
        1, 1,  # volatile header
        2, 1,  # journal header
        3, 0,  # journal
        gd_offset, gd_sectors,
        gts_offset, gts_sectors,
        0, 0,  # free bitmap
        0, 0,  # back map
        grains_offset, grains_sectors,
    )  # fmt: skip
    volatile = _SE_VOLATILE.pack(0xCAFECAFE, len(used_tables), 1, 0)
    gd = [0] * (gd_sectors * SECTOR // 8)
    tables: dict[int, list[int]] = {}
    for grain, (nibble, _) in entries.items():
        table = tables.setdefault(grain // SE_GTES, [0] * SE_GTES)
        if nibble == 3:
            number = number_of[grain]
            table[grain % SE_GTES] = (3 << 60) | ((number & 0xFFF) << 48) | (number >> 12)
        else:
            table[grain % SE_GTES] = nibble << 60
    with extent.open("wb") as f:
        f.write(header)
        f.write(volatile)
        for index, number in table_of.items():
            gd[index] = (0x10000000 << 32) | number
            f.seek((gts_offset + number * 64) * SECTOR)
            f.write(struct.pack(f"<{SE_GTES}Q", *tables[index]))
        f.seek(gd_offset * SECTOR)
        f.write(struct.pack(f"<{len(gd)}Q", *gd))
        for grain in data_grains:
            f.seek(grains_offset * SECTOR + number_of[grain] * SE_GRAIN)
            f.write(entries[grain][1])
        f.truncate((grains_offset + grains_sectors) * SECTOR)
    text = descriptor(
        name, size, create_type="seSparse", extent_line=f'RW {capacity} SESPARSE "{extent.name}"'
    )
    text = text.replace("parentCID=ffffffff\n", f"parentCID={parent_cid}\n")
    if parent is not None:
        text = text.replace(
            'createType="seSparse"\n', f'createType="seSparse"\nparentFileNameHint="{parent}"\n'
        )
    desc = folder / f"{name}.vmdk"
    desc.write_text(text)
    return desc
