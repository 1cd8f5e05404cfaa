"""Partitioned disk images in pure Python: an MBR or GPT and a filesystem signature at each
partition's start, as sparse runs (offset -> bytes) for ``MemoryDisk`` or the sample VMDK
writer. Tests and the demo's verification use them; real images come from real tools in the
tests that have them (sgdisk, parted, mkfs.*).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Sequence

__all__ = [
    "FILESYSTEM_SIGNATURES",
    "LINUX_FS_GUID",
    "filesystem_signature",
    "gpt_disk",
    "mbr_disk",
]

SECTOR = 512
LINUX_FS_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def _ext4() -> dict[int, bytes]:
    sb = bytearray(1024)
    struct.pack_into("<H", sb, 56, 0xEF53)
    struct.pack_into("<I", sb, 92, 0x4)  # has_journal
    struct.pack_into("<I", sb, 96, 0x40 | 0x200)  # extents, flex_bg
    return {1024: bytes(sb)}


def _vfat() -> dict[int, bytes]:
    boot = bytearray(512)
    boot[0:3] = b"\xeb\x58\x90"
    boot[3:11] = b"mkfs.fat"
    boot[0x52:0x5A] = b"FAT32   "
    boot[510:512] = b"\x55\xaa"
    return {0: bytes(boot)}


FILESYSTEM_SIGNATURES: dict[str, dict[int, bytes]] = {
    "ext4": _ext4(),
    "xfs": {0: b"XFSB" + bytes(508)},
    "swap": {4086: b"SWAPSPACE2"},
    "ntfs": {0: b"\xebR\x90NTFS    " + bytes(501)},
    "btrfs": {0x10040: b"_BHRfS_M"},
    "lvm2_pv": {512: b"LABELONE" + bytes(16) + b"LVM2 001"},
    "vfat": _vfat(),
}
"""The bytes each filesystem's signature puts at (relative) offsets."""


def filesystem_signature(fs: str, offset: int) -> dict[int, bytes]:
    """The signature runs of ``fs`` for a partition starting at byte ``offset``."""
    return {offset + k: v for k, v in FILESYSTEM_SIGNATURES[fs].items()}


def _mbr_entry(ptype: int, first: int, count: int, boot: bool = False) -> bytes:
    return struct.pack(
        "<B3sB3sII", 0x80 if boot else 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", first, count
    )


def _sector(entries: Sequence[bytes]) -> bytes:
    body = b"".join(entries).ljust(64, b"\0")
    return bytes(446) + body + b"\x55\xaa"


def mbr_disk(
    partitions: Sequence[tuple[int, int, int, str | None]],
    *,
    logical: Sequence[tuple[int, int, str | None]] = (),
) -> dict[int, bytes]:
    """An MBR disk: ``partitions`` are (type, first LBA, sectors, filesystem or None); with
    ``logical`` (first LBA, sectors, filesystem), the last primary must be an extended one
    (0x05) covering them; the first EBR is its first sector, each other one the sector
    before its logical partition."""
    runs: dict[int, bytes] = {
        0: _sector([_mbr_entry(t, first, n) for t, first, n, _fs in partitions])
    }
    for _t, first, _n, fs in partitions:
        if fs:
            runs.update(filesystem_signature(fs, first * SECTOR))
    if logical:
        ext_first = partitions[-1][1]
        for i, (first, n, fs) in enumerate(logical):
            ebr = ext_first if i == 0 else first - 1
            entries = [_mbr_entry(0x83, first - ebr, n)]
            if i + 1 < len(logical):
                nxt = logical[i + 1][0] - 1
                entries.append(_mbr_entry(0x05, nxt - ext_first, logical[i + 1][1] + 1))
            runs[ebr * SECTOR] = _sector(entries)
            if fs:
                runs.update(filesystem_signature(fs, first * SECTOR))
    return runs


def gpt_disk(
    disk_size: int,
    partitions: Sequence[tuple[int, int, str | None]],
    *,
    type_guid: str = LINUX_FS_GUID,
    corrupt_entries: bool = False,
) -> dict[int, bytes]:
    """A GPT disk (protective MBR, primary header and 128 entries of 128 bytes at LBA 2):
    ``partitions`` are (first LBA, last LBA, filesystem or None). ``corrupt_entries`` flips a
    byte of the entry array after its CRC32 was taken."""
    last_lba = disk_size // SECTOR - 1
    entries = bytearray(128 * 128)
    for i, (first, last, _fs) in enumerate(partitions):
        e = uuid.UUID(type_guid).bytes_le + uuid.uuid5(uuid.NAMESPACE_OID, str(i)).bytes_le
        e += struct.pack("<QQQ", first, last, 0) + f"part{i + 1}".encode("utf-16-le")
        entries[i * 128 : i * 128 + len(e)] = e
    crc = zlib.crc32(entries)
    if corrupt_entries:
        entries[20] ^= 0xFF
    header = bytearray(92)
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII",
        header,
        0,
        b"EFI PART",
        0x00010000,
        92,
        0,
        0,
        1,
        last_lba,
        34,
        last_lba - 33,
        uuid.UUID(int=1).bytes_le,
        2,
        128,
        128,
        crc,
    )
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    runs: dict[int, bytes] = {
        0: _sector([_mbr_entry(0xEE, 1, min(last_lba, 0xFFFFFFFF))]),
        SECTOR: bytes(header).ljust(SECTOR, b"\0") + bytes(entries),
    }
    for first, _last, fs in partitions:
        if fs:
            runs.update(filesystem_signature(fs, first * SECTOR))
    return runs
