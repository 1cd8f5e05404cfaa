"""``liverecovery recover`` against the govmomi simulator, as an operator runs it.

The simulator does not mount NFS for real (it keeps a NAS datastore's files in a local
directory), so registration finds no .vmx and fails: the job must roll back everything it did,
leaving the simulator's inventory as it was, and exit non-zero with the vSphere fault.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from liverecovery.job.sharing import datastore_name_for
from liverecovery.testing.samples import sample_vm

from .conftest import HOST, LOCAL_DS, Inventory, Simulator

pytestmark = pytest.mark.timeout(120)


def test_recover_rolls_back_a_failed_registration(
    simulator: Simulator, inventory: Inventory, tmp_path: Path
) -> None:
    (simulator.nfs_root / datastore_name_for(HOST)).mkdir(exist_ok=True)
    before = inventory.snapshot()
    backup = tmp_path / "backup"
    sample_vm("cli-vm", disk_sizes=(64 << 20,)).write(backup)
    results = tmp_path / "results"
    job = tmp_path / "job.toml"
    job.write_text(
        f'backup = "{backup}"\nvm = "cli-vm"\nhost = "{HOST}"\ndatastore = "{LOCAL_DS}"\n'
        f'vcenter = "{simulator.url}"\nuser = "{simulator.user}"\npassword_env = "VC_PW"\n'
        f'ca_file = "{simulator.ca_file}"\nnfs_address = "127.0.0.1"\nesx_address = "127.0.0.1"\n'
        "[settings]\n"
        f'job_results_dir = "{results}"\nnfs_listen_host = "127.0.0.1"\n'
        "nfs_port = 0\nportmap_port = 0\njob_space_floor_bytes = 0\n"
        'migration_trigger = "delay"\ncompensation_retry_delay_s = 0\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "recover", "--job-file", str(job), "--json"],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "VC_PW": simulator.password},
    )
    assert out.returncode == 1, out.stderr
    assert "failed" in out.stderr and "register" in out.stderr.lower()
    summary = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert summary["state"] == "failed"
    assert summary["compensations"] == [
        "unpublish",
        "unmount",
        "unexport",
        "release_cache_reservation",
    ]
    assert inventory.snapshot() == before
    assert not (results / "control.sock").exists()


def test_recover_names_a_missing_password(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "recover",
            str(tmp_path),
            "--vm",
            "x",
            "--vcenter",
            "127.0.0.1:1",
            "--user",
            "u",
            "--password-env",
            "NOT_SET_ANYWHERE",
            "--host",
            "h",
            "--datastore",
            "d",
            "--nfs-address",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "NOT_SET_ANYWHERE"},
    )
    assert out.returncode == 1
    assert "environment variable NOT_SET_ANYWHERE is not set" in out.stderr
