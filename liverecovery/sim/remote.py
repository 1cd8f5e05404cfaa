"""The simulated ESX host in a process of its own, so a test can kill the process serving a
live recovery while the host, its NFS mount and its running VM carry on, as in production.

    python -m liverecovery.sim.remote SOCKET ROOT [--name esx01] ...

serves a ``SimulatedEsxHost`` on the unix socket ``SOCKET`` (one JSON request per connection,
then progress lines and one result line) and prints ``ready`` once it listens.
``RemoteSimulatedHost`` is the client: a ``VSphereClient`` and ``VSphereInventory`` another
process (the one running the job) drives. As with vCenter tasks, a call keeps running on the
host when the caller goes away: a storage vMotion started by a process that died completes,
and asking again (after a restart) waits for it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from liverecovery.backends import (
    DatastoreFacts,
    GuestCredentials,
    GuestInfo,
    GuestOperations,
    HostFacts,
    ProgressCallback,
    Target,
    TargetFacts,
    TargetQuery,
    VmRef,
)
from liverecovery.errors import BackendError, LiveRecoveryError, VSphereError
from liverecovery.sim.esx_host import GuestWrite, SimulatedEsxHost

__all__ = ["RemoteSimulatedHost", "SimulatedHostServer", "main"]

_MAX_LINE = 64 << 20


def _vm(data: Any) -> VmRef:
    return VmRef(str(data["moref"]), str(data["name"]), str(data["vmx_path"]))


def _ref(vm: VmRef | None) -> dict[str, str] | None:
    return None if vm is None else attrs.asdict(vm)


def _query_out(query: TargetQuery) -> dict[str, Any]:
    data = attrs.asdict(query, recurse=False)
    data["privileges"] = [[t.kind, t.name, list(p)] for t, p in query.privileges.items()]
    return data


def _query_in(data: dict[str, Any]) -> TargetQuery:
    privileges = {Target(k, n): tuple(p) for k, n, p in data.pop("privileges")}
    return TargetQuery(
        **{**data, "datastores": tuple(data["datastores"]), "networks": tuple(data["networks"])},
        privileges=privileges,
    )


def _facts_out(facts: TargetFacts) -> dict[str, Any]:
    return {
        "host": attrs.asdict(facts.host),
        "datastores": [attrs.asdict(d) for d in facts.datastores.values()],
        "vm_name_taken": facts.vm_name_taken,
        "folder_found": facts.folder_found,
        "resource_pool_found": facts.resource_pool_found,
        "granted": None
        if facts.granted is None
        else [[t.kind, t.name, sorted(p)] for t, p in facts.granted.items()],
    }


def _facts_in(data: dict[str, Any]) -> TargetFacts:
    host = dict(data["host"])
    for key in ("nfs_datastores", "networks"):
        host[key] = tuple(host[key])
    granted = data["granted"]
    return TargetFacts(
        host=HostFacts(**host),
        datastores={d["name"]: DatastoreFacts(**d) for d in data["datastores"]},
        vm_name_taken=bool(data["vm_name_taken"]),
        folder_found=data["folder_found"],
        resource_pool_found=data["resource_pool_found"],
        granted=None if granted is None else {Target(k, n): frozenset(p) for k, n, p in granted},
    )


class SimulatedHostServer:
    """Serves one ``SimulatedEsxHost`` on a unix socket."""

    def __init__(self, host: SimulatedEsxHost, socket_path: str | os.PathLike[str]) -> None:
        self.host = host
        self.socket_path = Path(socket_path)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; calls run in this task group, not the connection's."""
        listener = await anyio.create_unix_listener(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()

            async def handle(stream: anyio.abc.SocketStream) -> None:
                await self._handle(stream, tg)

            await listener.serve(handle)

    async def _handle(self, stream: anyio.abc.SocketStream, tg: anyio.abc.TaskGroup) -> None:
        send, receive = anyio.create_memory_object_stream[bytes](1000)
        async with stream, receive:
            try:
                request = json.loads(await _read_line(stream))
            except (ValueError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                await _send(stream, {"error": {"type": "BackendError", "message": str(exc)}})
                return
            tg.start_soon(self._run, request, send)
            async for line in receive:
                try:
                    await stream.send(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return  # the caller is gone; the call itself carries on

    async def _run(self, request: dict[str, Any], out: MemoryObjectSendStream[bytes]) -> None:
        def emit(message: dict[str, Any]) -> None:
            with contextlib.suppress(
                anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock
            ):
                out.send_nowait(json.dumps(message).encode() + b"\n")

        def progress(done: int, total: int) -> None:
            emit({"progress": [done, total]})

        async with out:
            try:
                result = await self._dispatch(
                    str(request.get("method")), request.get("params") or {}, progress
                )
                emit({"result": result})
            except VSphereError as exc:
                emit(
                    {
                        "error": {
                            "type": "VSphereError",
                            "message": str(exc),
                            "operation": exc.operation,
                            "fault": exc.fault,
                        }
                    }
                )
            except (LiveRecoveryError, KeyError, TypeError, ValueError) as exc:
                emit({"error": {"type": type(exc).__name__, "message": str(exc)}})

    async def _dispatch(self, method: str, p: dict[str, Any], progress: ProgressCallback) -> Any:
        host = self.host
        match method:
            case "mount_nfs_datastore":
                return await host.mount_nfs_datastore(
                    p["host"], p["remote_host"], p["remote_path"], p["datastore"]
                )
            case "unmount_datastore":
                return await host.unmount_datastore(p["host"], p["datastore"])
            case "register_vm":
                return _ref(
                    await host.register_vm(
                        p["host"],
                        p["vmx_path"],
                        p["name"],
                        folder=p.get("folder"),
                        resource_pool=p.get("resource_pool"),
                    )
                )
            case "describe":
                return _facts_out(await host.describe(_query_in(p["query"])))
            case "unregister_vm":
                return await host.unregister_vm(_vm(p["vm"]))
            case "power_on":
                return await host.power_on(_vm(p["vm"]))
            case "power_off":
                return await host.power_off(_vm(p["vm"]))
            case "relocate":
                return _ref(await host.relocate(_vm(p["vm"]), p["datastore"], progress))
            case "power_state":
                return await host.power_state(_vm(p["vm"]))
            case "nfs_datastores":
                return await host.nfs_datastores(p["host"])
            case "find_vm":
                return _ref(await host.find_vm(p["vmx_path"]))
            case "guest_info":
                return attrs.asdict(await host.guest_info(_vm(p["vm"])))
            case "run_in_guest":
                creds = GuestCredentials(p["username"], p["password"])
                return await host.run_in_guest(
                    _vm(p["vm"]), creds, p["program"], p["arguments"], float(p["wait_s"])
                )
            case "screenshot":
                shot = await host.screenshot(_vm(p["vm"]))
                return None if shot is None else base64.b64encode(shot).decode()
            case "vms":
                return [_ref(v.ref) for v in host.vms.values()]
            case "set_portmap_port":
                host.portmap_port = int(p["port"])
                return None
            case "vm_status":
                state = host.vms[_vm(p["vm"]).moref]
                mount = host.mounts.get(state.datastore)
                return {
                    "powered_on": state.powered_on,
                    "migrated": state.migrated,
                    "io_error": state.io_error,
                    "writes": len(state.writes),
                    "reconnects": mount.client.reconnects if mount else None,
                    "vmx_path": state.ref.vmx_path,
                }
            case "guest_writes":
                return [
                    [w.disk, w.offset, base64.b64encode(w.data).decode()]
                    for w in host.guest_writes(_vm(p["vm"]))
                ]
            case "disk_path":
                path = host.disk_path(_vm(p["vm"]), int(p["index"]))
                return None if path is None else str(path)
            case "timed_read":
                return await _timed_read(host, _vm(p["vm"]), int(p["offset"]), int(p["size"]))
        raise ValueError(f"unknown method {method!r}")


async def _timed_read(host: SimulatedEsxHost, vm: VmRef, offset: int, size: int) -> float | None:
    """Seconds one READ of a VM's first disk takes through the host's own NFS mount (measured
    in the host's process, so a benchmark's probe costs the server's process nothing); None when
    the VM is not served over NFS (gone, migrated, no disk) or the READ failed."""
    state = host.vms.get(vm.moref)
    if state is None or not state.disks or state.datastore not in host.mounts:
        return None
    disk = state.disks[0]
    client = host.mounts[state.datastore].client
    started = time.monotonic()
    try:
        await client.read(disk.fh, offset % max(1, disk.size), size)
    except (LiveRecoveryError, OSError):
        return None
    return time.monotonic() - started


async def _read_line(stream: anyio.abc.ByteReceiveStream) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        buffer += await stream.receive()
        if len(buffer) > _MAX_LINE:
            raise ValueError(f"a line over {_MAX_LINE} bytes")
    return bytes(buffer)


async def _send(stream: anyio.abc.ByteSendStream, message: dict[str, Any]) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await stream.send(json.dumps(message).encode() + b"\n")


class RemoteSimulatedHost(GuestOperations):
    """A ``VSphereClient`` + ``VSphereInventory`` for a simulated host in another process."""

    def __init__(self, socket_path: str | os.PathLike[str], *, call_timeout: float = 600.0) -> None:
        self.socket_path = Path(socket_path)
        self.call_timeout = call_timeout

    async def call(
        self, method: str, progress: ProgressCallback | None = None, **params: Any
    ) -> Any:
        """One call on its own connection.

        :raises VSphereError: the host's fault. :raises BackendError: the host is unreachable.
        """
        operation = f"vsphere.{method}"
        try:
            with anyio.fail_after(self.call_timeout):
                async with await anyio.connect_unix(self.socket_path) as stream:
                    await stream.send(
                        json.dumps({"method": method, "params": params}).encode() + b"\n"
                    )
                    buffer = bytearray()
                    while True:
                        while b"\n" not in buffer:
                            chunk = await stream.receive()
                            buffer += chunk
                        line, _, rest = bytes(buffer).partition(b"\n")
                        buffer = bytearray(rest)
                        message = json.loads(line)
                        if "progress" in message:
                            if progress is not None:
                                progress(*message["progress"])
                            continue
                        break
        except TimeoutError:
            raise BackendError(
                f"the simulated host did not answer {method} within {self.call_timeout} s",
                operation=operation,
            ) from None
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError) as exc:
            raise BackendError(
                f"cannot reach the simulated host at {self.socket_path}: {exc!r}",
                operation=operation,
            ) from None
        if "error" in message:
            error = message["error"]
            if error.get("type") == "VSphereError":
                raise VSphereError(
                    str(error["message"]),
                    operation=str(error.get("operation") or operation),
                    fault=str(error.get("fault") or ""),
                )
            raise BackendError(f"{error['type']}: {error['message']}", operation=operation)
        return message["result"]

    # -- VSphereClient ---------------------------------------------------------------------------

    async def mount_nfs_datastore(
        self, host: str, remote_host: str, remote_path: str, datastore: str
    ) -> str:
        return str(
            await self.call(
                "mount_nfs_datastore",
                host=host,
                remote_host=remote_host,
                remote_path=remote_path,
                datastore=datastore,
            )
        )

    async def unmount_datastore(self, host: str, datastore: str) -> None:
        await self.call("unmount_datastore", host=host, datastore=datastore)

    async def register_vm(
        self,
        host: str,
        vmx_path: str,
        name: str,
        *,
        folder: str | None = None,
        resource_pool: str | None = None,
    ) -> VmRef:
        return _vm(
            await self.call(
                "register_vm",
                host=host,
                vmx_path=vmx_path,
                name=name,
                folder=folder,
                resource_pool=resource_pool,
            )
        )

    async def describe(self, query: TargetQuery) -> TargetFacts:
        return _facts_in(await self.call("describe", query=_query_out(query)))

    async def unregister_vm(self, vm: VmRef) -> None:
        await self.call("unregister_vm", vm=_ref(vm))

    async def power_on(self, vm: VmRef) -> None:
        await self.call("power_on", vm=_ref(vm))

    async def power_off(self, vm: VmRef) -> None:
        await self.call("power_off", vm=_ref(vm))

    async def relocate(
        self, vm: VmRef, datastore: str, progress: ProgressCallback | None = None
    ) -> VmRef:
        return _vm(await self.call("relocate", progress, vm=_ref(vm), datastore=datastore))

    async def aclose(self) -> None:
        """Nothing to close: every call has its own connection."""
        await anyio.lowlevel.checkpoint()

    # -- VSphereInventory ------------------------------------------------------------------------

    async def power_state(self, vm: VmRef) -> str:
        return str(await self.call("power_state", vm=_ref(vm)))

    async def nfs_datastores(self, host: str) -> Sequence[str]:
        return [str(d) for d in await self.call("nfs_datastores", host=host)]

    async def find_vm(self, vmx_path: str) -> VmRef | None:
        found = await self.call("find_vm", vmx_path=vmx_path)
        return None if found is None else _vm(found)

    # -- GuestOperations ---------------------------------------------------------------------------

    async def guest_info(self, vm: VmRef) -> GuestInfo:
        return GuestInfo(**await self.call("guest_info", vm=_ref(vm)))

    async def run_in_guest(
        self,
        vm: VmRef,
        credentials: GuestCredentials,
        program: str,
        arguments: str,
        wait_s: float,
    ) -> int:
        return int(
            await self.call(
                "run_in_guest",
                vm=_ref(vm),
                username=credentials.username,
                password=credentials.password,
                program=program,
                arguments=arguments,
                wait_s=wait_s,
            )
        )

    async def screenshot(self, vm: VmRef) -> bytes | None:
        shot = await self.call("screenshot", vm=_ref(vm))
        return None if shot is None else base64.b64decode(shot)

    # -- for tests -------------------------------------------------------------------------------

    async def vms(self) -> list[VmRef]:
        """Every VM registered on the host."""
        return [_vm(v) for v in await self.call("vms")]

    async def set_portmap_port(self, port: int) -> None:
        """Where the host finds the NFS server's portmapper (2049/111 in production)."""
        await self.call("set_portmap_port", port=port)

    async def vm_status(self, vm: VmRef) -> dict[str, Any]:
        """Power state, migration, guest I/O error, write and reconnect counts of a VM."""
        status: dict[str, Any] = await self.call("vm_status", vm=_ref(vm))
        return status

    async def guest_writes(self, vm: VmRef) -> list[GuestWrite]:
        """Every write the guest made, in order."""
        rows = await self.call("guest_writes", vm=_ref(vm))
        return [GuestWrite(int(d), int(o), base64.b64decode(data)) for d, o, data in rows]

    async def timed_read(self, vm: VmRef, offset: int, size: int) -> float | None:
        """Seconds a READ of the VM's first disk takes through the host's mount (None: not
        served over NFS)."""
        took = await self.call("timed_read", vm=_ref(vm), offset=offset, size=size)
        return None if took is None else float(took)

    async def disk_path(self, vm: VmRef, index: int) -> Path | None:
        """The local file holding a migrated VM's disk ``index``."""
        path = await self.call("disk_path", vm=_ref(vm), index=index)
        return None if path is None else Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a simulated ESX host serving on a unix socket until killed."""
    parser = argparse.ArgumentParser(prog="simulated_remote", description=main.__doc__)
    parser.add_argument("socket", type=Path)
    parser.add_argument("root", type=Path, help="directory holding the local datastores")
    parser.add_argument("--name", default="esx-sim")
    parser.add_argument("--local-datastore", action="append", default=None)
    parser.add_argument("--portmap-port", type=int, default=111)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--write-interval-s", type=float, default=0.02)
    parser.add_argument("--apd-timeout-s", type=float, default=140.0)
    parser.add_argument("--boot-read-bytes", type=int, default=4 << 20)
    args = parser.parse_args(argv)

    async def run() -> None:
        async with SimulatedEsxHost(
            args.root,
            name=args.name,
            local_datastores=args.local_datastore or ["datastore1"],
            portmap_port=args.portmap_port,
            heartbeat_s=args.heartbeat_s,
            write_interval_s=args.write_interval_s,
            apd_timeout_s=args.apd_timeout_s,
            boot_read_bytes=args.boot_read_bytes,
        ) as host:
            server = SimulatedHostServer(host, args.socket)
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve)
                print("ready", flush=True)

    anyio.run(run)


if __name__ == "__main__":  # pragma: no cover - exercised by the crash tests
    main(sys.argv[1:])
