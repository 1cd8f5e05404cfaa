"""The READ path goes down once: on a miss the flat disk asks the cache once, reads the backup
once (for every concurrent reader of the block) and fills the cache once; a hit never touches
the backup."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import anyio
import pytest

from liverecovery.backends import AllocationRun, BlockCache, BlockKey
from liverecovery.cache import DiskBlockCache
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.testing import MemoryBlockCache, MemoryDisk

pytestmark = pytest.mark.anyio

BS = 64 * 1024
SIZE = 8 * BS


class GatedBackup:
    """A backup whose reads are counted and wait for ``release`` (so readers overlap)."""

    def __init__(self) -> None:
        self.disk = MemoryDisk(SIZE, {0: bytes(range(256)) * (SIZE // 256)})
        self.size = SIZE
        self.reads: list[tuple[int, int]] = []
        self.release = anyio.Event()
        self.refuse = False

    async def read(self, offset: int, length: int) -> bytes:
        assert not self.refuse, f"the backup was read at {offset} ({length} bytes) on a hit"
        self.reads.append((offset, length))
        await self.release.wait()
        return await self.disk.read(offset, length)

    async def allocation(self) -> Sequence[AllocationRun]:
        return await self.disk.allocation()

    async def aclose(self) -> None:
        pass


class CountingCache(MemoryBlockCache):
    def __init__(self) -> None:
        super().__init__(block_size=BS)
        self.lookups: list[BlockKey] = []
        self.fills: list[BlockKey] = []

    async def lookup(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        self.lookups.append(key)
        return await super().lookup(key, offset, length)

    async def fill(self, key: BlockKey, data: bytes) -> None:
        self.fills.append(key)
        await super().fill(key, data)


@pytest.fixture(params=["memory", "disk"])
async def make_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], BlockCache]]:
    opened: list[BlockCache] = []

    if request.param == "memory":

        def make() -> BlockCache:
            cache = CountingCache()
            opened.append(cache)
            return cache

        yield make
    else:
        disk_cache = await DiskBlockCache.open(tmp_path / "cache", block_size=BS)
        opened.append(disk_cache)
        yield lambda: disk_cache
    for cache in opened:
        await cache.aclose()


async def test_concurrent_readers_of_a_block_read_the_backup_once(
    make_cache: Callable[[], BlockCache],
) -> None:
    backup = GatedBackup()
    cache = make_cache()
    flat = await FlatDisk.open(source="vm/0", reader=backup, cache=cache)
    results: list[bytes] = []

    async def reader(offset: int) -> None:
        results.append((await flat.read(offset, 4096))[0])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(reader, BS + i * 4096)
            await anyio.wait_all_tasks_blocked()
            backup.release.set()
    assert backup.reads == [(BS, BS)]
    assert sorted(results) == sorted(backup.disk.content(BS + i * 4096, 4096) for i in range(16))
    assert (flat.stats.cache_misses, flat.stats.cache_hits) == (1, 15)
    if isinstance(cache, CountingCache):  # each reader asked the cache once; one filled it
        assert cache.lookups == [BlockKey("vm/0", 1)] * 16
        assert cache.fills == [BlockKey("vm/0", 1)]
    await flat.aclose()


async def test_a_read_of_a_cached_block_does_not_touch_the_backup(
    make_cache: Callable[[], BlockCache],
) -> None:
    backup = GatedBackup()
    backup.release.set()
    cache = make_cache()
    flat = await FlatDisk.open(source="vm/0", reader=backup, cache=cache)
    await flat.read(2 * BS, BS)  # a miss: the block is read and filled
    assert backup.reads == [(2 * BS, BS)]
    backup.refuse = True
    for offset, length in ((2 * BS, BS), (2 * BS + 100, 5000), (3 * BS - 10, 10)):
        data, _eof = await flat.read(offset, length)
        assert data == backup.disk.content(offset, length)
    rng = await flat.read_file_range(2 * BS + 4096, 4096)
    if rng is not None:  # the on-disk cache splices its verified block file
        rng.close()
    await flat.restore_block(2)  # already cached: nothing to restore
    assert backup.reads == [(2 * BS, BS)]
    assert flat.stats.cache_misses == 1
    await flat.aclose()
