"""``liverecovery verify --plan`` as an operator runs it on simulated ESX hosts: exit codes,
the plan's report files, refusals; ``liverecovery demo --verify --vms N``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liverecovery.cli.verify import _bootable_sample
from liverecovery.testing.samples import sample_vm, tree_digests
from tests.cli.test_verify_cli import _cli

pytestmark = pytest.mark.timeout(120)


def _plan(tmp_path: Path, groups: dict[str, list[str]], *, policy: str = "continue") -> Path:
    text = f"""\
[plan]
name = "drill"
hosts = ["esx-a", "esx-b"]
placement = "round-robin"

[defaults]
datastore = "datastore1"

[settings]
job_results_dir = "{tmp_path / "results"}"
cache_min_free_percent = 0
job_space_floor_bytes = 0
compensation_retry_delay_s = 0
"""
    for group in groups:
        text += f'\n[[group]]\nname = "{group}"\non_failure = "{policy}"\n'
    for group, vms in groups.items():
        for vm in vms:
            text += f'\n[[vm]]\nname = "{vm}"\ngroup = "{group}"\n'
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def _backup(tmp_path: Path, bootable: list[str], blank: list[str] = ()) -> Path:  # type: ignore[assignment]
    root = tmp_path / "backup"
    for vm in bootable:
        _bootable_sample(vm, 64 << 20).write(root)
    for vm in blank:  # no partition table: its partitions check fails
        sample_vm(vm, disk_sizes=(64 << 20,)).write(root)
    return root


def test_verify_plan_simulated_passes_and_writes_one_report(tmp_path: Path) -> None:
    backup = _backup(tmp_path, ["db1", "app1", "app2"])
    before = tree_digests(backup)
    plan = _plan(tmp_path, {"db": ["db1"], "app": ["app1", "app2"]})
    out = _cli("verify", str(backup), "--plan", str(plan), "--simulate", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["schema"] == 1 and result["kind"] == "plan-verification"
    assert result["passed"] is True
    assert result["totals"]["vms"] == 3 and result["totals"]["all_booted"] is True
    assert result["totals"]["slowest_time_to_heartbeat_s"] is not None
    assert [v["group"] for v in result["vms"]] == ["db", "app", "app"]
    assert {v["host"] for v in result["vms"]} == {"esx-a", "esx-b"}
    folders = list((tmp_path / "results" / "verify").glob("plan-drill-*"))
    assert len(folders) == 1
    on_disk = json.loads((folders[0] / "plan-report.json").read_text())
    assert on_disk["run_id"] == result["run_id"]
    assert (folders[0] / "plan-report.md").read_text().startswith("# Verification of plan drill")
    for vm in result["vms"]:
        assert (folders[0] / vm["job_id"] / "report.json").exists()
    assert not any((tmp_path / "results" / "jobs").glob("*"))
    assert tree_digests(backup) == before


def test_a_failing_vm_in_a_stop_group_exits_1_and_later_groups_do_not_run(
    tmp_path: Path,
) -> None:
    backup = _backup(tmp_path, ["app1"], blank=["db1"])
    plan = _plan(tmp_path, {"db": ["db1"], "app": ["app1"]}, policy="stop")
    reports = tmp_path / "reports"
    out = _cli(
        "verify", str(backup), "--plan", str(plan), "--simulate", "--report-dir", str(reports)
    )
    assert out.returncode == 1
    assert "FAILED" in out.stdout and "1 not run" in out.stdout
    assert "stopped: group 'db' failed and its on_failure is stop" in out.stderr
    assert "partitions: failed" in out.stderr
    (folder,) = reports.glob("plan-drill-*")
    data = json.loads((folder / "plan-report.json").read_text())
    assert {v["vm"]: v["outcome"] for v in data["vms"]} == {"db1": "failed", "app1": "not_run"}
    assert data["groups"] == [
        {"name": "db", "ran": True, "reason": ""},
        {"name": "app", "ran": False, "reason": "group 'db' failed and its on_failure is stop"},
    ]
    assert "| app1 | app |" in (folder / "plan-report.md").read_text()
    assert not any((tmp_path / "results" / "jobs").glob("*"))


def test_verify_plan_refusals(tmp_path: Path) -> None:
    backup = _backup(tmp_path, ["db1"])
    plan = _plan(tmp_path, {"db": ["db1", "nosuch"]})
    out = _cli("verify", str(backup), "--plan", str(plan), "--simulate")
    assert out.returncode != 0 and "nosuch" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli("verify", str(backup), "--plan", str(plan), "--vm", "db1", "--simulate")
    assert out.returncode != 0 and "either --vm" in out.stderr
    out = _cli("verify", str(backup), "--plan", str(plan), "--simulate", "--check", "tcp:22")
    assert out.returncode != 0 and "tcp checks" in out.stderr
    out = _cli("verify", str(backup), "--vm", "db1", "--simulate")
    assert out.returncode != 0 and "--simulate verifies a plan" in out.stderr
    assert not (tmp_path / "results" / "verify").exists()


def test_demo_verify_vms_3_passes_and_leaves_nothing(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("[settings]\ncache_min_free_percent = 0\n")
    out = _cli(
        "demo",
        "--verify",
        "--vms",
        "3",
        "--disk-size",
        "64M",
        "--json",
        "--settings",
        str(settings),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["passed"] is True and result["backup_unchanged"] is True
    assert not any(result["left_behind"].values()), result["left_behind"]
    report = result["report"]
    assert report["kind"] == "plan-verification" and report["passed"] is True
    assert [v["group"] for v in report["vms"]] == ["db", "app", "web"]
    assert all(v["time_to_heartbeat_s"] >= 0.3 for v in report["vms"])
    assert report["totals"]["slowest_time_to_heartbeat_s"] >= 0.3


def test_demo_still_refuses_verify_with_backup(tmp_path: Path) -> None:
    out = _cli("demo", "--verify", "--vms", "2", "--backup", str(tmp_path))
    assert out.returncode == 2 and "cannot be combined" in out.stderr


def test_plan_status_and_cancel_reach_verify_plan(tmp_path: Path) -> None:
    """``plan status`` shows a running ``verify --plan`` with its table; ``plan cancel`` stops
    it, and every copy is powered off and undone."""
    backup = _backup(tmp_path, ["db1", "app1"])
    plan = _plan(tmp_path, {"db": ["db1"], "app": ["app1"]})
    # the db group waits 60 s once its copy's checks ended: time to ask and to cancel
    plan.write_text(plan.read_text().replace('name = "db"\n', 'name = "db"\ndelay_s = 60\n'))
    results = ["--job-results-dir", str(tmp_path / "results")]
    argv = ["verify", str(backup), "--plan", str(plan), "--simulate", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverecovery.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        rows: dict[str, str] = {}
        while time.monotonic() < deadline and rows.get("db1") != "checks passed":
            time.sleep(0.2)
            done = _cli("plan", "status", "--json", *results)
            if done.returncode == 0:
                (status,) = json.loads(done.stdout)["plans"]
                rows = {r["vm"]: r["state"] for r in status["vms"]}
        assert rows == {"db1": "checks passed", "app1": "waiting"}, rows
        assert status["kind"] == "verification" and status["state"] == "verifying"
        done = _cli("plan", "status", *results)
        assert f"plan drill verification (run {status['run_id']}): verifying" in done.stdout
        assert "db1" in done.stdout and "checks passed" in done.stdout
        done = _cli("plan", "cancel", "drill", *results)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "plan drill verification: cancelling"
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["cancelled"] is True and report["passed"] is False
    outcomes = {v["vm"]: v["outcome"] for v in report["vms"]}
    assert outcomes == {"db1": "passed", "app1": "not_run"}
    (db1,) = [v for v in report["vms"] if v["vm"] == "db1"]
    assert db1["report"]["cleanup"] == {"clean": True, "errors": []}
    assert not any((tmp_path / "results" / "jobs").glob("*"))
    assert not (tmp_path / "results" / "control.sock").exists()
