"""Background restore: order, only allocated blocks, yields to foreground reads, bandwidth cap."""

from __future__ import annotations

import time

import anyio
import pytest

from liverecovery.backends import BlockKey
from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.datastore.restore import BackgroundRestore, allocated_blocks
from liverecovery.job.migration import ReadRateMigration
from liverecovery.testing import MemoryBlockCache, MemoryDisk

pytestmark = pytest.mark.anyio


class RecordingCache(MemoryBlockCache):
    def __init__(self) -> None:
        super().__init__(block_size=1 * MiB)
        self.order: list[BlockKey] = []

    async def lookup(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        self.order.append(key)
        return await super().lookup(key, offset, length)


async def two_disks(cache: MemoryBlockCache) -> list[FlatDisk]:
    d0 = MemoryDisk(64 * MiB, {0: b"a" * (2 * MiB + 1), 40 * MiB: b"b" * 10})
    d1 = MemoryDisk(8 * MiB, {7 * MiB: b"c" * MiB})
    return [
        await FlatDisk.open(source="d0", reader=d0, cache=cache),
        await FlatDisk.open(source="d1", reader=d1, cache=cache),
    ]


async def test_restores_allocated_blocks_disk_by_disk_in_ascending_order() -> None:
    cache = RecordingCache()
    disks = await two_disks(cache)
    assert list(allocated_blocks(disks[0])) == [0, 1, 2, 40]
    restore = BackgroundRestore(disks)
    assert restore.total_bytes == 5 * MiB
    await restore.run()
    assert [(k.source, k.index) for k in cache.order] == [
        ("d0", 0),
        ("d0", 1),
        ("d0", 2),
        ("d0", 40),
        ("d1", 7),
    ]
    assert restore.done_bytes == restore.total_bytes
    assert disks[0].stats.bytes_restored == 4 * MiB
    # Afterwards every read is a cache hit: nothing more comes from the backup.
    fetched = cache.fetches
    await disks[0].read(0, 3 * MiB)
    assert cache.fetches == fetched


async def test_background_restore_waits_while_a_foreground_read_is_in_flight() -> None:
    cache = MemoryBlockCache()
    disks = await two_disks(cache)
    restore = BackgroundRestore(disks)
    disks[0].gate.enter()  # a foreground read is waiting on the backup
    async with anyio.create_task_group() as tg:
        tg.start_soon(restore.run)
        await anyio.sleep(0.05)
        assert restore.done_bytes == 0  # nothing fetched while the VM waits
        disks[0].gate.leave()
    assert restore.done_bytes == restore.total_bytes and restore.yields == 1


class CountingSlowDisk(MemoryDisk):
    """A backup disk whose reads take a while, counting how many run at once."""

    def __init__(self, size: int, runs: dict[int, bytes]) -> None:
        super().__init__(size, runs)
        self.now = 0
        self.most = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await anyio.sleep(0.01)
            return await super().read(offset, length)
        finally:
            self.now -= 1


@pytest.mark.parametrize("depth", [1, 3])
async def test_depth_bounds_the_blocks_restored_at_once(depth: int) -> None:
    cache = MemoryBlockCache(block_size=1 * MiB)
    backup = CountingSlowDisk(16 * MiB, {0: bytes([7]) * (12 * MiB)})
    disk = await FlatDisk.open(source="d", reader=backup, cache=cache)
    restore = BackgroundRestore([disk], depth=depth)
    await restore.run()
    assert backup.most == depth  # as many at once as asked, never more
    assert restore.done_bytes == restore.total_bytes == 12 * MiB
    assert disk.stats.bytes_restored == 12 * MiB  # each block once
    data, _ = await disk.read(0, 12 * MiB)
    assert data == bytes([7]) * (12 * MiB)


async def test_with_depth_each_block_still_waits_for_the_vm() -> None:
    cache = MemoryBlockCache()
    disks = await two_disks(cache)
    restore = BackgroundRestore(disks, depth=4)
    disks[0].gate.enter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(restore.run)
        await anyio.sleep(0.05)
        assert restore.done_bytes == 0  # no worker fetched while the VM waits
        disks[0].gate.leave()
    assert restore.done_bytes == restore.total_bytes and restore.yields >= 1


async def test_bandwidth_limit_caps_the_rate() -> None:
    cache = MemoryBlockCache()
    disks = await two_disks(cache)
    restore = BackgroundRestore(disks, bandwidth_bps=25 * MiB)
    started = time.monotonic()
    await restore.run()
    # 5 MiB at 25 MiB/s takes at least 0.2 s (minus the first block, which goes at once).
    assert time.monotonic() - started >= 0.15


async def test_read_rate_trigger_waits_for_reads_to_settle() -> None:
    served = 0
    policy = ReadRateMigration(rate_bps=1 * MiB, window_s=0.2, min_wait_s=0.2, sample_s=0.02)

    async def boot() -> None:
        nonlocal served
        for _ in range(20):  # 20 x 1 MiB every 20 ms: 50 MiB/s for 0.4 s
            served += MiB
            await anyio.sleep(0.02)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(boot)
        with anyio.fail_after(5):
            await policy.wait_until_ready(lambda: served)
        finished_booting = served == 20 * MiB
    assert finished_booting, "migration started while the boot was still reading"
    assert time.monotonic() - started >= 0.4


async def test_read_rate_trigger_gives_up_waiting_at_max_wait() -> None:
    served = 0

    def busy() -> int:
        nonlocal served
        served += 100 * MiB
        return served

    policy = ReadRateMigration(
        rate_bps=1, window_s=0.05, min_wait_s=0, max_wait_s=0.2, sample_s=0.01
    )
    started = time.monotonic()
    await policy.wait_until_ready(busy)
    assert 0.2 <= time.monotonic() - started < 2


class SlowDisk(MemoryDisk):
    """One link to the backup store: reads are serialized and take 5 ms per block."""

    def __init__(self, size: int, runs: dict[int, bytes]) -> None:
        super().__init__(size, runs)
        self._link = anyio.Lock()

    async def read(self, offset: int, length: int) -> bytes:
        async with self._link:
            await anyio.sleep(0.005)
            return await super().read(offset, length)


async def _foreground_latency(prefetch: bool) -> float:
    size = 256 * MiB
    disk = SlowDisk(size, {0: b"x" * size})
    fd = await FlatDisk.open(source="slow", reader=disk, cache=MemoryBlockCache())
    restore = BackgroundRestore([fd])
    latencies: list[float] = []
    async with anyio.create_task_group() as tg:
        if prefetch:
            tg.start_soon(restore.run)
            await anyio.sleep(0.01)
        # The VM reads blocks far ahead of the restore, so every read is a miss.
        for i in range(60):
            t0 = time.monotonic()
            await fd.read((255 - i) * MiB, 4096)
            latencies.append(time.monotonic() - t0)
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    return sum(latencies) / len(latencies)


async def test_foreground_reads_stay_fast_while_prefetch_runs() -> None:
    # At worst a read waits for the one background block in flight: about 1.5x on average.
    idle = await _foreground_latency(prefetch=False)
    busy = await _foreground_latency(prefetch=True)
    assert busy < 2.0 * idle, (idle, busy)
