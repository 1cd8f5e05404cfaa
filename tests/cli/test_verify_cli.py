"""``liverecovery verify`` and ``liverecovery demo --verify`` as an operator runs them: exit
codes, one-line refusals before anything is contacted, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", *argv],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def roomy(tmp_path: Path) -> str:
    """Settings that keep no share of the disk free: the test machine's disk may be full."""
    path = tmp_path / "settings.toml"
    path.write_text("[settings]\ncache_min_free_percent = 0\n")
    return str(path)


def test_demo_verify_passes_and_leaves_nothing(roomy: str) -> None:
    out = _cli("demo", "--verify", "--disk-size", "64M", "--json", "--settings", roomy)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["passed"] is True and result["backup_unchanged"] is True
    assert not any(result["left_behind"].values())
    report = result["report"]
    assert report["schema"] == 1
    assert {c["name"]: c["outcome"] for c in report["checks"]} == {
        "partitions": "passed",
        "heartbeat": "passed",
        "screenshot": "passed",
    }
    assert report["time_to_heartbeat_s"] >= 0.5  # the simulated guest's boot delay
    assert report["verification_vm"].startswith("demo-vm-verify-")


def test_demo_verify_prints_the_markdown_report(roomy: str) -> None:
    out = _cli("demo", "--verify", "--disk-size", "64M", "--settings", roomy)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# Backup verification of demo-vm: PASSED")
    assert "left behind: nothing" in out.stdout


def _verify(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    backup = tmp_path / "backup"
    backup.mkdir(exist_ok=True)
    return _cli(
        "verify",
        str(backup),
        "--vm",
        "web01",
        "--vcenter",
        "vc.invalid",
        "--user",
        "u",
        "--password-env",
        "VC_PW",
        "--host",
        "esx01",
        *extra,
        env={"VC_PW": "x", **(env or {})},
    )


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (("--check", "tcp:22"), {}, "--network-reachable"),
        (("--check", "guest-command:/bin/true"), {}, "guest credentials"),
        (
            (
                "--check",
                "guest-command:/bin/true",
                "--guest-user-env",
                "GU",
                "--guest-password-env",
                "GP",
            ),
            {"GU": "root"},
            "environment variable GP is not set",
        ),
        (("--check", "ip"), {}, "connected NIC"),
        (("--check", "bogus"), {}, "check 'bogus': not one of"),
        (("--check", "tcp:http"), {}, "expected tcp:PORT"),
    ],
)
def test_refusals_are_one_line_and_exit_1_before_vcenter_is_contacted(
    tmp_path: Path, extra: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    out = _verify(tmp_path, *extra, env=env)
    assert out.returncode == 1, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("liverecovery: error: ") and message in line
    assert "vc.invalid" not in line  # refused before connecting


def test_verify_needs_a_vm(tmp_path: Path) -> None:
    out = _cli(
        "verify",
        str(tmp_path),
        "--vcenter",
        "v",
        "--user",
        "u",
        "--password-env",
        "P",
        "--host",
        "h",
    )
    assert out.returncode == 1
    assert "verify needs --vm" in out.stderr
