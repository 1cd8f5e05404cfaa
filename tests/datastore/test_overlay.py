"""WriteOverlay: copy-on-write semantics against a bytearray model, durability across restarts
and crashes, damaged maps, concurrency, and a base that is never modified.

The overlay never reads the base itself: each test serves it as its user does, a ``FlatDisk`` over
the backup through a cache (``OverlaidDisk``), which hands it the base bytes of new blocks."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import stat
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.backends import AllocationRun, BlockCache, RunKind
from liverecovery.cache import DiskBlockCache
from liverecovery.datastore.flatdisk import FlatDisk, HoleMap
from liverecovery.datastore.overlay import OverlayStats, WriteOverlay
from liverecovery.errors import OverlayError
from liverecovery.nfs.filesystem import Stability
from liverecovery.testing import MemoryBlockCache

BS = 4096
SIZE = 5 * BS - 700  # a short last block


def base_pattern(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


class FileBase:
    """The backup disk (a ``DiskReader``): a read-only file read with pread; counts calls."""

    def __init__(self, path: Path, size: int) -> None:
        path.write_bytes(base_pattern(size))
        self.size = size
        self.path = path
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.fd = os.open(path, os.O_RDONLY)
        self.calls: list[tuple[int, int]] = []

    async def read(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return os.pread(self.fd, length, offset)

    async def allocation(self) -> Sequence[AllocationRun]:
        return [AllocationRun(0, self.size, RunKind.DATA)]

    async def aclose(self) -> None:
        pass

    def close_and_check_unchanged(self) -> None:
        os.close(self.fd)
        assert hashlib.sha256(self.path.read_bytes()).hexdigest() == self.sha256


class SlowBase(FileBase):
    """A backup whose reads take 10 ms."""

    def __init__(self, base: FileBase) -> None:  # shares the file and the calls of ``base``
        self.__dict__.update(base.__dict__)

    async def read(self, offset: int, length: int) -> bytes:
        await anyio.sleep(0.01)
        return await super().read(offset, length)


@pytest.fixture
def base(tmp_path: Path) -> FileBase:
    return FileBase(tmp_path / "backup-flat.vmdk", SIZE)


class OverlaidDisk:
    """The overlay as the VM sees it: a ``FlatDisk`` over the backup, through a cache, that
    writes to the overlay (closing it closes the overlay only)."""

    def __init__(self, overlay: WriteOverlay, base: FileBase, cache: BlockCache) -> None:
        self.overlay = overlay
        self.flat = FlatDisk(
            source="vm-flat.vmdk",
            reader=base,
            holes=HoleMap([AllocationRun(0, SIZE, RunKind.DATA)]),
            cache=cache,
            overlay=overlay,
        )

    @property
    def stats(self) -> OverlayStats:
        return self.overlay.stats

    async def read(self, offset: int, length: int) -> bytes:
        return (await self.flat.read(offset, length))[0]

    async def write(
        self, offset: int, data: bytes, stability: Stability = Stability.UNSTABLE
    ) -> Stability:
        return await self.flat.write(offset, data, stability)

    async def commit(self) -> None:
        await self.overlay.commit()

    async def aclose(self) -> None:
        await self.overlay.aclose()


async def open_overlay(
    directory: Path, base: FileBase, cache: BlockCache | None = None
) -> OverlaidDisk:
    overlay = await WriteOverlay.open(directory, size=SIZE, block_size=BS)
    return OverlaidDisk(overlay, base, cache or MemoryBlockCache(block_size=BS))


# -- model-based: random writes, reads, commits, restarts and crashes --------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.integers(0, SIZE - 1),
            st.integers(1, 2 * BS),
            st.integers(0, 255),
            st.sampled_from(list(Stability)),
        ),
        st.tuples(st.just("read"), st.integers(0, SIZE + 10), st.integers(0, 3 * BS)),
        st.tuples(st.just("commit")),
        st.tuples(st.just("restart")),
    ),
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops, crash_at_end=st.booleans())
def test_overlay_matches_bytearray_model(ops: list[tuple[Any, ...]], crash_at_end: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = FileBase(Path(tmp) / "base", SIZE)
        anyio.run(run_model, Path(tmp) / "overlay", base, ops, crash_at_end)
        base.close_and_check_unchanged()


async def run_model(
    directory: Path, base: FileBase, ops: list[tuple[Any, ...]], crash_at_end: bool
) -> None:
    current = bytearray(base_pattern(SIZE))
    # possible[i]: values byte i may hold after a crash (its durable value and any later
    # unstable, uncommitted ones).
    possible: list[set[int]] = [{b} for b in current]
    overlay = await open_overlay(directory, base)
    for op in ops:
        if op[0] == "write":
            _, offset, length, seed, stability = op
            length = min(length, SIZE - offset)
            data = bytes((seed + i) % 256 for i in range(length))
            achieved = await overlay.write(offset, data, stability)
            current[offset : offset + length] = data
            if stability == Stability.UNSTABLE:
                assert achieved == Stability.UNSTABLE
                for i, value in enumerate(data):
                    possible[offset + i].add(value)
            else:
                assert achieved == Stability.FILE_SYNC
                for i, value in enumerate(data):
                    possible[offset + i] = {value}
        elif op[0] == "read":
            _, offset, length = op
            assert await overlay.read(offset, length) == bytes(current[offset : offset + length])
        elif op[0] == "commit":
            await overlay.commit()
            possible = [{b} for b in current]
        else:
            await overlay.aclose()  # a clean restart keeps everything, committed or not
            possible = [{b} for b in current]
            overlay = await open_overlay(directory, base)
            assert await overlay.read(0, SIZE) == bytes(current)
    if crash_at_end:
        del overlay  # no commit, no close: the files are dropped with the object
        overlay = await open_overlay(directory, base)
        after = await overlay.read(0, SIZE)
        bad = [i for i in range(SIZE) if after[i] not in possible[i]]
        assert not bad, f"bytes {bad[:10]}... lost a durable write"
    else:
        await overlay.aclose()
        overlay = await open_overlay(directory, base)
        assert await overlay.read(0, SIZE) == bytes(current)
    await overlay.aclose()


# -- targeted tests ------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_partial_write_copies_the_block_once(tmp_path: Path, base: FileBase) -> None:
    overlay = await open_overlay(tmp_path / "ov", base)
    await overlay.write(BS + 10, b"abc", Stability.UNSTABLE)
    assert base.calls == [(BS, BS)]
    await overlay.write(BS + 100, b"def", Stability.FILE_SYNC)  # block already in the overlay
    await overlay.write(2 * BS, b"x" * BS, Stability.UNSTABLE)  # a full block needs no base
    assert base.calls == [(BS, BS)]
    expected = bytearray(base_pattern(SIZE))
    expected[BS + 10 : BS + 13] = b"abc"
    expected[BS + 100 : BS + 103] = b"def"
    expected[2 * BS : 3 * BS] = b"x" * BS
    assert await overlay.read(0, SIZE) == bytes(expected)
    stats = overlay.stats
    assert (stats.written_bytes, stats.overlay_blocks, stats.overlay_bytes) == (6 + BS, 2, 2 * BS)
    await overlay.aclose()
    base.close_and_check_unchanged()


@pytest.mark.anyio
async def test_short_last_block_and_bounds(tmp_path: Path, base: FileBase) -> None:
    overlay = await open_overlay(tmp_path / "ov", base)
    await overlay.write(SIZE - 5, b"12345", Stability.FILE_SYNC)
    assert overlay.stats.overlay_bytes == SIZE - 4 * BS
    assert await overlay.read(SIZE - 5, 100) == b"12345"
    assert await overlay.read(SIZE, 10) == b""
    with pytest.raises(ValueError, match=r"outside the disk of 19780 bytes"):
        await overlay.write(SIZE - 2, b"abc")
    with pytest.raises(ValueError):
        await overlay.write(-1, b"a")
    await overlay.aclose()


@pytest.mark.anyio
async def test_concurrent_first_writes_to_one_block_keep_every_byte(
    tmp_path: Path, base: FileBase
) -> None:
    overlay = await open_overlay(tmp_path / "ov", SlowBase(base))
    expected = bytearray(base_pattern(SIZE))

    async def writer(i: int) -> None:
        await overlay.write(BS + i * 200, bytes([i + 1]) * 150, Stability.UNSTABLE)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(writer, i)
                expected[BS + i * 200 : BS + i * 200 + 150] = bytes([i + 1]) * 150
    assert len(base.calls) == 1
    assert await overlay.read(0, SIZE) == bytes(expected)
    await overlay.aclose()


@pytest.mark.anyio
async def test_files_are_owner_only(tmp_path: Path, base: FileBase) -> None:
    directory = tmp_path / "ov"
    overlay = await open_overlay(directory, base)
    await overlay.write(0, b"x", Stability.FILE_SYNC)
    await overlay.aclose()
    for path in (directory, *directory.iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.anyio
async def test_torn_map_tail_is_dropped(tmp_path: Path, base: FileBase) -> None:
    directory = tmp_path / "ov"
    overlay = await open_overlay(directory, base)
    await overlay.write(0, b"stable", Stability.FILE_SYNC)
    await overlay.aclose()
    map_size = (directory / "map").stat().st_size
    with (directory / "map").open("ab") as f:
        f.write(b"\x07" * 17)  # a crash during an append of two records
    overlay = await open_overlay(directory, base)
    assert await overlay.read(0, 6) == b"stable"
    assert (directory / "map").stat().st_size == map_size
    await overlay.aclose()


@pytest.mark.anyio
async def test_damaged_map_refuses_to_open(tmp_path: Path, base: FileBase) -> None:
    directory = tmp_path / "ov"
    overlay = await open_overlay(directory, base)
    await overlay.write(0, b"a", Stability.FILE_SYNC)
    await overlay.write(BS, b"b", Stability.FILE_SYNC)
    await overlay.aclose()
    raw = bytearray((directory / "map").read_bytes())
    raw[32 + 3] ^= 0xFF  # first record damaged, second intact
    (directory / "map").write_bytes(raw)
    with pytest.raises(OverlayError, match=r"map: block map record at byte 32 is damaged"):
        await open_overlay(directory, base)


@pytest.mark.anyio
async def test_other_geometry_refuses_to_open(tmp_path: Path, base: FileBase) -> None:
    directory = tmp_path / "ov"
    overlay = await open_overlay(directory, base)
    await overlay.aclose()
    with pytest.raises(
        OverlayError, match=r"block size 4096 and disk size 19780, opened with block size 8192"
    ):
        await WriteOverlay.open(directory, size=SIZE, block_size=2 * BS)
    (directory / "map").write_bytes(b"garbage" * 10)
    with pytest.raises(OverlayError, match="header is damaged"):
        await open_overlay(directory, base)


@pytest.mark.anyio
async def test_closed_overlay_refuses(tmp_path: Path, base: FileBase) -> None:
    overlay = await open_overlay(tmp_path / "ov", base)
    await overlay.aclose()
    await overlay.aclose()
    with pytest.raises(OverlayError, match="closed"):
        await overlay.read(0, 1)


CHILD = textwrap.dedent(
    """
    import os, sys, anyio
    from liverecovery.datastore.overlay import WriteOverlay
    from liverecovery.nfs.filesystem import Stability

    async def main(directory, base_path, size, bs):
        fd = os.open(base_path, os.O_RDONLY)
        overlay = await WriteOverlay.open(directory, size=size, block_size=bs)
        i = 0
        while True:
            offset = (i * 3001) % (size - 64)
            stability = Stability.FILE_SYNC if i % 3 == 0 else Stability.UNSTABLE
            print("start", i, flush=True)
            data = i.to_bytes(4, "little") * 16
            base = {s: os.pread(fd, n, s) for s, n in overlay.to_fill(offset, len(data))}
            await overlay.write(offset, data, stability, base)
            if stability == Stability.FILE_SYNC:
                print("acked", i, flush=True)
            i += 1

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    """
)


def child_write(i: int) -> tuple[int, bytes]:
    return (i * 3001) % (SIZE - 64), i.to_bytes(4, "little") * 16


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_sigkill_keeps_every_acknowledged_file_sync_write(
    tmp_path: Path, base: FileBase
) -> None:
    """A real crash: a child process writes until SIGKILLed; every write it acknowledged as
    FILE_SYNC holds, except where a later write (acknowledged or not) overlapped it."""
    directory = tmp_path / "ov"
    acked: set[int] = set()
    started = -1
    with anyio.fail_after(30):
        async with await anyio.open_process(
            [sys.executable, "-c", CHILD, str(directory), str(base.path), str(SIZE), str(BS)],
            stderr=None,
        ) as proc:
            assert proc.stdout is not None
            lines = BufferedByteReceiveStream(proc.stdout)
            killed = False
            while True:
                try:
                    line = await lines.receive_until(b"\n", 100)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    assert killed, "child exited early"
                    break
                kind, number = line.split()
                if kind == b"acked":
                    acked.add(int(number))
                else:
                    started = int(number)
                if len(acked) >= 60 and not killed:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
            await proc.wait()
    overlay = await open_overlay(directory, base)
    after = await overlay.read(0, SIZE)
    # For each byte: its last writer among every write the child started.
    owner: dict[int, int] = {}
    for i in range(started + 1):
        offset, _ = child_write(i)
        for pos in range(offset, offset + 64):
            owner[pos] = i
    checked = 0
    for pos, i in owner.items():
        if i in acked:
            offset, data = child_write(i)
            assert after[pos] == data[pos - offset], (pos, i)
            checked += 1
    assert checked > 1000
    await overlay.aclose()
    base.close_and_check_unchanged()


@settings(max_examples=30, deadline=None)
@given(
    cuts=st.lists(st.integers(0, SIZE), min_size=2, max_size=24, unique=True),
    stabilities=st.lists(st.sampled_from(list(Stability)), min_size=24, max_size=24),
)
def test_concurrent_disjoint_writes_all_land(cuts: list[int], stabilities: list[Stability]) -> None:
    """Disjoint writes issued concurrently (many share blocks, many create them) all land, and
    all survive a clean restart."""
    cuts.sort()
    ranges = [(a, b) for a, b in itertools.pairwise(cuts) if b > a][::2]

    async def run(directory: Path, base: FileBase) -> None:
        overlay = await open_overlay(directory, base)
        expected = bytearray(base_pattern(SIZE))

        async def writer(i: int, start: int, stop: int) -> None:
            await anyio.lowlevel.checkpoint()
            await overlay.write(start, bytes([i + 1]) * (stop - start), stabilities[i])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i, (start, stop) in enumerate(ranges):
                    expected[start:stop] = bytes([i + 1]) * (stop - start)
                    tg.start_soon(writer, i, start, stop)
        assert await overlay.read(0, SIZE) == bytes(expected)
        await overlay.aclose()
        overlay = await open_overlay(directory, base)
        assert await overlay.read(0, SIZE) == bytes(expected)
        await overlay.aclose()

    with tempfile.TemporaryDirectory() as tmp:
        base = FileBase(Path(tmp) / "base", SIZE)
        anyio.run(run, Path(tmp) / "overlay", base)
        base.close_and_check_unchanged()


@pytest.mark.anyio
async def test_overlay_over_block_cache_over_backup(tmp_path: Path, base: FileBase) -> None:
    """The read path of the datastore: overlay ▶ circular cache ▶ backup, with a cache block size
    (8 KiB) unlike the overlay's (4 KiB); the backup is read once per cache block."""
    cache = await DiskBlockCache.open(tmp_path / "cache", block_size=2 * BS)
    overlay = await open_overlay(tmp_path / "ov", base, cache)
    expected = bytearray(base_pattern(SIZE))
    for offset, data in ((100, b"A" * 50), (BS * 3 - 10, b"B" * 30), (SIZE - 3, b"CCC")):
        await overlay.write(offset, data, Stability.FILE_SYNC)
        expected[offset : offset + len(data)] = data
    for _ in range(2):
        assert await overlay.read(0, SIZE) == bytes(expected)
        assert await overlay.read(BS - 7, 2 * BS + 11) == bytes(expected[BS - 7 : 3 * BS + 4])
    assert len(base.calls) == 3  # three 8 KiB cache blocks cover the disk, each fetched once
    await overlay.aclose()
    await cache.aclose()
    base.close_and_check_unchanged()


@pytest.mark.anyio
async def test_concurrent_stable_writes_share_syncs_and_all_survive(
    tmp_path: Path, base: FileBase
) -> None:
    """Group commit: concurrent FILE_SYNC writes need fewer syncs than writes, and every one of
    them is durable when acknowledged (the map is read back by a fresh open)."""
    overlay = await open_overlay(tmp_path / "ov", base)
    expected = bytearray(base_pattern(SIZE))
    acknowledged: list[int] = []

    async def writer(i: int) -> None:
        offset = (i % (SIZE // BS)) * BS
        done = await overlay.write(offset, bytes([i % 250 + 1]) * BS, Stability.FILE_SYNC)
        assert done == Stability.FILE_SYNC
        acknowledged.append(i)

    n = 48
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(writer, i)
                offset = (i % (SIZE // BS)) * BS
                expected[offset : offset + BS] = bytes([i % 250 + 1]) * BS
    assert len(acknowledged) == n
    assert overlay.stats.commits < n
    # Reopen without closing (no final commit): what a crash right now would find.
    reopened = await open_overlay(tmp_path / "ov", base)
    assert await reopened.read(0, SIZE) == bytes(expected)
    await reopened.aclose()
    await overlay.aclose()
