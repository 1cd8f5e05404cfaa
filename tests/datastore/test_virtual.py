"""The flat-disk read path and the virtual datastore, on in-memory backends."""

from __future__ import annotations

import hashlib

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.config import GiB, MiB
from liverecovery.datastore.flatdisk import FlatDisk, HoleMap
from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.datastore.virtual import VIRTUAL_ID_BASE, VirtualDatastore
from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs.filesystem import FileType, SetAttributes, Stability
from liverecovery.testing import MemoryBlockCache, MemoryDisk

pytestmark = pytest.mark.anyio


def pattern(seed: str, n: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (n // len(block) + 1))[:n]


def scattered_disk(size: int) -> MemoryDisk:
    """Data at the start, straddling block boundaries, and at the very end."""
    runs = {
        0: pattern("boot", 3 * MiB + 17),
        5 * MiB - 100: pattern("straddle", 300),
        size - 4096: pattern("tail", 4096),
    }
    return MemoryDisk(size, runs)


async def flat(disk: MemoryDisk, cache: MemoryBlockCache | None = None) -> FlatDisk:
    return await FlatDisk.open(source="vm/p/disk0", reader=disk, cache=cache or MemoryBlockCache())


def test_hole_map() -> None:
    from liverecovery.backends import AllocationRun, RunKind

    holes = HoleMap(
        [
            AllocationRun(0, 10, RunKind.DATA),
            AllocationRun(10, 10, RunKind.DATA),
            AllocationRun(20, 80, RunKind.UNALLOCATED),
            AllocationRun(100, 5, RunKind.DATA),
            AllocationRun(105, 50, RunKind.ZERO),
        ]
    )
    assert holes.data_runs == [(0, 20), (100, 105)]
    assert holes.has_data(0, 1) and holes.has_data(19, 30) and holes.has_data(50, 101)
    assert not holes.has_data(20, 100) and not holes.has_data(105, 155)


@settings(max_examples=60)
@given(data=st.data())
async def test_reads_equal_the_disk_content(data: st.DataObject) -> None:
    disk = scattered_disk(64 * MiB)
    fd = await flat(disk)
    for _ in range(5):
        offset = data.draw(st.integers(0, disk.size + 10))
        count = data.draw(st.integers(0, 3 * MiB))
        got, eof = await fd.read(offset, count)
        assert got == disk.content(offset, count)
        assert eof == (offset + count >= disk.size)


async def test_holes_are_never_fetched_so_power_on_cost_does_not_grow_with_size() -> None:
    fetched = {}
    for size in (1 * GiB, 1024 * GiB):
        disk = scattered_disk(size)
        fd = await flat(disk)
        # A boot-like working set: the first MiBs, a scattered set, and the last block.
        for off in [0, 1 * MiB, 2 * MiB, *range(100 * MiB, size, size // 64), size - 4096]:
            await fd.read(off, 64 * 1024)
        fetched[size] = disk.bytes_read
        assert fd.stats.holes_skipped > 0
    assert fetched[1 * GiB] == fetched[1024 * GiB] > 0


async def test_concurrent_reads_of_one_block_fetch_it_once() -> None:
    disk = scattered_disk(16 * MiB)
    cache = MemoryBlockCache()
    fd = await flat(disk, cache)
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(fd.read, i * 100, 4096)
    assert cache.fetches == 1 and disk.bytes_read == MiB
    assert fd.stats.cache_misses == 1 and fd.stats.cache_hits == 49


async def make_datastore() -> tuple[VirtualDatastore, MemoryFilesystem, MemoryDisk]:
    inner = MemoryFilesystem()
    inner.add_file("vm.vmx", b'displayName = "vm"\n')
    inner.add_file("vm.vmdk", b"# Disk DescriptorFile\n")
    disk = scattered_disk(8 * MiB)
    ds = VirtualDatastore(inner, {"vm-flat.vmdk": await flat(disk)})
    return ds, inner, disk


async def test_virtual_flat_file_is_listed_and_read() -> None:
    ds, _inner, disk = await make_datastore()
    fid = await ds.lookup(ds.root_id, "vm-flat.vmdk")
    assert fid > VIRTUAL_ID_BASE
    attrs = await ds.getattr(fid)
    assert attrs.type is FileType.REG and attrs.size == disk.size
    assert (await ds.read(fid, 5 * MiB - 200, 400))[0] == disk.content(5 * MiB - 200, 400)
    names: list[str] = []
    cookie = 0
    while True:
        page = await ds.readdir(ds.root_id, cookie, 1)
        names += [e.name for e in page.entries]
        if page.eof:
            break
        cookie = page.entries[-1].cookie
    assert sorted(names) == ["vm-flat.vmdk", "vm.vmdk", "vm.vmx"]


async def test_esx_files_go_to_the_inner_filesystem() -> None:
    ds, inner, _disk = await make_datastore()
    lck = await ds.create(ds.root_id, ".lck-1234", SetAttributes(mode=0o600))
    await ds.write(lck, 0, b"lock", Stability.FILE_SYNC)
    assert inner.file_bytes(".lck-1234") == b"lock"
    await ds.rename(ds.root_id, ".lck-1234", ds.root_id, ".lck-5678")
    await ds.remove(ds.root_id, ".lck-5678")
    with pytest.raises(NfsError) as caught:
        await ds.lookup(ds.root_id, ".lck-5678")
    assert caught.value.status is NfsStatus.NOENT


async def test_flat_file_cannot_be_resized_renamed_or_written_without_overlay() -> None:
    ds, _inner, _disk = await make_datastore()
    fid = await ds.lookup(ds.root_id, "vm-flat.vmdk")
    for call, status in [
        (ds.setattr(fid, SetAttributes(size=1)), NfsStatus.INVAL),
        (ds.rename(ds.root_id, "vm-flat.vmdk", ds.root_id, "x"), NfsStatus.ACCES),
        (ds.write(fid, 0, b"x", Stability.FILE_SYNC), NfsStatus.ROFS),
        (ds.create(ds.root_id, "vm-flat.vmdk", SetAttributes(), mode=1), NfsStatus.EXIST),
    ]:
        with pytest.raises(NfsError) as caught:
            await call
        assert caught.value.status is status


async def test_removing_a_flat_file_hides_it_and_leaves_the_backup() -> None:
    ds, _inner, disk = await make_datastore()
    before = disk.sha256()
    fid = await ds.lookup(ds.root_id, "vm-flat.vmdk")
    await ds.remove(ds.root_id, "vm-flat.vmdk")
    with pytest.raises(NfsError):
        await ds.getattr(fid)
    with pytest.raises(NfsError):
        await ds.lookup(ds.root_id, "vm-flat.vmdk")
    assert disk.sha256() == before
