"""``liverecovery verify`` against the govmomi simulator, as an operator runs it: a guest that
never reports VMware Tools fails the verification (exit 1), one whose Tools report a heartbeat
and an IP address (tests/vcsim's guest hook) passes it (exit 0); the report is written either
way and nothing is left in the inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from liverecovery.cli.verify import _bootable_sample
from liverecovery.job.sharing import datastore_name_for

from .conftest import HOST, Inventory, Simulator
from .test_recover_cli import _free_port

pytestmark = pytest.mark.timeout(120)


def _start(
    simulator: Simulator, inventory: Inventory, tmp_path: Path, vm: str, *flags: str
) -> subprocess.Popen[str]:
    backup = tmp_path / "backup"
    _bootable_sample(vm, 64 << 20).write(backup)
    port = _free_port()
    options = inventory.host().configManager.advancedOption
    options.UpdateValues([vim.option.OptionValue(key="vcsim.nfs.port", value=str(port))])
    job = tmp_path / "job.toml"
    job.write_text(
        f'backup = "{backup}"\nvm = "{vm}"\nhost = "{HOST}"\n'
        f'vcenter = "{simulator.url}"\nuser = "{simulator.user}"\npassword_env = "VC_PW"\n'
        f'ca_file = "{simulator.ca_file}"\nnfs_address = "127.0.0.1"\nesx_address = "127.0.0.1"\n'
        "[settings]\n"
        f'job_results_dir = "{tmp_path / "results"}"\nnfs_listen_host = "127.0.0.1"\n'
        f"nfs_port = {port}\nportmap_port = {port}\njob_space_floor_bytes = 0\n"
        "compensation_retry_delay_s = 0\n"
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "verify",
            "--job-file",
            str(job),
            "--json",
            "--report-dir",
            str(tmp_path / "report"),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "VC_PW": simulator.password},
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out, err = proc.communicate(timeout=100)
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), err


def test_a_guest_without_tools_fails_the_verification(
    simulator: Simulator, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    proc = _start(
        simulator,
        inventory,
        tmp_path,
        "cli-notools",
        "--check",
        "partitions",
        "--check",
        "heartbeat",
        "--check-timeout",
        "2",
    )
    code, report, stderr = _finish(proc)
    assert code == 1, stderr
    assert {c["name"]: c["outcome"] for c in report["checks"]} == {
        "partitions": "passed",
        "heartbeat": "timed_out",
    }
    assert "heartbeat gray" in report["checks"][1]["detail"]
    assert report["cleanup"]["clean"] is True
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    assert "FAILED" in (tmp_path / "report" / "report.md").read_text()
    assert inventory.snapshot() == before
    assert not (simulator.nfs_root / datastore_name_for(HOST)).exists()


def test_a_guest_whose_tools_answer_passes_the_verification(
    simulator: Simulator, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    proc = _start(
        simulator,
        inventory,
        tmp_path,
        "cli-tools",
        "--isolated-network",
        "VM Network",
        "--check",
        "heartbeat",
        "--check",
        "ip",
        "--check-timeout",
        "30",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        names = [n for n in inventory.vm_names() if n.startswith("cli-tools-verify-")]
        vm = inventory.vm(names[0]) if names else None
        if vm is not None and str(vm.runtime.powerState) == "poweredOn":
            key = f"vcsim.guest.VirtualMachine:{vm._moId}"
            inventory.host().configManager.advancedOption.UpdateValues(
                [vim.option.OptionValue(key=key, value="192.0.2.30")]
            )
            break
        time.sleep(0.05)
    code, report, stderr = _finish(proc)
    assert code == 0, (stderr, report)
    assert report["passed"] is True and report["time_to_heartbeat_s"] is not None
    assert "192.0.2.30" in report["checks"][1]["detail"]
    assert inventory.snapshot() == before
