"""``liverecovery plan run|status|cancel`` and ``demo --vms`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liverecovery.config import MiB
from liverecovery.testing.samples import sample_vm

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, tmp: Path, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "XDG_STATE_HOME": str(tmp / "state")},
    )


CLI = (sys.executable, "-m", "liverecovery.cli")


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def write_plan(tmp: Path, body: str, *, trigger: str = "delay") -> Path:
    backup = tmp / "backup"
    for i, vm in enumerate(("db1", "app1", "app2")):
        if not (backup / vm).exists():
            sample_vm(vm, disk_sizes=(16 * MiB,), seed=i).write(backup)
    path = tmp / "plan.toml"
    path.write_text(
        f'[connection]\nbackup = "{backup}"\n\n'
        f'[settings]\njob_results_dir = "{tmp / "results"}"\nmigration_trigger = "{trigger}"\n'
        "serve_before_migrate_s = 0.1\njob_space_floor_bytes = 0\n" + body
    )
    return path


PLAN = """
[plan]
name = "cli"
hosts = ["esx-1", "esx-2"]
placement = "round-robin"

[defaults]
datastore = "datastore1"

[[group]]
name = "db"

[[group]]
name = "app"
{app_keys}

[[vm]]
name = "db1"
group = "db"

[[vm]]
name = "app1"
group = "app"

[[vm]]
name = "app2"
group = "app"
"""


def test_plan_run_json(tmp_path: Path) -> None:
    path = write_plan(tmp_path, PLAN.format(app_keys=""))
    done = cli("plan", "run", str(path), "--simulate", "--json", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["plan"] == "cli" and summary["state"] == "completed"
    rows = {r["vm"]: r for r in summary["vms"]}
    assert set(rows) == {"db1", "app1", "app2"}
    assert {r["state"] for r in rows.values()} == {"completed"}
    assert [rows[v]["host"] for v in ("db1", "app1", "app2")] == ["esx-1", "esx-2", "esx-1"]
    assert rows["db1"]["power_on_s"] < rows["app1"]["power_on_s"]


def test_plan_run_lines_when_not_on_a_terminal(tmp_path: Path) -> None:
    path = write_plan(tmp_path, PLAN.format(app_keys=""))
    done = cli("plan", "run", str(path), "--simulate", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert any("group db: started" in line for line in out)
    assert any("vm app2 (app, esx-1): serving" in line for line in out)
    assert any(line.startswith("VM ") and "POWER-ON" in line for line in out)
    assert out[-1].startswith("plan cli: completed in ")


def test_a_bad_plan_is_refused_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    body = PLAN.format(app_keys='after = ["web"]\non_failure = "maybe"').replace(
        'name = "app2"', 'name = "ghost"'
    )
    path = write_plan(tmp_path, body)
    done = cli("plan", "run", str(path), "--simulate", tmp=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("liverecovery: error: ")
    on_failure, app = line_of(path, "on_failure"), line_of(path, 'name = "app"') - 1
    assert f"{path}:{on_failure}: group 'app': on_failure must be one of continue, stop" in (
        done.stderr
    )
    assert f"{path}:{app}: group 'app': after names unknown group 'web'" in done.stderr
    assert "the plan has 2 problem(s)" in done.stderr
    # fixed syntax, an unknown VM: refused by the plan's preflight, before any job starts
    path = write_plan(tmp_path, PLAN.format(app_keys="").replace('name = "app2"', 'name = "ghost"'))
    done = cli("plan", "run", str(path), "--simulate", tmp=tmp_path)
    assert done.returncode == 1
    assert "vm 'ghost' is not in the backup catalog" in done.stderr
    assert not (tmp_path / "results" / "journal").exists() or not any(
        (tmp_path / "results" / "journal").iterdir()
    )


def test_plan_status_and_cancel_through_the_control_socket(tmp_path: Path) -> None:
    path = write_plan(tmp_path, PLAN.format(app_keys=""), trigger="manual")
    # the db group waits 60 s after power-on: time to ask for status and cancel
    path.write_text(path.read_text().replace('name = "db"\n', 'name = "db"\ndelay_s = 60\n'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverecovery.cli", "plan", "run", str(path), "--simulate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )
    try:
        results = ["--job-results-dir", str(tmp_path / "results")]
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            done = cli("plan", "status", "--json", *results, tmp=tmp_path, timeout=30)
            if done.returncode == 0:
                status = json.loads(done.stdout)
                (plan,) = status["plans"]  # type: ignore[misc]
                states = {r["vm"]: r["state"] for r in plan["vms"]}
                if states["db1"] == "serving":
                    break
            time.sleep(0.2)
        assert states == {"db1": "serving", "app1": "waiting", "app2": "waiting"}, status
        done = cli("plan", "status", *results, tmp=tmp_path, timeout=30)
        assert "plan cli" in done.stdout and "db1" in done.stdout
        done = cli("plan", "cancel", "cli", *results, tmp=tmp_path, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "plan cli: cancelling"
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1
    assert "group app: skipped: the plan was cancelled" in out
    assert "plan cli: cancelled" in out
    assert "left 1 job(s) running" in err or "db1" in out


def test_demo_vms_5(tmp_path: Path) -> None:
    done = cli("demo", "--vms", "5", "--disk-size", "16M", "--serve-seconds", "0.1", "--json",
               tmp=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == "completed"
    assert len(result["vms"]) == 5
    assert result["verified"] is True and result["backup_unchanged"] is True
    assert {r["group"] for r in result["vms"]} == {"db", "app", "web"}
    assert len({r["host"] for r in result["vms"]}) == 3


def test_ctrl_c_cancels_the_plan_and_leaves_running_vms_running(tmp_path: Path) -> None:
    import signal

    path = write_plan(tmp_path, PLAN.format(app_keys=""), trigger="manual")
    path.write_text(path.read_text().replace('name = "db"\n', 'name = "db"\ndelay_s = 60\n'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverecovery.cli", "plan", "run", str(path), "--simulate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "vm db1 (db, esx-1): serving" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, err
    assert "stopping: no more groups start" in err
    assert "group app: skipped: the plan was cancelled" in out
    assert "Traceback" not in err


def test_two_nodes_each_run_their_part_from_the_cli(tmp_path: Path) -> None:
    """Two processes, one plan file each (own results folder), one shared directory."""
    from liverecovery.cluster.placement import place

    hosts = [f"esx-{i}" for i in range(40)]
    a = [h for h in hosts if place(h, ["A", "B"]) == "A"][:1]
    b = [h for h in hosts if place(h, ["A", "B"]) == "B"][:1]
    body = PLAN.format(app_keys="").replace('["esx-1", "esx-2"]', f'["{a[0]}", "{b[0]}"]')
    shared = tmp_path / "shared"

    def node_flags(node: str) -> list[str]:
        return ["--node", node, "--nodes", "A,B", "--shared-state", str(shared)]

    procs = {}
    for node in ("A", "B"):
        folder = tmp_path / node
        folder.mkdir()
        path = write_plan(folder, body)
        procs[node] = subprocess.Popen(
            [*CLI, "plan", "run", str(path), "--simulate", "--json", *node_flags(node)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "XDG_STATE_HOME": str(folder / "state")},
        )
    out = {}
    for node, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=100)
        assert proc.returncode == 0, stderr
        out[node] = json.loads(stdout)
    # round-robin: db1 and app2 on the first host (A's), app1 on the second (B's)
    assert sorted(r["vm"] for r in out["A"]["vms"]) == ["app2", "db1"]
    assert [r["vm"] for r in out["B"]["vms"]] == ["app1"]
    assert out["A"]["node"]["others"] == {"B": 1} and out["B"]["node"]["node"] == "B"
    assert out["A"]["run_id"] == out["B"]["run_id"]
    assert {r["state"] for n in out.values() for r in n["vms"]} == {"completed"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--node", "C", "--nodes", "A,B", "--shared-state", "S"], "node_name 'C' is not one"),
        (["--node", "A", "--nodes", "A,A", "--shared-state", "S"], "nodes: 'A' is given twice"),
        (["--node", "A", "--nodes", "A,B"], "shared_state is empty"),
        (["--run-id", "../x"], "run id '../x'"),
    ],
)
def test_bad_node_flags_are_refused_before_anything_starts(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    path = write_plan(tmp_path, PLAN.format(app_keys=""))
    done = cli("plan", "run", str(path), "--simulate", *flags, tmp=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "results" / "plans").exists()
