"""A hung vCenter (the simulator's process stopped with SIGSTOP): pyvmomi calls fail within
their timeout naming the call, and Ctrl-C ends ``liverecovery recover`` within a few seconds,
with no traceback, saying what it left. Each test here stops the module's own simulator."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from liverecovery.errors import BackendTimeoutError
from liverecovery.testing.samples import sample_vm
from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

from .conftest import HOST, LOCAL_DS, Simulator

pytestmark = pytest.mark.timeout(120)


@contextmanager
def stopped(simulator: Simulator) -> Iterator[None]:
    """The simulator frozen: its socket accepts connections (the kernel's backlog) but nothing
    answers, as with a hung vCenter."""
    os.kill(simulator.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(simulator.pid, signal.SIGCONT)


@pytest.mark.anyio
async def test_a_call_to_a_hung_vcenter_fails_within_its_timeout_naming_it(
    simulator: Simulator,
) -> None:
    client = await PyvmomiVSphereClient.connect(
        simulator.url,
        simulator.user,
        simulator.password,
        ca_file=simulator.ca_file,
        http_timeout=1.0,
    )
    try:
        with stopped(simulator):
            started = time.monotonic()
            with anyio.fail_after(10), pytest.raises(BackendTimeoutError) as caught:
                await client.nfs_datastores(HOST)
            assert time.monotonic() - started < 5
        assert "vsphere.nfs_datastores" in str(caught.value)
    finally:
        with anyio.fail_after(20):
            await client.aclose()


def _wait_for(proc: subprocess.Popen[bytes], text: bytes, timeout: float) -> bytes:
    """Read the process's stderr until ``text`` appears; everything read."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{text!r} not seen in time: {seen.decode(errors='replace')}")
        ready, _, _ = select.select([proc.stderr], [], [], remaining)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"exited early: {seen.decode(errors='replace')}")
            seen += chunk
    return seen


def test_ctrl_c_of_recover_against_a_hung_vcenter_ends_within_seconds(
    simulator: Simulator, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    sample_vm("hung-vm", disk_sizes=(64 << 20,)).write(backup)
    job = tmp_path / "job.toml"
    job.write_text(
        f'backup = "{backup}"\nvm = "hung-vm"\nhost = "{HOST}"\ndatastore = "{LOCAL_DS}"\n'
        f'vcenter = "{simulator.url}"\nuser = "{simulator.user}"\npassword_env = "VC_PW"\n'
        f'ca_file = "{simulator.ca_file}"\nnfs_address = "127.0.0.1"\nesx_address = "127.0.0.1"\n'
        "[settings]\n"
        f'job_results_dir = "{tmp_path / "results"}"\nnfs_listen_host = "127.0.0.1"\n'
        "nfs_port = 0\nportmap_port = 0\njob_space_floor_bytes = 0\n"
        'migration_trigger = "manual"\ncompensation_retry_delay_s = 0\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverecovery.cli", "recover", "--job-file", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "VC_PW": simulator.password},
    )
    try:
        seen = _wait_for(proc, b"recovering hung-vm", 60)
        with stopped(simulator):
            time.sleep(0.5)  # the job reaches a vSphere call and hangs in it
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError("recover did not end within 15 s of Ctrl-C") from None
            took = time.monotonic() - started
        assert proc.stderr is not None
        seen += proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = seen.decode(errors="replace")
    assert took < 10, (took, text)
    assert proc.returncode != 0
    assert "Traceback" not in text, text
    assert "stopping" in text, text
