"""Corrupted VMDKs: any damage gives correct bytes or a CatalogError, never another exception,
a hang or an unbounded allocation; and many threads may share one disk."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.errors import CatalogError

from .conftest import Image

MiB = 1 << 20


@pytest.fixture(scope="module")
def small_sparse(images: dict[str, Image]) -> bytes:
    return images["monolithicSparse"].vmdk.read_bytes()[: 4 * MiB]


@pytest.fixture(scope="module")
def small_stream(images: dict[str, Image]) -> bytes:
    return images["streamOptimized"].vmdk.read_bytes()


def _damage(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        out[where % len(out)] = value
    return bytes(out[:cut] if cut else out)


def _exercise(path: Path) -> None:
    try:
        disk = open_vmdk(path)
    except CatalogError:
        return
    try:
        disk.allocation_sync()
        rng = random.Random(0)
        for _ in range(8):
            offset = rng.randrange(max(1, disk.size))
            data = disk.read_sync(offset, 256 * 1024)
            assert len(data) == min(256 * 1024, disk.size - offset)
    except CatalogError:
        pass
    finally:
        disk.close()


edits = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 600), st.integers(0, 64 * 1024), st.integers(0, 1 << 22)),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=edits, cut=st.one_of(st.none(), st.integers(1, 4 * MiB)))
def test_damaged_sparse_file(
    small_sparse: bytes, tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]],
    cut: int | None,
) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("fuzz") / "d.vmdk"
    path.write_bytes(_damage(small_sparse, edits, cut))
    _exercise(path)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=edits, cut=st.one_of(st.none(), st.integers(1, 1 << 22)))
def test_damaged_stream_optimized_file(
    small_stream: bytes, tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]],
    cut: int | None,
) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("fuzz") / "s.vmdk"
    path.write_bytes(_damage(small_stream, edits, cut))
    _exercise(path)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_descriptor_text(text: str) -> None:
    from liverecovery.catalog.vmdk import parse_descriptor

    with contextlib.suppress(CatalogError):
        parse_descriptor(text)


@pytest.mark.parametrize(
    "name", ["monolithicSparse", "streamOptimized", "delta2", "monolithicFlat"]
)
def test_many_threads_share_one_disk(images: dict[str, Image], name: str) -> None:
    image = images[name]
    disk = open_vmdk(image.vmdk, grain_cache_bytes=1 * MiB)  # small: evictions under contention
    fd = os.open(image.raw, os.O_RDONLY)
    rng = random.Random(11)
    jobs = [(rng.randrange(image.size), rng.randrange(1, 300_000)) for _ in range(400)]

    def check(job: tuple[int, int]) -> bool:
        offset, length = job
        return disk.read_sync(offset, length) == os.pread(fd, length, offset)

    try:
        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(check, jobs))
    finally:
        disk.close()
        os.close(fd)


def test_close_while_reads_are_in_flight(images: dict[str, Image], tmp_path: Path) -> None:
    """Reads racing close() get their bytes or a CatalogError, never another file's data."""
    image = images["monolithicSparse"]
    raw = image.raw.read_bytes()
    disk = open_vmdk(image.vmdk)
    outcomes: list[str] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            offset = rng.randrange(image.size - MiB)
            try:
                data = disk.read_sync(offset, MiB)
            except CatalogError as exc:
                assert "closed" in exc.problem
                outcomes.append("closed")
                return
            assert data == raw[offset : offset + MiB]
            outcomes.append("ok")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while len(outcomes) < 50:
        time.sleep(0.001)
    disk.close()
    # files opened now may reuse the closed descriptor numbers: reads must not see them
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"\xee" * (image.size + MiB))
    decoys = [os.open(decoy, os.O_RDONLY) for _ in range(8)]
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    for fd in decoys:
        os.close(fd)
    assert outcomes.count("closed") == 8
    assert "ok" in outcomes
