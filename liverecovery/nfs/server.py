"""``NfsServer``: PORTMAP v2, MOUNT v3 and NFS v3 on one TCP port, serving ``Filesystem`` exports.

Each connection reads records and runs every call in its own task (bounded per connection), so
replies go out as they complete, in any order: a READ stuck on a slow backup never delays the
GETATTR heartbeat behind it. A malformed record is answered GARBAGE_ARGS (or closes the
connection when it cannot be framed); nothing a client sends can crash the server or make it
buffer more than one maximum-size record per connection.

The server is also the ``NfsExporter`` of ``liverecovery.backends``: ``export`` creates an empty
root (a ``CompositeFilesystem``) that jobs ``publish`` folders into; ``export_filesystem`` exports
one ``Filesystem`` directly (``liverecovery serve``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from liverecovery.errors import BackendError, NfsError, NfsStatus
from liverecovery.nfs import mount_codec as mnt
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs import portmap_codec as pm
from liverecovery.nfs import zero_copy
from liverecovery.nfs.composite import CompositeFilesystem
from liverecovery.nfs.connection import RpcServerProtocol
from liverecovery.nfs.exports import ExportInfo
from liverecovery.nfs.filesystem import (
    FileAttributes,
    Filesystem,
    FileType,
    RangeReader,
    range_reader_of,
)
from liverecovery.nfs.handles import HandleCodec, load_or_create_key
from liverecovery.nfs.names import NAME_MAX, check_name
from liverecovery.nfs.rpc import (
    AcceptStat,
    CallRejected,
    RpcError,
    decode_call,
    encode_accepted,
)
from liverecovery.nfs.xdr import Part, Unpacker, XdrError

__all__ = ["NfsServer"]

log = logging.getLogger(__name__)

MAX_IO: Final = n3.MAX_DATA
DEFAULT_MAX_RECORD: Final = MAX_IO + 64 * 1024
_EXPORTS_FILE: Final = "exports.json"
_DIR_ACCESS: Final = n3.ACCESS_ALL
_FILE_ACCESS: Final = n3.ACCESS_ALL & ~n3.ACCESS_DELETE & ~n3.ACCESS_LOOKUP
_WRITE_ACCESS: Final = n3.ACCESS_MODIFY | n3.ACCESS_EXTEND | n3.ACCESS_DELETE
_SPLICE_MIN: Final = 16 * 1024
"""READs at least this large are spliced from the file when the filesystem can say where their
bytes are (``FileRangeReader``): below it, copying is cheaper than the pipe round trip."""


@functools.lru_cache(maxsize=1024)
def _peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address, parsed once (every call checks it against the export's clients)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _primary_handle(args: Any) -> bytes:
    """The handle a procedure acts on: the object's, or the (source) directory's."""
    for name in ("fh", "dir", "from_dir"):
        fh = getattr(args, name, None)
        if isinstance(fh, bytes):
            return fh
    raise TypeError(f"{type(args).__name__} has no handle")


class _Garbage(Exception):
    """Arguments that do not decode: answer GARBAGE_ARGS."""


@attrs.define
class _Export:
    path: str
    export_id: int
    generation: int
    fs: Filesystem
    clients: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    composite: CompositeFilesystem | None
    range_reader: RangeReader | None = attrs.field(init=False)
    """``fs.read_file_range`` when the filesystem has it (looked up once, not per READ)."""
    _allowed: dict[str, bool] = attrs.field(factory=dict, init=False)
    """Answers of ``allows`` by peer address (every call asks); cleared when clients change."""

    def __attrs_post_init__(self) -> None:
        self.range_reader = range_reader_of(self.fs)

    def allows(self, address: str) -> bool:
        known = self._allowed.get(address)
        if known is None:
            ip = _peer_ip(address)
            known = ip is not None and any(ip in net for net in self.networks)
            if len(self._allowed) >= 1024:
                self._allowed.clear()
            self._allowed[address] = known
        return known

    def set_clients(
        self,
        clients: tuple[str, ...],
        networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    ) -> None:
        self.networks = networks
        self.clients = clients
        self._allowed.clear()

    @property
    def info(self) -> ExportInfo:
        return ExportInfo(self.path, self.clients)


def _normalize_path(path: str) -> str:
    if not path.startswith("/"):
        raise BackendError(f"export path {path!r} must be absolute", operation="nfs.export")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BackendError(f"export path {path!r} has '.' or '..'", operation="nfs.export")
    return "/" + "/".join(parts)


async def _resolve_clients(
    clients: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for client in clients:
        try:
            nets.append(ipaddress.ip_network(client, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = await anyio.getaddrinfo(client, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise BackendError(
                f"export client {client!r} is neither an address nor a resolvable name: {exc}",
                operation="nfs.export",
            ) from None
        for info in infos:
            nets.append(ipaddress.ip_network(str(info[4][0]), strict=False))
    return tuple(nets)


class NfsServer:
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
        grace_s: float = 0.0,
    ) -> None:
        self._state_dir = Path(state_dir)
        self._host = host
        self._port = port
        self._portmap_port = portmap_port
        self.max_in_flight = max_in_flight
        self.max_record_size = max_record_size
        self.partial_record_timeout = partial_record_timeout
        """Seconds a client may leave a record half-sent before its connection is closed."""
        self.grace_s = grace_s
        """After a start, how long handles of exports and folders not restored yet get
        NFS3ERR_JUKEBOX (retry later) instead of NFS3ERR_STALE: a restarted process needs a
        moment to export and publish again, and a running VM must not see its disk go stale."""
        self._started_at = 0.0
        self._handles = HandleCodec(load_or_create_key(self._state_dir))
        self.write_verifier = secrets.token_bytes(8)
        """Changes on every server start: clients resend UNSTABLE writes a restart may have lost."""
        self._registry: dict[str, dict[str, int]] = self._load_registry()
        self._exports: dict[str, _Export] = {}
        self._by_id: dict[int, _Export] = {}
        self._mounts: set[tuple[str, str]] = set()
        self._servers: list[asyncio.Server] = []
        self._connections: set[RpcServerProtocol] = set()
        self._bound_port = 0
        self._bound_portmap_port = 0
        self._nfs_procs = self._nfs_table()
        self._pipes: zero_copy.PipePool | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> NfsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind the listener(s) and start serving; ``aclose`` may be called from any task.

        :raises OSError: a port is taken.
        """
        if self._servers:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()

        def protocol() -> RpcServerProtocol:
            return RpcServerProtocol(
                self._dispatch,
                max_in_flight=self.max_in_flight,
                max_record=self.max_record_size,
                connections=self._connections,
                partial_record_timeout=self.partial_record_timeout,
            )

        self._started_at = time.monotonic()
        if zero_copy.zero_copy_supported():
            self._pipes = zero_copy.PipePool(MAX_IO)
        main = await loop.create_server(protocol, self._host, self._port, reuse_address=True)
        self._servers.append(main)
        self._bound_port = int(main.sockets[0].getsockname()[1])
        self._bound_portmap_port = self._bound_port
        if self._portmap_port is not None:
            try:
                pms = await loop.create_server(
                    protocol, self._host, self._portmap_port, reuse_address=True
                )
            except BaseException:
                main.close()
                raise
            self._servers.append(pms)
            self._bound_portmap_port = int(pms.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and drop every connection (exports are not unexported)."""
        servers, self._servers = self._servers, []
        for srv in servers:
            srv.close()
        for conn in list(self._connections):
            conn.close()
        for srv in servers:
            await srv.wait_closed()
        if self._pipes is not None:
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

    def url(self, path: str) -> str:
        """The ``nfs://`` URL libnfs clients accept for an export."""
        return f"nfs://{self._host}{path}?version=3&nfsport={self.port}&mountport={self.port}"

    # -- persisted export ids ---------------------------------------------------------------

    def _load_registry(self) -> dict[str, dict[str, int]]:
        try:
            data = json.loads((self._state_dir / _EXPORTS_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BackendError(
                f"{self._state_dir / _EXPORTS_FILE}: unreadable export registry: {exc}",
                operation="nfs.start",
            ) from None
        return {
            str(k): {"id": int(v["id"]), "generation": int(v["generation"])}
            for k, v in data.items()
        }

    def _save_registry(self) -> None:
        path = self._state_dir / _EXPORTS_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._registry, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _identity(self, path: str) -> tuple[int, int]:
        entry = self._registry.get(path)
        if entry is None:
            next_id = max((e["id"] for e in self._registry.values()), default=0) + 1
            entry = {"id": next_id, "generation": 1}
            self._registry[path] = entry
            self._save_registry()
        return entry["id"], entry["generation"]

    # -- NfsExporter ------------------------------------------------------------------------

    async def export(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """Create (or widen the client list of) an empty export that jobs publish folders into.

        :raises BackendError: bad path or client, or ``path`` exports a plain filesystem.
        """
        path = _normalize_path(path)
        existing = self._exports.get(path)
        if existing is not None:
            if existing.composite is None:
                raise BackendError(f"{path} already exports a filesystem", operation="nfs.export")
            merged = tuple(dict.fromkeys((*existing.clients, *clients)))
            existing.set_clients(merged, await _resolve_clients(merged))
            return existing.info
        composite = CompositeFilesystem()
        return await self._add(path, composite, clients, composite)

    async def export_filesystem(
        self, path: str, filesystem: Filesystem, clients: Sequence[str]
    ) -> ExportInfo:
        """Export one filesystem directly at ``path``. :raises BackendError: path taken or bad."""
        path = _normalize_path(path)
        if path in self._exports:
            raise BackendError(f"{path} is already exported", operation="nfs.export")
        return await self._add(path, filesystem, clients, None)

    async def _add(
        self,
        path: str,
        fs: Filesystem,
        clients: Sequence[str],
        composite: CompositeFilesystem | None,
    ) -> ExportInfo:
        networks = await _resolve_clients(clients)
        export_id, generation = self._identity(path)
        exp = _Export(path, export_id, generation, fs, tuple(clients), networks, composite)
        self._exports[path] = exp
        self._by_id[export_id] = exp
        log.info("exported %s to %s", path, ", ".join(clients) or "nobody")
        return exp.info

    async def set_clients(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """Replace the addresses allowed to use an export; refused ones get ACCES at once.

        :raises BackendError: ``path`` is not exported or a client does not resolve.
        """
        exp = self._exports.get(_normalize_path(path))
        if exp is None:
            raise BackendError(f"{path} is not exported", operation="nfs.set_clients")
        exp.set_clients(tuple(clients), await _resolve_clients(clients))
        return exp.info

    async def unexport(self, path: str) -> None:
        """Remove an export; every handle it gave out becomes STALE, also after a restart."""
        path = _normalize_path(path)
        exp = self._exports.pop(path, None)
        if exp is None:
            raise BackendError(f"{path} is not exported", operation="nfs.unexport")
        del self._by_id[exp.export_id]
        self._registry[path]["generation"] = exp.generation + 1
        self._save_registry()
        self._mounts = {(h, p) for h, p in self._mounts if p != path}

    def _composite(self, path: str, operation: str) -> CompositeFilesystem:
        exp = self._exports.get(_normalize_path(path))
        if exp is None or exp.composite is None:
            raise BackendError(f"{path} is not an export to publish into", operation=operation)
        return exp.composite

    async def publish(self, path: str, folder: str, filesystem: Filesystem) -> None:
        """Make ``filesystem`` visible as ``folder`` in the export's root. :raises BackendError:"""
        try:
            self._composite(path, "nfs.publish").publish(folder, filesystem)
        except NfsError as exc:
            raise BackendError(f"{path}: {exc}", operation="nfs.publish") from None

    async def unpublish(self, path: str, folder: str) -> None:
        """Remove a published folder; its handles become STALE. :raises BackendError:"""
        try:
            self._composite(path, "nfs.unpublish").unpublish(folder)
        except NfsError as exc:
            raise BackendError(f"{path}: {exc}", operation="nfs.unpublish") from None

    def exports(self) -> Mapping[str, ExportInfo]:
        return {path: exp.info for path, exp in self._exports.items()}

    # -- connections ------------------------------------------------------------------------

    async def _dispatch(self, record: bytes | bytearray, peer: str) -> list[Part] | None:
        """The reply to one record; None when it is not an RPC call (the connection closes)."""
        try:
            call = decode_call(record)
        except CallRejected as exc:
            log.debug("rejected call: %s", exc)
            return [exc.reply]
        except RpcError as exc:
            log.info("closing connection from %s: %s", peer, exc)
            return None
        try:
            if call.prog == n3.NFS_PROGRAM:
                if call.vers != n3.NFS_VERSION:
                    return [self._mismatch(call.xid, n3.NFS_VERSION)]
                return await self._nfs(call.xid, call.proc, call.args, peer)
            if call.prog == mnt.MOUNT_PROGRAM:
                if call.vers != mnt.MOUNT_VERSION:
                    return [self._mismatch(call.xid, mnt.MOUNT_VERSION)]
                return [await self._mount(call.xid, call.proc, call.args, peer)]
            if call.prog == pm.PMAP_PROGRAM:
                if call.vers != pm.PMAP_VERSION:
                    return [self._mismatch(call.xid, pm.PMAP_VERSION)]
                return [self._portmap(call.xid, call.proc, call.args)]
            return [encode_accepted(call.xid, AcceptStat.PROG_UNAVAIL).getvalue()]
        except _Garbage as exc:
            log.debug("garbage arguments from %s: %s", peer, exc)
            return [encode_accepted(call.xid, AcceptStat.GARBAGE_ARGS).getvalue()]
        except Exception:
            log.exception("call %s/%s from %s failed", call.prog, call.proc, peer)
            return [encode_accepted(call.xid, AcceptStat.SYSTEM_ERR).getvalue()]

    @staticmethod
    def _mismatch(xid: int, version: int) -> bytes:
        return encode_accepted(xid, AcceptStat.PROG_MISMATCH, (version, version)).getvalue()

    # -- PORTMAP ----------------------------------------------------------------------------

    def _mappings(self) -> list[pm.Mapping]:
        tcp = pm.IPPROTO_TCP
        return [
            pm.Mapping(pm.PMAP_PROGRAM, pm.PMAP_VERSION, tcp, self.portmap_port),
            pm.Mapping(mnt.MOUNT_PROGRAM, mnt.MOUNT_VERSION, tcp, self.port),
            pm.Mapping(n3.NFS_PROGRAM, n3.NFS_VERSION, tcp, self.port),
        ]

    def _portmap(self, xid: int, proc: int, args: Unpacker) -> bytes:
        p = encode_accepted(xid)
        try:
            if proc == pm.PmapProc.NULL:
                pass
            elif proc == pm.PmapProc.GETPORT:
                want = pm.Mapping.unpack(args)
                port = 0
                for m in self._mappings():
                    if (m.prog, m.vers, m.prot) == (want.prog, want.vers, want.prot):
                        port = m.port
                p.u32(port)
            elif proc == pm.PmapProc.DUMP:
                pm.pack_mapping_list(p, self._mappings())
            elif proc in (pm.PmapProc.SET, pm.PmapProc.UNSET):
                pm.Mapping.unpack(args)
                p.boolean(False)  # registrations are not accepted from clients
            else:
                return encode_accepted(xid, AcceptStat.PROC_UNAVAIL).getvalue()
        except XdrError as exc:
            raise _Garbage(str(exc)) from None
        return p.getvalue()

    # -- MOUNT ------------------------------------------------------------------------------

    async def _mount(self, xid: int, proc: int, args: Unpacker, peer: str) -> bytes:
        p = encode_accepted(xid)
        try:
            if proc == mnt.MountProc.NULL:
                pass
            elif proc == mnt.MountProc.MNT:
                (await self._mnt(mnt.unpack_dirpath(args), peer)).pack(p)
            elif proc == mnt.MountProc.DUMP:
                # Only the caller's own mounts: other clients' addresses are none of its business.
                entries = [mnt.MountEntry(h, d) for h, d in sorted(self._mounts) if h == peer]
                mnt.pack_mountlist(p, entries)
            elif proc == mnt.MountProc.UMNT:
                path = mnt.unpack_dirpath(args)
                self._mounts.discard((peer, path))
            elif proc == mnt.MountProc.UMNTALL:
                self._mounts = {(h, d) for h, d in self._mounts if h != peer}
            elif proc == mnt.MountProc.EXPORT:
                # Only what the caller may mount: a client outside every allow list learns nothing
                # (not even which paths exist or which hosts may use them).
                exports = [
                    mnt.MountExport(e.path, e.clients)
                    for e in self._exports.values()
                    if e.allows(peer)
                ]
                mnt.pack_exports(p, exports)
            else:
                return encode_accepted(xid, AcceptStat.PROC_UNAVAIL).getvalue()
        except XdrError as exc:
            raise _Garbage(str(exc)) from None
        return p.getvalue()

    async def _mnt(self, dirpath: str, peer: str) -> mnt.MountRes:
        parts = [x for x in dirpath.split("/") if x]
        exp = None
        for i in range(len(parts), -1, -1):
            exp = self._exports.get("/" + "/".join(parts[:i]))
            if exp is not None:
                rest = parts[i:]
                break
        if exp is None:
            return mnt.MountRes(mnt.MountStatus.NOENT)
        if not exp.allows(peer):
            log.warning("refused mount of %s by %s", exp.path, peer)
            return mnt.MountRes(mnt.MountStatus.ACCES)
        fileid = exp.fs.root_id
        try:
            for name in rest:
                check_name(name)
                fileid = await exp.fs.lookup(fileid, name)
            if (await exp.fs.getattr(fileid)).type != FileType.DIR:
                return mnt.MountRes(mnt.MountStatus.NOTDIR)
        except NfsError as exc:
            status = {
                NfsStatus.NOENT: mnt.MountStatus.NOENT,
                NfsStatus.NOTDIR: mnt.MountStatus.NOTDIR,
                NfsStatus.NAMETOOLONG: mnt.MountStatus.NAMETOOLONG,
            }.get(exc.status, mnt.MountStatus.ACCES)
            return mnt.MountRes(status)
        self._mounts.add((peer, dirpath))
        fh = self._handles.encode(exp.export_id, exp.generation, fileid)
        return mnt.MountRes(mnt.MountStatus.OK, fh, (1,))

    # -- NFS --------------------------------------------------------------------------------

    def _resolve(self, fh: bytes, peer: str) -> tuple[_Export, int]:
        h = self._handles.decode(fh)
        exp = self._by_id.get(h.export_id)
        if exp is None or exp.generation != h.generation:
            if (
                exp is None
                and self._in_grace()
                and self._generation_of(h.export_id) == h.generation
            ):
                raise NfsError(NfsStatus.JUKEBOX, "export not restored yet after a restart")
            raise NfsError(NfsStatus.STALE, "export no longer exists")
        if not exp.allows(peer):
            raise NfsError(NfsStatus.ACCES, f"{peer} may not use {exp.path}")
        return exp, h.fileid

    def _in_grace(self) -> bool:
        return bool(self._started_at) and time.monotonic() - self._started_at < self.grace_s

    def _generation_of(self, export_id: int) -> int | None:
        """The current generation of a known export id (exported or not), None if unknown."""
        for entry in self._registry.values():
            if entry.get("id") == export_id:
                return int(entry.get("generation", 0))
        return None

    def _fh(self, exp: _Export, fileid: int) -> bytes:
        return self._handles.encode(exp.export_id, exp.generation, fileid)

    async def _nfs(self, xid: int, proc: int, args: Unpacker, peer: str) -> list[Part]:
        if proc == n3.Proc.NULL:
            return encode_accepted(xid).parts()
        entry = self._nfs_procs.get(proc)
        if entry is None:
            return encode_accepted(xid, AcceptStat.PROC_UNAVAIL).parts()
        unpack, handler, result_type = entry
        try:
            decoded = unpack(args)
        except (XdrError, ValueError) as exc:
            raise _Garbage(str(exc)) from None
        fsid = 0
        try:
            exp, fileid = self._resolve(_primary_handle(decoded), peer)
            fsid = exp.export_id
            result = await handler(exp, fileid, decoded, peer)
            if result.status is NfsStatus.STALE and self._in_grace():
                # A folder not published again yet: the client retries, its VM keeps going.
                result = result_type(NfsStatus.JUKEBOX)
        except NfsError as exc:
            result = result_type(exc.status)
        p = encode_accepted(xid)
        result.pack(p, fsid)
        return p.parts()

    def _nfs_table(
        self,
    ) -> dict[int, tuple[Callable[[Unpacker], Any], Callable[..., Awaitable[Any]], type[Any]]]:
        P = n3.Proc
        return {
            P.GETATTR: (n3.FhArgs.unpack, self._getattr, n3.GetattrRes),
            P.SETATTR: (n3.SetattrArgs.unpack, self._setattr, n3.SetattrRes),
            P.LOOKUP: (n3.DiropArgs.unpack, self._lookup, n3.LookupRes),
            P.ACCESS: (n3.AccessArgs.unpack, self._access, n3.AccessRes),
            P.READLINK: (n3.FhArgs.unpack, self._readlink, n3.ReadlinkRes),
            P.READ: (n3.ReadArgs.unpack, self._read, n3.ReadRes),
            P.WRITE: (n3.WriteArgs.unpack, self._write, n3.WriteRes),
            P.CREATE: (n3.CreateArgs.unpack, self._create, n3.CreateRes),
            P.MKDIR: (n3.MkdirArgs.unpack, self._mkdir, n3.CreateRes),
            P.SYMLINK: (n3.SymlinkArgs.unpack, self._symlink, n3.CreateRes),
            P.MKNOD: (n3.MknodArgs.unpack, self._mknod, n3.CreateRes),
            P.REMOVE: (n3.DiropArgs.unpack, self._remove, n3.RemoveRes),
            P.RMDIR: (n3.DiropArgs.unpack, self._rmdir, n3.RemoveRes),
            P.RENAME: (n3.RenameArgs.unpack, self._rename, n3.RenameRes),
            P.LINK: (n3.LinkArgs.unpack, self._link, n3.LinkRes),
            P.READDIR: (n3.ReaddirArgs.unpack, self._readdir, n3.ReaddirRes),
            P.READDIRPLUS: (n3.ReaddirplusArgs.unpack, self._readdirplus, n3.ReaddirplusRes),
            P.FSSTAT: (n3.FhArgs.unpack, self._fsstat, n3.FsstatRes),
            P.FSINFO: (n3.FhArgs.unpack, self._fsinfo, n3.FsinfoRes),
            P.PATHCONF: (n3.FhArgs.unpack, self._pathconf, n3.PathconfRes),
            P.COMMIT: (n3.CommitArgs.unpack, self._commit, n3.CommitRes),
        }

    @staticmethod
    async def _attrs_or_none(fs: Filesystem, fileid: int) -> FileAttributes | None:
        try:
            return await fs.getattr(fileid)
        except NfsError:
            return None

    async def _wcc_before(self, fs: Filesystem, fileid: int) -> n3.WccAttr | None:
        a = await self._attrs_or_none(fs, fileid)
        return None if a is None else n3.WccAttr.of(a)

    async def _getattr(self, exp: _Export, fid: int, a: n3.FhArgs, peer: str) -> n3.GetattrRes:
        return n3.GetattrRes(NfsStatus.OK, await exp.fs.getattr(fid))

    async def _setattr(self, exp: _Export, fid: int, a: n3.SetattrArgs, peer: str) -> n3.SetattrRes:
        before = await exp.fs.getattr(fid)
        wcc_before = n3.WccAttr.of(before)
        if a.guard_ctime_ns is not None and a.guard_ctime_ns != before.ctime_ns:
            return n3.SetattrRes(NfsStatus.NOT_SYNC, n3.Wcc(wcc_before, before))
        try:
            after = await exp.fs.setattr(fid, a.attributes)
        except NfsError as exc:
            return n3.SetattrRes(
                exc.status, n3.Wcc(wcc_before, await self._attrs_or_none(exp.fs, fid))
            )
        return n3.SetattrRes(NfsStatus.OK, n3.Wcc(wcc_before, after))

    async def _lookup(self, exp: _Export, fid: int, a: n3.DiropArgs, peer: str) -> n3.LookupRes:
        try:
            check_name(a.name, allow_dots=True)
            child = await exp.fs.lookup(fid, a.name)
        except NfsError as exc:
            return n3.LookupRes(exc.status, dir_attributes=await self._attrs_or_none(exp.fs, fid))
        return n3.LookupRes(
            NfsStatus.OK,
            self._fh(exp, child),
            await self._attrs_or_none(exp.fs, child),
            await self._attrs_or_none(exp.fs, fid),
        )

    async def _access(self, exp: _Export, fid: int, a: n3.AccessArgs, peer: str) -> n3.AccessRes:
        attrs_ = await exp.fs.getattr(fid)
        allowed = _DIR_ACCESS if attrs_.type == FileType.DIR else _FILE_ACCESS
        if exp.fs.read_only:
            allowed &= ~_WRITE_ACCESS
        return n3.AccessRes(NfsStatus.OK, attrs_, a.access & allowed)

    async def _readlink(self, exp: _Export, fid: int, a: n3.FhArgs, peer: str) -> n3.ReadlinkRes:
        target = await exp.fs.readlink(fid)
        return n3.ReadlinkRes(NfsStatus.OK, await self._attrs_or_none(exp.fs, fid), target)

    async def _read(self, exp: _Export, fid: int, a: n3.ReadArgs, peer: str) -> n3.ReadRes:
        count = min(a.count, MAX_IO)
        try:
            if count >= _SPLICE_MIN and exp.range_reader is not None and self._pipes is not None:
                piped = await self._read_piped(exp, exp.range_reader, fid, a.offset, count)
                if piped is not None:
                    return piped
            data, eof = await exp.fs.read(fid, a.offset, count)
        except NfsError as exc:
            return n3.ReadRes(exc.status, await self._attrs_or_none(exp.fs, fid))
        return n3.ReadRes(NfsStatus.OK, await self._attrs_or_none(exp.fs, fid), eof, data)

    async def _read_piped(
        self,
        exp: _Export,
        reader: RangeReader,
        fid: int,
        offset: int,
        count: int,
    ) -> n3.ReadRes | None:
        """A READ whose data the connection splices from the file; None: read the bytes."""
        rng = await reader(fid, offset, count)
        if rng is None or self._pipes is None:
            if rng is not None:
                rng.close()
            return None
        loaded = await zero_copy.load(self._pipes, rng)
        if loaded is None:
            return None
        data, eof = loaded
        try:
            attributes = await self._attrs_or_none(exp.fs, fid)
        except BaseException:
            data.release()
            raise
        return n3.ReadRes(NfsStatus.OK, attributes, eof, data)

    async def _write(self, exp: _Export, fid: int, a: n3.WriteArgs, peer: str) -> n3.WriteRes:
        before = await self._wcc_before(exp.fs, fid)
        try:
            committed = await exp.fs.write(fid, a.offset, a.data, a.stable)
        except NfsError as exc:
            return n3.WriteRes(exc.status, n3.Wcc(before, await self._attrs_or_none(exp.fs, fid)))
        after = await self._attrs_or_none(exp.fs, fid)
        return n3.WriteRes(
            NfsStatus.OK, n3.Wcc(before, after), len(a.data), committed, self.write_verifier
        )

    async def _created(
        self, exp: _Export, dir_id: int, before: n3.WccAttr | None, make: Awaitable[int]
    ) -> n3.CreateRes:
        try:
            child = await make
        except NfsError as exc:
            after = await self._attrs_or_none(exp.fs, dir_id)
            return n3.CreateRes(exc.status, dir_wcc=n3.Wcc(before, after))
        return n3.CreateRes(
            NfsStatus.OK,
            self._fh(exp, child),
            await self._attrs_or_none(exp.fs, child),
            n3.Wcc(before, await self._attrs_or_none(exp.fs, dir_id)),
        )

    async def _create(self, exp: _Export, fid: int, a: n3.CreateArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        make = exp.fs.create(fid, a.name, a.attributes, a.mode, a.verifier)
        return await self._created(exp, fid, before, make)

    async def _mkdir(self, exp: _Export, fid: int, a: n3.MkdirArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        return await self._created(exp, fid, before, exp.fs.mkdir(fid, a.name, a.attributes))

    async def _symlink(self, exp: _Export, fid: int, a: n3.SymlinkArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        make = exp.fs.symlink(fid, a.name, a.target, a.attributes)
        return await self._created(exp, fid, before, make)

    async def _mknod(self, exp: _Export, fid: int, a: n3.MknodArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        status = (
            NfsStatus.BADTYPE
            if a.type in (FileType.REG, FileType.DIR, FileType.LNK)
            else NfsStatus.NOTSUPP
        )
        return n3.CreateRes(status, dir_wcc=n3.Wcc(before, await self._attrs_or_none(exp.fs, fid)))

    async def _removed(
        self, exp: _Export, fid: int, name: str, op: Callable[[int, str], Awaitable[None]]
    ) -> n3.RemoveRes:
        check_name(name)
        before = await self._wcc_before(exp.fs, fid)
        status = NfsStatus.OK
        try:
            await op(fid, name)
        except NfsError as exc:
            status = exc.status
        return n3.RemoveRes(status, n3.Wcc(before, await self._attrs_or_none(exp.fs, fid)))

    async def _remove(self, exp: _Export, fid: int, a: n3.DiropArgs, peer: str) -> n3.RemoveRes:
        return await self._removed(exp, fid, a.name, exp.fs.remove)

    async def _rmdir(self, exp: _Export, fid: int, a: n3.DiropArgs, peer: str) -> n3.RemoveRes:
        return await self._removed(exp, fid, a.name, exp.fs.rmdir)

    async def _rename(self, exp: _Export, fid: int, a: n3.RenameArgs, peer: str) -> n3.RenameRes:
        to_exp, to_fid = self._resolve(a.to_dir, peer)
        if to_exp is not exp:
            return n3.RenameRes(NfsStatus.XDEV)
        check_name(a.from_name)
        check_name(a.to_name)
        fb = await self._wcc_before(exp.fs, fid)
        tb = await self._wcc_before(exp.fs, to_fid)
        status = NfsStatus.OK
        try:
            await exp.fs.rename(fid, a.from_name, to_fid, a.to_name)
        except NfsError as exc:
            status = exc.status
        return n3.RenameRes(
            status,
            n3.Wcc(fb, await self._attrs_or_none(exp.fs, fid)),
            n3.Wcc(tb, await self._attrs_or_none(exp.fs, to_fid)),
        )

    async def _link(self, exp: _Export, fid: int, a: n3.LinkArgs, peer: str) -> n3.LinkRes:
        dir_exp, dir_id = self._resolve(a.dir, peer)
        if dir_exp is not exp:
            return n3.LinkRes(NfsStatus.XDEV)
        check_name(a.name)
        before = await self._wcc_before(exp.fs, dir_id)
        status = NfsStatus.OK
        try:
            await exp.fs.link(fid, dir_id, a.name)
        except NfsError as exc:
            status = exc.status
        return n3.LinkRes(
            status,
            await self._attrs_or_none(exp.fs, fid),
            n3.Wcc(before, await self._attrs_or_none(exp.fs, dir_id)),
        )

    async def _dir_page(
        self, exp: _Export, fid: int, cookie: int, verifier: bytes, max_entries: int
    ) -> tuple[FileAttributes, Any, bytes]:
        dir_attrs = await exp.fs.getattr(fid)
        if dir_attrs.type != FileType.DIR:
            raise NfsError(NfsStatus.NOTDIR, "not a directory")
        page = await exp.fs.readdir(fid, cookie, max_entries)
        verf = (page.verifier & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        if cookie and verifier != b"\0" * 8 and verifier != verf:
            raise NfsError(NfsStatus.BAD_COOKIE, "cookie verifier does not match")
        return dir_attrs, page, verf

    async def _readdir(self, exp: _Export, fid: int, a: n3.ReaddirArgs, peer: str) -> n3.ReaddirRes:
        count = min(a.count, MAX_IO)
        dir_attrs, page, verf = await self._dir_page(
            exp, fid, a.cookie, a.verifier, count // 24 + 1
        )
        size = n3.READDIR_RES_OVERHEAD
        entries: list[n3.Entry] = []
        for e in page.entries:
            entry = n3.Entry(e.fileid, e.name, e.cookie)
            size += entry.wire_size()
            if size > count:
                break
            entries.append(entry)
        if not entries and page.entries:
            return n3.ReaddirRes(NfsStatus.TOOSMALL, dir_attrs)
        eof = page.eof and len(entries) == len(page.entries)
        return n3.ReaddirRes(NfsStatus.OK, dir_attrs, verf, entries, eof)

    async def _readdirplus(
        self, exp: _Export, fid: int, a: n3.ReaddirplusArgs, peer: str
    ) -> n3.ReaddirplusRes:
        maxcount = min(a.maxcount, MAX_IO)
        max_entries = min(a.dircount // 24 + 1, maxcount // 160 + 1)
        dir_attrs, page, verf = await self._dir_page(exp, fid, a.cookie, a.verifier, max_entries)
        size = n3.READDIR_RES_OVERHEAD
        dirsize = 0
        entries: list[n3.EntryPlus] = []
        for e in page.entries:
            entry = n3.EntryPlus(
                e.fileid,
                e.name,
                e.cookie,
                await self._attrs_or_none(exp.fs, e.fileid),
                self._fh(exp, e.fileid),
            )
            size += entry.wire_size()
            dirsize += n3.Entry(e.fileid, e.name, e.cookie).wire_size()
            if size > maxcount or (entries and dirsize > a.dircount):
                break
            entries.append(entry)
        if not entries and page.entries:
            return n3.ReaddirplusRes(NfsStatus.TOOSMALL, dir_attrs)
        eof = page.eof and len(entries) == len(page.entries)
        return n3.ReaddirplusRes(NfsStatus.OK, dir_attrs, verf, entries, eof)

    async def _fsstat(self, exp: _Export, fid: int, a: n3.FhArgs, peer: str) -> n3.FsstatRes:
        st = await exp.fs.fsstat()
        return n3.FsstatRes(
            NfsStatus.OK,
            await self._attrs_or_none(exp.fs, fid),
            st.total_bytes,
            st.free_bytes,
            st.avail_bytes,
            st.total_files,
            st.free_files,
            st.avail_files,
            0,
        )

    async def _fsinfo(self, exp: _Export, fid: int, a: n3.FhArgs, peer: str) -> n3.FsinfoRes:
        return n3.FsinfoRes(
            NfsStatus.OK,
            await self._attrs_or_none(exp.fs, fid),
            rtmax=MAX_IO,
            rtpref=MAX_IO,
            rtmult=4096,
            wtmax=MAX_IO,
            wtpref=MAX_IO,
            wtmult=4096,
            dtpref=64 * 1024,
            maxfilesize=(1 << 63) - 1,
            time_delta_ns=1,
            properties=n3.FSF_LINK | n3.FSF_SYMLINK | n3.FSF_HOMOGENEOUS | n3.FSF_CANSETTIME,
        )

    async def _pathconf(self, exp: _Export, fid: int, a: n3.FhArgs, peer: str) -> n3.PathconfRes:
        return n3.PathconfRes(
            NfsStatus.OK,
            await self._attrs_or_none(exp.fs, fid),
            linkmax=65000,
            name_max=NAME_MAX,
            no_trunc=True,
            chown_restricted=True,
            case_insensitive=False,
            case_preserving=True,
        )

    async def _commit(self, exp: _Export, fid: int, a: n3.CommitArgs, peer: str) -> n3.CommitRes:
        before = await self._wcc_before(exp.fs, fid)
        await exp.fs.commit(fid)
        after = await self._attrs_or_none(exp.fs, fid)
        return n3.CommitRes(NfsStatus.OK, n3.Wcc(before, after), self.write_verifier)
