"""Zero-copy READs of flat disks: verified cache blocks are spliced from their files.

Over the real server and our client, with the on-disk cache and the durable overlay: a READ of a
verified block must equal the bytes path, carry the right eof flag at the end of the disk (not
the end of the block file), and never be spliced where the overlay holds written bytes.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import DiskOverlay, FlatDisk
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.testing import MemoryDisk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

BS = 256 * 1024  # cache block
SIZE = 4 * MiB + 12_345  # the last block is short: eof must come from the disk's end
OVERLAY_BS = 16 * 1024


def _disk() -> MemoryDisk:
    rng = random.Random(7)
    runs = {off: rng.randbytes(BS) for off in range(0, 4 * MiB, BS)}
    runs[4 * MiB] = rng.randbytes(12_345)
    return MemoryDisk(SIZE, runs)


@attrs.define
class Live:
    server: NfsServer
    client: NfsClient
    fh: bytes
    flat: FlatDisk
    cache: DiskBlockCache
    backup: MemoryDisk
    written: list[tuple[int, bytes]] = attrs.field(factory=list)

    @property
    def spliced(self) -> int:
        pool = self.server._pipes
        assert pool is not None
        return pool.loaded

    def expected(self, offset: int, count: int) -> bytes:
        data = bytearray(self.backup.content(0, SIZE))
        for off, chunk in self.written:
            data[off : off + len(chunk)] = chunk
        return bytes(data[offset : offset + count])


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    backup = _disk()
    cache = await DiskBlockCache.open(tmp_path / "cache", block_size=BS)
    (tmp_path / "folder").mkdir()

    async def overlay() -> DiskOverlay:
        return await WriteOverlay.open(tmp_path / "overlay", size=SIZE, block_size=OVERLAY_BS)

    flat = await FlatDisk.open(source="vm/0", reader=backup, cache=cache, overlay=overlay)
    datastore = VirtualDatastore(LocalFilesystem(tmp_path / "folder"), {"vm-flat.vmdk": flat})
    with anyio.fail_after(60):
        async with NfsServer(tmp_path / "state") as server:
            await server.export("/lr/esx", ["127.0.0.1"])
            await server.publish("/lr/esx", "vm", datastore)
            async with await NfsClient.connect(
                "127.0.0.1", server.port, mount_port=server.port, call_timeout=30
            ) as client:
                root = await client.mount("/lr/esx")
                fh = await client.lookup_path(root, "vm/vm-flat.vmdk")
                yield Live(server, client, fh, flat, cache, backup)
    await flat.aclose()
    await cache.aclose()


async def test_a_verified_block_is_spliced_and_equals_the_backup(live: Live) -> None:
    data, eof = await live.client.read(live.fh, BS, 64 * 1024)  # cold: fetched, copied
    assert data == live.expected(BS, 64 * 1024) and not eof
    before = live.spliced
    data, eof = await live.client.read(live.fh, BS + 4096, 64 * 1024)  # warm: spliced
    assert data == live.expected(BS + 4096, 64 * 1024) and not eof
    assert live.spliced == before + 1


async def test_eof_is_the_end_of_the_disk_not_of_the_block_file(live: Live) -> None:
    last = (SIZE // BS) * BS
    await live.client.read(live.fh, last, SIZE - last)  # brings the short last block in
    before = live.spliced
    data, eof = await live.client.read(live.fh, last - 4096, 8192)  # spans two blocks
    assert data == live.expected(last - 4096, 8192) and not eof
    data, eof = await live.client.read(live.fh, last, 64 * 1024)  # the last 12,345 bytes
    assert data == live.expected(last, 64 * 1024) and len(data) == SIZE - last and eof
    data, eof = await live.client.read(live.fh, last - 64 * 1024, 64 * 1024)
    assert not eof  # a whole-block-file range that is not the end of the disk
    assert live.spliced == before + 2  # the two 64 KiB READs; 8 KiB ones are copied


async def test_bytes_the_overlay_holds_are_never_spliced_over(live: Live) -> None:
    await live.client.read(live.fh, 0, BS)  # block 0 verified in the cache
    new = b"\xee" * 5000
    await live.client.write(live.fh, 70_000, new, Stability.FILE_SYNC)
    live.written.append((70_000, new))
    before = live.spliced
    data, _ = await live.client.read(live.fh, 64 * 1024, 64 * 1024)  # holds the write
    assert data == live.expected(64 * 1024, 64 * 1024)
    assert live.spliced == before  # the overlay answered
    data, _ = await live.client.read(live.fh, 128 * 1024, 64 * 1024)  # untouched: spliced
    assert data == live.expected(128 * 1024, 64 * 1024)
    assert live.spliced == before + 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, SIZE + 1000),
            st.integers(1, 300 * 1024),
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_reads_and_writes_match_a_model(live: Live, ops: list[tuple[bool, int, int]]) -> None:
    """Random READs (spliced or not) and WRITEs always read back as backup + writes."""
    for is_write, offset, count in ops:
        if is_write:
            offset = min(offset, SIZE - 1)
            data = random.Random(offset).randbytes(min(count, SIZE - offset, 64 * 1024))
            await live.client.write(live.fh, offset, data, Stability.UNSTABLE)
            live.written.append((offset, data))
        else:
            data, eof = await live.client.read(live.fh, offset, count)
            assert data == live.expected(offset, count)
            assert eof == (offset + len(data) >= SIZE)
