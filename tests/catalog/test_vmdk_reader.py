"""Our VMDK reader against qemu-img on qemu-made disks of every subformat."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.backends import AllocationRun, DiskReader, RunKind
from liverecovery.catalog.vmdk import open_vmdk

from .conftest import GiB, Image, MiB

SMALL_NAMES = ["monolithicSparse", "monolithicFlat", "streamOptimized", "zeroed", "delta2"]
BIG_NAMES = ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]
ALL_NAMES = SMALL_NAMES + BIG_NAMES


def raw_read(image: Image, offset: int, length: int) -> bytes:
    fd = os.open(image.raw, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_full_read_equals_qemu_convert(images: dict[str, Image], name: str) -> None:
    image = images[name]
    disk = open_vmdk(image.vmdk)
    try:
        assert disk.size == image.size
        assert disk.read_sync(0, disk.size) == image.raw.read_bytes()
    finally:
        disk.close()


@pytest.mark.parametrize("name", BIG_NAMES)
def test_big_disk_full_read_equals_qemu_convert(images: dict[str, Image], name: str) -> None:
    """All 5 GiB, in 16 MiB reads (holes cost little: the raw image is sparse too)."""
    image = images[name]
    disk = open_vmdk(image.vmdk)
    fd = os.open(image.raw, os.O_RDONLY)
    step = 16 * MiB
    expected = bytearray(step)  # reused: fresh 16 MiB buffers would cost more than the reads
    try:
        assert os.fstat(fd).st_size == disk.size == 5 * GiB
        for offset in range(0, disk.size, step):
            assert os.preadv(fd, [expected], offset) == step
            assert disk.read_sync(offset, step) == expected, offset
    finally:
        os.close(fd)
        disk.close()


@pytest.mark.parametrize("name", BIG_NAMES)
def test_big_disk_reads_around_every_boundary(images: dict[str, Image], name: str) -> None:
    """5 GiB: every written spot and 2 GiB extent boundary, 1 MiB either side, plus the tail."""
    image = images[name]
    disk = open_vmdk(image.vmdk)
    try:
        assert disk.size == 5 * GiB
        for mark in image.boundaries:
            start = max(0, mark - MiB)
            assert disk.read_sync(start, 2 * MiB) == raw_read(image, start, 2 * MiB), mark
        assert disk.read_sync(disk.size - 100, 1000) == raw_read(image, disk.size - 100, 100)
        assert disk.read_sync(disk.size, 10) == b""
    finally:
        disk.close()


def _interesting_reads(image: Image) -> st.SearchStrategy[tuple[int, int]]:
    near = st.builds(
        lambda mark, delta: max(0, min(image.size - 1, mark + delta)),
        st.sampled_from((*image.boundaries, image.size - 1)),
        st.integers(-70_000, 70_000),
    )
    offsets = st.one_of(st.integers(0, image.size - 1), near)
    return st.tuples(offsets, st.integers(1, 3 * MiB))


@pytest.mark.parametrize("name", ALL_NAMES)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_unaligned_reads_equal_raw(
    images: dict[str, Image], name: str, data: st.DataObject
) -> None:
    image = images[name]
    disk = open_vmdk(image.vmdk)
    try:
        for _ in range(20):
            offset, length = data.draw(_interesting_reads(image))
            got = disk.read_sync(offset, length)
            assert len(got) == min(length, image.size - offset)
            assert got == raw_read(image, offset, length), (offset, length)
    finally:
        disk.close()


def _normalise_qemu(entries: list[dict[str, object]]) -> list[tuple[int, int, str]]:
    runs = [
        (int(e["start"]), int(e["length"]), "data" if e["data"] and not e["zero"] else "zero")  # type: ignore[call-overload]
        for e in entries
    ]
    return _merge(runs)


def _normalise_ours(extents: list[AllocationRun]) -> list[tuple[int, int, str]]:
    return _merge(
        [(e.offset, e.length, "data" if e.kind is RunKind.DATA else "zero") for e in extents]
    )


def _merge(runs: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for start, length, kind in runs:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, kind)
        else:
            out.append((start, length, kind))
    return out


@pytest.mark.parametrize("name", ALL_NAMES)
def test_allocation_map_equals_qemu_map(images: dict[str, Image], name: str) -> None:
    image = images[name]
    disk = open_vmdk(image.vmdk)
    try:
        ours = disk.allocation_sync()
        assert ours[0].offset == 0
        assert sum(e.length for e in ours) == disk.size
        assert _normalise_ours(ours) == _normalise_qemu(image.qemu_map())
    finally:
        disk.close()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_allocation_kinds_match_qemu_present_flag(images: dict[str, Image], name: str) -> None:
    """Three kinds, not two: zero grains and holes in flat files are present (ZERO), ranges no
    file of the chain holds are not (UNALLOCATED)."""
    image = images[name]
    disk = open_vmdk(image.vmdk)
    try:
        ours = [(e.offset, e.length, e.kind) for e in disk.allocation_sync()]
    finally:
        disk.close()
    expected = []
    for e in image.qemu_map():
        if e["zero"]:
            kind = RunKind.ZERO if e["present"] else RunKind.UNALLOCATED
        else:
            kind = RunKind.DATA
        expected.append((e["start"], e["length"], kind))
    assert ours == _merge_kinds(expected)
    if name == "zeroed":
        assert any(k is RunKind.ZERO for _, _, k in ours)


def _merge_kinds(
    runs: list[tuple[object, object, RunKind]],
) -> list[tuple[int, int, RunKind]]:
    out: list[tuple[int, int, RunKind]] = []
    for start, length, kind in runs:
        s, n = int(start), int(length)  # type: ignore[call-overload]
        if out and out[-1][2] is kind and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + n, kind)
        else:
            out.append((s, n, kind))
    return out


def test_delta_chain_depth_and_fallthrough(images: dict[str, Image]) -> None:
    disk = open_vmdk(images["delta2"].vmdk)
    try:
        assert disk.chain_depth == 2
        assert disk.create_type == "monolithicSparse"
    finally:
        disk.close()


@pytest.mark.anyio
async def test_concurrent_async_reads_agree(images: dict[str, Image]) -> None:
    """Many tasks reading one disk at once (threads underneath) each get their own bytes."""
    image = images["streamOptimized"]
    disk: DiskReader = open_vmdk(image.vmdk)
    spots = [(o * 7919 + 13) % (image.size - MiB) for o in range(64)]
    results: dict[int, bytes] = {}

    async def read(offset: int) -> None:
        results[offset] = await disk.read(offset, 300_000)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for offset in spots:
                tg.start_soon(read, offset)
    await disk.aclose()
    for offset in spots:
        assert results[offset] == raw_read(image, offset, 300_000)
    assert isinstance(disk, DiskReader)


def test_hand_written_descriptor_flat_offset_and_zero_extent(tmp_path: Path) -> None:
    """FLAT at a non-zero offset (qemu is the reference) and a ZERO extent between.

    qemu-img 7.2 drops ZERO extent lines altogether, so its bytes for the two FLAT extents are
    taken from a descriptor without the ZERO line and the zeros are spliced in between.
    """
    data = os.urandom(3 * MiB)
    (tmp_path / "data file.bin").write_bytes(data[: 2 * MiB])
    (tmp_path / "second.bin").write_bytes(data[2 * MiB :])
    flat1 = 'RW 2048 FLAT "data file.bin" 2048'
    flat2 = 'RW 2048 FLAT "second.bin" 0'
    ref_text = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n'
        f"\n# Extent description\n{flat1}\n{flat2}\n\n# The Disk Data Base\n#DDB\n\n"
        'ddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    )
    (tmp_path / "ref.vmdk").write_text(ref_text)
    # ours: CRLF, unquoted and spaced values, keys reordered, no parentCID, a ZERO extent
    hand_text = (
        "# Disk DescriptorFile\r\ncreateType = monolithicFlat\r\n  # a comment\r\n"
        f"version = 1\r\n\r\n{flat1}\r\nRW 4096 ZERO\r\n{flat2}\r\n\r\n"
        'ddb.adapterType = "lsilogic"\r\n'
    )
    (tmp_path / "hand.vmdk").write_text(hand_text, newline="")
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "ref.vmdk", "ref.raw"],
        check=True,
        cwd=tmp_path,
    )
    ref = (tmp_path / "ref.raw").read_bytes()
    assert ref == data[MiB:]
    disk = open_vmdk(tmp_path / "hand.vmdk")
    try:
        assert disk.size == 4 * MiB
        assert disk.read_sync(0, disk.size) == ref[:MiB] + bytes(2 * MiB) + ref[MiB:]
        assert disk.read_sync(MiB - 5, 10) == ref[MiB - 5 : MiB] + bytes(5)
        kinds = [(e.offset, e.length, e.kind) for e in disk.allocation_sync()]
        assert (MiB, 2 * MiB, RunKind.ZERO) in kinds
    finally:
        disk.close()


def test_allocation_of_whole_grain_tables(tmp_path: Path) -> None:
    """Grain tables that are entirely data or entirely zero grains take the fast path."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", "full.vmdk", "100M"],
        cwd=tmp_path,
        check=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "vmdk", "-c", "write -P 7 0 32M", "-c", "write -z 32M 32M",
         "-c", "write -P 9 70M 1M", "full.vmdk"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    disk = open_vmdk(tmp_path / "full.vmdk")
    try:
        runs = [(e.offset, e.length, e.kind) for e in disk.allocation_sync()]
    finally:
        disk.close()
    assert runs == [
        (0, 32 * MiB, RunKind.DATA),
        (32 * MiB, 32 * MiB, RunKind.ZERO),
        (64 * MiB, 6 * MiB, RunKind.UNALLOCATED),
        (70 * MiB, MiB, RunKind.DATA),
        (71 * MiB, 29 * MiB, RunKind.UNALLOCATED),
    ]
    image = Image("full", tmp_path / "full.vmdk", tmp_path / "x", 100 * MiB, ())
    assert _normalise_qemu(image.qemu_map()) == _normalise_ours(
        [AllocationRun(o, n, k) for o, n, k in runs]
    )


@pytest.mark.parametrize("name", ["monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized"])
def test_batched_grain_table_reads_give_the_same_map(
    images: dict[str, Image], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mapping reads back-to-back grain tables in one go and skips those that are holes in the
    file; one table at a time, and reading (not skipping) holes, give the same runs, and the
    batched read really happens for files laid out that way."""
    from liverecovery.catalog.vmdk import extents

    def map_of(path: Path) -> list[tuple[int, int, RunKind]]:
        disk = open_vmdk(path)
        try:
            return [(e.offset, e.length, e.kind) for e in disk.allocation_sync()]
        finally:
            disk.close()

    batches: list[int] = []
    real = extents.SparseExtent._load_batch

    def counting(
        self: extents.SparseExtent, first: int, stop: int, max_bytes: int = 4 << 20
    ) -> list[tuple[int, int, bool]]:
        groups = real(self, first, stop, max_bytes)
        batches.append(sum(n for _, n, _ in groups))
        return groups

    monkeypatch.setattr(extents.SparseExtent, "_load_batch", counting)
    batched = map_of(images[name].vmdk)
    assert max(batches) > 1
    monkeypatch.setattr(
        extents.SparseExtent,
        "_load_batch",
        lambda self, first, stop, max_bytes=0: real(self, first, stop, 0),
    )
    assert map_of(images[name].vmdk) == batched
    monkeypatch.setattr(extents.SparseExtent, "_data_span", lambda self, o, n: (o, o + n))
    assert map_of(images[name].vmdk) == batched
