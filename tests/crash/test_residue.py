"""SIGKILLed ``demo`` and ``browse`` processes leave nothing that grows: the next start removes
what they left, and never what a live process holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liverecovery.cli.demo import DEMO_PREFIX, sweep_demo_residue
from liverecovery.cli.serve import refuse_state_inside
from liverecovery.errors import SettingsError
from liverecovery.testing.samples import make_vm_folder

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def env_with(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmp))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def demo_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob(f"{DEMO_PREFIX}*"))


def start_demo(tmp: Path, serve_seconds: str = "60") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "demo",
            "--disk-size",
            "4M",
            "--json",
            "--serve-seconds",
            serve_seconds,
        ],
        env=env_with(tmp),
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "demo-stderr.txt").open("ab"),
    )


def claimed(tmp: Path, before: set[Path]) -> bool:
    """Whether a demo folder not in ``before`` has been claimed by its demo."""
    return any((f / ".owner.lock").exists() for f in set(demo_folders(tmp)) - before)


def test_killed_demos_leave_no_growing_residue(tmp_path: Path) -> None:
    for _ in range(3):
        before = set(demo_folders(tmp_path))
        proc = start_demo(tmp_path)
        try:
            wait_for(lambda before=before: claimed(tmp_path, before))  # type: ignore[misc]
            (live,) = set(demo_folders(tmp_path)) - before
            removed = sweep_demo_residue(tmp_path)  # as another start would
            assert live.is_dir() and live not in removed  # a live demo's folder survives
            assert demo_folders(tmp_path) == [live]  # the killed ones' are gone
        finally:
            kill(proc)
        assert demo_folders(tmp_path) == [live]  # the killed one's, removed by the next start
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "demo",
            "--disk-size",
            "4M",
            "--json",
            "--serve-seconds",
            "0.1",
        ],
        env=env_with(tmp_path),
        capture_output=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert demo_folders(tmp_path) == []


def test_an_unclaimed_folder_is_removed_only_when_old(tmp_path: Path) -> None:
    young = tmp_path / f"{DEMO_PREFIX}young"
    old = tmp_path / f"{DEMO_PREFIX}old"
    young.mkdir()
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert sweep_demo_residue(tmp_path) == [old]
    assert young.is_dir()


def browse_residue(results: Path) -> tuple[int, int]:
    jobs = len(list((results / "jobs").glob("browse-*")))
    holders = len(list((results / "sessions").glob("*.holder")))
    return jobs, holders


def start_browse(tmp: Path, backup: Path, settings: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "browse",
            str(backup),
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "127.0.0.1",
            "--settings",
            str(settings),
        ],
        env=env_with(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(b"nfs://"), line
    return proc


def test_killed_browses_leave_no_growing_residue(tmp_path: Path) -> None:
    backup = make_vm_folder(tmp_path / "backup", "vm", disks=[(4 * MiB, {0: b"x"})])
    results = tmp_path / "results"
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[settings]\njob_results_dir = "{results}"\n')
    for _ in range(3):
        kill(start_browse(tmp_path, backup, settings))
        assert browse_residue(results) == (1, 1)  # the killed one's, removed by the next start
    last = start_browse(tmp_path, backup, settings)
    try:
        assert browse_residue(results) == (1, 1)  # only the live browse's own
    finally:
        last.send_signal(signal.SIGTERM)
        last.wait(timeout=60)
    assert browse_residue(results) == (0, 0)


def test_serve_refuses_a_state_directory_inside_the_export(tmp_path: Path) -> None:
    export = tmp_path / "export"
    with pytest.raises(SettingsError, match="readable over NFS"):
        refuse_state_inside(export / "state", export)
    with pytest.raises(SettingsError):
        refuse_state_inside(export, export)
    refuse_state_inside(tmp_path / "state", export)
    refuse_state_inside(tmp_path / "export-state", export)


@pytest.mark.timeout(60)
def test_serve_cli_refuses_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liverecovery.cli import main

    export = tmp_path / "export"
    export.mkdir()
    code = main(["serve", str(export), "--state-dir", str(export / ".state"), "--listen",
                 "127.0.0.1:0", "--allow", "127.0.0.1"])  # fmt: skip
    assert code == 1
    assert "readable over NFS" in capsys.readouterr().err
    assert not (export / ".state").exists()  # no key was written there
