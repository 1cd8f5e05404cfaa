"""DiskBlockCache: hits, misses, checksums, restart, concurrency, eviction and reservations."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest
from cache_helpers import CountingSource, block_bytes, read_through

from liverecovery.backends import BlockCache, BlockKey
from liverecovery.cache import CapacityProbe, DiskBlockCache
from liverecovery.config import Settings
from liverecovery.errors import CacheError, CacheSpaceError, SettingsError

pytestmark = pytest.mark.anyio

BS = 4096


def block_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blocks").rglob("*") if p.is_file())


def overwrite_index_with_garbage(root: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (root / "index.sqlite").write_bytes(b"this is not a database" * 100)


async def open_cache(root: Path, **kwargs: object) -> DiskBlockCache:
    kwargs.setdefault("block_size", BS)
    return await DiskBlockCache.open(root, **kwargs)  # type: ignore[arg-type]


async def test_implements_protocol_and_hit_after_miss(tmp_path: Path) -> None:
    src = CountingSource(lambda k: BS)
    cache = await open_cache(tmp_path / "c")
    assert isinstance(cache, BlockCache)
    key = BlockKey("disk-a", 3)
    first = await read_through(cache, key, src.fetcher(key))
    second = await read_through(cache, key, src.fetcher(key))
    assert first == second == block_bytes(key, BS)
    assert src.fetches[key] == 1
    assert (cache.stats.hits, cache.stats.misses, cache.stats.blocks) == (1, 1, 1)
    await cache.aclose()


async def test_short_last_block_and_distinct_sources(tmp_path: Path) -> None:
    src = CountingSource(lambda k: 100 if k.index == 9 else BS)
    cache = await open_cache(tmp_path / "c")
    keys = [BlockKey("a", 9), BlockKey("b", 9), BlockKey("a", 0)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    for key in keys:
        assert await read_through(cache, key, src.fetcher(key)) == block_bytes(key, src.length(key))
    assert all(n == 1 for n in src.fetches.values())
    await cache.aclose()


async def test_files_are_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "c"
    src = CountingSource(lambda k: BS)
    cache = await open_cache(root)
    for i in range(3):
        await read_through(cache, BlockKey("x", i), src.fetcher(BlockKey("x", i)))
    assert_owner_only(root, min_files=6)  # three blocks, the index, its -wal and -shm
    await cache.aclose()
    assert_owner_only(root, min_files=4)


def assert_owner_only(root: Path, min_files: int) -> None:
    paths = [root, *root.rglob("*")]
    assert len([p for p in paths if p.is_file()]) >= min_files
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {oct(mode)}"


async def test_corrupt_block_is_refetched_not_served(tmp_path: Path) -> None:
    src = CountingSource(lambda k: BS)
    cache = await open_cache(tmp_path / "c")
    key = BlockKey("d", 1)
    good = await read_through(cache, key, src.fetcher(key))
    [path] = block_files(tmp_path / "c")
    raw = bytearray(path.read_bytes())
    raw[1234] ^= 0x01
    path.write_bytes(raw)
    # A block verified in this process is trusted (the cache never rewrites a block file):
    # damage is found when the block is next read after an open, as after a crash.
    await cache.aclose()
    cache = await open_cache(tmp_path / "c")
    again = await read_through(cache, key, src.fetcher(key))
    assert again == good
    assert src.fetches[key] == 2
    assert cache.stats.corrupt_blocks == 1
    # The replacement was stored and is served without another fetch.
    assert await read_through(cache, key, src.fetcher(key)) == good
    assert src.fetches[key] == 2
    assert len(block_files(tmp_path / "c")) == 1
    await cache.aclose()


@pytest.mark.parametrize("damage", ["truncate", "extend", "delete"])
async def test_damaged_block_file_is_refetched(tmp_path: Path, damage: str) -> None:
    src = CountingSource(lambda k: BS)
    cache = await open_cache(tmp_path / "c")
    key = BlockKey("d", 2)
    good = await read_through(cache, key, src.fetcher(key))
    [path] = block_files(tmp_path / "c")
    if damage == "truncate":
        os.truncate(path, BS - 1)
    elif damage == "extend":
        with path.open("ab") as f:
            f.write(b"\0")
    else:
        path.unlink()
    await cache.aclose()  # found at the next open (see above)
    cache = await open_cache(tmp_path / "c")
    assert await read_through(cache, key, src.fetcher(key)) == good
    assert src.fetches[key] == 2
    await cache.aclose()


async def test_restart_keeps_blocks_and_lru_order(tmp_path: Path) -> None:
    root = tmp_path / "c"
    src = CountingSource(lambda k: BS)
    keys = [BlockKey("r", i) for i in range(4)]
    cache = await open_cache(root)
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    await read_through(cache, keys[0], src.fetcher(keys[0]))  # now most recently used
    await cache.reserve("job-1", 1234)
    await cache.aclose()

    cache = await open_cache(root)
    assert cache.keys() == [keys[1], keys[2], keys[3], keys[0]]
    assert dict(cache.reservations()) == {"job-1": 1234}
    for key in keys:
        assert await read_through(cache, key, src.fetcher(key)) == block_bytes(key, BS)
    assert all(src.fetches[k] == 1 for k in keys)
    await cache.aclose()


async def test_restart_after_crash_keeps_stored_blocks(tmp_path: Path) -> None:
    """Dropping the cache without aclose (a crash) still keeps every stored block."""
    root = tmp_path / "c"
    src = CountingSource(lambda k: BS)
    cache = await open_cache(root)
    keys = [BlockKey("k", i) for i in range(3)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    del cache  # no aclose: the sqlite connection is dropped with the object

    cache = await open_cache(root)
    assert set(cache.keys()) == set(keys)
    for key in keys:
        assert await read_through(cache, key, src.fetcher(key)) == block_bytes(key, BS)
    assert all(src.fetches[k] == 1 for k in keys)
    await cache.aclose()


async def test_orphan_block_files_are_removed_at_open(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = await open_cache(root)
    await cache.aclose()
    orphan = root / "blocks" / "deadbeef" / "0" / "5-99"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left over from a crash")
    cache = await open_cache(root)
    assert not orphan.exists()
    await cache.aclose()


async def test_other_block_size_or_broken_index_empties_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "c"
    src = CountingSource(lambda k: BS)
    key = BlockKey("z", 0)
    cache = await open_cache(root)
    await read_through(cache, key, src.fetcher(key))
    await cache.aclose()

    cache = await open_cache(root, block_size=2 * BS)
    assert cache.keys() == []
    assert block_files(root) == []
    await cache.aclose()

    overwrite_index_with_garbage(root)
    cache = await open_cache(root, block_size=2 * BS)
    assert cache.keys() == []
    assert await read_through(cache, key, src.fetcher(key)) == block_bytes(key, BS)
    await cache.aclose()


async def test_fifty_concurrent_misses_fetch_once(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "c")
    key = BlockKey("hot", 7)
    release = anyio.Event()
    calls = 0

    async def slow_fetch() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return block_bytes(key, BS)

    results: list[bytes] = []

    async def reader() -> None:
        results.append(await read_through(cache, key, slow_fetch))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert calls == 1
    assert results == [block_bytes(key, BS)] * 50
    assert cache.stats.misses == 1
    assert cache.stats.shared_misses == 49
    await cache.aclose()


async def test_fetch_error_reaches_every_waiter_then_retries(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "c")
    key = BlockKey("flaky", 0)
    release = anyio.Event()
    calls = 0

    async def failing_fetch() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        raise OSError("backup store unreachable")

    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await read_through(cache, key, failing_fetch)
        except OSError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert calls == 1
    assert len(errors) == 5
    assert key not in cache

    async def good_fetch() -> bytes:
        return b"ok"

    assert await read_through(cache, key, good_fetch) == b"ok"
    await cache.aclose()


async def test_cancelled_fetcher_lets_a_waiter_fetch(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "c")
    key = BlockKey("c", 0)
    never = anyio.Event()

    async def hanging_fetch() -> bytes:
        await never.wait()
        raise AssertionError("unreachable")

    async def quick_fetch() -> bytes:
        return b"second"

    result: list[bytes] = []

    async def waiter() -> None:
        result.append(await read_through(cache, key, quick_fetch))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            leader_scope = anyio.CancelScope()

            async def leader() -> None:
                with leader_scope:
                    await read_through(cache, key, hanging_fetch)

            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            leader_scope.cancel()
    assert result == [b"second"]
    assert key in cache
    await cache.aclose()


async def test_oversized_fetch_is_refused(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "c")

    async def big() -> bytes:
        return b"x" * (BS + 1)

    with pytest.raises(CacheError, match=r"4097 bytes, more than the block size 4096"):
        await read_through(cache, BlockKey("big", 0), big)
    await cache.aclose()


async def test_lru_eviction_keeps_min_free_and_spares_pinned(tmp_path: Path) -> None:
    root = tmp_path / "c"
    # 40 blocks of capacity, 10 % kept free: room for 36 blocks.
    probe = CapacityProbe(root / "blocks", capacity_bytes=40 * BS)
    cache = await open_cache(root, min_free_percent=10.0, probe=probe)
    src = CountingSource(lambda k: BS)
    keys = [BlockKey("e", i) for i in range(60)]
    async with cache.pinned([keys[0]]):
        for key in keys:
            assert await read_through(cache, key, src.fetcher(key)) == block_bytes(key, BS)
            usage = probe.usage()
            assert usage.free_bytes >= 4 * BS
    assert cache.stats.blocks == 36
    assert keys[0] in cache  # pinned, although least recently used
    assert set(cache.keys()) == {keys[0], *keys[-35:]}
    assert cache.stats.evicted_blocks == 60 - 36
    await cache.aclose()


async def test_prune_reacts_to_a_filling_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=100 * BS)
    cache = await open_cache(root, min_free_percent=5.0, probe=probe)
    src = CountingSource(lambda k: BS)
    keys = [BlockKey("f", i) for i in range(20)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    await read_through(cache, keys[0], src.fetcher(keys[0]))
    assert await cache.prune() == 0
    probe.other_used_bytes = 85 * BS  # something else filled the disk
    evicted = await cache.prune()
    assert evicted == 10
    assert probe.usage().free_bytes >= 5 * BS
    assert keys[0] in cache and keys[1] not in cache  # LRU, not FIFO
    await cache.aclose()


async def test_block_not_stored_when_no_room_at_all(tmp_path: Path) -> None:
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=10 * BS, other_used_bytes=10 * BS)
    cache = await open_cache(root, probe=probe)
    src = CountingSource(lambda k: BS)
    key = BlockKey("g", 0)
    assert await read_through(cache, key, src.fetcher(key)) == block_bytes(key, BS)
    assert key not in cache
    assert cache.stats.unstored_blocks == 1
    await cache.aclose()


async def test_reservations(tmp_path: Path) -> None:
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=1000 * BS)
    cache = await open_cache(root, min_free_percent=5.0, probe=probe)
    await cache.reserve("job-a", 500 * BS)
    await cache.reserve("job-a", 600 * BS)  # replaces, does not add
    assert dict(cache.reservations()) == {"job-a": 600 * BS}
    space = await cache.space()
    assert (space.total_bytes, space.free_bytes, space.reserved_bytes) == (
        1000 * BS,
        1000 * BS,
        600 * BS,
    )
    with pytest.raises(CacheSpaceError) as info:
        await cache.reserve("job-b", 400 * BS)
    message = str(info.value)
    for number in (400 * BS, 350 * BS, 1000 * BS, 50 * BS, 600 * BS):
        assert str(number) in message, (number, message)
    assert "job-b" in message
    await cache.reserve("job-b", 350 * BS)
    await cache.release("job-a")
    await cache.release("never-reserved")
    assert dict(cache.reservations()) == {"job-b": 350 * BS}
    with pytest.raises(ValueError, match="must be >= 0"):
        await cache.reserve("job-c", -1)
    await cache.aclose()

    cache = await open_cache(root, probe=probe)
    assert dict(cache.reservations()) == {"job-b": 350 * BS}
    await cache.release("job-b")
    await cache.aclose()
    cache = await open_cache(root, probe=probe)
    assert dict(cache.reservations()) == {}
    await cache.aclose()


async def test_cached_unpinned_blocks_count_as_reclaimable(tmp_path: Path) -> None:
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=100 * BS)
    cache = await open_cache(root, min_free_percent=0.0, probe=probe)
    src = CountingSource(lambda k: BS)
    keys = [BlockKey("h", i) for i in range(60)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    await cache.reserve("job", 100 * BS)  # 40 free + 60 reclaimable
    await cache.release("job")
    async with cache.pinned(keys[:10]):
        with pytest.raises(CacheSpaceError):
            await cache.reserve("job", 100 * BS)
        await cache.reserve("job", 90 * BS)
    await cache.aclose()


async def test_closed_cache_refuses(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "c")
    await cache.aclose()
    await cache.aclose()
    with pytest.raises(CacheError, match="closed"):
        await read_through(
            cache, BlockKey("a", 0), CountingSource(lambda k: 1).fetcher(BlockKey("a", 0))
        )


async def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="block size"):
        await DiskBlockCache.open(tmp_path / "c", block_size=0)
    with pytest.raises(SettingsError, match="cache_min_free_percent"):
        await DiskBlockCache.open(tmp_path / "c", min_free_percent=100)


async def test_from_settings_uses_effective_root(tmp_path: Path) -> None:
    settings = Settings(
        job_results_dir=tmp_path / "results", cache_block_size=8192, cache_max_open_files=3
    )
    cache = await DiskBlockCache.from_settings(settings)
    assert cache.root == tmp_path / "results" / "3dfs-cache"
    assert cache.block_size == 8192
    assert cache.min_free_percent == 5.0
    assert cache.max_open_files == 3
    assert (cache.root / "index.sqlite").is_file()
    await cache.aclose()


async def test_concurrent_readers_under_eviction_pressure_get_correct_bytes(tmp_path: Path) -> None:
    """Eight readers over 40 keys with room for 12 blocks: hits, misses, shared misses and
    evictions interleave; every read returns the source's bytes and min free holds at the end."""
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=16 * BS)
    cache = await open_cache(root, min_free_percent=25.0, probe=probe)
    src = CountingSource(lambda k: BS if k.index % 3 else 1000)
    keys = [BlockKey(f"s{i % 2}", i) for i in range(40)]
    wrong: list[BlockKey] = []

    async def reader(n: int) -> None:
        for step in range(60):
            key = keys[(n * 7 + step * (n + 3)) % len(keys)]
            if await read_through(cache, key, src.fetcher(key)) != block_bytes(
                key, src.length(key)
            ):
                wrong.append(key)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(reader, n)
    assert wrong == []
    assert probe.usage().free_bytes >= 4 * BS
    assert cache.stats.evicted_blocks > 0
    assert cache.stats.hits > 0
    assert cache.stats.cached_bytes == probe.used_bytes()
    await cache.aclose()


async def test_read_range_serves_only_blocks_verified_in_this_process(tmp_path: Path) -> None:
    src = CountingSource(lambda k: BS)
    cache = await open_cache(tmp_path / "c")
    key, other = BlockKey("d", 1), BlockKey("d", 2)
    assert await cache.read_range(key, 0, 10) is None  # not cached
    whole = await read_through(cache, key, src.fetcher(key))  # stored: verified
    assert await cache.read_range(key, 100, 200) == whole[100:300]
    assert await cache.read_range(key, BS - 1, 2) is None  # beyond the block
    assert await cache.read_range(key, -1, 2) is None
    await read_through(cache, other, src.fetcher(other))
    await cache.aclose()
    reopened = await open_cache(tmp_path / "c")
    assert await reopened.read_range(key, 0, 10) is None  # a restart: not verified yet
    assert await read_through(reopened, key, src.fetcher(key)) == whole  # checks the CRC
    assert await reopened.read_range(key, 0, 10) == whole[:10]
    assert src.fetches[key] == 1
    # A block damaged before its first read after the restart is refetched, never served.
    [path] = [p for p in block_files(tmp_path / "c") if p.read_bytes() != whole]
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x01
    path.write_bytes(raw)
    assert await reopened.read_range(other, 0, 10) is None
    good = await read_through(reopened, other, src.fetcher(other))
    assert good[7] != raw[7] and src.fetches[other] == 2
    assert await reopened.read_range(other, 0, 10) == good[:10]
    await reopened.aclose()


async def test_read_range_of_an_evicted_block_is_none(tmp_path: Path) -> None:
    src = CountingSource(lambda k: BS)
    cache = await open_cache(tmp_path / "c")
    key = BlockKey("d", 1)
    await read_through(cache, key, src.fetcher(key))
    cache._forget(key)
    assert await cache.read_range(key, 0, 10) is None
    await cache.aclose()


async def test_cold_fills_are_evicted_before_the_working_set(tmp_path: Path) -> None:
    """A storage vMotion's pass (``fill_cold``) never pushes out blocks the VM reads: cold
    blocks are evicted first, and a cold block read again joins the working set."""
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=40 * BS)  # room for 36 blocks
    cache = await open_cache(root, min_free_percent=10.0, probe=probe)
    hot = [BlockKey("vm", i) for i in range(20)]
    for key in hot:
        assert await cache.lookup(key, 0, BS) is None
        await cache.fill(key, block_bytes(key, BS))
    streamed = [BlockKey("vm", 1000 + i) for i in range(100)]
    for key in streamed:
        assert await cache.lookup(key, 0, BS) is None
        await cache.fill_cold(key, block_bytes(key, BS))
        if key.index == 1010:  # read again by the VM: now part of its working set
            assert await cache.lookup(key, 0, BS) == block_bytes(key, BS)
    assert all(key in cache for key in hot), "a cold fill evicted the working set"
    assert BlockKey("vm", 1010) in cache
    assert cache.stats.blocks == 36
    assert await cache.lookup(streamed[-1], 0, BS) == block_bytes(streamed[-1], BS)
    await cache.aclose()
