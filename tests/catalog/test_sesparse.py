"""seSparse deltas (ESXi 6.5+ snapshots) read byte for byte as qemu reads them, alone and in
chains mixing vmfsSparse (COWD) redo logs."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.backends import RunKind
from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.catalog.vmdk.sesparse import decode_grain_entry
from liverecovery.errors import CatalogError
from liverecovery.testing.vmdk_writer import (
    write_monolithic_flat,
    write_monolithic_sparse,
    write_se_sparse,
)

from .test_vmfssparse import SECTORS, build_cowd

MiB = 1 << 20
SIZE = SECTORS * 512  # 8 MiB, the COWD helper's size

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def cid_of(desc: Path) -> str:
    return next(
        line.split("=")[1] for line in desc.read_text().splitlines() if line.startswith("CID=")
    )


def qemu_raw(desc: Path) -> bytes:
    out = desc.with_suffix(".raw")
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", desc.name, out.name],
        cwd=desc.parent,
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def read_all(desc: Path) -> bytes:
    disk = open_vmdk(desc)
    try:
        return disk.read_sync(0, disk.size)
    finally:
        disk.close()


def base_disk(folder: Path, seed: int) -> Path:
    rng = random.Random(seed)
    return write_monolithic_flat(
        folder, "base", SIZE, {0: b"\x61" * SIZE, 2 * MiB + 5: rng.randbytes(70_000)},
        create_type="monolithicFlat",
    )  # fmt: skip


def delta_runs(seed: int) -> dict[int, bytes]:
    rng = random.Random(seed)
    runs: dict[int, bytes] = {0: rng.randbytes(4096), 4096 * 3 + 100: rng.randbytes(9000)}
    for _ in range(20):
        at = rng.randrange(0, SIZE - 70_000)
        runs[at] = rng.randbytes(rng.randrange(1, 70_000))
    runs[SIZE - 512] = b"\0" * 512  # a delta may hold zeros over the parent's data
    return runs


@needs_qemu
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("first_grain", [0, 5000])
def test_sesparse_delta_matches_qemu(tmp_path: Path, seed: int, first_grain: int) -> None:
    base = base_disk(tmp_path, seed)
    delta = write_se_sparse(
        tmp_path, "vm-000001", SIZE, delta_runs(seed), parent="base.vmdk",
        parent_cid=cid_of(base), zero=[(MiB, 64 * 1024)], unmapped=[(3 * MiB, 8192)],
        first_grain=first_grain,
    )  # fmt: skip
    reference = qemu_raw(delta)
    assert reference[:4096] == delta_runs(seed)[0]  # qemu read the delta, not the parent
    assert reference[MiB : MiB + 65536] == bytes(65536)  # and honoured the zero grains
    assert read_all(delta) == reference
    disk = open_vmdk(delta)
    try:
        assert disk.create_type == "seSparse" and disk.parent is not None
        # odd ranges straddling grains and tables
        rng = random.Random(seed)
        for _ in range(50):
            at = rng.randrange(0, SIZE)
            n = rng.randrange(0, 300_000)
            assert disk.read_sync(at, n) == reference[at : at + n]
        own = {(o, n, k) for o, n, k in disk._extents[0].runs()}
        assert (MiB, 65536, RunKind.ZERO) in own
        assert (3 * MiB, 8192, RunKind.ZERO) in own
    finally:
        disk.close()


@needs_qemu
def test_a_mixed_chain_of_vmfssparse_and_sesparse_matches_qemu(tmp_path: Path) -> None:
    rng = random.Random(9)
    base = write_monolithic_sparse(tmp_path / "base.vmdk", SIZE, {0: rng.randbytes(SIZE // 2)})
    # ESX redo log (COWD) on the sparse base, then a seSparse snapshot on top of it
    build_cowd(tmp_path / "mid-delta.vmdk", {g: rng.randbytes(512) for g in (0, 1, 4097, 9000)})
    mid = tmp_path / "mid.vmdk"
    mid.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1234abcd\n'
        f'parentCID={cid_of_sparse(base)}\ncreateType="vmfsSparse"\n'
        'parentFileNameHint="base.vmdk"\n\n'
        f'RW {SECTORS} VMFSSPARSE "mid-delta.vmdk"\n'
    )  # fmt: skip
    top = write_se_sparse(
        tmp_path, "top", SIZE, {512: rng.randbytes(20_000), SIZE - 4096: rng.randbytes(4096)},
        parent="mid.vmdk", parent_cid="1234abcd", zero=[(4096 * 100, 4096 * 3)],
    )  # fmt: skip
    reference = qemu_raw(top)
    assert read_all(top) == reference
    disk = open_vmdk(top)
    try:
        assert disk.chain_depth == 2
        kinds = {r.kind for r in disk.allocation_sync()}
        assert RunKind.DATA in kinds
    finally:
        disk.close()


def cid_of_sparse(path: Path) -> str:
    disk = open_vmdk(path)
    try:
        return disk.descriptor.cid
    finally:
        disk.close()


def test_grain_entry_decoding() -> None:
    assert decode_grain_entry(0) == (0, 0)
    assert decode_grain_entry(1 << 60)[0] == decode_grain_entry(2 << 60)[0] == 1
    number = 0x123_456789ABC
    entry = (3 << 60) | ((number & 0xFFF) << 48) | (number >> 12)
    assert decode_grain_entry(entry) == (2, number)
    for bad in (5, 4 << 60, 0xF << 60):
        with pytest.raises(ValueError):
            decode_grain_entry(bad)


def sesparse_file(tmp_path: Path) -> tuple[Path, Path]:
    desc = write_se_sparse(tmp_path, "d", SIZE, {0: b"x" * 10_000, 5 * MiB: b"y" * 4096})
    return desc, tmp_path / "d-sesparse.vmdk"


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    "offset, value, problem",
    [
        (0, 0xDEADBEEF, "bad seSparse magic"),
        (8, 0x0000000200000002, "unsupported seSparse version"),
        (24, 16, "grain size"),
        (40, 1, "flags or reserved"),
        (512 + 24, 1, "dirty"),
        (512, 0x1234, "volatile header magic"),
    ],
)
def test_damaged_headers_are_refused(tmp_path: Path, offset: int, value: int, problem: str) -> None:
    desc, extent = sesparse_file(tmp_path)
    patch(extent, offset, struct.pack("<Q", value))
    with pytest.raises(CatalogError, match=problem) as info:
        open_vmdk(desc).close()
    assert "d-sesparse.vmdk" in str(info.value)


def test_a_truncated_sesparse_file_is_refused_before_a_read(tmp_path: Path) -> None:
    desc, extent = sesparse_file(tmp_path)
    with extent.open("r+b") as f:
        f.truncate(extent.stat().st_size - 4096)
    disk = open_vmdk(desc)
    try:
        with pytest.raises(CatalogError, match="past the end of the file"):
            disk.allocation_sync()
    finally:
        disk.close()


def test_a_damaged_table_entry_is_refused(tmp_path: Path) -> None:
    desc, extent = sesparse_file(tmp_path)
    raw = extent.read_bytes()
    gd_offset = struct.unpack_from("<Q", raw, 16 * 8)[0] * 512
    gd0 = struct.unpack_from("<Q", raw, gd_offset)[0]
    gts = struct.unpack_from("<Q", raw, 18 * 8)[0]
    table = (gts + (gd0 & 0xFFFFFFFF) * 64) * 512
    patch(extent, table + 8, struct.pack("<Q", 7 << 60))
    disk = open_vmdk(desc)
    try:
        with pytest.raises(CatalogError, match="unknown entry type 7"):
            disk.read_sync(0, 4096)
    finally:
        disk.close()


@settings(max_examples=40, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=20_000)), max_size=8
    ),
    zero_grains=st.lists(st.integers(0, SIZE // 4096 - 1), max_size=6),
    first_grain=st.sampled_from([0, 1, 4095, 4096, 70_000]),
)
def test_sesparse_reads_match_a_model(
    tmp_path_factory: pytest.TempPathFactory,
    runs: list[tuple[int, bytes]],
    zero_grains: list[int],
    first_grain: int,
) -> None:
    folder = tmp_path_factory.mktemp("se")
    runs = [(at, data[: SIZE - at]) for at, data in runs]
    desc = write_se_sparse(
        folder, "m", SIZE, runs, zero=[(g * 4096, 4096) for g in zero_grains],
        first_grain=first_grain,
    )  # fmt: skip
    model = bytearray(SIZE)
    for at, data in runs:
        model[at : at + len(data)] = data
    for g in zero_grains:
        model[g * 4096 : (g + 1) * 4096] = bytes(4096)
    assert read_all(desc) == bytes(model)
