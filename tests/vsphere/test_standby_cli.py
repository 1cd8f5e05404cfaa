"""Two serving nodes through the CLI against the govmomi simulator: ``recover`` on node A holds
the service address by a lease in the shared state; A is killed while its VM runs from the
backup; ``liverecovery standby`` on node B (its own results folder) takes the address over,
resumes the job from the journal in the shared state and brings the VM home."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from liverecovery.testing.samples import sample_vm

from .conftest import HOST, LOCAL_DS, Inventory, Simulator
from .test_recover_cli import _free_port

pytestmark = pytest.mark.timeout(180)


def _job_file(tmp_path: Path, simulator: Simulator, node: str, port: int, trigger: str) -> Path:
    backup, state = tmp_path / "backup", tmp_path / "shared-state"
    job = tmp_path / f"job-{node}.toml"
    job.write_text(
        f'backup = "{backup}"\nvm = "node-vm"\nhost = "{HOST}"\ndatastore = "{LOCAL_DS}"\n'
        f'vcenter = "{simulator.url}"\nuser = "{simulator.user}"\npassword_env = "VC_PW"\n'
        f'ca_file = "{simulator.ca_file}"\nnfs_address = "127.0.0.1"\n'
        'esx_address = "127.0.0.1"\n'
        "[settings]\n"
        f'job_results_dir = "{tmp_path / ("results-" + node)}"\n'
        f'shared_state = "{state}"\nnode_name = "{node}"\nlease_s = 2.0\n'
        f"nfs_port = {port}\nportmap_port = {port}\njob_space_floor_bytes = 0\n"
        f'migration_trigger = "{trigger}"\ncompensation_retry_delay_s = 0\nnfs_grace_s = 5\n'
    )
    return job


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "liverecovery.cli", *args]


def test_a_standby_node_takes_the_address_and_the_job_over(
    simulator: Simulator, inventory: Inventory, tmp_path: Path
) -> None:
    sample_vm("node-vm", disk_sizes=(64 << 20,)).write(tmp_path / "backup")
    port = _free_port()
    options = inventory.host().configManager.advancedOption
    options.UpdateValues([vim.option.OptionValue(key="vcsim.nfs.port", value=str(port))])
    env = {**os.environ, "VC_PW": simulator.password}
    a = subprocess.Popen(
        _cli("recover", "--job-file", str(_job_file(tmp_path, simulator, "a", port, "manual"))),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    try:
        started = time.monotonic()
        assert a.stdout is not None
        while True:
            line = a.stdout.readline()
            assert line, f"node A exited ({a.wait()}): {seen}"
            seen.append(line.rstrip())
            if line.rstrip().endswith("serving"):
                break
            assert time.monotonic() - started < 90, seen
        holder = json.loads((tmp_path / "shared-state" / "leases" / "127.0.0.1").read_text())
        assert holder["node"] == "a" and holder["epoch"] == 1
    finally:
        os.kill(a.pid, signal.SIGKILL)  # node A dies with its VM running from the backup
        a.wait(timeout=30)
    assert ("node-vm", "poweredOn", (f"liverecovery-{HOST}",)) in inventory.snapshot().vms

    b = subprocess.run(
        _cli(
            "standby",
            "--job-file",
            str(_job_file(tmp_path, simulator, "b", port, "delay")),
            "--json",
        ),
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert b.returncode == 0, b.stderr
    assert "took 127.0.0.1 over: 1 job(s) resumed" in b.stderr
    summary = json.loads(b.stdout.strip().splitlines()[-1])
    assert summary["state"] == "completed", summary
    holder = json.loads((tmp_path / "shared-state" / "leases" / "127.0.0.1").read_text())
    assert holder["node"] == "b" and holder["epoch"] == 2
    assert ("node-vm", "poweredOn", (LOCAL_DS,)) in inventory.snapshot().vms
    # the job ended for good: its journal and objects are gone from the shared state
    left = sorted(p.name for p in (tmp_path / "shared-state").iterdir())
    assert left == [".lock", "exports", "handle-key", "leases"], left
