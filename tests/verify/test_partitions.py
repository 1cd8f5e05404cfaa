"""The partition table and filesystem parser: round trips of generated tables (hypothesis),
damage that must be caught (CRC32s, signatures, overlaps, loops), bytes that must never crash it.
Real images made by real tools are in ``test_real_images.py``."""

from __future__ import annotations

import contextlib
import struct
import zlib

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.testing.disk_images import FILESYSTEM_SIGNATURES, gpt_disk, mbr_disk
from liverecovery.testing.memory import MemoryDisk
from liverecovery.verify.disks import DiskLayout, inspect_disk, layout_problems
from liverecovery.verify.partitions import (
    SECTOR,
    TableError,
    identify_filesystem,
    parse_ebr,
    parse_gpt_entries,
    parse_gpt_header,
    parse_mbr,
)

pytestmark = pytest.mark.timeout(120)

DISK = 256 << 20
FILESYSTEMS = sorted(FILESYSTEM_SIGNATURES)


def _image(runs: dict[int, bytes], size: int = DISK) -> MemoryDisk:
    return MemoryDisk(size, runs)


def _inspect(disk: MemoryDisk) -> DiskLayout:
    async def main() -> DiskLayout:
        return await inspect_disk(disk.read, disk.size)

    return anyio.run(main)


def _flip(runs: dict[int, bytes], at: int, flip: int) -> dict[int, bytes]:
    """``runs`` with byte ``at`` (inside one run) xor-ed with ``flip``."""
    out = dict(runs)
    for offset, data in runs.items():
        if offset <= at < offset + len(data):
            changed = bytearray(data)
            changed[at - offset] ^= flip
            out[offset] = bytes(changed)
    return out


@st.composite
def layouts(draw: st.DrawFn, max_parts: int) -> list[tuple[int, int, str | None]]:
    """Non-overlapping (first LBA, sectors, filesystem) from LBA 2048, 1 MiB aligned."""
    count = draw(st.integers(1, max_parts))
    parts, lba = [], 2048
    for _ in range(count):
        lba += draw(st.integers(0, 8)) * 2048
        sectors = draw(st.integers(1, 16)) * 2048
        if (lba + sectors) * SECTOR > DISK - 1 << 20:
            break
        parts.append((lba, sectors, draw(st.sampled_from([*FILESYSTEMS, None]))))
        lba += sectors
    return parts


@given(layouts(4))
def test_mbr_tables_round_trip(parts: list[tuple[int, int, str | None]]) -> None:
    layout = _inspect(_image(mbr_disk([(0x83, first, n, fs) for first, n, fs in parts])))
    assert layout.scheme == "mbr", layout.error
    assert [(f.partition.offset, f.partition.length, f.filesystem) for f in layout.partitions] == [
        (first * SECTOR, n * SECTOR, fs) for first, n, fs in parts
    ]
    assert bool(layout_problems(layout)) == any(fs is None for _f, _n, fs in parts)


@given(layouts(6))
def test_logical_partitions_are_followed_through_the_ebr_chain(
    parts: list[tuple[int, int, str | None]],
) -> None:
    # Each logical partition needs its EBR in the sector before it: start one track in.
    logical = [(first + 63, n - 63, fs) for first, n, fs in parts]
    ext_first = parts[0][0]
    ext_sectors = parts[-1][0] + parts[-1][1] - ext_first
    runs = mbr_disk([(0x05, ext_first, ext_sectors, None)], logical=logical)
    layout = _inspect(_image(runs))
    assert layout.scheme == "mbr", layout.error
    found = [f for f in layout.partitions if f.partition.number >= 5]
    assert [(f.partition.number, f.partition.offset, f.filesystem) for f in found] == [
        (5 + i, first * SECTOR, fs) for i, (first, _n, fs) in enumerate(logical)
    ]


@given(layouts(8))
def test_gpt_tables_round_trip(parts: list[tuple[int, int, str | None]]) -> None:
    runs = gpt_disk(DISK, [(first, first + n - 1, fs) for first, n, fs in parts])
    layout = _inspect(_image(runs))
    assert layout.scheme == "gpt", layout.error
    assert [(f.partition.number, f.partition.length, f.filesystem) for f in layout.partitions] == [
        (i + 1, n * SECTOR, fs) for i, (_first, n, fs) in enumerate(parts)
    ]
    assert layout.partitions[0].partition.name == "part1"


@given(layouts(4), st.integers(0, 128 * 128 - 1), st.integers(1, 255))
def test_any_damage_to_the_gpt_entry_array_is_caught_by_its_crc(
    parts: list[tuple[int, int, str | None]], at: int, flip: int
) -> None:
    runs = gpt_disk(DISK, [(first, first + n - 1, fs) for first, n, fs in parts])
    layout = _inspect(_image(_flip(runs, 2 * SECTOR + at, flip)))
    assert layout.scheme == "unknown"
    assert "CRC32" in layout.error and "entry array" in layout.error


@given(st.integers(0, 91), st.integers(1, 255))
def test_any_damage_to_the_gpt_header_is_caught(at: int, flip: int) -> None:
    runs = gpt_disk(DISK, [(2048, 4095, "ext4")])
    layout = _inspect(_image(_flip(runs, SECTOR + at, flip)))
    assert layout.scheme == "unknown" and layout.error


def test_overlapping_mbr_partitions_are_refused() -> None:
    runs = mbr_disk([(0x83, 2048, 4096, "ext4"), (0x83, 4096, 4096, "xfs")])
    layout = _inspect(_image(runs))
    assert "overlap" in layout.error


def test_a_partition_past_the_disk_end_is_refused() -> None:
    runs = mbr_disk([(0x83, 2048, DISK // SECTOR, "ext4")])
    assert "outside the disk" in _inspect(_image(runs)).error


def test_an_ebr_chain_that_loops_is_refused() -> None:
    sector = bytearray(SECTOR)
    sector[446:462] = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x83, b"\0" * 3, 1, 100)
    sector[462:478] = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x05, b"\0" * 3, 0, 200)
    sector[510:512] = b"\x55\xaa"
    with pytest.raises(TableError, match="backwards"):
        parse_ebr(bytes(sector), 4096 * SECTOR, 4096 * SECTOR, 5)


def test_whole_disk_filesystems_and_blank_disks() -> None:
    for fs, runs in FILESYSTEM_SIGNATURES.items():
        layout = _inspect(_image(dict(runs), 1 << 20))
        assert (layout.scheme, layout.whole_disk_filesystem) == ("none", fs)
        assert layout_problems(layout) == []
    blank = _inspect(_image({}, 1 << 20))
    assert blank.scheme == "unknown"
    assert "no partition table" in layout_problems(blank)[0]


def test_ext_versions_are_told_apart() -> None:
    sb = bytearray(2048)
    struct.pack_into("<H", sb, 1024 + 56, 0xEF53)
    assert identify_filesystem(bytes(sb)) == "ext2"
    struct.pack_into("<I", sb, 1024 + 92, 0x4)
    assert identify_filesystem(bytes(sb)) == "ext3"
    struct.pack_into("<I", sb, 1024 + 96, 0x40)
    assert identify_filesystem(bytes(sb)) == "ext4"


@given(st.binary(min_size=0, max_size=2 * SECTOR), st.integers(0, 1 << 40))
def test_arbitrary_sectors_give_a_table_error_or_a_table(data: bytes, size: int) -> None:
    for parse in (
        lambda: parse_mbr(data, size),
        lambda: parse_ebr(data, SECTOR, SECTOR, 5),
        lambda: parse_gpt_header(data, 1),
    ):
        with contextlib.suppress(TableError):
            parse()


@given(st.binary(max_size=128 * 8))
def test_arbitrary_entry_arrays_never_crash(data: bytes) -> None:
    header = bytearray(gpt_disk(DISK, [])[SECTOR][:92])
    struct.pack_into("<II", header, 80, len(data) // 128, 128)
    struct.pack_into("<I", header, 88, zlib.crc32(data[: len(data) // 128 * 128]))
    struct.pack_into("<I", header, 16, 0)
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    with contextlib.suppress(TableError):
        parse_gpt_entries(data, parse_gpt_header(bytes(header), 1), DISK)


@given(st.binary(max_size=0x11000))
def test_identify_filesystem_never_crashes(data: bytes) -> None:
    assert identify_filesystem(data) in (
        None,
        *FILESYSTEMS,
        "ext2",
        "ext3",
        "luks",
        "exfat",
        "refs",
        "bitlocker",
        "iso9660",
    )


def test_check_names_and_defaults() -> None:
    from liverecovery.errors import SettingsError
    from liverecovery.verify.checks import DEFAULT_TIMEOUTS, Check, default_checks, parse_check

    assert parse_check("tcp:22").name == "tcp:22" and parse_check("tcp:22").required
    assert not parse_check("tcp?:443").required
    assert not Check("screenshot").required and not parse_check("screenshot").required
    command = parse_check("guest-command:/usr/bin/systemctl is-system-running --wait")
    assert command.program == ("/usr/bin/systemctl", "is-system-running --wait")
    assert Check("heartbeat").timeout_s == DEFAULT_TIMEOUTS["heartbeat"]
    assert [c.name for c in default_checks(network=True)] == [
        "partitions",
        "heartbeat",
        "ip",
        "screenshot",
    ]
    for bad in ("tcp:0", "tcp:70000", "guest-command:", "heartbeat:5", "nope"):
        with pytest.raises(SettingsError):
            parse_check(bad)
