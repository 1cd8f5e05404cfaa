"""Holes are answered without asking anything below; sequential misses stream from the backup.

A READ of a range without data never calls the backup reader nor the cache (both raise here if
touched), copying or spliced. Sequential readers (one or several, with random readers mixed in)
get byte-exact data against a bytes model; a backup block is never read by two fetches at once,
and a sequential pass reads each block once, then hands it to the cache (the background restore
does not fetch it again).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.backends import AllocationRun, BlockKey
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import FlatDisk, HoleMap
from liverecovery.datastore.readahead import SequentialDetector
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.datastore.zeros import ZERO_FILE_SIZE, zero_range
from liverecovery.io.ranges import FileRange
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.testing import MemoryBlockCache, MemoryDisk

pytestmark = pytest.mark.anyio

BS = 64 * 1024
BLOCKS = 48
SIZE = BLOCKS * BS


def _runs(seed: int) -> dict[int, bytes]:
    """Data in blocks 3-20 (with a gap at 9-10, unaligned edges), 30 and 40-47."""
    rng = random.Random(seed)

    def data(n: int) -> bytes:
        return rng.randbytes(n)

    return {
        3 * BS + 100: data(6 * BS - 100),
        11 * BS: data(10 * BS - 7),
        30 * BS: data(BS),
        40 * BS: data(8 * BS),
    }


class Untouchable:
    """A backup reader and a cache that fail the test when anything but the size is asked."""

    block_size = BS

    def __init__(self, size: int) -> None:
        self.size = size

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"{name} was called for a READ of a hole")


class TrackedBackup:
    """A backup whose reads yield a few times (so reads overlap) and are recorded; two reads of
    one block at the same time fail the test."""

    def __init__(self, disk: MemoryDisk, seed: int = 0) -> None:
        self.disk = disk
        self.size = disk.size
        self.reads: list[int] = []
        self._in_flight: set[int] = set()
        self._random = random.Random(seed)

    async def read(self, offset: int, length: int) -> bytes:
        assert offset % BS == 0, offset
        index = offset // BS
        assert index not in self._in_flight, f"block {index} read twice at once"
        self._in_flight.add(index)
        self.reads.append(index)
        try:
            for _ in range(self._random.randrange(4)):
                await anyio.lowlevel.checkpoint()
            return await self.disk.read(offset, length)
        finally:
            self._in_flight.discard(index)

    async def allocation(self) -> Sequence[AllocationRun]:
        return await self.disk.allocation()

    async def aclose(self) -> None:
        pass


async def _holed_disk() -> tuple[FlatDisk, MemoryDisk]:
    model = MemoryDisk(SIZE, _runs(1))
    holes = HoleMap(await model.allocation())
    flat = FlatDisk(
        source="vm/0",
        reader=Untouchable(SIZE),  # type: ignore[arg-type]
        holes=holes,
        cache=Untouchable(SIZE),  # type: ignore[arg-type]
    )
    return flat, model


def _hole_ranges() -> st.SearchStrategy[tuple[int, int]]:
    """Ranges inside the holes of ``_runs``: [0, 3 BS + 100), [9 BS, 11 BS), [21 BS - 7, 30 BS),
    [31 BS, 40 BS)."""
    holes = [(0, 3 * BS + 100), (9 * BS, 11 * BS), (21 * BS - 7, 30 * BS), (31 * BS, 40 * BS)]
    return st.sampled_from(holes).flatmap(
        lambda h: st.integers(h[0], h[1] - 1).flatmap(
            lambda start: st.tuples(st.just(start), st.integers(1, h[1] - start))
        )
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ranges=st.lists(_hole_ranges(), min_size=1, max_size=8))
async def test_reads_of_holes_never_touch_the_backup_nor_the_cache(
    ranges: list[tuple[int, int]],
) -> None:
    flat, model = await _holed_disk()
    for offset, length in ranges:
        data, eof = await flat.read(offset, length)
        assert data == bytes(length) == model.content(offset, length)
        assert eof == (offset + length >= SIZE)
        rng = await flat.read_file_range(offset, length)
        if length <= ZERO_FILE_SIZE:
            assert rng is not None, "a hole is spliced from the zero file"
            try:
                assert os.pread(rng.fd, rng.length, rng.offset) == bytes(length)
                assert rng.length == length
                assert rng.eof == (offset + length >= SIZE)
            finally:
                rng.close()
    assert flat.stats.cache_hits == flat.stats.cache_misses == flat.stats.bytes_fetched == 0


async def test_a_hole_at_the_end_of_the_disk_is_spliced_with_eof() -> None:
    model = MemoryDisk(SIZE, {0: b"x" * BS})
    flat = FlatDisk(
        source="vm/0",
        reader=Untouchable(SIZE),  # type: ignore[arg-type]
        holes=HoleMap(await model.allocation()),
        cache=Untouchable(SIZE),  # type: ignore[arg-type]
    )
    rng = await flat.read_file_range(SIZE - 3 * BS, 4 * BS)  # clamped to the disk
    assert isinstance(rng, FileRange)
    try:
        assert (rng.length, rng.eof) == (3 * BS, True)
    finally:
        rng.close()


def test_the_zero_file_cannot_be_written() -> None:
    rng = zero_range(4096, False)
    assert rng is not None
    try:
        with pytest.raises(PermissionError):
            os.pwrite(rng.fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(rng.fd, 0)
    finally:
        rng.close()
    assert zero_range(ZERO_FILE_SIZE + 1, False) is None


def test_the_detector_needs_consecutive_misses() -> None:
    d = SequentialDetector(3)
    assert [d.observe(i) for i in (5, 6, 9, 10, 11, 12, 3)] == [
        False,
        False,
        False,
        False,
        True,
        True,
        False,
    ]


async def _streamed(
    reads: list[tuple[int, int]], *, depth: int, extra: list[tuple[int, int]], seed: int
) -> tuple[FlatDisk, TrackedBackup, MemoryBlockCache, MemoryDisk]:
    model = MemoryDisk(SIZE, _runs(seed))
    backup = TrackedBackup(model, seed)
    cache = MemoryBlockCache(block_size=BS)
    flat = await FlatDisk.open(source="vm/0", reader=backup, cache=cache, readahead_bytes=6 * BS)
    pending = iter(reads)

    async def sequential() -> None:
        for offset, length in pending:  # shared: depth readers take the next READ each
            data, _ = await flat.read(offset, length)
            assert data == model.content(offset, length), (offset, length)

    async def randoms() -> None:
        for offset, length in extra:
            data, _ = await flat.read(offset, length)
            assert data == model.content(offset, length), (offset, length)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(depth):
                tg.start_soon(sequential)
            tg.start_soon(randoms)
    return flat, backup, cache, model


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.sampled_from([4096, 16384, BS, 3 * BS, 5000]),
    start_block=st.integers(0, 8),
    depth=st.integers(1, 8),
    seed=st.integers(0, 3),
)
async def test_a_sequential_pass_reads_each_block_once_ahead_of_its_reader(
    chunk: int, start_block: int, depth: int, seed: int
) -> None:
    start = start_block * BS
    reads = [(o, min(chunk, SIZE - o)) for o in range(start, SIZE, chunk)]
    flat, backup, cache, model = await _streamed(reads, depth=depth, extra=[], seed=seed)
    data_blocks = [i for i in range(start_block, BLOCKS) if model.content(i * BS, BS) != bytes(BS)]
    assert sorted(backup.reads) == data_blocks, "each block with data read once"
    assert flat._readahead is not None and flat._readahead.fetched >= len(data_blocks) - 2
    await anyio.wait_all_tasks_blocked()
    for i in data_blocks:  # handed to the cache after its readers had it
        assert cache._blocks[BlockKey("vm/0", i)] == model.content(i * BS, BS)
    await flat.aclose()


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.sampled_from([4096, BS, 2 * BS + 4096]),
    depth=st.integers(1, 6),
    extra=st.lists(
        st.tuples(st.integers(0, SIZE - 1), st.integers(1, 3 * BS)).map(
            lambda t: (t[0], min(t[1], SIZE - t[0]))
        ),
        max_size=20,
    ),
    seed=st.integers(0, 3),
)
async def test_sequential_and_random_readers_get_the_disk_bytes(
    chunk: int, depth: int, extra: list[tuple[int, int]], seed: int
) -> None:
    reads = [(o, min(chunk, SIZE - o)) for o in range(0, SIZE, chunk)]
    flat, backup, _cache, model = await _streamed(reads, depth=depth, extra=extra, seed=seed)
    for index in backup.reads:  # holes are never read from the backup
        assert model.content(index * BS, BS) != bytes(BS)
    await flat.aclose()


async def test_closing_the_disk_stops_the_read_ahead() -> None:
    model = MemoryDisk(SIZE, {0: b"y" * SIZE})
    release = anyio.Event()
    asked: list[int] = []

    class Slow(TrackedBackup):
        async def read(self, offset: int, length: int) -> bytes:
            asked.append(offset // BS)
            if offset >= 4 * BS:
                await release.wait()
            return await super().read(offset, length)

    backup = Slow(model)
    flat = await FlatDisk.open(
        source="vm/0",
        reader=backup,
        cache=MemoryBlockCache(block_size=BS),
        readahead_bytes=8 * BS,
    )
    with anyio.fail_after(10):
        for i in range(4):
            assert (await flat.read(i * BS, BS))[0] == b"y" * BS
        await anyio.wait_all_tasks_blocked()
        assert asked[:4] == [0, 1, 2, 3]
        assert sorted(asked[4:]) == list(range(4, 9)), "a window of 3, grown by 1 per block"
        await flat.aclose()  # the read-ahead fetches waiting on the backup are cancelled
    assert backup.reads == [0, 1, 2, 3]


async def test_the_background_restore_does_not_read_streamed_blocks_again() -> None:
    model = MemoryDisk(SIZE, {0: b"z" * SIZE})
    backup = TrackedBackup(model)
    cache = MemoryBlockCache(block_size=BS)
    flat = await FlatDisk.open(source="vm/0", reader=backup, cache=cache, readahead_bytes=4 * BS)
    with anyio.fail_after(10):
        for i in range(8):  # 0-1 missed into the cache, 2 onwards streamed
            assert (await flat.read(i * BS, BS))[0] == b"z" * BS
        await anyio.wait_all_tasks_blocked()
        read_before = list(backup.reads)
        for i in range(BLOCKS):
            await flat.restore_block(i)
        for i in range(BLOCKS):  # the VM reads it all again: the cache has every block
            assert (await flat.read(i * BS, BS))[0] == b"z" * BS
    assert sorted(read_before) == list(range(len(read_before)))
    assert sorted(backup.reads) == list(range(BLOCKS)), "each block read from the backup once"
    await flat.aclose()


@pytest.mark.timeout(60)
async def test_holes_are_spliced_through_the_server(tmp_path: Path) -> None:
    """Over the real server and client: a hole READ is spliced from the zero file (a pipe is
    loaded), equals zeros, carries eof at the disk's end, and the backup is never read."""
    size = 8 * MiB
    backup = MemoryDisk(size, {0: b"\x55" * MiB})
    cache = await DiskBlockCache.open(tmp_path / "cache", block_size=MiB)
    flat = await FlatDisk.open(source="vm/0", reader=backup, cache=cache)
    (tmp_path / "folder").mkdir()
    datastore = VirtualDatastore(LocalFilesystem(tmp_path / "folder"), {"vm-flat.vmdk": flat})
    with anyio.fail_after(30):
        async with NfsServer(tmp_path / "state") as server:
            await server.export("/lr/esx", ["127.0.0.1"])
            await server.publish("/lr/esx", "vm", datastore)
            async with await NfsClient.connect(
                "127.0.0.1", server.port, mount_port=server.port, call_timeout=20
            ) as client:
                root = await client.mount("/lr/esx")
                fh = await client.lookup_path(root, "vm/vm-flat.vmdk")
                pool = server._pipes
                assert pool is not None
                loaded = pool.loaded
                for offset, count, eof in (
                    (MiB, MiB, False),
                    (3 * MiB + 123, 700_000, False),
                    (size - MiB, MiB, True),
                ):
                    data, got_eof = await client.read(fh, offset, count)
                    assert (data, got_eof) == (bytes(count), eof)
                assert pool.loaded == loaded + 3
    assert backup.bytes_read == 0
    assert cache.stats.misses == cache.stats.hits == 0
    await flat.aclose()
    await cache.aclose()
