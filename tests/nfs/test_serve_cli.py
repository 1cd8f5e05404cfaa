"""``liverecovery serve``: prints a URL libnfs accepts, serves until interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_tool


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_a_url_nfs_ls_accepts(tmp_path: Path, stop: signal.Signals) -> None:
    data = tmp_path / "share"
    data.mkdir()
    (data / "hello.txt").write_bytes(b"hi from serve")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "serve",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "127.0.0.1",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith(f"nfs://127.0.0.1{data}?version=3&nfsport=")
        listing = run_tool("nfs-ls", url, timeout=30).decode()
        assert "hello.txt" in listing
        base, query = url.split("?")
        assert run_tool("nfs-cat", f"{base}/hello.txt?{query}", timeout=30) == b"hi from serve"
    finally:
        proc.send_signal(stop)  # Ctrl-C, or a service manager stopping it
        proc.wait(20)
    assert proc.returncode == 0


def test_serve_refuses_a_missing_directory(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "serve",
            str(tmp_path / "nope"),
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "127.0.0.1",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1
    assert b"does not exist" in res.stderr


@pytest.mark.parametrize("bad", ["nohost", "h:port", "h:70000"])
def test_serve_rejects_bad_listen(tmp_path: Path, bad: str) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "serve",
            str(tmp_path),
            "--listen",
            bad,
            "--allow",
            "127.0.0.1",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2 and b"HOST:PORT" in res.stderr
