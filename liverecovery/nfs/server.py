"""``NfsServer``: PORTMAP v2, MOUNT v3 and NFS v3 on one TCP port, serving ``Filesystem`` exports.

The assembled whole: the export registry (``exports``), one object per RPC program
(``portmap_program``, ``mount_program``, ``nfs3_program``) in one table keyed by (program,
version) (``dispatch``), and the listening sockets whose connections (``connection``) answer
records through that table. Each connection runs every call in its own task (bounded per
connection), so replies go out as they complete, in any order: a READ stuck on a slow backup
never delays the GETATTR heartbeat behind it. Nothing a client sends can crash the server or
make it buffer more than one maximum-size record per connection, and peers get at most
``max_connections`` connections (``max_connections_per_address`` from one address); while any
export exists, connections from addresses no export allows are closed at accept
(``connection.ConnectionLimits``, docs/security.md).

The server is also the ``NfsExporter`` of ``liverecovery.backends``: its export methods are
those of its ``registry``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Final, Self

import anyio.abc

from liverecovery.nfs import portmap_codec as pm
from liverecovery.nfs import zero_copy
from liverecovery.nfs.connection import ConnectionLimits, ConnectionTable, Listener, listen
from liverecovery.nfs.dispatch import Program, RpcDispatcher
from liverecovery.nfs.exports import ExportInfo, ExportRegistry
from liverecovery.nfs.filesystem import Filesystem
from liverecovery.nfs.mount_program import MountProgram
from liverecovery.nfs.nfs3_program import MAX_IO, Nfs3Program
from liverecovery.nfs.portmap_program import PortmapProgram

__all__ = ["DEFAULT_MAX_RECORD", "MAX_IO", "NfsServer", "event_loop_options"]

DEFAULT_MAX_RECORD: Final = MAX_IO + 64 * 1024


def event_loop_options() -> dict[str, object]:
    """``backend_options`` for ``anyio.run``: uvloop when it is installed (the `speed` extra),
    which takes 15-30 % off the server's CPU per small call; asyncio's own loop otherwise, or
    when the environment sets ``LIVERECOVERY_LOOP=asyncio`` (to compare the two)."""
    if os.environ.get("LIVERECOVERY_LOOP", "") == "asyncio":
        return {}
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") is not None else {}


class NfsServer(anyio.abc.AsyncResource):
    """An embedded NFSv3 server.

    Use as ``async with NfsServer(state_dir) as server:``; ``server.port`` is the TCP port of
    all three programs (``portmap_port`` adds a second listener for the portmapper alone, e.g.
    111). Handles stay valid across restarts with the same ``state_dir``.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        portmap_port: int | None = None,
        max_in_flight: int = 64,
        max_record_size: int = DEFAULT_MAX_RECORD,
        partial_record_timeout: float = 60.0,
        idle_timeout: float = 360.0,
        max_connections: int = 256,
        max_connections_per_address: int = 64,
        grace_s: float = 0.0,
    ) -> None:
        self._host = host
        self._port = port
        self._portmap_port = portmap_port
        self.max_in_flight = max_in_flight
        self.max_record_size = max_record_size
        self.partial_record_timeout = partial_record_timeout
        """Seconds a client may leave a record half-sent before its connection is closed."""
        self.limits = ConnectionLimits(
            max_in_flight=max_in_flight,
            max_record=max_record_size,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            partial_record_timeout=partial_record_timeout,
            idle_timeout=idle_timeout,
        )
        """What peers may take of this server (read when it starts)."""
        self.registry = ExportRegistry(state_dir, grace_s=grace_s)
        """What is exported, to whom, and the file handles naming it."""
        self._nfs3 = Nfs3Program(self.registry, secrets.token_bytes(8))
        self._mount = MountProgram(self.registry)
        self._portmap = PortmapProgram()
        self._programs: dict[tuple[int, int], Program] = {
            (PortmapProgram.PROGRAM, PortmapProgram.VERSION): self._portmap.call,
            (MountProgram.PROGRAM, MountProgram.VERSION): self._mount.call,
            (Nfs3Program.PROGRAM, Nfs3Program.VERSION): self._nfs3.call,
        }
        self._dispatcher = RpcDispatcher(
            self._programs, {(Nfs3Program.PROGRAM, Nfs3Program.VERSION): self._nfs3.answer}
        )
        self._listeners: list[Listener] = []
        self._connections = ConnectionTable(self.limits)
        self._bound_port = 0
        self._bound_portmap_port = 0
        self._pipes: zero_copy.PipePool | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Bind the listener(s) and start serving; ``aclose`` may be called from any task.

        :raises OSError: a port is taken.
        """
        if self._listeners:
            raise RuntimeError("server already started")
        self._connections = ConnectionTable(self.limits)
        self.registry.start_grace()
        if zero_copy.zero_copy_supported():
            self._pipes = zero_copy.PipePool(MAX_IO)
            self._nfs3.pipes = self._pipes
        main = await self._listen(self._port)
        self._listeners.append(main)
        self._bound_port = int(main.sockets[0].getsockname()[1])
        self._bound_portmap_port = self._bound_port
        if self._portmap_port is not None:
            try:
                pms = await self._listen(self._portmap_port)
            except BaseException:
                main.close()
                raise
            self._listeners.append(pms)
            self._bound_portmap_port = int(pms.sockets[0].getsockname()[1])
        self._portmap.mappings = [
            pm.Mapping(
                prog,
                vers,
                pm.IPPROTO_TCP,
                self._bound_portmap_port if prog == PortmapProgram.PROGRAM else self._bound_port,
            )
            for prog, vers in self._programs
        ]

    async def _listen(self, port: int) -> Listener:
        return await listen(
            self._host,
            port,
            self._dispatcher.answer,
            self._connections,
            admits=self.admits,
            trusts=self.allowed_anywhere,
        )

    def allowed_anywhere(self, address: str) -> bool:
        """Some export allows ``address``."""
        return any(exp.allows(address) for exp in self.registry.entries())

    def admits(self, address: str) -> bool:
        """Whether a connection from ``address`` is kept: some export allows it, or there is
        no export yet, or the grace period after a restart runs (exports are coming back)."""
        return (
            self.allowed_anywhere(address)
            or next(iter(self.registry.entries()), None) is None
            or self.registry.in_grace()
        )

    @property
    def connections(self) -> ConnectionTable:
        """The open connections (counts per address, memory held, refusals)."""
        return self._connections

    async def aclose(self) -> None:
        """Stop listening and drop every connection (exports are not unexported)."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        self._connections.closed = True
        for conn in self._connections:
            conn.close()
        for listener in listeners:
            await listener.wait_closed()
        if self._pipes is not None:
            self._nfs3.pipes = None
            self._pipes.close()
            self._pipes = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._bound_port

    @property
    def portmap_port(self) -> int:
        return self._bound_portmap_port

    @property
    def grace_s(self) -> float:
        """After a start, how long handles of exports and folders not restored yet get
        NFS3ERR_JUKEBOX (retry later) instead of NFS3ERR_STALE (``ExportRegistry.grace_s``)."""
        return self.registry.grace_s

    @grace_s.setter
    def grace_s(self, seconds: float) -> None:
        self.registry.grace_s = seconds

    @property
    def write_verifier(self) -> bytes:
        """New for every server object: clients resend UNSTABLE writes a restart may have lost."""
        return self._nfs3.write_verifier

    def url(self, path: str) -> str:
        """The ``nfs://`` URL libnfs clients accept for an export."""
        return f"nfs://{self._host}{path}?version=3&nfsport={self.port}&mountport={self.port}"

    # -- NfsExporter: the registry's ---------------------------------------------------------

    async def export(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """An empty export that jobs publish folders into (``ExportRegistry.export``)."""
        return await self.registry.export(path, clients)

    async def export_filesystem(
        self, path: str, filesystem: Filesystem, clients: Sequence[str]
    ) -> ExportInfo:
        """Export one filesystem directly (``ExportRegistry.export_filesystem``)."""
        return await self.registry.export_filesystem(path, filesystem, clients)

    async def set_clients(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """Replace an export's allow list (``ExportRegistry.set_clients``)."""
        return await self.registry.set_clients(path, clients)

    async def unexport(self, path: str) -> None:
        """Remove an export; its handles become STALE (``ExportRegistry.unexport``)."""
        await self.registry.unexport(path)

    async def publish(self, path: str, folder: str, filesystem: Filesystem) -> None:
        """Show ``filesystem`` as ``folder`` in the export's root (``ExportRegistry.publish``)."""
        await self.registry.publish(path, folder, filesystem)

    async def unpublish(self, path: str, folder: str) -> None:
        """Remove a published folder (``ExportRegistry.unpublish``)."""
        await self.registry.unpublish(path, folder)

    def exports(self) -> Mapping[str, ExportInfo]:
        return self.registry.exports()
