"""``liverecovery recover`` in a script (not on a terminal) against the govmomi simulator: each
state as it happens, one summary line, the error on one line; no ``--nfs-address`` needed (the
address routing to the ESX host is found).

The simulator cannot mount NFS for real, so registration fails and the job rolls back (see
test_recover_cli.py); what is checked here is what the operator's log shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from liverecovery.job.sharing import datastore_name_for
from liverecovery.testing.samples import sample_vm

from .conftest import HOST, LOCAL_DS, Simulator

pytestmark = pytest.mark.timeout(120)


def test_recover_logs_each_state_and_a_summary_line(simulator: Simulator, tmp_path: Path) -> None:
    (simulator.nfs_root / datastore_name_for(HOST)).mkdir(exist_ok=True)
    backup = tmp_path / "backup"
    sample_vm("cli-vm", disk_sizes=(16 << 20,)).write(backup)
    job = tmp_path / "job.toml"
    job.write_text(
        f'backup = "{backup}"\nvm = "cli-vm"\nhost = "{HOST}"\ndatastore = "{LOCAL_DS}"\n'
        f'vcenter = "{simulator.url}"\nuser = "{simulator.user}"\npassword_env = "VC_PW"\n'
        f'ca_file = "{simulator.ca_file}"\nesx_address = "127.0.0.1"\n'
        "nfs_port = 0\nportmap_port = 0\n"
        "[settings]\n"
        f'job_results_dir = "{tmp_path}/results"\nnfs_listen_host = "127.0.0.1"\n'
        "job_space_floor_bytes = 0\n"
        'migration_trigger = "delay"\ncompensation_retry_delay_s = 0\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "recover", "--job-file", str(job)],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "VC_PW": simulator.password},
    )
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    states = [m[1] for m in (re.match(r"^ *\d+\.\d{3}s  ([a-z_]+)$", x) for x in lines[:-1]) if m]
    assert len(states) == len(lines) - 1, out.stdout  # every line but the last is a state
    # it got to mounting without --nfs-address: the address routing to 127.0.0.1 was found
    assert states[:3] == ["preflight", "exporting", "mounting"]
    assert states[-2:] == ["rolling_back", "failed"]
    assert re.match(r"^job \S+: cli-vm failed in \d+\.\ds$", lines[-1]), lines[-1]
    (error,) = [x for x in out.stderr.splitlines() if x.startswith("job ")][1:]
    assert ": failed: " in error
    assert "Traceback" not in out.stderr and "<State." not in out.stdout
