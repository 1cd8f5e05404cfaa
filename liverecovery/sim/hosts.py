"""Several simulated ESX hosts behind one ``VSphereClient``, as a vCenter manages a cluster.

Calls naming a host go to that host; calls naming a VM go to the host that registered it (a VM's
managed object id is ``<host>/<its id on the host>``, so ids of different hosts never clash).
The embedded environment with several hosts (``embedded_hosts``) runs recovery plans in this
process: ``liverecovery demo --vms N``, the plan tests and benchmarks/plan.py.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import anyio
import attrs

from liverecovery.backends import (
    Backends,
    BlockCache,
    CatalogReader,
    GuestCredentials,
    GuestInfo,
    GuestOperations,
    HostFacts,
    ProgressCallback,
    TargetFacts,
    TargetQuery,
    VmRef,
    VSphereClient,
    VSphereInventory,
)
from liverecovery.config import Settings
from liverecovery.datastore.builder import FreBuilder, OverlayFactory, durable_overlay
from liverecovery.errors import VSphereError
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.assembly import assemble
from liverecovery.sim.embedded import loopback_settings
from liverecovery.sim.esx_host import SimulatedEsxHost
from liverecovery.sim.latency import TaskLatency

__all__ = ["EmbeddedHosts", "HostRouter", "SimHost", "SimulatedHosts", "embedded_hosts"]

DESTINATION = "datastore1"


class SimHost(VSphereClient, VSphereInventory, GuestOperations, Protocol):
    """What a simulated ESX host offers, in this process or behind a socket."""


H = TypeVar("H", bound=SimHost)


class HostRouter(Generic[H]):
    """Routes each call to the simulated host it concerns, as a vCenter does for its hosts: a
    call naming a host goes to that host, a call naming a VM to the host that registered it
    (the VM's managed object id is ``<host>/<its id on the host>``).

    ``latency`` models how long a real vCenter takes for a mount, a registration and a power-on
    (``sim.latency``): each such task sleeps that long first. Zero by default.
    """

    def __init__(self, hosts: dict[str, H], *, latency: TaskLatency | None = None) -> None:
        self.hosts = hosts
        self.latency = latency or TaskLatency()
        self._rng = random.Random(0)

    async def _wait(self, task: str) -> None:
        """The modelled task latency (none by default): a real vCenter's task takes seconds."""
        if not self.latency.zero:
            await anyio.sleep(self.latency.delay(task, self._rng))

    def _host(self, name: str, op: str) -> H:
        host = self.hosts.get(name)
        if host is None:
            raise VSphereError(
                f"host {name!r} not found", operation=f"vsphere.{op}", fault="NotFound"
            )
        return host

    def owner(self, vm: VmRef, op: str = "owner") -> tuple[H, VmRef]:
        """The host holding ``vm`` and the VM as that host names it."""
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
        esx = self._host(host, "mount_nfs_datastore")
        await self._wait("mount")
        return await esx.mount_nfs_datastore(host, remote_host, remote_path, datastore)

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
        await self._wait("register")
        ref = await esx.register_vm(
            host, vmx_path, name, folder=folder, resource_pool=resource_pool
        )
        return self._join(host, ref)

    async def unregister_vm(self, vm: VmRef) -> None:
        esx, ref = self.owner(vm, "unregister_vm")
        await esx.unregister_vm(ref)

    async def power_on(self, vm: VmRef) -> None:
        esx, ref = self.owner(vm, "power_on")
        await self._wait("power_on")
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


class SimulatedHosts(HostRouter[SimulatedEsxHost]):
    """Routes each call to the simulated host it concerns; ``async with`` runs them all."""

    def __init__(
        self, hosts: Sequence[SimulatedEsxHost], *, latency: TaskLatency | None = None
    ) -> None:
        super().__init__({h.name: h for h in hosts}, latency=latency)
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> SimulatedHosts:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        for host in self.hosts.values():
            await stack.enter_async_context(host)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        return await stack.__aexit__(exc_type, exc, tb)

    def mounting_from(self, server: NfsServer) -> SimulatedHosts:
        """Every host set to find ``server``'s portmapper (a ``VSphereFactory``)."""
        for host in self.hosts.values():
            host.mounting_from(server)
        return self


@attrs.frozen
class EmbeddedHosts:
    """A running embedded environment with several simulated ESX hosts."""

    settings: Settings
    backends: Backends
    builder: FreBuilder
    server: NfsServer
    hosts: SimulatedHosts

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.hosts.hosts)


@asynccontextmanager
async def embedded_hosts(
    work_dir: Path,
    catalog: CatalogReader,
    *,
    hosts: Sequence[str] = ("esx-sim-1", "esx-sim-2"),
    settings: Settings | None = None,
    cache: BlockCache | None = None,
    overlay_factory: OverlayFactory | None = None,
    write_interval_s: float = 0.05,
    boot_read_bytes: int = 4 << 20,
    latency: TaskLatency | None = None,
) -> AsyncIterator[EmbeddedHosts]:
    """Our NFS server on loopback and one simulated ESX host per name (each with a local
    ``datastore1``), under ``work_dir``; stopped after. ``latency``: see ``HostRouter``."""
    settings = loopback_settings(settings, work_dir)
    sims = SimulatedHosts(
        [
            SimulatedEsxHost(
                work_dir / f"esx-{name}",
                name=name,
                local_datastores=(DESTINATION,),
                write_interval_s=write_interval_s,
                boot_read_bytes=boot_read_bytes,
            )
            for name in hosts
        ],
        latency=latency,
    )
    async with assemble(
        settings,
        vsphere=sims.mounting_from,
        catalog=catalog,
        cache=cache,
        overlay_factory=overlay_factory or durable_overlay,
        nfs_state_dir=work_dir / "nfs-state",
    ) as parts:
        yield EmbeddedHosts(parts.settings, parts.backends, parts.builder, parts.server, sims)
