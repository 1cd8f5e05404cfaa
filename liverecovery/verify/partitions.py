"""Partition tables and filesystem signatures, read from bytes: sans-IO, no reader, no disk.

Each function takes the bytes of one on-disk structure and returns what it found, or a reason
it could not (``TableError``). ``verify.disks`` does the reads. MBR (with the extended
partition's EBR chain), GPT (header and entry array CRC32s checked, as the UEFI spec asks) and
the superblock magics of the filesystems a backup usually holds. 512-byte logical sectors, as
every VMDK has.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib

import attrs

__all__ = [
    "EXTENDED_TYPES",
    "FS_PROBE_BYTES",
    "GPT_PROTECTIVE",
    "SECTOR",
    "GptHeader",
    "Partition",
    "TableError",
    "identify_filesystem",
    "parse_ebr",
    "parse_gpt_entries",
    "parse_gpt_header",
    "parse_mbr",
]

SECTOR = 512
GPT_PROTECTIVE = 0xEE
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
FS_PROBE_BYTES = 0x10000 + 4096
"""Bytes from a partition's start that ``identify_filesystem`` looks at (btrfs's superblock
sits at 64 KiB)."""

_GPT_SIGNATURE = b"EFI PART"
_UNUSED_GUID = "00000000-0000-0000-0000-000000000000"


class TableError(ValueError):
    """A partition table that does not parse; the message says what and where."""


@attrs.frozen
class Partition:
    """One partition: its number (1-based, as the OS names it), byte range and type."""

    number: int
    offset: int
    length: int
    type: str
    """``0x83`` for MBR, the type GUID for GPT."""
    name: str = ""


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _u64(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", data, at)[0])


def _mbr_entries(sector: bytes, where: str) -> list[tuple[int, int, int, int]]:
    """(slot, type, first LBA, sectors) of the used entries of an MBR or EBR sector."""
    if len(sector) < SECTOR:
        raise TableError(f"{where}: {len(sector)} bytes, a sector is {SECTOR}")
    if sector[510:512] != b"\x55\xaa":
        raise TableError(f"{where}: no boot signature 55 AA at byte 510")
    found = []
    for slot in range(4):
        entry = sector[446 + 16 * slot : 462 + 16 * slot]
        status, ptype = entry[0], entry[4]
        if status not in (0x00, 0x80):
            raise TableError(f"{where}: entry {slot + 1} has boot flag {status:#04x}")
        first, count = _u32(entry, 8), _u32(entry, 12)
        if ptype == 0 or count == 0:
            continue
        found.append((slot, ptype, first, count))
    return found


def parse_mbr(sector0: bytes, disk_size: int) -> list[Partition]:
    """The primary partitions of an MBR (a protective 0xEE entry included: GPT follows).

    :raises TableError: no signature, a bad boot flag, a partition past the disk's end, or
        partitions that overlap.
    """
    parts = [
        Partition(slot + 1, first * SECTOR, count * SECTOR, f"{ptype:#04x}")
        for slot, ptype, first, count in _mbr_entries(sector0, "MBR")
    ]
    for p in parts:
        if p.type == f"{GPT_PROTECTIVE:#04x}":
            continue
        if p.offset == 0 or p.offset + p.length > disk_size:
            raise TableError(
                f"MBR partition {p.number} spans bytes {p.offset}-{p.offset + p.length}, "
                f"outside the disk's {disk_size} bytes"
            )
    _check_overlaps([p for p in parts if p.type != f"{GPT_PROTECTIVE:#04x}"], "MBR")
    return parts


def _check_overlaps(parts: list[Partition], where: str) -> None:
    ordered = sorted(parts, key=lambda p: p.offset)
    for a, b in itertools.pairwise(ordered):
        if b.offset < a.offset + a.length:
            raise TableError(f"{where}: partitions {a.number} and {b.number} overlap")


def parse_ebr(
    sector: bytes, ebr_offset: int, extended_offset: int, number: int
) -> tuple[Partition | None, int | None]:
    """One link of the extended partition's chain: the logical partition this EBR (at byte
    ``ebr_offset``) describes, numbered ``number``, and the byte offset of the next EBR (None:
    the chain ends). Logical starts are relative to the EBR, links to the extended partition.

    :raises TableError: the EBR does not parse.
    """
    where = f"EBR at byte {ebr_offset}"
    entries = _mbr_entries(sector, where)
    logical: Partition | None = None
    following: int | None = None
    for slot, ptype, first, count in entries:
        if slot == 0 and ptype not in EXTENDED_TYPES:
            logical = Partition(
                number, ebr_offset + first * SECTOR, count * SECTOR, f"{ptype:#04x}"
            )
        elif slot == 1 and ptype in EXTENDED_TYPES:
            following = extended_offset + first * SECTOR
            if following <= ebr_offset:
                raise TableError(f"{where}: its link points backwards, to byte {following}")
    return logical, following


@attrs.frozen
class GptHeader:
    """The fields of a GPT header that locate and check its entry array."""

    current_lba: int
    backup_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int

    @property
    def entries_bytes(self) -> int:
        return self.entry_count * self.entry_size


def parse_gpt_header(sector: bytes, lba: int) -> GptHeader:
    """The GPT header read from ``lba`` (1: primary; the disk's last LBA: backup).

    :raises TableError: no signature, an unsupported size, a header CRC32 mismatch, or a header
        that says it lives elsewhere.
    """
    where = f"GPT header at LBA {lba}"
    if len(sector) < 92 or sector[:8] != _GPT_SIGNATURE:
        raise TableError(f"{where}: no 'EFI PART' signature")
    size = _u32(sector, 12)
    if not 92 <= size <= min(len(sector), SECTOR):
        raise TableError(f"{where}: header size {size} is outside 92-{SECTOR}")
    stored = _u32(sector, 16)
    computed = zlib.crc32(sector[:16] + b"\0\0\0\0" + sector[20:size])
    if stored != computed:
        raise TableError(f"{where}: header CRC32 {stored:#010x}, computed {computed:#010x}")
    header = GptHeader(
        current_lba=_u64(sector, 24),
        backup_lba=_u64(sector, 32),
        first_usable_lba=_u64(sector, 40),
        last_usable_lba=_u64(sector, 48),
        disk_guid=str(uuid.UUID(bytes_le=bytes(sector[56:72]))),
        entries_lba=_u64(sector, 72),
        entry_count=_u32(sector, 80),
        entry_size=_u32(sector, 84),
        entries_crc=_u32(sector, 88),
    )
    if header.current_lba != lba:
        raise TableError(f"{where}: it says it is at LBA {header.current_lba}")
    if header.entry_size < 128 or header.entry_size % 8 or header.entry_count > 16384:
        raise TableError(
            f"{where}: {header.entry_count} entries of {header.entry_size} bytes is not a GPT "
            "entry array (entries are 128 * 2^n bytes, at most 16384 of them)"
        )
    if header.first_usable_lba > header.last_usable_lba:
        raise TableError(f"{where}: first usable LBA is past the last usable one")
    return header


def parse_gpt_entries(data: bytes, header: GptHeader, disk_size: int) -> list[Partition]:
    """The used entries of the array ``header`` describes (``data``: its bytes).

    :raises TableError: the array CRC32 mismatches, or a partition lies outside the usable
        LBAs or the disk, or partitions overlap.
    """
    need = header.entries_bytes
    if len(data) < need:
        raise TableError(f"GPT entry array: {len(data)} bytes read, the header says {need}")
    computed = zlib.crc32(data[:need])
    if computed != header.entries_crc:
        raise TableError(
            f"GPT entry array at LBA {header.entries_lba}: CRC32 {header.entries_crc:#010x} in "
            f"the header, computed {computed:#010x}"
        )
    parts: list[Partition] = []
    for i in range(header.entry_count):
        entry = data[i * header.entry_size : (i + 1) * header.entry_size]
        type_guid = str(uuid.UUID(bytes_le=bytes(entry[:16])))
        if type_guid == _UNUSED_GUID:
            continue
        first, last = _u64(entry, 32), _u64(entry, 40)
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        if (
            first < header.first_usable_lba
            or last > header.last_usable_lba
            or last < first
            or (last + 1) * SECTOR > disk_size
        ):
            raise TableError(
                f"GPT partition {i + 1} spans LBAs {first}-{last}, outside the usable "
                f"{header.first_usable_lba}-{header.last_usable_lba} of a {disk_size}-byte disk"
            )
        parts.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, type_guid, name))
    _check_overlaps(parts, "GPT")
    return parts


def _ext_kind(sb: bytes) -> str:
    compat, incompat = _u32(sb, 92), _u32(sb, 96)
    if incompat & (0x40 | 0x80 | 0x200):  # extents, 64bit, flex_bg
        return "ext4"
    return "ext3" if compat & 0x4 else "ext2"  # has_journal


def identify_filesystem(data: bytes) -> str | None:
    """The filesystem (or volume format) whose signature starts ``data`` (a partition's first
    ``FS_PROBE_BYTES`` bytes, or fewer), or None: none recognised."""

    def at(offset: int, magic: bytes) -> bool:
        return data[offset : offset + len(magic)] == magic

    if at(0, b"XFSB"):
        return "xfs"
    if at(0, b"LUKS\xba\xbe"):
        return "luks"
    if at(3, b"NTFS    "):
        return "ntfs"
    if at(3, b"EXFAT   "):
        return "exfat"
    if at(3, b"ReFS\0"):
        return "refs"
    if at(3, b"-FVE-FS-"):
        return "bitlocker"
    for sector in range(4):
        if at(sector * SECTOR, b"LABELONE") and at(sector * SECTOR + 24, b"LVM2 001"):
            return "lvm2_pv"
    if len(data) >= 1024 + 98 and _u16(data, 1024 + 56) == 0xEF53:
        return _ext_kind(data[1024:])
    if at(0x10040, b"_BHRfS_M"):
        return "btrfs"
    if at(4086, b"SWAPSPACE2") or at(4086, b"SWAP-SPACE"):
        return "swap"
    if at(510, b"\x55\xaa"):
        if at(0x52, b"FAT32   "):
            return "vfat"
        if at(0x36, b"FAT12   ") or at(0x36, b"FAT16   ") or at(0x36, b"FAT     "):
            return "vfat"
    if at(0x8001, b"CD001"):
        return "iso9660"
    return None
