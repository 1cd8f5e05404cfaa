"""What a backed-up disk holds, read straight from the backup: its partition table and the
filesystem in each partition. The reads live here; every decision is ``verify.partitions``'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from liverecovery.verify.partitions import (
    EXTENDED_TYPES,
    FS_PROBE_BYTES,
    GPT_PROTECTIVE,
    SECTOR,
    Partition,
    TableError,
    identify_filesystem,
    parse_ebr,
    parse_gpt_entries,
    parse_gpt_header,
    parse_mbr,
)

__all__ = [
    "DiskLayout",
    "FoundPartition",
    "NO_FILESYSTEM_NEEDED",
    "inspect_disk",
    "layout_problems",
]

Read = Callable[[int, int], Awaitable[bytes]]
"""Reads ``length`` bytes at ``offset`` (a ``DiskReader.read``)."""

NO_FILESYSTEM_NEEDED = frozenset(
    {
        "21686148-6449-6e6f-744e-656564454649",  # BIOS boot partition (GRUB core image)
        "e3c9e316-0b5c-4db8-817d-f92df00215ae",  # Microsoft reserved
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac",  # Windows recovery environment (may be blank)
        "0x05",
        "0x0f",
        "0x85",  # extended partitions: containers of logical ones
    }
)
"""Partition types that hold no filesystem by design."""

_MAX_LOGICAL = 128


@attrs.frozen
class FoundPartition:
    """A partition and the filesystem found at its start (None: none recognised)."""

    partition: Partition
    filesystem: str | None


@attrs.frozen
class DiskLayout:
    """One disk: ``scheme`` is ``mbr``, ``gpt``, ``none`` (a filesystem on the whole disk) or
    ``unknown`` (neither a table nor a filesystem); ``error`` says why a table did not parse."""

    scheme: str
    partitions: tuple[FoundPartition, ...] = ()
    whole_disk_filesystem: str | None = None
    error: str = ""


def layout_problems(layout: DiskLayout) -> list[str]:
    """Why the disk does not look usable (empty: it does)."""
    if layout.error:
        return [layout.error]
    if layout.scheme == "none":
        return []
    if layout.scheme == "unknown":
        return ["no partition table (MBR or GPT) and no filesystem on the whole disk"]
    if not layout.partitions:
        return [f"the {layout.scheme.upper()} partition table holds no partitions"]
    return [
        f"partition {f.partition.number} (type {f.partition.type}, {f.partition.length} bytes) "
        "holds no recognisable filesystem"
        for f in layout.partitions
        if f.filesystem is None and f.partition.type.lower() not in NO_FILESYSTEM_NEEDED
    ]


async def _probe(read: Read, partitions: list[Partition], size: int) -> tuple[FoundPartition, ...]:
    found = []
    for p in partitions:
        if p.type.lower() in NO_FILESYSTEM_NEEDED:
            found.append(FoundPartition(p, None))
            continue
        head = await read(p.offset, min(FS_PROBE_BYTES, p.length, size - p.offset))
        found.append(FoundPartition(p, identify_filesystem(head)))
    return tuple(found)


async def _logical(read: Read, extended: Partition, size: int) -> list[Partition]:
    parts: list[Partition] = []
    ebr: int | None = extended.offset
    while ebr is not None:
        if len(parts) >= _MAX_LOGICAL:
            raise TableError(f"the extended partition chains more than {_MAX_LOGICAL} EBRs")
        if ebr + SECTOR > min(size, extended.offset + extended.length):
            raise TableError(f"an EBR link points to byte {ebr}, outside the extended partition")
        logical, ebr = parse_ebr(await read(ebr, SECTOR), ebr, extended.offset, 5 + len(parts))
        if logical is not None:
            if logical.offset + logical.length > extended.offset + extended.length:
                raise TableError(
                    f"logical partition {logical.number} ends past its extended partition"
                )
            parts.append(logical)
    return parts


async def inspect_disk(read: Read, size: int) -> DiskLayout:
    """Read the disk's partition table and probe each partition for a filesystem. A table
    that does not parse is a finding (``error``), not an exception."""
    head = await read(0, min(size, FS_PROBE_BYTES))
    whole = identify_filesystem(head)
    if whole is not None:  # a FAT or NTFS boot sector also ends in 55 AA: not an MBR
        return DiskLayout("none", whole_disk_filesystem=whole)
    try:
        if len(head) >= SECTOR and head[510:512] == b"\x55\xaa":
            primary = parse_mbr(head[:SECTOR], size)
            if primary and all(p.type == f"{GPT_PROTECTIVE:#04x}" for p in primary[:1]):
                header = parse_gpt_header(head[SECTOR : 2 * SECTOR], 1)
                entries = await read(header.entries_lba * SECTOR, header.entries_bytes)
                parts = parse_gpt_entries(entries, header, size)
                return DiskLayout("gpt", await _probe(read, parts, size))
            if primary:
                parts = list(primary)
                for p in primary:
                    if int(p.type, 16) in EXTENDED_TYPES:
                        parts += await _logical(read, p, size)
                return DiskLayout("mbr", await _probe(read, parts, size))
    except TableError as exc:
        return DiskLayout("unknown", error=str(exc))
    if head[SECTOR : SECTOR + 8] == b"EFI PART":
        return DiskLayout("unknown", error="a GPT header without a protective MBR")
    return DiskLayout("unknown")
