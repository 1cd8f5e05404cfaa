"""The hypothesis strategies produce what they promise, and their VMs are writable and readable."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.nfs.filesystem import Stability
from liverecovery.testing.samples import DISK_FORMATS, SampleVm, make_backup_root
from liverecovery.testing.strategies import (
    DiskLayout,
    IoOp,
    apply_workload,
    disk_layouts,
    io_workloads,
    must_survive_crash,
    vm_backups,
)
from liverecovery.testing.vmdk_writer import SECTOR
from tests.testing import qemu


@given(disk_layouts(max_size=256 * 1024, max_runs=5))
def test_disk_layouts_stay_on_the_disk(layout: DiskLayout) -> None:
    assert 0 < layout.size <= 256 * 1024 and layout.size % SECTOR == 0
    assert len(layout.runs) <= 5
    for offset, data in layout.runs:
        assert data and offset >= 0 and offset + len(data) <= layout.size
    assert len(layout.raw()) == layout.size


@settings(max_examples=8)
@given(vm_backups(max_disk_size=256 * 1024))
def test_vm_backups_write_and_read_back(vm: SampleVm) -> None:
    assert 1 <= len(vm.disks) <= 3 and vm.format in DISK_FORMATS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        points = make_backup_root(root / "backups", [vm])
        assert len(points) == len(vm.points)
        folder = vm.write(root / "plain")
        for i, (size, runs) in enumerate(vm.disks):
            name = f"{vm.name}.vmdk" if i == 0 else f"{vm.name}_{i}.vmdk"
            raw = qemu.to_raw(folder / name, root / "out.raw")
            assert raw == DiskLayout(size, tuple(runs)).raw()
            assert (points[-1] / name).read_bytes() == (folder / name).read_bytes()


def test_strategies_reach_every_kind() -> None:
    formats: set[str] = set()
    straddles: list[bool] = []
    stabilities: set[Stability | None] = set()

    @settings(max_examples=150, database=None)
    @given(vm_backups(max_disk_size=256 * 1024), io_workloads(64 * 1024))
    def collect(vm: SampleVm, ops: list[IoOp]) -> None:
        formats.add(vm.format)
        for _size, runs in vm.disks:
            straddles.extend(o // 65536 != (o + len(d) - 1) // 65536 for o, d in runs)
        stabilities.update(op.stability for op in ops)

    collect()
    assert formats == set(DISK_FORMATS)
    assert any(straddles)
    assert {Stability.FILE_SYNC, Stability.UNSTABLE, None} <= stabilities


@given(st.integers(1, 1 << 20).flatmap(lambda size: st.tuples(st.just(size), io_workloads(size))))
def test_io_workloads_stay_in_the_file(case: tuple[int, list[IoOp]]) -> None:
    size, ops = case
    base = bytes(size)
    for op in ops:
        if op.kind == "commit" and op.length == 0:
            assert op.offset == 0
            continue
        assert op.offset >= 0 and op.length > 0 and op.offset + op.length <= size
        if op.kind == "write":
            assert len(op.data) == op.length and op.stability is not None
        else:
            assert op.data == b"" and op.stability is None
    after = apply_workload(base, ops)
    assert len(after) == size
    writes = [op for op in ops if op.kind == "write"]
    if writes:
        last = writes[-1]
        assert after[last.offset : last.offset + last.length] == last.data
    else:
        assert after == base


def durable_bytes_model(size: int, ops: list[IoOp]) -> dict[int, int]:
    """Byte by byte: position -> value that must survive a crash (the slow, obvious model)."""
    must: dict[int, int] = {}
    for p in range(size):
        last = max(
            (
                i
                for i, op in enumerate(ops)
                if op.kind == "write" and op.offset <= p < op.offset + op.length
            ),
            default=None,
        )
        if last is None:
            continue
        op = ops[last]
        committed = any(
            c.kind == "commit" and (c.length == 0 or c.offset <= p < c.offset + c.length)
            for c in ops[last + 1 :]
        )
        if op.stability != Stability.UNSTABLE or committed:
            must[p] = op.data[p - op.offset]
    return must


@settings(max_examples=150)
@given(io_workloads(2048, max_ops=12, max_io=700))
def test_must_survive_crash_matches_the_byte_model(ops: list[IoOp]) -> None:
    got: dict[int, int] = {}
    previous_end = -1
    for offset, data in must_survive_crash(ops):
        assert offset >= previous_end, "segments overlap"
        previous_end = offset + len(data)
        got.update((offset + k, b) for k, b in enumerate(data))
    assert got == durable_bytes_model(2048, ops)
