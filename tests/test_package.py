"""The public API and the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import liverecovery
from liverecovery import errors


def test_all_is_sorted_and_importable() -> None:
    assert liverecovery.__all__ == sorted(liverecovery.__all__)
    for name in liverecovery.__all__:
        assert hasattr(liverecovery, name), name


def test_py_typed_is_shipped() -> None:
    assert (Path(liverecovery.__file__).parent / "py.typed").exists()


def test_every_error_comes_from_one_tree() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, errors.LiveRecoveryError), name


def test_demo_json_runs_a_complete_job() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "demo", "--json", "--serve-seconds", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["state"] == "completed"
    assert summary["states_visited"][0] == "created"
    assert summary["states_visited"][-1] == "completed"
    assert summary["verified"] is True and summary["backup_unchanged"] is True
    assert summary["guest_bytes_written"] > 0
    assert summary["bytes_migrated"] == summary["disk_size"] == 1 << 30
    # Power-on reads a boot working set, not the disk: a few MiB of a 1 GiB disk.
    assert 0 < summary["backup_bytes_read_before_power_on"] <= 16 << 20
    assert 0 < summary["time_to_power_on_s"] < summary["elapsed_s"]


def test_cli_reports_errors_without_a_traceback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "liverecovery.cli", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_importing_the_package_does_not_import_pyvmomi() -> None:
    code = "import liverecovery, sys; assert 'pyVmomi' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
