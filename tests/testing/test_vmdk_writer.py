"""The pure-Python VMDK writer, judged by the real qemu-img: check, convert to raw, map."""

from __future__ import annotations

import os
import random
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings

from liverecovery.testing.samples import known_pattern, sample_runs
from liverecovery.testing.strategies import DiskLayout, disk_layouts
from liverecovery.testing.vmdk_writer import (
    GRAIN_SIZE,
    Runs,
    allocated_grains,
    write_monolithic_flat,
    write_monolithic_sparse,
    write_raw,
    write_stream_optimized,
)
from tests.testing import qemu

KiB = 1024
MiB = 1024 * KiB
TiB = 1024**4
FORMATS = ("monolithicSparse", "streamOptimized", "streamOptimized-qemu", "vmfs", "monolithicFlat")
SPARSE = ("monolithicSparse", "streamOptimized", "streamOptimized-qemu")


def write(fmt: str, folder: Path, size: int, runs: Runs) -> Path:
    if fmt == "monolithicSparse":
        return write_monolithic_sparse(folder / "disk.vmdk", size, runs)
    if fmt == "streamOptimized":
        return write_stream_optimized(folder / "disk.vmdk", size, runs)
    if fmt == "streamOptimized-qemu":
        return write_stream_optimized(folder / "disk.vmdk", size, runs, directory_at_end=False)
    return write_monolithic_flat(folder, "disk", size, runs, create_type=fmt)


def rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


LAYOUTS: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    "empty": (1 * MiB, []),
    "one-sector-disk": (512, [(0, b"\x5a" * 512)]),
    "odd-size-tail-and-straddle": (
        3 * GRAIN_SIZE + 1536,
        [(GRAIN_SIZE - 100, rand(1, 300)), (3 * GRAIN_SIZE + 1536 - 700, rand(2, 700))],
    ),
    "overlap-later-wins-and-zeroed-grain": (
        512 * KiB,
        [(0, rand(3, 3 * GRAIN_SIZE)), (GRAIN_SIZE, bytes(GRAIN_SIZE)), (10, b"later")],
    ),
    "grain-tables-with-a-hole-between": (
        70 * MiB,
        [(0, rand(4, 4096)), (66 * MiB + 7, rand(5, 9000))],
    ),
    "repeating-and-unaligned": (
        2 * MiB,
        [(12345, b"ab" * 40000), (1 * MiB - 1, b"\x01\x02\x03")],
    ),
}


def expected_raw(size: int, runs: Runs, folder: Path) -> bytes:
    return write_raw(folder / "expected.raw", size, runs).read_bytes()


def nonzero_grains(raw: bytes) -> list[int]:
    """Grains of the raw image holding a non-zero byte: what a sparse image must allocate."""
    count = -(-len(raw) // GRAIN_SIZE)
    return [g for g in range(count) if raw[g * GRAIN_SIZE : (g + 1) * GRAIN_SIZE].strip(b"\0")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_qemu_reads_exactly_the_runs(tmp_path: Path, fmt: str, layout: str) -> None:
    size, runs = LAYOUTS[layout]
    image = write(fmt, tmp_path, size, runs)
    qemu.check(image)
    raw = expected_raw(size, runs, tmp_path)
    assert qemu.to_raw(image, tmp_path / "out.raw") == raw
    if fmt in SPARSE:
        grains = nonzero_grains(raw)
        assert allocated_grains(size, runs) == grains
        assert qemu.data_ranges(image) == qemu.grain_ranges(grains, GRAIN_SIZE, size)


def test_zero_runs_allocate_no_grain() -> None:
    assert allocated_grains(4 * MiB, {0: bytes(GRAIN_SIZE * 3), GRAIN_SIZE: b"\0\0x"}) == [1]


@settings(max_examples=25)
@given(layout=disk_layouts(max_size=768 * KiB))
def test_any_layout_round_trips_through_qemu(layout: DiskLayout) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw = layout.raw()
        assert write_raw(folder / "x.raw", layout.size, layout.runs).read_bytes() == raw
        for fmt in (*SPARSE, "vmfs"):
            sub = folder / fmt
            sub.mkdir()
            image = write(fmt, sub, layout.size, layout.runs)
            qemu.check(image)
            assert qemu.to_raw(image, sub / "out.raw") == raw, fmt
            if fmt != "vmfs":
                grains = nonzero_grains(raw)
                expected = qemu.grain_ranges(grains, GRAIN_SIZE, layout.size)
                assert qemu.data_ranges(image) == expected, fmt


@pytest.mark.parametrize("fmt", [*SPARSE, "vmfs"])
def test_one_tib_disk_is_written_fast_and_small(tmp_path: Path, fmt: str) -> None:
    runs = sample_runs(TiB, seed=11)
    data = sum(len(d) for d in runs.values())
    start = time.perf_counter()
    image = write(fmt, tmp_path, TiB, runs)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{fmt}: 1 TiB written in {elapsed:.2f} s"
    on_disk = sum(p.stat().st_blocks * 512 for p in tmp_path.iterdir())
    assert on_disk < data + 8 * MiB, f"{fmt}: {on_disk} bytes on disk for {data} bytes of data"
    info = qemu.qemu_img("info", "--output=json", image)
    assert '"virtual-size": 1099511627776' in info.stdout, info.stdout
    # Windows at the start, across a grain boundary in the middle and at the very end.
    straddling = next(
        o for o in runs if o % GRAIN_SIZE and (o + len(runs[o])) // GRAIN_SIZE > o // GRAIN_SIZE
    )
    for offset, length in (
        (0, 64 * KiB),
        (straddling - 512, len(runs[straddling]) + 1024),
        (TiB - 8192, 8192),
    ):
        window = qemu.to_raw(image, tmp_path / "window.raw", offset=offset, size=length)
        expected = bytearray(length)
        for run_offset, run in runs.items():
            lo, hi = max(offset, run_offset), min(offset + length, run_offset + len(run))
            if lo < hi:
                expected[lo - offset : hi - offset] = run[lo - run_offset : hi - run_offset]
        assert window == bytes(expected), (fmt, offset)
    if fmt in ("monolithicSparse", "streamOptimized-qemu"):
        qemu.check(image)


def test_sparse_header_follows_the_spec(tmp_path: Path) -> None:
    image = write_monolithic_sparse(tmp_path / "d.vmdk", 100 * MiB, {0: known_pattern(1, 0, 4096)})
    head = image.read_bytes()[:512]
    magic, version, flags, capacity, grain, desc_off, desc_size, gtes = struct.unpack_from(
        "<4sIIQQQQI", head
    )
    rgd, gd, overhead = struct.unpack_from("<QQQ", head, 48)
    assert (magic, version, flags) == (b"KDMV", 1, 0b11)
    assert (capacity, grain, desc_off, gtes) == (100 * MiB // 512, 128, 1, 512)
    assert head[73:77] == b"\n \r\n"
    assert 0 < rgd < gd < overhead and overhead % 128 == 0
    desc = image.read_bytes()[512 : 512 * (1 + desc_size)].rstrip(b"\0").decode()
    assert 'createType="monolithicSparse"' in desc
    assert f'RW {100 * MiB // 512} SPARSE "d.vmdk"' in desc


def test_stream_optimized_layout_follows_the_spec(tmp_path: Path) -> None:
    image = write_stream_optimized(tmp_path / "s.vmdk", 8 * MiB, {GRAIN_SIZE: b"x" * 100})
    blob = image.read_bytes()
    version, flags = struct.unpack_from("<II", blob, 4)
    (gd_in_header,) = struct.unpack_from("<Q", blob, 56)
    (compress,) = struct.unpack_from("<H", blob, 77)
    assert (blob[:4], version, flags, compress) == (b"KDMV", 3, 0x30001, 1)
    assert gd_in_header == 0xFFFFFFFFFFFFFFFF
    assert blob[-512:] == bytes(512)  # end-of-stream marker
    num, size, kind = struct.unpack_from("<QII", blob, len(blob) - 1536)
    assert (num, size, kind) == (1, 0, 3)  # footer marker
    footer = blob[-1024:-512]
    (gd,) = struct.unpack_from("<Q", footer, 56)
    assert footer[:4] == b"KDMV" and gd * 512 < len(blob) - 1536
    lba, csize = struct.unpack_from("<QI", blob, 128 * 512)  # first grain marker
    assert lba == GRAIN_SIZE // 512 and 0 < csize < 200


@pytest.mark.parametrize(
    ("size", "runs", "words"),
    [
        (1000, {}, "1000"),
        (0, {}, "positive"),
        (MiB, {MiB - 2: b"abc"}, "outside"),
        (MiB, {-1: b"a"}, "offset -1"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    tmp_path: Path, size: int, runs: Runs, words: str
) -> None:
    for fmt in FORMATS:
        with pytest.raises(ValueError, match=words):
            write(fmt, tmp_path, size, runs)


def test_flat_disk_is_sparse_and_descriptor_is_esxi_style(tmp_path: Path) -> None:
    desc = write_monolithic_flat(tmp_path, "vm", 10 * 1024 * MiB, {0: os.urandom(4096)})
    text = desc.read_text()
    assert 'createType="vmfs"' in text
    assert f'RW {10 * 1024 * MiB // 512} VMFS "vm-flat.vmdk"' in text
    flat = tmp_path / "vm-flat.vmdk"
    assert flat.stat().st_size == 10 * 1024 * MiB
    assert flat.stat().st_blocks * 512 < 1 * MiB


HEADER_FIELDS = struct.Struct("<4sIIQQQQIQQQB4sH")


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
@pytest.mark.parametrize("size", [8 * MiB, 100 * MiB + 512, 3 * 1024 * MiB])
def test_header_matches_what_qemu_creates(tmp_path: Path, subformat: str, size: int) -> None:
    theirs = tmp_path / "theirs.vmdk"
    made = qemu.qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat}", theirs, str(size))
    assert made.returncode == 0, made.stderr
    fmt = "streamOptimized-qemu" if subformat == "streamOptimized" else subformat
    ours = write(fmt, tmp_path, size, {})
    mine = HEADER_FIELDS.unpack_from(ours.read_bytes())
    qemus = HEADER_FIELDS.unpack_from(theirs.read_bytes())
    # Every field but uncleanShutdown-adjacent padding: magic, version, flags, capacity, grain size,
    # descriptor place and size, GTEs per GT, both directory offsets, overhead, newline test, algorithm.
    assert mine == qemus
