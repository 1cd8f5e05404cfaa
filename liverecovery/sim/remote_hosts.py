"""Several simulated ESX hosts, each in a process of its own, behind one ``VSphereClient``.

The in-process ``SimulatedHosts`` shares the event loop (and the core) of the server it
measures: its NFS clients, boot reads, guests and storage-vMotion copiers compete with the
server for it. Here each host is ``python -m liverecovery.sim.remote`` on a unix socket, driven
through ``RemoteSimulatedHost``, so the server's process holds only the server and the jobs, as
in production. Routing is ``SimulatedHosts``'s: a VM's managed object id is
``<host>/<its id on the host>``. Used by benchmarks/plan.py (``--hosts-mode remote``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc
import attrs

from liverecovery.backends import (
    Backends,
    BlockCache,
    CatalogReader,
    GuestCredentials,
    GuestInfo,
    HostFacts,
    ProgressCallback,
    TargetFacts,
    TargetQuery,
    VmRef,
)
from liverecovery.config import Settings
from liverecovery.datastore.builder import FreBuilder, OverlayFactory, durable_overlay
from liverecovery.errors import BackendError, VSphereError
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.assembly import assemble
from liverecovery.sim.hosts import DESTINATION
from liverecovery.sim.remote import RemoteSimulatedHost

__all__ = ["RemoteEmbeddedHosts", "RemoteHosts", "remote_embedded_hosts"]


class RemoteHosts:
    """One ``liverecovery.sim.remote`` process per host name, started by ``async with`` (after
    ``mounting_from`` told them the server's portmapper) and terminated after."""

    def __init__(
        self,
        work_dir: Path,
        names: Sequence[str],
        *,
        write_interval_s: float = 0.05,
        boot_read_bytes: int = 4 << 20,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.work_dir = work_dir
        self.names = tuple(names)
        self.write_interval_s = write_interval_s
        self.boot_read_bytes = boot_read_bytes
        self.start_timeout_s = start_timeout_s
        self.portmap_port = 111
        self.hosts: dict[str, RemoteSimulatedHost] = {}
        self._processes: list[anyio.abc.Process] = []

    def mounting_from(self, server: NfsServer) -> RemoteHosts:
        """Every host to find ``server``'s portmapper (a ``VSphereFactory``)."""
        self.portmap_port = server.portmap_port
        return self

    async def __aenter__(self) -> RemoteHosts:
        try:
            for name in self.names:
                await self._start(name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop()
            raise
        return self

    async def _start(self, name: str) -> None:
        root = self.work_dir / f"esx-{name}"
        await anyio.Path(root).mkdir(parents=True, exist_ok=True)
        socket = self.work_dir / f"esx-{name}.sock"
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "liverecovery.sim.remote",
                str(socket),
                str(root),
                "--name",
                name,
                "--local-datastore",
                DESTINATION,
                "--portmap-port",
                str(self.portmap_port),
                "--write-interval-s",
                str(self.write_interval_s),
                "--boot-read-bytes",
                str(self.boot_read_bytes),
            ],
            stdin=subprocess.DEVNULL,
            stderr=None,
            env=os.environ.copy(),
        )
        self._processes.append(process)
        assert process.stdout is not None
        buffer = b""
        with anyio.move_on_after(self.start_timeout_s):
            while b"ready" not in buffer:
                try:
                    buffer += await process.stdout.receive()
                except anyio.EndOfStream:
                    break
        if b"ready" not in buffer:
            raise BackendError(
                f"the simulated host {name!r} did not start (said {buffer[-500:]!r})",
                operation="sim.remote_hosts",
            )
        self.hosts[name] = RemoteSimulatedHost(socket)

    async def _stop(self) -> None:
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in self._processes:
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await process.aclose()
        self._processes.clear()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stop()

    def _host(self, name: str, op: str) -> RemoteSimulatedHost:
        host = self.hosts.get(name)
        if host is None:
            raise VSphereError(
                f"host {name!r} not found", operation=f"vsphere.{op}", fault="NotFound"
            )
        return host

    def owner(self, vm: VmRef, op: str = "owner") -> tuple[RemoteSimulatedHost, VmRef]:
        """The host process holding ``vm`` and the VM as that host names it."""
        name, sep, moref = vm.moref.partition("/")
        if not sep:
            raise VSphereError(
                f"VM {vm.moref} not found", operation=f"vsphere.{op}", fault="ManagedObjectNotFound"
            )
        return self._host(name, op), attrs.evolve(vm, moref=moref)

    @staticmethod
    def _join(name: str, vm: VmRef) -> VmRef:
        return attrs.evolve(vm, moref=f"{name}/{vm.moref}")

    # -- VSphereClient ---------------------------------------------------------------------------

    async def mount_nfs_datastore(
        self, host: str, remote_host: str, remote_path: str, datastore: str
    ) -> str:
        return await self._host(host, "mount_nfs_datastore").mount_nfs_datastore(
            host, remote_host, remote_path, datastore
        )

    async def unmount_datastore(self, host: str, datastore: str) -> None:
        await self._host(host, "unmount_datastore").unmount_datastore(host, datastore)

    async def register_vm(
        self,
        host: str,
        vmx_path: str,
        name: str,
        *,
        folder: str | None = None,
        resource_pool: str | None = None,
    ) -> VmRef:
        esx = self._host(host, "register_vm")
        ref = await esx.register_vm(
            host, vmx_path, name, folder=folder, resource_pool=resource_pool
        )
        return self._join(host, ref)

    async def unregister_vm(self, vm: VmRef) -> None:
        esx, ref = self.owner(vm, "unregister_vm")
        await esx.unregister_vm(ref)

    async def power_on(self, vm: VmRef) -> None:
        esx, ref = self.owner(vm, "power_on")
        await esx.power_on(ref)

    async def power_off(self, vm: VmRef) -> None:
        esx, ref = self.owner(vm, "power_off")
        await esx.power_off(ref)

    async def relocate(
        self, vm: VmRef, datastore: str, progress: ProgressCallback | None = None
    ) -> VmRef:
        esx, ref = self.owner(vm, "relocate")
        return self._join(vm.moref.partition("/")[0], await esx.relocate(ref, datastore, progress))

    async def describe(self, query: TargetQuery) -> TargetFacts:
        esx = self.hosts.get(query.host)
        if esx is None:
            return TargetFacts(host=HostFacts(query.host, found=False))
        return await esx.describe(query)

    async def aclose(self) -> None:
        for host in self.hosts.values():
            await host.aclose()

    # -- VSphereInventory and the guests ---------------------------------------------------

    async def power_state(self, vm: VmRef) -> str:
        esx, ref = self.owner(vm, "power_state")
        return await esx.power_state(ref)

    async def nfs_datastores(self, host: str) -> list[str]:
        return list(await self._host(host, "nfs_datastores").nfs_datastores(host))

    async def find_vm(self, vmx_path: str) -> VmRef | None:
        for name, esx in self.hosts.items():
            found = await esx.find_vm(vmx_path)
            if found is not None:
                return self._join(name, found)
        return None

    async def guest_info(self, vm: VmRef) -> GuestInfo:
        esx, ref = self.owner(vm, "guest_info")
        return await esx.guest_info(ref)

    async def run_in_guest(
        self,
        vm: VmRef,
        credentials: GuestCredentials,
        program: str,
        arguments: str,
        wait_s: float,
    ) -> int:
        esx, ref = self.owner(vm, "run_in_guest")
        return await esx.run_in_guest(ref, credentials, program, arguments, wait_s)

    async def screenshot(self, vm: VmRef) -> bytes | None:
        esx, ref = self.owner(vm, "screenshot")
        return await esx.screenshot(ref)


@attrs.frozen
class RemoteEmbeddedHosts:
    """A running embedded environment whose simulated ESX hosts run in processes of their own."""

    settings: Settings
    backends: Backends
    builder: FreBuilder
    server: NfsServer
    hosts: RemoteHosts

    @property
    def names(self) -> tuple[str, ...]:
        return self.hosts.names


@asynccontextmanager
async def remote_embedded_hosts(
    work_dir: Path,
    catalog: CatalogReader,
    *,
    hosts: Sequence[str] = ("esx-sim-1", "esx-sim-2"),
    settings: Settings | None = None,
    cache: BlockCache | None = None,
    overlay_factory: OverlayFactory | None = None,
    write_interval_s: float = 0.05,
    boot_read_bytes: int = 4 << 20,
) -> AsyncIterator[RemoteEmbeddedHosts]:
    """``embedded_hosts`` with each simulated host in its own process; stopped after."""
    settings = settings or Settings(job_results_dir=work_dir / "results")
    settings = attrs.evolve(
        settings,
        nfs_address="127.0.0.1",
        nfs_listen_host="127.0.0.1",
        nfs_port=0,
        portmap_port=0,
        nfs_grace_s=0.0,
    )
    sims = RemoteHosts(
        work_dir, hosts, write_interval_s=write_interval_s, boot_read_bytes=boot_read_bytes
    )
    async with assemble(
        settings,
        vsphere=sims.mounting_from,
        catalog=catalog,
        cache=cache,
        overlay_factory=overlay_factory or durable_overlay,
        nfs_state_dir=work_dir / "nfs-state",
    ) as parts:
        yield RemoteEmbeddedHosts(parts.settings, parts.backends, parts.builder, parts.server, sims)
