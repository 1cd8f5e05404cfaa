"""The partition parser on disks made by real tools: sfdisk (MBR with logical partitions) and
sgdisk (GPT), filesystems by mkfs.ext4, mkswap, mkfs.vfat, mkfs.xfs and mkfs.btrfs, the image
converted to a VMDK by qemu-img and read back through the catalog's VMDK reader, as a
verification reads a backup. The tools come from scripts/apt-packages.txt."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from liverecovery.catalog.vmdk.disk import open_vmdk
from liverecovery.verify.disks import DiskLayout, inspect_disk, layout_problems

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
TOOLS = ("sfdisk", "sgdisk", "mkfs.ext4", "mkswap", "mkfs.vfat", "mkfs.xfs", "mkfs.btrfs")


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    missing = [t for t in (*TOOLS, "qemu-img") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: install scripts/apt-packages.txt")


def _run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True, timeout=120)


def _filesystem(tmp: Path, kind: str, size: int) -> Path:
    """A filesystem of ``kind`` made in its own sparse file of ``size`` bytes."""
    path = tmp / f"{kind}.img"
    with path.open("wb") as f:
        f.truncate(size)
    commands = {
        "ext4": ["mkfs.ext4", "-q", "-F", str(path)],
        "swap": ["mkswap", str(path)],
        "vfat": ["mkfs.vfat", str(path)],
        "xfs": ["mkfs.xfs", "-q", "-f", str(path)],
        "btrfs": ["mkfs.btrfs", "-q", "-f", str(path)],
    }
    _run(*commands[kind])
    return path


def _place(image: Path, fs: Path, offset: int) -> None:
    _run("dd", f"if={fs}", f"of={image}", "bs=1M", f"seek={offset // MiB}", "conv=notrunc,sparse")


def _vmdk(image: Path) -> DiskLayout:
    vmdk = image.with_suffix(".vmdk")
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(image), str(vmdk))

    async def main() -> DiskLayout:
        disk = open_vmdk(vmdk)
        try:
            return await inspect_disk(disk.read, disk.size)
        finally:
            await disk.aclose()

    return anyio.run(main)


def _blank(tmp: Path, size: int) -> Path:
    image = tmp / "disk.raw"
    with image.open("wb") as f:
        f.truncate(size)
    return image


def test_an_mbr_disk_with_logical_partitions(tmp_path: Path) -> None:
    image = _blank(tmp_path, 1024 * MiB)
    _run(
        "sfdisk",
        "-q",
        str(image),
        stdin="label: dos\n"
        "start=2048, size=64MiB, type=83\n"
        "size=16MiB, type=82\n"
        "type=5\n"
        "size=40MiB, type=c\n"
        "size=320MiB, type=83\n"
        "size=128MiB, type=83\n",
    )
    starts = {1: 1, 2: 65, 5: 82, 6: 123, 7: 444}  # MiB, as sfdisk aligns them
    for number, kind, size in (
        (1, "ext4", 64),
        (2, "swap", 16),
        (5, "vfat", 40),
        (6, "xfs", 320),
        (7, "btrfs", 128),
    ):
        _place(image, _filesystem(tmp_path, kind, size * MiB), starts[number] * MiB)
    layout = _vmdk(image)
    assert layout.scheme == "mbr", layout.error
    found = {
        f.partition.number: (f.partition.offset // MiB, f.filesystem) for f in layout.partitions
    }
    assert found == {
        1: (1, "ext4"),
        2: (65, "swap"),
        3: (81, None),  # the extended partition: a container
        5: (82, "vfat"),
        6: (123, "xfs"),
        7: (444, "btrfs"),
    }
    assert layout_problems(layout) == []


def test_a_gpt_disk(tmp_path: Path) -> None:
    image = _blank(tmp_path, 256 * MiB)
    _run(
        "sgdisk",
        "-n",
        "1:2048:+1M",
        "-t",
        "1:ef02",  # BIOS boot: no filesystem by design
        "-n",
        "2:0:+64M",
        "-t",
        "2:ef00",
        "-n",
        "3:0:+128M",
        "-t",
        "3:8300",
        "-n",
        "4:0:0",
        "-t",
        "4:8200",
        str(image),
    )
    for offset, kind, size in ((2, "vfat", 64), (66, "ext4", 128), (194, "swap", 60)):
        _place(image, _filesystem(tmp_path, kind, size * MiB), offset * MiB)
    layout = _vmdk(image)
    assert layout.scheme == "gpt", layout.error
    assert [(f.partition.number, f.filesystem) for f in layout.partitions] == [
        (1, None),
        (2, "vfat"),
        (3, "ext4"),
        (4, "swap"),
    ]
    assert layout_problems(layout) == []


def test_a_gpt_disk_whose_entries_were_damaged_is_reported(tmp_path: Path) -> None:
    image = _blank(tmp_path, 64 * MiB)
    _run("sgdisk", "-n", "1:2048:0", "-t", "1:8300", str(image))
    with image.open("r+b") as f:  # one byte of the primary entry array
        f.seek(2 * 512 + 40)
        byte = f.read(1)
        f.seek(2 * 512 + 40)
        f.write(bytes([byte[0] ^ 0xFF]))
    layout = _vmdk(image)
    assert layout.scheme == "unknown"
    assert "CRC32" in layout.error


def test_a_partition_without_a_filesystem_is_a_problem(tmp_path: Path) -> None:
    image = _blank(tmp_path, 64 * MiB)
    _run("sgdisk", "-n", "1:2048:+16M", "-n", "2:0:0", str(image))
    _place(image, _filesystem(tmp_path, "ext4", 16 * MiB), 1 * MiB)
    problems = layout_problems(_vmdk(image))
    assert len(problems) == 1 and problems[0].startswith("partition 2 ")
