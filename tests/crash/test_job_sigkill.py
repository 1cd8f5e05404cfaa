"""SIGKILL the process running a whole live recovery, at a hypothesis-chosen point of its
life, while the ESX host (another process) keeps its NFS mount and its VM keeps writing; then
restart it with ``resume``.

A job whose VM was powered on continues: the host rides out the outage (its hard mount
reconnects to the restarted server on the same port, with the same handles), the job serves
again, migrates, and ends ``completed``, and the migrated disk holds the backup with every
acknowledged guest write applied. A job stopped before its VM ran is rolled back, leaving
nothing on the host. Either way the backup is byte-identical and no journal is left open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from liverecovery.backends import VmRef
from liverecovery.job.journal import unfinished_journals
from liverecovery.sim.remote import RemoteSimulatedHost
from liverecovery.testing.samples import Runs, expected_read, sample_vm, tree_digests

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

HERE = Path(__file__).parent
SIZE = 8 << 20
HOST = "esx-crash"
KILL_STATES = [
    "exporting",
    "mounting",
    "staging",
    "registering",
    "powering_on",
    "serving",
    "migrating",
    "cleaning_up",
]


class Process:
    """A child process whose stdout lines we follow."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"process exited ({self.proc.wait()}) after {self.lines}")
        self.lines.append(line.strip())
        return line.strip()

    def until(self, predicate: str) -> str:
        while True:
            line = self.readline()
            if line.startswith(predicate):
                return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@settings(
    max_examples=40 if os.environ.get("LIVERECOVERY_SLOW") else 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(kill_in=st.sampled_from(KILL_STATES), delay_ms=st.integers(0, 400))
@example(kill_in="registering", delay_ms=0)
@example(kill_in="powering_on", delay_ms=0)
@example(kill_in="serving", delay_ms=300)
@example(kill_in="migrating", delay_ms=100)
async def test_a_killed_job_is_resumed_to_its_end(
    tmp_path_factory: pytest.TempPathFactory, kill_in: str, delay_ms: int
) -> None:
    root = tmp_path_factory.mktemp("esx")
    socket = root / "esx.sock"
    esx = Process(
        "-m",
        "liverecovery.sim.remote",
        socket,
        root,
        "--name",
        HOST,
        "--heartbeat-s",
        "0.2",
        "--write-interval-s",
        "0.01",
    )
    try:
        assert esx.readline() == "ready"
        await run_crash(tmp_path_factory.mktemp("job"), socket, kill_in, delay_ms)
    finally:
        esx.kill()


async def run_crash(work: Path, socket: Path, kill_in: str, delay_ms: int) -> None:
    vm = sample_vm("vm", disk_sizes=(SIZE,), head=SIZE // 2)
    vm.write(work / "backup")
    before = tree_digests(work / "backup")
    host = RemoteSimulatedHost(socket, call_timeout=60)

    job = Process(HERE / "run_job.py", work, socket, HOST, "start")
    try:
        seen = job.until(f"state {kill_in}")
        assert seen == f"state {kill_in}"
        time.sleep(delay_ms / 1000)  # noqa: ASYNC251 - the job runs in another process
    finally:
        job.kill()
    assert not any(line.startswith("done") for line in job.lines), job.lines

    # What the host holds right now decides what the job must do: a VM that runs continues.
    vms = await host.vms()
    running = any([await host.power_state(v) == "poweredOn" for v in vms])

    # The kill may land after the job's last journal record (late in cleanup): then there is
    # nothing to resume, and the job must have completed.
    unfinished = len(unfinished_journals(work / "results"))
    resumed = Process(HERE / "run_job.py", work, socket, HOST, "resume")
    try:
        assert resumed.until("resumed") == f"resumed {unfinished}"
        done = resumed.until("done") if unfinished else "done completed"
        assert resumed.proc.wait(timeout=60) == 0  # it closes its journal and exits
    finally:
        resumed.kill()
    state = done.split()[1]
    if running or kill_in in ("serving", "migrating", "cleaning_up"):
        assert state == "completed", resumed.lines
        (moved,) = await host.vms()
        assert moved.vmx_path.startswith("[datastore1] ")
        status = await host.vm_status(moved)
        assert status["powered_on"] and status["migrated"] and not status["io_error"], status
        await host.power_off(moved)  # the guest stops writing: its disk can be compared
        await check_disk(host, moved, vm.disks[0])
    else:
        assert state in ("failed", "cancelled"), resumed.lines
        assert await host.vms() == []
        assert not list((work / "results" / "jobs").glob("*/folder"))
    assert await host.nfs_datastores(HOST) == []
    assert unfinished_journals(work / "results") == []
    assert tree_digests(work / "backup") == before


async def check_disk(host: RemoteSimulatedHost, vm: VmRef, disk: tuple[int, Runs]) -> None:
    """The migrated disk is the backup with every guest write applied in order: none of the
    writes the guest made before, during and after the outage was lost."""
    size, runs = disk
    expected = bytearray(expected_read(size, runs, 0, size))
    writes = await host.guest_writes(vm)
    assert len(writes) > 20
    for w in writes:
        expected[w.offset : w.offset + len(w.data)] = w.data
    path = await host.disk_path(vm, 0)
    assert path is not None
    assert path.read_bytes() == bytes(expected)
