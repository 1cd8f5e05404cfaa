"""DiskBlockCache's kept-open block files: bounded, closed on eviction and close, never stale.

Descriptors are observed from the outside, through ``/proc/self/fd``: a descriptor the cache
forgot to close shows up there (as ``... (deleted)`` once its block file is unlinked).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cache_helpers import block_bytes, read_through
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from liverecovery.backends import BlockKey
from liverecovery.cache import CapacityProbe, DiskBlockCache
from liverecovery.cache import block_cache as block_cache_module
from liverecovery.errors import SettingsError

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc"),
]

BS = 4096


class VersionedSource:
    """A backup whose bytes change with every fetch of a key: a block fetched again after its
    eviction differs from the first copy, so serving the old copy cannot go unnoticed."""

    def __init__(self) -> None:
        self.fetches: Counter[BlockKey] = Counter()

    def expected(self, key: BlockKey) -> bytes:
        return self.bytes_of(key, self.fetches[key])

    @staticmethod
    def bytes_of(key: BlockKey, version: int) -> bytes:
        return block_bytes(BlockKey(f"{key.source}#v{version}", key.index), BS)

    def fetcher(self, key: BlockKey) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            self.fetches[key] += 1
            return self.expected(key)

        return fetch


def open_block_files(root: Path) -> list[str]:
    """Targets of this process's descriptors that point into the cache's block directory."""
    blocks = os.path.realpath(root / "blocks") + os.sep
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, already closed
            continue
        if target.startswith(blocks):
            found.append(target)
    return found


def current_block_paths(cache: DiskBlockCache) -> set[str]:
    return {
        os.path.realpath(cache._block_path(key, entry)) for key, entry in cache._entries.items()
    }


async def open_cache(root: Path, **kwargs: object) -> DiskBlockCache:
    kwargs.setdefault("block_size", BS)
    return await DiskBlockCache.open(root, **kwargs)  # type: ignore[arg-type]


async def test_hot_reads_keep_the_file_open_and_close_closes_it(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = await open_cache(root)
    src = VersionedSource()
    keys = [BlockKey("d", i) for i in range(5)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    assert open_block_files(root) == []  # stored, not read through read_range yet
    for _ in range(3):
        for key in keys:
            assert await cache.read_range(key, 10, 100) == src.expected(key)[10:110]
    assert sorted(open_block_files(root)) == sorted(current_block_paths(cache))
    assert cache.open_files == 5
    await cache.aclose()
    assert open_block_files(root) == []
    assert cache.open_files == 0


async def test_at_most_max_open_files_stay_open(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = await open_cache(root, max_open_files=3)
    src = VersionedSource()
    keys = [BlockKey("d", i) for i in range(10)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
        assert await cache.read_range(key, 0, BS) == src.expected(key)
        assert len(open_block_files(root)) <= 3
    # The three most recently read stay open: reading them again opens nothing new.
    kept = set(open_block_files(root))
    for key in keys[-3:]:
        assert await cache.read_range(key, 1, 2) == src.expected(key)[1:3]
    assert set(open_block_files(root)) == kept
    await cache.aclose()


async def test_eviction_closes_the_file_and_a_refetch_reads_the_new_bytes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=100 * BS)
    cache = await open_cache(root, probe=probe, min_free_percent=10.0)
    src = VersionedSource()
    key = BlockKey("d", 7)
    first = await read_through(cache, key, src.fetcher(key))
    assert await cache.read_range(key, 0, BS) == first
    old_path = os.path.realpath(cache._block_path(key, cache._entries[key]))
    assert open_block_files(root) == [old_path]

    probe.other_used_bytes = 100 * BS  # the filesystem fills up: everything must go
    assert await cache.prune() == 1
    assert open_block_files(root) == []  # closed, not merely unlinked ("... (deleted)")
    assert await cache.read_range(key, 0, BS) is None

    probe.other_used_bytes = 0
    second = await read_through(cache, key, src.fetcher(key))
    assert second != first and src.fetches[key] == 2
    assert await cache.read_range(key, 0, BS) == second
    assert await cache.read_range(key, 5, 50) == second[5:55]
    [now_open] = open_block_files(root)
    assert now_open != old_path and not now_open.endswith("(deleted)")
    await cache.aclose()


async def test_a_closed_descriptor_is_never_read_even_when_its_number_is_reused(
    tmp_path: Path,
) -> None:
    """Another thread of the process may open a file and get the number of a descriptor the
    cache just closed: a read of the block must not go through that number."""
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=100 * BS)
    cache = await open_cache(root, probe=probe, min_free_percent=10.0, max_open_files=1)
    src = VersionedSource()
    a, b = BlockKey("d", 1), BlockKey("d", 2)
    other = tmp_path / "other"
    other.write_bytes(b"\xee" * BS)
    for key in (a, b):
        await read_through(cache, key, src.fetcher(key))

    # 1. The block is evicted right after a read.
    assert await cache.read_range(a, 0, BS) == src.expected(a)
    probe.other_used_bytes = 100 * BS
    await cache.prune()
    probe.other_used_bytes = 0
    fd = os.open(other, os.O_RDONLY)  # most likely the number the cache just closed
    try:
        assert await cache.read_range(a, 0, BS) is None
    finally:
        os.close(fd)

    # 2. The block's descriptor leaves the LRU (max_open_files=1) for another block's.
    for key in (a, b):
        await read_through(cache, key, src.fetcher(key))
    assert await cache.read_range(a, 0, BS) == src.expected(a)
    assert await cache.read_range(b, BS, 1) is None  # opens b's file, closes a's; reads nothing
    fd = os.open(other, os.O_RDONLY)
    try:
        assert await cache.read_range(a, 0, BS) == src.expected(a)
    finally:
        os.close(fd)
    await cache.aclose()


async def test_a_block_found_corrupt_loses_its_kept_file(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = await open_cache(root)
    src = VersionedSource()
    key = BlockKey("d", 1)
    await read_through(cache, key, src.fetcher(key))
    assert await cache.read_range(key, 0, 10) is not None
    await cache.aclose()
    # After a restart the block is verified again by a lookup; damage makes it a miss,
    # and the refetched copy is what read_range serves from then on.
    reopened = await open_cache(root)
    path = Path(reopened._block_path(key, reopened._entries[key]))
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(raw)
    fresh = await read_through(reopened, key, src.fetcher(key))
    assert src.fetches[key] == 2
    assert await reopened.read_range(key, 0, BS) == fresh
    assert open_block_files(root) == [
        os.path.realpath(reopened._block_path(key, reopened._entries[key]))
    ]
    await reopened.aclose()
    assert open_block_files(root) == []


async def test_reads_that_miss_the_page_cache_go_to_a_thread_without_leaking(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    cache = await open_cache(root, max_open_files=2)
    cache._nowait = False  # as if RWF_NOWAIT reported EAGAIN: every read takes the slow path
    src = VersionedSource()
    keys = [BlockKey("d", i) for i in range(4)]
    for key in keys:
        await read_through(cache, key, src.fetcher(key))
    before = len(os.listdir("/proc/self/fd"))

    async def read(key: BlockKey) -> None:
        for start in range(0, BS, 512):
            assert await cache.read_range(key, start, 512) == src.expected(key)[start : start + 512]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for key in keys * 3:
                tg.start_soon(read, key)
    assert len(open_block_files(root)) <= 2
    assert len(os.listdir("/proc/self/fd")) <= before + 2  # the workers closed their dups
    await cache.aclose()
    assert open_block_files(root) == []


async def test_max_open_files_is_validated_and_capped_by_the_descriptor_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in (0, -1, 1.5, "8"):
        with pytest.raises(SettingsError, match="max_open_files"):
            await open_cache(tmp_path / "c", max_open_files=bad)
    monkeypatch.setattr(block_cache_module.resource, "getrlimit", lambda _which: (40, 4096))
    root = tmp_path / "c"
    cache = await open_cache(root, max_open_files=1000)
    src = VersionedSource()
    for i in range(20):
        key = BlockKey("d", i)
        await read_through(cache, key, src.fetcher(key))
        await cache.read_range(key, 0, 1)
    assert cache.open_files == len(open_block_files(root)) == 10  # a quarter of 40
    await cache.aclose()


keys = st.builds(BlockKey, st.sampled_from(["disk-a", "disk-b"]), st.integers(0, 12))
MAX_OPEN = 4
CAPACITY = 24 * BS


class KeptFilesAgainstModel(RuleBasedStateMachine):
    """Many keys, few descriptors: reads, refetches, evictions and closes in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="cache-fds-"))
        self.root = self.tmp / "cache"
        self.probe = CapacityProbe(self.root / "blocks", capacity_bytes=CAPACITY)
        self.source = VersionedSource()
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.cache = self.portal.call(self._open)
        self.baseline_fds = len(os.listdir("/proc/self/fd"))
        self.lru: list[BlockKey] = []  # the model's use order, least recent first
        self.interned: dict[BlockKey, BlockKey] = {}

    def _intern(self, key: BlockKey) -> BlockKey:
        """One object per key, as FlatDisk passes them: the cache's fast path for a block read
        again right after itself recognises the key object."""
        return self.interned.setdefault(key, key)

    def _used(self, key: BlockKey) -> None:
        if key in self.lru:
            self.lru.remove(key)
        self.lru.append(key)

    async def _open(self) -> DiskBlockCache:
        return await DiskBlockCache.open(
            self.root,
            block_size=BS,
            min_free_percent=10.0,
            probe=self.probe,
            max_open_files=MAX_OPEN,
        )

    def teardown(self) -> None:
        try:
            self.portal.call(self.cache.aclose)
            assert open_block_files(self.root) == []
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(key=keys)
    def fetch(self, key: BlockKey) -> None:
        key = self._intern(key)
        held = key in self.cache
        data = self.portal.call(read_through, self.cache, key, self.source.fetcher(key))
        assert data == self.source.expected(key)
        assert held or self.source.fetches[key] >= 1
        self._used(key)

    @rule(key=keys, start=st.integers(0, BS - 1), length=st.integers(1, BS))
    def read_range(self, key: BlockKey, start: int, length: int) -> None:
        key = self._intern(key)
        got = self.portal.call(self.cache.read_range, key, start, length)
        if key not in self.cache or start + length > BS:
            assert got is None
        else:  # every stored block was written (so verified) in this process
            assert got == self.source.expected(key)[start : start + length]
            self._used(key)

    @rule(other=st.integers(0, CAPACITY))
    def filesystem_fills_or_drains(self, other: int) -> None:
        self.probe.other_used_bytes = other
        self.portal.call(self.cache.prune)

    @invariant()
    def reads_keep_the_lru_order(self) -> None:
        self.lru = [k for k in self.lru if k in self.cache]  # evicted or never stored
        assert self.cache.keys() == self.lru

    @invariant()
    def descriptors_are_bounded_and_never_stale(self) -> None:
        opened = open_block_files(self.root)
        assert len(opened) <= MAX_OPEN
        assert len(opened) == self.cache.open_files
        assert set(opened) <= current_block_paths(self.cache)  # no evicted/old generation
        assert len(os.listdir("/proc/self/fd")) <= self.baseline_fds + MAX_OPEN


KeptFilesAgainstModel.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_kept_files_against_model = KeptFilesAgainstModel.TestCase


async def test_a_file_range_handed_out_keeps_the_verified_bytes_through_eviction(
    tmp_path: Path,
) -> None:
    """``file_range`` gives a duplicate descriptor: it reads the block it was taken from even
    after eviction and a refetch of other bytes, and only verified blocks are handed out."""
    root = tmp_path / "c"
    probe = CapacityProbe(root / "blocks", capacity_bytes=100 * BS)
    cache = await open_cache(root, probe=probe, min_free_percent=10.0)
    src = VersionedSource()
    key = BlockKey("d", 3)
    assert await cache.file_range(key, 0, 10) is None  # not cached
    first = await read_through(cache, key, src.fetcher(key))
    assert await cache.file_range(key, 0, BS + 1) is None  # past the block
    rng = await cache.file_range(key, 100, 1000, eof=True)
    assert rng is not None and (rng.offset, rng.length, rng.eof) == (100, 1000, True)
    try:
        probe.other_used_bytes = 100 * BS
        assert await cache.prune() == 1
        assert await cache.file_range(key, 0, 10) is None  # evicted: no new ranges
        probe.other_used_bytes = 0
        second = await read_through(cache, key, src.fetcher(key))
        assert second != first
        assert os.pread(rng.fd, 1000, rng.offset) == first[100:1100]
    finally:
        rng.close()
    again = await cache.file_range(key, 0, BS)
    assert again is not None
    try:
        assert os.pread(again.fd, BS, 0) == second
    finally:
        again.close()
    await cache.aclose()
    assert open_block_files(root) == []  # the handed-out duplicates were closed by their owner
