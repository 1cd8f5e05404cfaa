"""The hosted sparse extent header (``KDMV``) and stream markers, decoded from bytes.

Pure: bytes in, a validated ``SparseHeader`` out. Every size is checked against the file size
before anything is allocated from it, so a corrupt header cannot ask for unbounded memory.
"""

from __future__ import annotations

import struct

import attrs

from liverecovery.errors import CatalogError

__all__ = [
    "GD_AT_END",
    "MARKER_EOS",
    "MARKER_FOOTER",
    "MARKER_GD",
    "MARKER_GT",
    "SPARSE_MAGIC",
    "COWD_MAGIC",
    "SparseHeader",
    "parse_sparse_header",
]

SECTOR = 512
SPARSE_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
GD_AT_END = 0xFFFFFFFFFFFFFFFF

FLAG_VALID_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

COMPRESSION_NONE = 0
COMPRESSION_DEFLATE = 1

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT,
# rgdOffset, gdOffset, overHead, uncleanShutdown, 4 newline test chars, compressAlgorithm
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")

MAX_GRAIN_SECTORS = 1 << 15  # 16 MiB grains: far beyond any real disk (64 KiB is the norm)
MAX_GTES_PER_GT = 1 << 12


@attrs.frozen
class SparseHeader:
    """The fields of a sparse extent header that a reader needs, in sectors unless named bytes."""

    version: int
    flags: int
    capacity: int
    grain_size: int
    descriptor_offset: int
    descriptor_size: int
    gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    compression: int
    gd_count: int | None = None  # COWD headers state it; KDMV derives it from the capacity

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED) and self.compression == COMPRESSION_DEFLATE

    @property
    def markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)

    @property
    def grain_bytes(self) -> int:
        return self.grain_size * SECTOR

    @property
    def gd_entries(self) -> int:
        """How many grain tables cover the capacity."""
        if self.gd_count is not None:
            return self.gd_count
        span = self.grain_size * self.gtes_per_gt
        return -(-self.capacity // span)


def parse_sparse_header(data: bytes, *, path: str = "", file_size: int) -> SparseHeader:
    """Decode and validate a 512-byte sparse header read from ``path`` of ``file_size`` bytes.

    :raises CatalogError: bad magic, unsupported version or compression, or sizes that do not
        fit the file.
    """
    if len(data) < _HEADER.size:
        raise CatalogError("file too short for a sparse extent header", path=path)
    fields = _HEADER.unpack_from(data)
    magic, version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, _over = fields[:11]
    compression = fields[13]
    if magic == COWD_MAGIC:
        return _parse_cowd(data, path)
    if magic != SPARSE_MAGIC:
        raise CatalogError(f"bad sparse extent magic {magic!r} (expected b'KDMV')", path=path)
    if version not in (1, 2, 3):
        raise CatalogError(f"unsupported sparse extent version {version}", path=path)
    if not 1 <= grain <= MAX_GRAIN_SECTORS or grain & (grain - 1):
        raise CatalogError(f"invalid grain size {grain} sectors", path=path)
    if not 1 <= gtes <= MAX_GTES_PER_GT:
        raise CatalogError(f"invalid grain table size {gtes} entries", path=path)
    if compression not in (COMPRESSION_NONE, COMPRESSION_DEFLATE):
        raise CatalogError(f"unsupported compression algorithm {compression}", path=path)
    if capacity >= 1 << 50:
        raise CatalogError(f"implausible capacity {capacity} sectors", path=path)
    header = SparseHeader(
        version=version,
        flags=flags,
        capacity=capacity,
        grain_size=grain,
        descriptor_offset=desc_off,
        descriptor_size=desc_size,
        gtes_per_gt=gtes,
        rgd_offset=rgd,
        gd_offset=gd,
        compression=compression,
    )
    if desc_off and (desc_off + desc_size) * SECTOR > file_size:
        raise CatalogError("embedded descriptor lies past the end of the file", path=path)
    return header


# VMFSSPARSE (ESX redo log): magic, version, flags, numSectors, grainSize, gdOffset,
# numGDEntries, freeSector, then geometry; 4096 entries per grain table, no compression.
_COWD = struct.Struct("<4sIIIIIII")
COWD_GTES_PER_GT = 4096


def _parse_cowd(data: bytes, path: str) -> SparseHeader:
    if len(data) < _COWD.size:
        raise CatalogError("file too short for a COWD header", path=path)
    _magic, version, flags, sectors, grain, gd_offset, gd_entries, _free = _COWD.unpack_from(data)
    if not 1 <= grain <= MAX_GRAIN_SECTORS or grain & (grain - 1):
        raise CatalogError(f"invalid grain size {grain} sectors", path=path)
    needed = -(-sectors // (grain * COWD_GTES_PER_GT))
    if gd_entries < needed:
        raise CatalogError(
            f"grain directory has {gd_entries} entries, the capacity needs {needed}", path=path
        )
    return SparseHeader(
        version=version,
        flags=flags,
        capacity=sectors,
        grain_size=grain,
        descriptor_offset=0,
        descriptor_size=0,
        gtes_per_gt=COWD_GTES_PER_GT,
        rgd_offset=0,
        gd_offset=gd_offset,
        compression=COMPRESSION_NONE,
        gd_count=needed,
    )
