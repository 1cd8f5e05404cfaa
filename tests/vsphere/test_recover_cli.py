"""``liverecovery recover`` against the govmomi simulator, as an operator runs it.

The simulator reads the VM folder from our NFS server at registration (tests/vcsim/nfs.go, once
the host option ``vcsim.nfs.port`` names the server's port), so a recovery runs to completed
with no file placed by hand; a datastore the host does not have is refused in preflight.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pyVmomi import vim

from liverecovery.job.sharing import datastore_name_for
from liverecovery.testing.samples import sample_vm

from .conftest import HOST, LOCAL_DS, Inventory, Simulator

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    """A port the OS picks now, for the server the CLI starts (the simulator must know it
    before the job mounts: a real ESX host would ask the portmapper on port 111)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(simulator: Simulator, tmp_path: Path, datastore: str, port: int) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    backup = tmp_path / "backup"
    sample_vm("cli-vm", disk_sizes=(64 << 20,)).write(backup)
    results = tmp_path / "results"
    job = tmp_path / "job.toml"
    job.write_text(
        f'backup = "{backup}"\nvm = "cli-vm"\nhost = "{HOST}"\ndatastore = "{datastore}"\n'
        f'vcenter = "{simulator.url}"\nuser = "{simulator.user}"\npassword_env = "VC_PW"\n'
        f'ca_file = "{simulator.ca_file}"\nnfs_address = "127.0.0.1"\nesx_address = "127.0.0.1"\n'
        "[settings]\n"
        f'job_results_dir = "{results}"\nnfs_listen_host = "127.0.0.1"\n'
        f"nfs_port = {port}\nportmap_port = {port}\njob_space_floor_bytes = 0\n"
        'migration_trigger = "delay"\ncompensation_retry_delay_s = 0\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "recover", "--job-file", str(job), "--json"],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "VC_PW": simulator.password},
    )
    assert not (results / "control.sock").exists()
    return out.returncode, out.stderr, json.loads(out.stdout.strip().splitlines()[-1])


def test_recover_completes_against_the_simulator(
    simulator: Simulator, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    port = _free_port()
    options = inventory.host().configManager.advancedOption
    options.UpdateValues([vim.option.OptionValue(key="vcsim.nfs.port", value=str(port))])
    code, stderr, summary = _run(simulator, tmp_path, LOCAL_DS, port)
    assert code == 0, stderr
    assert summary["state"] == "completed"
    after = inventory.snapshot()
    assert ("cli-vm", "poweredOn", (LOCAL_DS,)) in after.vms
    assert after.host_datastores == before.host_datastores
    assert not (simulator.nfs_root / datastore_name_for(HOST)).exists()


def test_recover_refuses_a_missing_datastore_in_preflight(
    simulator: Simulator, inventory: Inventory, tmp_path: Path
) -> None:
    before = inventory.snapshot()
    code, stderr, summary = _run(simulator, tmp_path, "NODS", 0)
    assert code == 1
    assert "destination datastore 'NODS' does not exist" in stderr
    assert summary["state"] == "failed"
    assert summary["states_visited"] == ["created", "preflight", "rolling_back", "failed"]
    assert summary["compensations"] == []  # nothing was exported, mounted or registered
    assert inventory.snapshot() == before


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


def test_placement_and_network_map_from_flags_and_job_file(tmp_path: Path) -> None:
    from liverecovery.cli import build_parser
    from liverecovery.cli.recover import RecoverConfig
    from liverecovery.errors import SettingsError

    base = ["recover", "--vcenter", "vc", "--user", "u", "--password-env", "PW", "--host", "h"]
    base += [str(tmp_path), "--vm", "vm", "--datastore", "ds"]
    flags = ["--folder", "Recovered", "--resource-pool", "Gold"]
    flags += ["--network-map", "VM Network=DR Net", "--network-map", "Backup=DR Backup"]
    parser = build_parser()
    spec = RecoverConfig.from_args(parser.parse_args([*base, *flags]), need_job=True).spec()
    assert (spec.folder, spec.resource_pool) == ("Recovered", "Gold")
    assert spec.network_map == {"VM Network": "DR Net", "Backup": "DR Backup"}
    job = tmp_path / "job.toml"
    job.write_text(
        'vcenter = "vc"\nuser = "u"\npassword_env = "PW"\nhost = "h"\nbackup = "b"\nvm = "vm"\n'
        'datastore = "ds"\nfolder = "F"\n[network_map]\n"VM Network" = "DR Net"\n'
    )
    spec = RecoverConfig.from_args(
        parser.parse_args(["recover", "--job-file", str(job)]), need_job=True
    ).spec()
    assert spec.folder == "F" and spec.network_map == {"VM Network": "DR Net"}
    with pytest.raises(SettingsError, match="expected OLD=NEW"):
        RecoverConfig.from_args(
            parser.parse_args([*base, "--network-map", "nonsense"]), need_job=True
        )
