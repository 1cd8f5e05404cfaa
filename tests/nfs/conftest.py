"""Fixtures for the NFS tests: our server over a temporary directory, and NFS-Ganesha."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import attrs
import pytest

from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from tests.nfs.loops import LOOPS

EXPORT = "/export"


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every async NFS test runs on both loops: the server must not depend on which."""
    return request.param  # type: ignore[no-any-return]


@attrs.frozen
class Served:
    server: NfsServer
    data: Path
    state: Path
    path: str

    @property
    def url(self) -> str:
        return self.server.url(self.path)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """Our server exporting ``tmp_path/data`` at /export to 127.0.0.1."""
    data = tmp_path / "data"
    data.mkdir()
    state = tmp_path / "state"
    async with NfsServer(state) as server:
        fs = LocalFilesystem(data)
        await server.export_filesystem(EXPORT, fs, ["127.0.0.1"])
        yield Served(server, data, state, EXPORT)
        await fs.aclose()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[NfsClient]:
    async with await NfsClient.connect("127.0.0.1", served.server.port, call_timeout=20) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ganesha exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout} s: {log.read_text()[-2000:]}")


@attrs.frozen
class Ganesha:
    data: Path
    nfs_port: int
    mount_port: int
    path: str
    restricted_path: str


def _rpcbind_running() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", 111)) == 0


@pytest.fixture(scope="session")
def rpcbind() -> Iterator[None]:
    """NFS-Ganesha registers with rpcbind at start; run one unless one is listening already."""
    if _rpcbind_running():
        yield
        return
    exe = shutil.which("rpcbind") or "/usr/sbin/rpcbind"
    proc = subprocess.Popen([exe, "-f", "-w"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not _rpcbind_running():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"rpcbind did not start: {proc.stderr.read() if proc.stderr else ''!r}"
            )
        time.sleep(0.05)
    yield
    proc.terminate()
    proc.wait(10)


def start_ganesha(tmp: Path, data: Path) -> tuple[subprocess.Popen[bytes], Ganesha, Path]:
    nfs_port, mount_port = _free_port(), _free_port()
    restricted = tmp / "restricted"
    restricted.mkdir(exist_ok=True)
    conf = tmp / "ganesha.conf"
    log = tmp / "ganesha.log"
    conf.write_text(
        f"""
NFS_CORE_PARAM {{ NFS_Port = {nfs_port}; MNT_Port = {mount_port}; Bind_addr = 127.0.0.1;
  Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; }}
NFSV4 {{ Graceless = true; }}
EXPORT {{ Export_Id = 1; Path = {data}; Pseudo = /export; Protocols = 3; Transports = TCP;
  Access_Type = RW; Squash = No_Root_Squash; Sectype = sys; FSAL {{ Name = VFS; }} }}
EXPORT {{ Export_Id = 2; Path = {restricted}; Pseudo = /restricted; Protocols = 3;
  Transports = TCP; Access_Type = None; Squash = No_Root_Squash; Sectype = sys;
  CLIENT {{ Clients = 192.0.2.1; Access_Type = RW; }} FSAL {{ Name = VFS; }} }}
"""
    )
    exe = shutil.which("ganesha.nfsd") or "/usr/bin/ganesha.nfsd"
    proc = subprocess.Popen(
        [exe, "-F", "-f", str(conf), "-L", str(log), "-p", str(tmp / "ganesha.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_port(nfs_port, proc, log)
        _wait_port(mount_port, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, Ganesha(data, nfs_port, mount_port, str(data), str(restricted)), log


@pytest.fixture(scope="module")
def ganesha(tmp_path_factory: pytest.TempPathFactory, rpcbind: None) -> Iterator[Ganesha]:
    """NFS-Ganesha (VFS FSAL) exporting a temporary directory on OS-chosen loopback ports, and
    a second export (``restricted_path``) that only 192.0.2.1 may mount."""
    tmp_path = tmp_path_factory.mktemp("ganesha")
    data = tmp_path / "gdata"
    data.mkdir()
    run = tmp_path / "ganesha"
    run.mkdir()
    proc, g, _log = start_ganesha(run, data)
    try:
        yield g
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_tool(*argv: str, timeout: float = 60, input: bytes | None = None) -> bytes:
    """Run a real NFS client tool; raise with its stderr when it fails."""
    res = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, check=False)
    if res.returncode != 0:
        raise AssertionError(
            f"{argv} exited {res.returncode}: {res.stderr.decode(errors='replace')}"
        )
    return res.stdout


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await anyio.to_thread.run_sync(fn, *args)


os.environ.setdefault("LIBNFS_QUIET", "1")
