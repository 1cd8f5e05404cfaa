"""The live browse / live recovery rule between real processes sharing a job results folder.

Two browses of one VM may run together; a live recovery excludes every other session of the
VM. The lock is the kernel's, so it goes away with its process, however the process ends.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liverecovery import LiveRecovery, State
from liverecovery.config import Settings
from liverecovery.errors import ConcurrentSessionError
from liverecovery.job.journal import unfinished_journals
from liverecovery.job.migration import ManualMigration
from liverecovery.job.session_files import SessionFiles
from liverecovery.job.sessions import SessionKind, SessionRegistry, sessions_dir
from liverecovery.testing.samples import sample_vm

from .helpers import World, fast_settings, reach, spec
from .session_procs import Worker
from .test_resume import crash

pytestmark = pytest.mark.timeout(60)

KINDS = ("RECOVERY", "BROWSE")


@pytest.fixture
def worker() -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        started.append(Worker())
        return started[-1]

    yield start
    for w in started:
        w.close()


@pytest.mark.parametrize(("first", "second"), list(itertools.product(KINDS, KINDS)))
def test_two_processes_contend_in_both_orders(
    worker: Callable[[], Worker], tmp_path: Path, first: str, second: str
) -> None:
    a, b = worker(), worker()
    vm = "web01"
    assert a.acquire(tmp_path, vm, first, "owner-a")["ok"]
    shared = first == second == "BROWSE"
    got = b.acquire(tmp_path, vm, second, "owner-b")
    assert got["ok"] is shared
    if not shared:
        # The refusal names the VM and who holds it, in which process.
        assert f"VM {vm!r}" in got["error"]
        assert f"owner-a, pid {a.pid}" in got["error"]
        assert got["holders"] == [
            f"{SessionKind[first]}: owner-a, pid {a.pid} on " + socket.gethostname()
        ]
        # Once the first lets go, the second gets in; then the roles swap.
        a.release(tmp_path, vm, "owner-a")
        assert b.acquire(tmp_path, vm, second, "owner-b")["ok"]
        back = a.acquire(tmp_path, vm, first, "owner-a")
        assert not back["ok"] and f"owner-b, pid {b.pid}" in back["error"]
    else:
        assert b.sessions(tmp_path, vm) == {"owner-b": "BROWSE"}
        # A third process cannot recover the VM while either browse runs.
        c = worker()
        refused = c.acquire(tmp_path, vm, "RECOVERY", "owner-c")
        assert not refused["ok"]
        assert f"pid {a.pid}" in refused["error"] and f"pid {b.pid}" in refused["error"]
        a.release(tmp_path, vm, "owner-a")
        assert not c.acquire(tmp_path, vm, "RECOVERY", "owner-c")["ok"]
        b.release(tmp_path, vm, "owner-b")
        assert c.acquire(tmp_path, vm, "RECOVERY", "owner-c")["ok"]


def test_other_vms_are_independent(worker: Callable[[], Worker], tmp_path: Path) -> None:
    a, b = worker(), worker()
    assert a.acquire(tmp_path, "web01", "RECOVERY", "job-1")["ok"]
    assert b.acquire(tmp_path, "web02", "RECOVERY", "job-2")["ok"]
    assert b.acquire(tmp_path, "web01/", "BROWSE", "b")["ok"]  # another name, another lock


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_dead_holder_releases_its_sessions(
    worker: Callable[[], Worker], tmp_path: Path, how: str
) -> None:
    a, b = worker(), worker()
    assert a.acquire(tmp_path, "web01", "RECOVERY", "job-1")["ok"]
    assert a.acquire(tmp_path, "web02", "BROWSE", "browse-1")["ok"]
    assert not b.acquire(tmp_path, "web01", "BROWSE", "browse-2")["ok"]
    if how == "exit":
        assert a.exit() == 0  # no release: the process just ends
    else:
        a.sigkill()
    assert b.acquire(tmp_path, "web01", "RECOVERY", "job-2")["ok"]
    assert b.acquire(tmp_path, "web02", "RECOVERY", "job-3")["ok"]
    # The dead process's records are gone or ignored: only b is named as a holder.
    files = SessionFiles(tmp_path)
    assert [h.owner for h in files.holders("web01")] == ["job-2"]
    assert [h.pid for h in files.holders("web02")] == [b.pid]
    refused = worker().acquire(tmp_path, "web01", "BROWSE", "browse-3")
    assert f"pid {a.pid}" not in refused["error"] and f"job-2, pid {b.pid}" in refused["error"]


def test_a_killed_browse_leaves_no_name_behind(
    worker: Callable[[], Worker], tmp_path: Path
) -> None:
    a, b, c = worker(), worker(), worker()
    assert a.acquire(tmp_path, "web01", "BROWSE", "browse-a")["ok"]
    assert b.acquire(tmp_path, "web01", "BROWSE", "browse-b")["ok"]
    a.sigkill()
    refused = c.acquire(tmp_path, "web01", "RECOVERY", "job-c")
    assert not refused["ok"]
    assert refused["holders"] == [f"live browse: browse-b, pid {b.pid} on {socket.gethostname()}"]
    b.release(tmp_path, "web01", "browse-b")
    assert c.acquire(tmp_path, "web01", "RECOVERY", "job-c")["ok"]
    # The recovery swept the dead browse's record: one record left, c's.
    assert len(list(tmp_path.glob("*.holder"))) == 1


def test_files_are_owner_only(worker: Callable[[], Worker], tmp_path: Path) -> None:
    lock_dir = tmp_path / "results" / "sessions"
    a = worker()
    assert a.acquire(lock_dir, "web01", "BROWSE", "browse-1")["ok"]
    assert lock_dir.stat().st_mode & 0o777 == 0o700
    files = list(lock_dir.iterdir())
    assert {f.suffix for f in files} == {".lock", ".holder"}
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f


# -- LiveRecovery in this process against a session held by another process -------------------


@pytest.mark.anyio
async def test_live_recovery_respects_sessions_of_other_processes(
    worker: Callable[[], Worker], tmp_path: Path
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    browser = worker()
    assert browser.acquire(sessions_dir(tmp_path), "web01", "BROWSE", "browse-cli")["ok"]
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        with pytest.raises(ConcurrentSessionError, match=f"browse-cli, pid {browser.pid}"):
            await job.wait()
        browser.release(sessions_dir(tmp_path), "web01", "browse-cli")
        job2 = await lr.start(spec())
        await reach(job2, State.SERVING)
        # Now the other process is the one refused, for a browse and for a recovery.
        for kind in KINDS:
            refused = browser.acquire(sessions_dir(tmp_path), "web01", kind, "other")
            assert f"{job2.id}, pid" in refused["error"]
        async with lr.browse_session("web02", owner="b"):
            assert not browser.acquire(sessions_dir(tmp_path), "web02", "RECOVERY", "x")["ok"]
        await job2.stop(power_off=True)
    assert browser.acquire(sessions_dir(tmp_path), "web01", "RECOVERY", "other")["ok"]
    async with LiveRecovery(settings, world.backends) as lr:
        with pytest.raises(ConcurrentSessionError, match="live recovery of it is running"):
            async with lr.browse_session("web01", owner="b2"):
                pass
    assert world.clean()


@pytest.mark.anyio
async def test_resume_leaves_a_job_alone_while_another_process_holds_it(
    worker: Callable[[], Worker], tmp_path: Path
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await reach(job, State.SERVING)
        await crash(job)
    (unfinished,) = unfinished_journals(tmp_path)
    before = unfinished.path.read_bytes()
    # The process that ran the job is still alive: it holds the job's session.
    old = worker()
    assert old.acquire(sessions_dir(tmp_path), "web01", "RECOVERY", job.id)["ok"]
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr2:
        assert await lr2.resume() == []
        (error,) = lr2.resume_errors
        assert "not resumed" in error and f"{job.id}, pid {old.pid}" in error
        assert unfinished.path.read_bytes() == before  # its journal untouched
        old.sigkill()  # now it is gone for good: the job is picked up
        (resumed,) = await lr2.resume()
        assert resumed.id == job.id
        if resumed.state is not State.SERVING:
            await reach(resumed, State.SERVING)
        other = worker()
        assert not other.acquire(sessions_dir(tmp_path), "web01", "BROWSE", "b")["ok"]
        await resumed.migrate_now()
        assert (await resumed.wait()).state is State.COMPLETED
        # The resumed job's session ended with it.
        assert other.acquire(sessions_dir(tmp_path), "web01", "BROWSE", "b")["ok"]
    assert world.clean(), world.leftovers()


def test_the_browse_command_and_a_recovery_exclude_each_other(tmp_path: Path) -> None:
    vm = sample_vm("bvm", disk_sizes=(1 << 20,), head=1 << 20)
    vm.write(tmp_path / "backup")
    results = tmp_path / "results"
    (tmp_path / "s.toml").write_text(f'[settings]\njob_results_dir = "{results}"\n')
    command = [
        sys.executable,
        "-m",
        "liverecovery.cli",
        "browse",
        str(tmp_path / "backup"),
        "--listen",
        "127.0.0.1:0",
        "--allow",
        "127.0.0.1",
        "--settings",
        str(tmp_path / "s.toml"),
    ]
    registry = SessionRegistry.for_settings(Settings(job_results_dir=results))
    registry.acquire("bvm", SessionKind.RECOVERY, "job-1")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "cannot start a live browse of VM 'bvm'" in refused.stderr
    assert f"job-1, pid {os.getpid()}" in refused.stderr
    registry.release("bvm", "job-1")
    browse = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C must reach it even when pytest itself runs with SIGINT ignored (``pytest &``).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert browse.stdout is not None
        assert browse.stdout.readline().startswith("nfs://")  # serving: it holds its session
        with pytest.raises(ConcurrentSessionError, match=f"pid {browse.pid}"):
            registry.acquire("bvm", SessionKind.RECOVERY, "job-2")
    finally:
        browse.send_signal(signal.SIGINT)
        browse.communicate(timeout=30)
    registry.acquire("bvm", SessionKind.RECOVERY, "job-2")
    registry.release_all()
