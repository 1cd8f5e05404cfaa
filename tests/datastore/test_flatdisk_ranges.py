"""FlatDisk over the on-disk cache: partial-block reads (``read_range``) equal the backup."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.testing import MemoryDisk

BS = 64 * 1024
SIZE = 10 * BS + 1234


def backup() -> tuple[MemoryDisk, bytes]:
    data = bytes((i * 7 + i // 251) % 256 for i in range(3 * BS + 99))
    tail = bytes(range(200)) * 3
    runs = {BS // 2: data, SIZE - len(tail): tail}
    expected = bytearray(SIZE)
    for off, run in runs.items():
        expected[off : off + len(run)] = run
    return MemoryDisk(SIZE, runs), bytes(expected)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, SIZE + 100), st.integers(0, 3 * BS)), min_size=1, max_size=12)
)
def test_reads_through_the_disk_cache_equal_the_backup(reads: list[tuple[int, int]]) -> None:
    async def run() -> None:
        disk, expected = backup()
        with tempfile.TemporaryDirectory() as tmp:
            cache = await DiskBlockCache.open(Path(tmp) / "cache", block_size=BS)
            flat = await FlatDisk.open(source="vm/disk", reader=disk, cache=cache)
            try:
                for _ in range(2):  # cold (fetch, store) then warm (verified ranges)
                    for offset, count in reads:
                        data, eof = await flat.read(offset, count)
                        assert data == expected[offset : offset + count]
                        assert eof == (offset + count >= SIZE)
            finally:
                await flat.aclose()
                await cache.aclose()

    anyio.run(run)
