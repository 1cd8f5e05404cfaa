"""Ctrl-C of the process running a live recovery, as ``liverecovery recover`` follows it: before
power-on the job is rolled back; once the VM runs from the backup it is left running (never
powered off), the process still ends within seconds and says so, and ``resume`` finishes it.
The ESX host lives in another process (``sim/remote.py``), as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liverecovery.job.journal import unfinished_journals
from liverecovery.sim.remote import RemoteSimulatedHost
from liverecovery.testing.samples import sample_vm, tree_digests

from .test_job_sigkill import HERE, HOST, SIZE, Process

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.mark.parametrize("stop_in", ["registering", "serving", "migrating"])
async def test_ctrl_c_rolls_back_before_power_on_and_leaves_a_running_vm_running(
    tmp_path: Path, stop_in: str
) -> None:
    root = tmp_path / "esx"
    root.mkdir()
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
    work = tmp_path / "job"
    work.mkdir()
    try:
        assert esx.readline() == "ready"
        vm = sample_vm("vm", disk_sizes=(SIZE,), head=SIZE // 2)
        vm.write(work / "backup")
        before = tree_digests(work / "backup")
        host = RemoteSimulatedHost(socket, call_timeout=60)
        proc = subprocess.Popen(  # noqa: ASYNC220 - the job runs in another process
            [sys.executable, str(HERE / "run_job.py"), str(work), str(socket), HOST, "follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            while f"state {stop_in}" not in lines:
                line = proc.stdout.readline()
                assert line, (proc.wait(), lines)
                lines.append(line.strip())
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        lines += out.splitlines()
        assert took < 10, (took, err)
        assert "Traceback" not in err, err
        vms = await host.vms()
        if stop_in == "registering":
            assert any(line.startswith("done cancelled") for line in lines), lines
            assert vms == [] and await host.nfs_datastores(HOST) == []
            assert unfinished_journals(work / "results") == []
        else:
            # Never powered off: the VM runs on, and the process said what it left.
            assert "undo power_off ok" not in lines
            (running,) = vms
            assert await host.power_state(running) == "poweredOn"
            assert "left running" in err and "resume" in err, err
            assert len(unfinished_journals(work / "results")) == 1
            resumed = Process(HERE / "run_job.py", work, socket, HOST, "resume")
            try:
                assert resumed.until("resumed") == "resumed 1"
                done = resumed.until("done")
                assert resumed.proc.wait(timeout=60) == 0
            finally:
                resumed.kill()
            assert done.startswith("done completed"), resumed.lines
            (moved,) = await host.vms()
            status = await host.vm_status(moved)
            assert status["powered_on"] and status["migrated"], status
            await host.power_off(moved)
        assert tree_digests(work / "backup") == before
    finally:
        esx.kill()
