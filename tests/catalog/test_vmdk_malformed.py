"""Every malformed-input class gives a CatalogError naming the file and the problem, quickly."""

from __future__ import annotations

import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.errors import CatalogError

from .conftest import Image

GD_OFFSET_AT = 56  # byte offset of gdOffset in the sparse header
CAPACITY_AT = 12
GRAIN_AT = 20


def copy(images: dict[str, Image], name: str, tmp_path: Path) -> Path:
    src = images[name].vmdk
    for f in src.parent.glob(src.stem + "*"):
        if f.suffix == ".vmdk":
            shutil.copy(f, tmp_path / f.name)
    return tmp_path / src.name


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def expect(path: Path, problem: str, *, on_read: bool = False) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        disk = open_vmdk(path)
        try:
            if on_read:
                disk.read_sync(0, disk.size)
        finally:
            disk.close()
    err = info.value
    assert problem in err.problem
    assert err.path.endswith(path.name) or Path(err.path).parent == path.parent
    return err


def header_field(path: Path, offset: int, fmt: str) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        value: int = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
        return value


def test_bad_magic(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    patch(path, 0, b"XXXX")
    expect(path, "neither a sparse extent")


def test_bad_magic_in_extent_file(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "twoGbMaxExtentSparse", tmp_path)
    patch(tmp_path / "twoGbMaxExtentSparse-s002.vmdk", 0, b"QQQQ")
    err = expect(path, "bad sparse extent magic")
    assert err.path.endswith("twoGbMaxExtentSparse-s002.vmdk")


def test_truncated_sparse_file(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    expect(path, "past the end of the file", on_read=True)


def test_truncated_to_a_few_bytes(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    with path.open("r+b") as f:
        f.truncate(40)
    expect(path, "too short")


def test_grain_directory_past_eof(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    patch(path, GD_OFFSET_AT, struct.pack("<Q", 1 << 40))
    patch(path, GD_OFFSET_AT - 8, struct.pack("<Q", 0))  # no redundant GD to fall back on
    expect(path, "grain directory")


def test_grain_table_past_eof(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    gd = header_field(path, GD_OFFSET_AT, "<Q")
    patch(path, gd * 512, struct.pack("<I", 0x7FFFFFF0))
    expect(path, "grain table 0 at sector")


def test_grain_past_eof(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    gd = header_field(path, GD_OFFSET_AT, "<Q")
    gt = header_field(path, gd * 512, "<I")
    patch(path, gt * 512, struct.pack("<I", 0x7FFFFFF0))  # grain 0
    expect(path, "past the end of the file", on_read=True)


def test_huge_capacity_does_not_allocate(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    patch(path, CAPACITY_AT, struct.pack("<Q", (1 << 49) - 1))
    expect(path, "grain directory")


def test_invalid_grain_size(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicSparse", tmp_path)
    patch(path, GRAIN_AT, struct.pack("<Q", 3))
    expect(path, "invalid grain size")


def vmware_style_stream(images: dict[str, Image], tmp_path: Path) -> Path:
    """qemu's streamOptimized file rewritten the way VMware writes one: the header says
    "grain directory at the end" and a footer marker, footer and end-of-stream marker follow."""
    path = copy(images, "streamOptimized", tmp_path)
    data = bytearray(path.read_bytes())
    assert len(data) % 512 == 0
    footer = bytes(data[:512])
    data[GD_OFFSET_AT : GD_OFFSET_AT + 8] = b"\xff" * 8
    marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\x00")
    path.write_bytes(bytes(data) + marker + footer + bytes(512))
    return path


def test_stream_optimized_without_footer(images: dict[str, Image], tmp_path: Path) -> None:
    path = vmware_style_stream(images, tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 1536)
    expect(path, "footer")


def test_stream_optimized_footer_is_used(images: dict[str, Image], tmp_path: Path) -> None:
    path = vmware_style_stream(images, tmp_path)
    disk = open_vmdk(path)
    try:
        assert disk.read_sync(0, disk.size) == images["streamOptimized"].raw.read_bytes()
    finally:
        disk.close()


def test_stream_optimized_corrupt_grain(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "streamOptimized", tmp_path)
    data = path.read_bytes()
    # the first compressed grain follows the header/descriptor; break its zlib stream
    start = data.index(b"\x78", 65536 if len(data) > 65536 * 2 else 512)
    assert zlib.decompressobj()  # zlib itself is available
    patch(path, start, b"\x00\x00\x00\x00")
    with pytest.raises(CatalogError) as info:
        disk = open_vmdk(path)
        try:
            for offset in range(0, disk.size, 1 << 20):
                disk.read_sync(offset, 1 << 20)
        finally:
            disk.close()
    assert info.value.path.endswith(path.name)


def test_missing_extent_file(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicFlat", tmp_path)
    (tmp_path / "monolithicFlat-flat.vmdk").unlink()
    err = expect(path, "extent file is missing")
    assert err.path.endswith("monolithicFlat-flat.vmdk")


def test_flat_file_shorter_than_descriptor(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "monolithicFlat", tmp_path)
    with (tmp_path / "monolithicFlat-flat.vmdk").open("r+b") as f:
        f.truncate(1000)
    expect(path, "flat extent file is 1000 bytes")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('version=1\ncreateType="vmfs"\n', "no extent lines"),
        ("version=1\nRW 100 FLAT\n", "without a file name"),
        ('version=1\nRW 100 WEIRD "x"\n', "unknown extent type"),
        ("version=1\n!!! garbage\nRW 100 ZERO\n", "line 2: cannot parse"),
        ("RW 100 ZERO\n", "not a VMDK descriptor"),
        ('version=1\nRW 100 VMFSRDM "x"\n', "host device disk"),
    ],
)
def test_bad_descriptors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.vmdk"
    path.write_text(text)
    expect(path, problem)


def test_binary_file_that_is_no_vmdk(tmp_path: Path) -> None:
    path = tmp_path / "random.vmdk"
    path.write_bytes(bytes(range(256)) * 4)
    expect(path, "neither a sparse extent")


def test_huge_file_that_is_no_vmdk(tmp_path: Path) -> None:
    path = tmp_path / "big.vmdk"
    with path.open("wb") as f:
        f.truncate(1 << 30)  # sparse: cheap, and must not be read into memory
    expect(path, "too large")


def test_missing_parent(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "delta2", tmp_path)
    expect(path, "parent disk 'delta1.vmdk' not found")


def test_parent_loop(tmp_path: Path) -> None:
    (tmp_path / "z.bin").write_bytes(bytes(512))
    for me, parent in (("a.vmdk", "b.vmdk"), ("b.vmdk", "a.vmdk")):
        (tmp_path / me).write_text(
            f'version=1\nparentFileNameHint="{parent}"\nRW 1 FLAT "z.bin" 0\n'
        )
    expect(tmp_path / "a.vmdk", "loops")


def test_parent_cid_mismatch(images: dict[str, Image], tmp_path: Path) -> None:
    path = copy(images, "delta2", tmp_path)
    for name in ("delta1.vmdk", "monolithicSparse.vmdk"):
        shutil.copy(images["delta2"].vmdk.parent / name, tmp_path / name)
    disk = open_vmdk(path)  # the intact chain opens
    disk.close()
    data = (tmp_path / "delta1.vmdk").read_bytes()
    match = re.search(rb"\nCID=([0-9a-fA-F]+)\n", data)  # qemu writes it without zero padding
    assert match is not None
    old = match.group(1)
    new = (b"%x" % (int(old, 16) ^ 1)).rjust(len(old), b"0")
    patch(tmp_path / "delta1.vmdk", match.start(1), new)
    err = expect(path, "does not match the CID")
    assert "delta1.vmdk" in err.problem
