"""``liverecovery browse`` serves a restore point read-only in flat form, to a real NFS client."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from liverecovery.testing.samples import expected_read, sample_vm, tree_digests

pytestmark = pytest.mark.timeout(120)

SIZE = 32 << 20


def test_browse_serves_flat_disks_read_only(tmp_path: Path) -> None:
    vm = sample_vm("bvm", disk_sizes=(SIZE,), format="streamOptimized")
    vm.write(tmp_path / "backup")
    before = tree_digests(tmp_path / "backup")
    settings = tmp_path / "s.toml"
    settings.write_text(f'[settings]\njob_results_dir = "{tmp_path / "results"}"\n')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liverecovery.cli",
            "browse",
            str(tmp_path / "backup"),
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "127.0.0.1",
            "--settings",
            str(settings),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("nfs://127.0.0.1/browse/bvm-"), url
        listing = subprocess.run(["nfs-ls", url], capture_output=True, text=True, timeout=30)
        names = {line.split()[-1] for line in listing.stdout.splitlines() if line.strip()}
        assert {"bvm.vmx", "bvm.vmdk", "bvm-flat.vmdk"} <= names, listing.stdout
        base, _, query = url.partition("?")
        flat = subprocess.run(
            ["nfs-cat", f"{base}/bvm-flat.vmdk?{query}"], capture_output=True, timeout=60
        )
        assert flat.returncode == 0, flat.stderr
        (size, runs) = vm.disks[0]
        assert (
            hashlib.sha256(flat.stdout).digest()
            == hashlib.sha256(expected_read(size, runs, 0, size)).digest()
        )
        descriptor = subprocess.run(
            ["nfs-cat", f"{base}/bvm.vmdk?{query}"], capture_output=True, text=True, timeout=30
        )
        assert 'createType="vmfs"' in descriptor.stdout
        local = tmp_path / "x"
        local.write_bytes(b"x")
        put = subprocess.run(
            ["nfs-cp", str(local), f"{base}/new-file?{query}"], capture_output=True, timeout=30
        )
        assert put.returncode != 0  # read-only: nothing can be written
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode in (0, 130), proc.stderr.read() if proc.stderr else ""
    jobs = tmp_path / "results" / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir())
    assert tree_digests(tmp_path / "backup") == before
