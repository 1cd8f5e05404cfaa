"""Fixtures for the pyvmomi backend: one govmomi simulator per test module, and a view of its
inventory taken with plain pyVmomi (independent of the client under test).

The simulator (tests/vcsim, built by scripts/build-vcsim.sh) runs in its own process group on a
port the OS picks, with its working directory as the root of NAS datastores: a datastore mounted
with localPath ``NAME`` keeps its files in ``<nfs_root>/NAME``.
"""

from __future__ import annotations

import os
import select
import signal
import ssl
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from liverecovery.vsphere.pyvmomi_client import PyvmomiVSphereClient

REPO = Path(__file__).resolve().parents[2]
VCSIM = REPO / "tests" / "vcsim" / "vcsim"
HOST = "DC0_H0"
LOCAL_DS = "LocalDS_0"
OTHER_LOCAL_DS = "LocalDS_1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@attrs.frozen
class Simulator:
    """A running govmomi simulator."""

    url: str
    host: str
    port: int
    user: str
    password: str
    ca_file: Path
    nfs_root: Path
    pid: int

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the simulator printed no URL in time")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the simulator exited early with code {proc.wait()}")
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode().strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


@pytest.fixture(scope="module")
def simulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Simulator]:
    """Start the simulator (building it if needed) and stop it, by process group, at the end.

    A test module may set ``VCSIM_ARGS`` (e.g. ``["-esx"]`` for a standalone ESX host).
    """
    extra_args: list[str] = list(getattr(request.module, "VCSIM_ARGS", []))
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-vcsim.sh")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.fail(
            "cannot build the govmomi simulator (tests/vcsim); install the peers with "
            f"scripts/install-peers.sh:\n{build.stderr}"
        )
    base = tmp_path_factory.mktemp("vcsim")
    nfs_root = base / "nfs"
    local = base / "local"
    nfs_root.mkdir()
    local.mkdir()
    ca_file = base / "ca.pem"
    log = (base / "vcsim.log").open("wb")
    proc = subprocess.Popen(
        [
            str(VCSIM),
            "-l",
            "127.0.0.1:0",
            "-cert",
            str(ca_file),
            "-ds",
            "2",
            "-vm",
            "0",
            "-exit-on-stdin-eof",
            *extra_args,
        ],
        cwd=nfs_root,
        env={**os.environ, "TMPDIR": str(local)},
        stdin=subprocess.PIPE,  # closed when this process dies: the simulator then exits too
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    try:
        url = _read_line(proc, timeout=30)
        parsed = urllib.parse.urlsplit(url)
        assert parsed.scheme == "https" and parsed.hostname == "127.0.0.1", url
        assert parsed.port and parsed.username and parsed.password, url
        yield Simulator(
            url=url,
            host=parsed.hostname,
            port=parsed.port,
            user=parsed.username,
            password=parsed.password,
            ca_file=ca_file,
            nfs_root=nfs_root,
            pid=proc.pid,
        )
    finally:
        _stop(proc)
        log.close()
    assert proc.returncode is not None
    assert not list(local.iterdir()), "the simulator left its local datastores behind"


@attrs.frozen
class Snapshot:
    """What the inventory holds: VMs (name, power state, datastores) and datastores per host."""

    vms: frozenset[tuple[str, str, tuple[str, ...]]]
    host_datastores: frozenset[tuple[str, str]]
    datacenter_datastores: frozenset[str]  # managed object ids


class Inventory:
    """Reads the simulator's inventory through its own pyVmomi session."""

    def __init__(self, sim: Simulator) -> None:
        context = ssl.create_default_context(cafile=str(sim.ca_file))
        self.si = SmartConnect(
            host=sim.host, port=sim.port, user=sim.user, pwd=sim.password, sslContext=context
        )
        self.content = self.si.RetrieveContent()

    def _all(self, vimtype: type) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(
            self.content.rootFolder, [vimtype], True
        )
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def host(self, name: str = HOST) -> Any:
        return next(h for h in self._all(vim.HostSystem) if h.name == name)

    def datastore(self, name: str, host: str = HOST) -> Any:
        return next(d for d in self.host(host).datastore if d.name == name)

    def vm(self, name: str) -> Any:
        return next(v for v in self._all(vim.VirtualMachine) if v.name == name)

    def vm_names(self) -> list[str]:
        return sorted(v.name for v in self._all(vim.VirtualMachine))

    def snapshot(self) -> Snapshot:
        vms = frozenset(
            (v.name, str(v.runtime.powerState), tuple(sorted(d.name for d in v.datastore)))
            for v in self._all(vim.VirtualMachine)
        )
        host_ds = frozenset(
            (h.name, d.name) for h in self._all(vim.HostSystem) for d in h.datastore
        )
        # Managed object ids, not names: the ESX model's datacenter lists a datastore that
        # does not exist, whose name cannot be read.
        dc_ds = frozenset(d._moId for dc in self._all(vim.Datacenter) for d in dc.datastore)
        return Snapshot(vms=vms, host_datastores=host_ds, datacenter_datastores=dc_ds)

    def close(self) -> None:
        Disconnect(self.si)


@pytest.fixture(scope="module")
def inventory(simulator: Simulator) -> Iterator[Inventory]:
    inv = Inventory(simulator)
    yield inv
    inv.close()


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[PyvmomiVSphereClient]:
    c = await PyvmomiVSphereClient.connect(
        simulator.url,
        simulator.user,
        simulator.password,
        ca_file=simulator.ca_file,
        poll_interval=0.01,
    )
    async with c:
        yield c


@pytest.fixture
def vsphere(client: PyvmomiVSphereClient) -> PyvmomiVSphereClient:
    """``client`` under the name the job-level tests give it (the backends' ``vsphere``)."""
    return client


@attrs.frozen
class VmFiles:
    """A VM folder made in a NAS datastore's directory, as the simulator needs it to register."""

    datastore: str
    folder: str
    name: str

    @property
    def vmx_path(self) -> str:
        return f"[{self.datastore}] {self.folder}/{self.name}.vmx"


@pytest.fixture
def make_vm_files(simulator: Simulator) -> Callable[..., VmFiles]:
    """Create ``<nfs_root>/<datastore>/<folder>/`` with the .vmx, .nvram and vmware.log."""

    def make(
        datastore: str, name: str | None = None, *, nvram: bool = True, vmx: bool = True
    ) -> VmFiles:
        name = name or f"vm-{uuid.uuid4().hex[:8]}"
        folder = simulator.nfs_root / datastore / name
        folder.mkdir(parents=True, exist_ok=True)
        if vmx:
            (folder / f"{name}.vmx").write_text(
                f'.encoding = "UTF-8"\nconfig.version = "8"\ndisplayName = "{name}"\n'
            )
        if nvram:
            (folder / f"{name}.nvram").write_bytes(b"\0" * 64)
        (folder / "vmware.log").write_text("")
        return VmFiles(datastore=datastore, folder=name, name=name)

    return make


@pytest.fixture
def datastore_name(simulator: Simulator) -> Callable[[], str]:
    """A fresh datastore name whose NAS directory exists (the simulator's localPath)."""

    def make() -> str:
        name = f"lr-{uuid.uuid4().hex[:10]}"
        (simulator.nfs_root / name).mkdir()
        return name

    return make
