"""Several simulated ESX hosts, each in a process of its own, behind one ``VSphereClient``.

The in-process ``SimulatedHosts`` shares the event loop (and the core) of the server it
measures: its NFS clients, boot reads, guests and storage-vMotion copiers compete with the
server for it. Here each host is ``python -m liverecovery.sim.remote`` on a unix socket, driven
through ``RemoteSimulatedHost``, so the server's process holds only the server and the jobs, as
in production. Routing is ``HostRouter``'s, shared with ``SimulatedHosts``: a VM's managed
object id is ``<host>/<its id on the host>``. Used by benchmarks/plan.py (``--hosts-mode remote``).
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
)
from liverecovery.config import Settings
from liverecovery.datastore.builder import FreBuilder, OverlayFactory, durable_overlay
from liverecovery.errors import BackendError
from liverecovery.nfs.server import NfsServer
from liverecovery.recovery.assembly import assemble
from liverecovery.sim.embedded import loopback_settings
from liverecovery.sim.hosts import DESTINATION, HostRouter
from liverecovery.sim.latency import TaskLatency
from liverecovery.sim.remote import RemoteSimulatedHost

__all__ = ["RemoteEmbeddedHosts", "RemoteHosts", "remote_embedded_hosts"]


class RemoteHosts(HostRouter[RemoteSimulatedHost]):
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
        latency: TaskLatency | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.names = tuple(names)
        self.write_interval_s = write_interval_s
        self.boot_read_bytes = boot_read_bytes
        self.start_timeout_s = start_timeout_s
        self.portmap_port = 111
        super().__init__({}, latency=latency)
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
    latency: TaskLatency | None = None,
) -> AsyncIterator[RemoteEmbeddedHosts]:
    """``embedded_hosts`` with each simulated host in its own process; stopped after."""
    settings = loopback_settings(settings, work_dir)
    sims = RemoteHosts(
        work_dir,
        hosts,
        write_interval_s=write_interval_s,
        boot_read_bytes=boot_read_bytes,
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
        yield RemoteEmbeddedHosts(parts.settings, parts.backends, parts.builder, parts.server, sims)
