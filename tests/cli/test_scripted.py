"""Unattended use: not on a terminal, each state is printed as it happens, then one summary line;
``--json`` keeps one object; ``demo --settings``; ``passkey`` from stdin or an env var."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from liverecovery.config import Passkey

pytestmark = pytest.mark.timeout(120)

STATE_LINE = re.compile(r"^ *\d+\.\d{3}s  (?P<state>[a-z_]+)$")


def test_demo_prints_each_state_while_the_job_runs(tmp_path: Path) -> None:
    settings = tmp_path / "demo.toml"
    # the file's serve time applies (no --serve-seconds), long enough to see the process alive
    settings.write_text("[settings]\nserve_before_migrate_s = 2.0\nprogress_interval_s = 0.5\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverecovery.cli", "demo", "--disk-size", "16M",
         "--settings", str(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        states = []
        alive_at_serving = False
        for line in proc.stdout:
            match = STATE_LINE.match(line.rstrip("\n"))
            if match is None:
                break
            states.append(match["state"])
            if match["state"] == "serving":
                alive_at_serving = proc.poll() is None
        summary = line
        rest = proc.stdout.read()
        proc.wait(100)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert states[0] == "preflight" and states[-1] == "completed"
    assert "serving" in states and alive_at_serving  # printed while the VM still ran
    assert summary.startswith("job ") and "completed" in summary and rest == ""
    assert "<State." not in summary


def test_demo_json_is_one_object_and_flags_win_over_the_settings_file(tmp_path: Path) -> None:
    settings = tmp_path / "demo.toml"
    settings.write_text("[settings]\nserve_before_migrate_s = 30.0\n")
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "demo", "--json", "--disk-size", "16M",
         "--settings", str(settings), "--serve-seconds", "0.1"],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    summary = json.loads(line)
    assert summary["state"] == "completed" and summary["verified"] is True
    assert summary["timings"]["serving"] < 30.0  # --serve-seconds 0.1 won


@pytest.mark.parametrize("how", ["stdin", "env"])
def test_passkey_prints_a_hash_that_matches_the_secret(how: str) -> None:
    secret = "correct horse battery staple"
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "passkey"]
        + (["--env", "LR_NEW_PASSKEY"] if how == "env" else []),
        input=f"{secret}\n" if how == "stdin" else "",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LR_NEW_PASSKEY": secret},
    )
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert secret not in out.stdout + out.stderr
    passkey = Passkey.from_string(line)
    assert passkey.matches(secret) and not passkey.matches(secret + "\n")


def test_public_values_print_as_plain_strings() -> None:
    from liverecovery.backends import MediaKind, RunKind
    from liverecovery.job.states import State

    assert repr((State.CREATED, State.COMPLETED)) == "('created', 'completed')"
    assert repr([MediaKind.TAPE, RunKind.DATA]) == "['tape', 'data']"
    assert f"{State.SERVING}" == "serving" and str(MediaKind.DISK) == "disk"
