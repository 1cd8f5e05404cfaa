"""Everything we create on disk is owner-only (files 0600, directories 0700), whatever the umask.

The umask is 0o000 here, the worst case: anything left to it would be world-readable (and
directories world-writable). Checked part by part (cache, overlay, handle key and export registry,
journal, every missing parent directory) and then over the whole work tree of a real job.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, Settings, State, StateChanged
from liverecovery.backends import BlockKey
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.config import MiB
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.job.journal import Journal
from liverecovery.nfs.handles import load_or_create_key
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.embedded import embedded_environment
from liverecovery.testing import MemoryCatalog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


def modes(base: Path, *, below: Path | None = None) -> dict[str, str]:
    """``base`` and everything under it that is not owner-only, with its mode."""
    wrong: dict[str, str] = {}
    top = below or base
    for p in [top, *sorted(top.rglob("*"))]:
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode) and mode != 0o700:
            wrong[str(p.relative_to(base.parent))] = f"dir {mode:o}"
        elif stat.S_ISREG(st.st_mode) and mode != 0o600:
            wrong[str(p.relative_to(base.parent))] = f"file {mode:o}"
    return wrong


async def _zeros(offset: int, length: int) -> bytes:
    return bytes(length)


def test_the_umask_is_really_permissive(tmp_path: Path) -> None:
    """Control: without our care, files and directories come out world-accessible."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666


async def test_block_cache_files_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "new" / "parents" / "cache"
    cache = await DiskBlockCache.open(root, block_size=64 * 1024, min_free_percent=0)
    try:
        for i in range(8):
            key = BlockKey("vm/point/disk.vmdk", i)
            data = bytes([i]) * 64 * 1024

            async def fetch(data: bytes = data) -> bytes:
                return data

            assert await cache.lookup(key, 0, len(data)) is None  # a miss: this task fills it
            await cache.fill(key, await fetch())
            assert await cache.lookup(key, 0, len(data)) == data
        names = {p.name for p in root.rglob("*") if p.is_file()}
        assert {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm"} <= names
        assert len(names) >= 8 + 3  # the blocks too
        wrong_while_open = modes(tmp_path / "new")
    finally:
        await cache.aclose()
    assert wrong_while_open == {}
    assert modes(tmp_path / "new") == {}


async def test_overlay_files_and_directories(tmp_path: Path) -> None:
    overlay = await WriteOverlay.open(
        tmp_path / "jobs" / "j1" / "overlays" / "scsi0_0", size=4 * MiB
    )
    try:
        data = b"guest data" * 1000
        base = {s: await _zeros(s, n) for s, n in overlay.to_fill(12345, len(data))}
        await overlay.write(12345, data, base=base)
        await overlay.commit()
    finally:
        await overlay.aclose()
    assert {p.name for p in (tmp_path / "jobs").rglob("*") if p.is_file()} == {"data", "map"}
    assert modes(tmp_path / "jobs") == {}


async def test_nfs_state_directory_key_and_export_registry(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "nfs-state"
    (tmp_path / "data").mkdir(mode=0o700)
    async with NfsServer(state) as server:
        await server.export_filesystem("/x", LocalFilesystem(tmp_path / "data"), ["127.0.0.1"])
        await server.unexport("/x")  # rewrites the registry
    assert sorted(p.name for p in state.iterdir()) == ["exports.json", "handle-key"]
    assert load_or_create_key(state) == (state / "handle-key").read_bytes()
    assert modes(tmp_path / "var") == {}


async def test_journal_file_and_directories(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "results" / "journal" / "job1.journal")
    try:
        await journal.append("job", job_id="job1")
    finally:
        await journal.aclose()
    assert modes(tmp_path / "results") == {}


def test_existing_directories_are_the_operators(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    made = make_private_dirs(shared / "a" / "b")
    assert made.is_dir() and stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert modes(shared / "a") == {}
    assert make_private_dirs(made) == made  # idempotent
    (shared / "file").write_bytes(b"")
    with pytest.raises(OSError):
        make_private_dirs(shared / "file" / "sub")


def settings(tmp: Path) -> Settings:
    return Settings(
        job_results_dir=tmp / "state" / "liverecovery",
        migration_trigger="manual",
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        compensation_retry_delay_s=0,
    )


async def test_a_whole_job_leaves_nothing_readable_by_others(tmp_path: Path) -> None:
    """While the VM runs from the backup: the cache, the job folder, the overlays, the journal,
    the NFS state. Files the ESX host creates over NFS take the mode it asks for; they are
    protected by the job folder, which is owner-only."""
    catalog = MemoryCatalog()
    catalog.add_vm("vm", disk_sizes=(32 * MiB,), data_per_disk=2 * MiB)
    results = tmp_path / "state" / "liverecovery"
    async with (
        embedded_environment(tmp_path, catalog, settings=settings(tmp_path)) as env,
        LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
    ):
        job = await lr.start(env.spec("vm"))
        with anyio.fail_after(30):
            async for event in job.events():
                if isinstance(event, StateChanged) and event.state is State.SERVING:
                    break
        await anyio.sleep(0.2)  # the guest writes through the overlay
        folder = results / "jobs" / job.id / "folder"
        staged = {"vm.vmx", "vm_0.vmdk"}
        assert staged <= set(os.listdir(folder))
        by_host = set(os.listdir(folder)) - staged - {"vm.nvram"}
        wrong = modes(tmp_path / "state")
        wrong = {k: v for k, v in wrong.items() if Path(k).name not in by_host}
        wrong_state = modes(tmp_path / "nfs-state")
        overlays = results / "jobs" / job.id / "overlays"
        overlay_files = {p.name for p in overlays.rglob("*") if p.is_file()}
        cache_files = [p for p in (results / "3dfs-cache").rglob("*") if p.is_file()]
        await job.stop(power_off=True)
    assert overlay_files >= {"data", "map"}
    assert len(cache_files) > 1
    assert (results / "journal").is_dir()
    assert wrong == {} and wrong_state == {}
