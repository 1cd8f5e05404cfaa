"""Sample backups: the known pattern, boot-like runs, ESXi-style VM folders, dated restore points."""

from __future__ import annotations

import json
import re
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.testing.samples import (
    DISK_FORMATS,
    NVRAM_SIZE,
    DiskFormat,
    PatternData,
    SamplePoint,
    SampleVm,
    expected_read,
    known_pattern,
    make_backup_root,
    make_vm_folder,
    pattern_runs,
    sample_runs,
    sample_spans,
    sample_vm,
)
from liverecovery.testing.vmdk_writer import GRAIN_SIZE, write_monolithic_sparse, write_raw
from tests.testing import qemu

KiB = 1024
MiB = 1024 * KiB

VMX_LINE = re.compile(r'^(?P<key>[\w.:]+) = "(?P<value>[^"]*)"$')


def parse_vmx(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        match = VMX_LINE.match(line)
        assert match, f"not a vmx line: {line!r}"
        assert match["key"] not in entries, f"duplicate key {match['key']}"
        entries[match["key"]] = match["value"]
    return entries


@given(
    seed=st.integers(-(2**40), 2**40),
    offset=st.integers(0, 2**42),
    length=st.integers(0, 20_000),
    cut=st.integers(0, 20_000),
)
def test_known_pattern_depends_only_on_seed_and_position(
    seed: int, offset: int, length: int, cut: int
) -> None:
    whole = known_pattern(seed, offset, length)
    assert len(whole) == length
    cut = min(cut, length)
    assert whole[:cut] + known_pattern(seed, offset + cut, length - cut) == whole


def test_known_pattern_differs_between_seeds_and_blocks() -> None:
    assert known_pattern(1, 0, 4096) != known_pattern(2, 0, 4096)
    assert known_pattern(1, 0, 4096) != known_pattern(1, 4096, 4096)
    assert known_pattern(1, 0, 4096).count(0) < 100  # never a zero grain in disguise


@pytest.mark.parametrize("size", [4 * KiB, 100 * KiB, 3 * MiB, 64 * MiB, 1024**4])
@pytest.mark.parametrize("seed", [0, 7, 123456])
def test_sample_runs_look_like_a_booted_disk(size: int, seed: int) -> None:
    runs = sample_runs(size, seed)
    assert runs == sample_runs(size, seed)  # deterministic
    for offset, data in runs.items():
        assert offset >= 0 and offset + len(data) <= size
        assert data == known_pattern(seed, offset, len(data))
    assert len(runs[0]) == min(size, 2 * MiB)
    assert any(o + len(d) == size and len(d) >= 4 * KiB for o, d in runs.items())
    if size > 2 * GRAIN_SIZE + 2 * MiB:
        straddling = [
            o
            for o, d in runs.items()
            if o >= 2 * MiB and o // GRAIN_SIZE != (o + len(d) - 1) // GRAIN_SIZE
        ]
        assert straddling, "no run straddles a grain boundary"
        assert len(runs) >= 6


def test_expected_read_matches_the_raw_image(tmp_path: Path) -> None:
    size = 1 * MiB
    runs = [(100, b"a" * 1000), (500, b"b" * 10), (size - 3, b"xyz")]
    raw = write_raw(tmp_path / "r.raw", size, runs).read_bytes()
    for offset, length in [(0, size), (95, 20), (505, 10), (size - 5, 5), (7000, 0)]:
        assert expected_read(size, runs, offset, length) == raw[offset : offset + length]
    with pytest.raises(ValueError, match="outside"):
        expected_read(size, runs, size - 1, 2)


@pytest.mark.parametrize("fmt", DISK_FORMATS)
def test_vm_folder_is_esxi_style_and_qemu_reads_its_disks(tmp_path: Path, fmt: DiskFormat) -> None:
    disks = [
        (8 * MiB, sample_runs(8 * MiB, 1)),
        (3 * MiB, sample_runs(3 * MiB, 2)),
        (512 * KiB, {}),
    ]
    folder = make_vm_folder(tmp_path, "web01", disks=disks, format=fmt, memory_mb=4096)
    assert folder == tmp_path / "web01"
    vmx = parse_vmx((folder / "web01.vmx").read_text())
    for key in (
        ".encoding", "config.version", "virtualHW.version", "guestOS", "numvcpus",
        "scsi0.present", "ethernet0.present", "ethernet0.virtualDev", "uuid.bios",
        "uuid.location", "vc.uuid", "sched.swap.derivedName",
    ):  # fmt: skip
        assert vmx.get(key), key
    assert vmx["displayName"] == "web01" and vmx["memSize"] == "4096"
    assert vmx["scsi0.virtualDev"] == "lsilogic"
    assert re.fullmatch(
        r"([0-9a-f]{2} ){7}[0-9a-f]{2}-([0-9a-f]{2} ){7}[0-9a-f]{2}", vmx["uuid.bios"]
    )
    assert vmx["nvram"] == "web01.nvram"
    assert (folder / "web01.nvram").stat().st_size == NVRAM_SIZE
    names = ["web01.vmdk", "web01_1.vmdk", "web01_2.vmdk"]
    for unit, (name, (size, runs)) in enumerate(zip(names, disks, strict=True)):
        assert vmx[f"scsi0:{unit}.present"] == "TRUE"
        assert vmx[f"scsi0:{unit}.fileName"] == name
        assert vmx[f"scsi0:{unit}.deviceType"] == "scsi-hardDisk"
        image = folder / name
        if fmt == "monolithicFlat":
            assert (folder / name.replace(".vmdk", "-flat.vmdk")).stat().st_size == size
        raw = qemu.to_raw(image, tmp_path / "out.raw")
        assert raw == expected_read(size, runs, 0, size), name
    assert "scsi0:3.present" not in vmx


def test_vm_folder_options(tmp_path: Path) -> None:
    folder = make_vm_folder(
        tmp_path, "db", disks=[(MiB, {})], scsi_controller="pvscsi", nvram=False, numvcpus=8
    )
    vmx = parse_vmx((folder / "db.vmx").read_text())
    assert vmx["scsi0.virtualDev"] == "pvscsi" and vmx["numvcpus"] == "8"
    assert "nvram" not in vmx and not (folder / "db.nvram").exists()


@pytest.mark.parametrize(
    ("name", "disks", "fmt", "words"),
    [
        ("", [(MiB, {})], "monolithicSparse", "name"),
        ("a/b", [(MiB, {})], "monolithicSparse", "name"),
        ("vm", [], "monolithicSparse", "at least one disk"),
        ("vm", [(MiB, {})], "qcow2", "unknown disk format 'qcow2'"),
        ("vm", [(MiB + 1, {})], "monolithicSparse", "1048577"),
    ],
)
def test_bad_vm_folder_requests_are_refused(
    tmp_path: Path, name: str, disks: list[tuple[int, dict[int, bytes]]], fmt: str, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        make_vm_folder(tmp_path, name, disks=disks, format=fmt)  # type: ignore[arg-type]


def test_backup_root_has_dated_points_with_catalogs(tmp_path: Path) -> None:
    first = datetime(2026, 3, 1, 22, 0, 5, tzinfo=UTC)
    second = datetime(2026, 3, 2, 22, 0, 7, tzinfo=UTC)
    vms = [
        SampleVm(
            "app",
            disks=((2 * MiB, sample_runs(2 * MiB, 3)),),
            points=(
                SamplePoint(first),
                SamplePoint(second, media="tape", archived=True, passkey_required=True),
            ),
        ),
        SampleVm(
            "mail",
            disks=((MiB, {}),),
            format="streamOptimized",
            points=(SamplePoint(first, media="cloud", write_catalog=False),),
        ),
    ]
    points = make_backup_root(tmp_path, vms)
    assert [p.name for p in points] == [
        "app-2026-03-01_22-00-05",
        "app-2026-03-02_22-00-07",
        "mail-2026-03-01_22-00-05",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in points]
    catalog = json.loads((points[1] / "catalog.json").read_text())
    assert catalog == {
        "media": "tape",
        "archived": True,
        "created": "2026-03-02T22:00:07+00:00",
        "passkey_required": True,
    }
    assert datetime.fromisoformat(catalog["created"]) == second
    assert json.loads((points[0] / "catalog.json").read_text())["media"] == "disk"
    assert not (points[2] / "catalog.json").exists()
    assert (points[2] / "mail.vmx").exists() and (points[2] / "mail.vmdk").exists()
    with pytest.raises(ValueError, match="already exists"):
        make_backup_root(tmp_path, vms[:1])


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32))
def test_sample_runs_disk_reads_back_through_qemu(
    tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    folder = tmp_path_factory.mktemp("s")
    size = 6 * MiB
    runs = sample_runs(size, seed)
    vm = make_vm_folder(folder, "vm", disks=[(size, runs)], format="streamOptimized")
    assert qemu.to_raw(vm / "vm.vmdk", folder / "out.raw") == expected_read(size, runs, 0, size)


@given(
    seed=st.integers(0, 2**20),
    offset=st.integers(0, 2**30),
    length=st.integers(0, 3 * 4096),
    start=st.integers(0, 3 * 4096),
    stop=st.integers(0, 3 * 4096),
)
def test_pattern_data_slices_are_the_pattern(
    seed: int, offset: int, length: int, start: int, stop: int
) -> None:
    data = PatternData(seed, offset, length)
    whole = known_pattern(seed, offset, length)
    assert len(data) == length
    assert data[start:stop] == whole[start:stop]
    assert data[:] == whole


def test_lazy_pattern_runs_stream_without_holding_the_data(tmp_path: Path) -> None:
    size = 128 * MiB
    spans = sample_spans(size, 5, head=40 * MiB)
    runs = pattern_runs(spans, 5)
    assert sum(len(d) for d in runs.values()) > 40 * MiB
    tracemalloc.start()
    try:
        image = write_monolithic_sparse(tmp_path / "big.vmdk", size, runs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak} bytes while writing 40 MiB of data"
    raw = qemu.to_raw(image, tmp_path / "out.raw")
    for offset, length in spans:
        assert raw[offset : offset + length] == known_pattern(5, offset, length), offset
    assert raw == expected_read(size, sample_runs(size, 5, head=40 * MiB), 0, size)


def test_sample_vm_is_lazy_and_reads_back(tmp_path: Path) -> None:
    vm = sample_vm("demo", disk_sizes=(1024**4, 8 * MiB), seed=3, format="streamOptimized")
    (big, big_runs), (small, small_runs) = vm.disks
    assert (big, small) == (1024**4, 8 * MiB)
    assert all(isinstance(d, PatternData) for d in [*big_runs.values(), *small_runs.values()])
    assert dict(small_runs) == pattern_runs(sample_spans(small, 4), 4)  # disk i uses seed + i
    (point,) = make_backup_root(tmp_path / "backups", [vm])
    raw = qemu.to_raw(point / "demo_1.vmdk", tmp_path / "out.raw")
    assert raw == expected_read(small, sample_runs(small, 4), 0, small)
    window = qemu.to_raw(point / "demo.vmdk", tmp_path / "w.raw", offset=1024**4 - 4096, size=4096)
    assert window == known_pattern(3, 1024**4 - 4096, 4096)
