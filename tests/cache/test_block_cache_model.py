"""The cache against a dict model (hypothesis RuleBasedStateMachine), and on a real tmpfs.

Whatever the sequence of reads, corruptions, restarts, pins and disk-filling events, the cache
must return exactly the source's bytes, fetch only what it does not hold, and leave the minimum
free space after every operation unless nothing is left to evict.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cache_helpers import CountingSource, block_bytes, read_through, tmpfs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from liverecovery.backends import BlockKey
from liverecovery.cache import CapacityProbe, DiskBlockCache, StatvfsProbe
from liverecovery.errors import CacheSpaceError

BS = 4096
MIN_FREE_PERCENT = 10.0
CAPACITY = 10 * BS

keys = st.builds(BlockKey, st.sampled_from(["disk-a", "disk-b"]), st.integers(0, 11))


def length_of(key: BlockKey) -> int:
    return BS if key.index % 4 else 1 + (key.index * 977) % BS  # some short blocks


class CacheAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="cache-model-"))
        self.root = self.tmp / "cache"
        self.probe = CapacityProbe(self.root / "blocks", capacity_bytes=CAPACITY)
        self.source = CountingSource(length_of)
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.cache = self.portal.call(self._open)
        self.reservations: dict[str, int] = {}

    async def _open(self) -> DiskBlockCache:
        return await DiskBlockCache.open(
            self.root, block_size=BS, min_free_percent=MIN_FREE_PERCENT, probe=self.probe
        )

    def teardown(self) -> None:
        try:
            self.portal.call(self.cache.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _get(self, key: BlockKey) -> None:
        held = key in self.cache
        before = self.source.fetches[key]
        data = self.portal.call(read_through, self.cache, key, self.source.fetcher(key))
        assert data == block_bytes(key, length_of(key))
        assert self.source.fetches[key] == before + (0 if held else 1)

    @rule(key=keys)
    def get(self, key: BlockKey) -> None:
        self._get(key)

    @rule(pin=keys, key=keys, pin_lru=st.booleans())
    def get_while_pinned(self, pin: BlockKey, key: BlockKey, pin_lru: bool) -> None:
        if pin_lru and self.cache.keys():
            pin = self.cache.keys()[0]  # the first eviction victim, were it not pinned
        held = pin in self.cache

        async def run() -> None:
            async with self.cache.pinned([pin]):
                data = await read_through(self.cache, key, self.source.fetcher(key))
                assert data == block_bytes(key, length_of(key))
                if held:
                    assert pin in self.cache

        self.portal.call(run)

    @precondition(lambda self: self.cache.keys())
    @rule(data=st.data())
    def corrupt_then_get(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.cache.keys()))
        entry = self.cache._entries[key]
        path = Path(self.cache._block_path(key, entry))
        raw = bytearray(path.read_bytes())
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 0xFF
        path.write_bytes(raw)
        # Verified blocks are trusted in-process; damage is found after an open (a crash).
        self.portal.call(self.cache.aclose)
        self.cache = self.portal.call(self._open)
        before = self.source.fetches[key]
        got = self.portal.call(read_through, self.cache, key, self.source.fetcher(key))
        assert got == block_bytes(key, length_of(key))
        assert self.source.fetches[key] == before + 1

    @rule(other=st.integers(0, CAPACITY))
    def filesystem_fills_or_drains(self, other: int) -> None:
        self.probe.other_used_bytes = other
        self.portal.call(self.cache.prune)

    @rule()
    def restart(self) -> None:
        kept = self.cache.keys()
        self.portal.call(self.cache.aclose)
        self.cache = self.portal.call(self._open)
        assert self.cache.keys() == kept
        assert dict(self.cache.reservations()) == self.reservations

    @rule(job=st.sampled_from(["j1", "j2"]), nbytes=st.integers(0, 8 * BS))
    def reserve(self, job: str, nbytes: int) -> None:
        try:
            self.portal.call(self.cache.reserve, job, nbytes)
        except CacheSpaceError as exc:
            assert str(nbytes) in str(exc)
        else:
            self.reservations[job] = nbytes

    @rule(job=st.sampled_from(["j1", "j2", "j3"]))
    def release(self, job: str) -> None:
        self.portal.call(self.cache.release, job)
        self.reservations.pop(job, None)

    @invariant()
    def min_free_respected_or_nothing_left_to_evict(self) -> None:
        usage = self.probe.usage()
        min_free = CAPACITY * MIN_FREE_PERCENT / 100
        assert usage.free_bytes >= min_free or not self.cache.keys()

    @invariant()
    def accounting_matches_files(self) -> None:
        assert self.cache.stats.cached_bytes == self.probe.used_bytes()
        assert dict(self.cache.reservations()) == self.reservations


CacheAgainstModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_cache_against_model = CacheAgainstModel.TestCase


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_tmpfs_keeps_min_free(anyio_backend: str) -> None:
    """64 MiB tmpfs, 1 MiB blocks, 25 % kept free: 100 MiB of reads never push free below 16 MiB."""
    block = 1 << 20
    with tmpfs("64m") as mountpoint:
        probe = StatvfsProbe(mountpoint)
        total = probe.usage().total_bytes
        cache = await DiskBlockCache.open(
            mountpoint / "cache", block_size=block, min_free_percent=25
        )
        source = CountingSource(lambda k: block)
        with anyio.fail_after(60):
            for i in range(100):
                key = BlockKey("tmpfs-disk", i)
                data = await read_through(cache, key, source.fetcher(key))
                assert data == block_bytes(key, block)
                assert probe.usage().free_bytes >= total * 0.25
            assert 30 <= cache.stats.blocks <= 48
            assert cache.stats.evicted_blocks == 100 - cache.stats.blocks
            # The newest blocks survived and are served without fetching.
            recent = BlockKey("tmpfs-disk", 99)
            assert await read_through(cache, recent, source.fetcher(recent)) == block_bytes(
                recent, block
            )
            assert source.fetches[recent] == 1
        await cache.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_full_filesystem_still_serves_and_leaves_no_debris(anyio_backend: str) -> None:
    """A probe that overstates the room (as a racing writer would) makes writes hit ENOSPC on a
    1 MiB tmpfs: reads are still served, nothing half-written stays behind."""
    block = 256 * 1024
    with tmpfs("1m") as mountpoint:
        root = mountpoint / "cache"
        probe = CapacityProbe(root / "blocks", capacity_bytes=1 << 40)
        cache = await DiskBlockCache.open(root, block_size=block, min_free_percent=0, probe=probe)
        source = CountingSource(lambda k: block)
        keys = [BlockKey("full", i) for i in range(8)]
        with anyio.fail_after(30):
            for key in keys:
                assert await read_through(cache, key, source.fetcher(key)) == block_bytes(
                    key, block
                )
        stored = set(cache.keys())
        assert 0 < len(stored) < len(keys)
        assert cache.stats.unstored_blocks == len(keys) - len(stored)
        files = [p for p in (root / "blocks").rglob("*") if p.is_file()]
        assert len(files) == len(stored)
        for key in stored:
            assert await read_through(cache, key, source.fetcher(key)) == block_bytes(key, block)
            assert source.fetches[key] == 1
        await cache.aclose()
