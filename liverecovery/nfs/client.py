"""An async NFSv3 client: PORTMAP GETPORT, MOUNT and every NFS procedure over one TCP connection.

Calls are multiplexed by xid, so many can be in flight on one connection and replies may come
back in any order. No background task is needed: whichever caller is waiting reads the socket and
hands other callers their replies. Non-OK NFS statuses raise ``NfsError(status)``; transport and
RPC-level failures raise ``NfsClientError``.

    async with await NfsClient.connect("127.0.0.1", port) as c:
        root = await c.mount("/export")
        fh, attrs = await c.create(root, "hello.txt")
        await c.write(fh, 0, b"hello", Stability.FILE_SYNC)
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.abc
import attrs

from liverecovery.errors import NfsClientError, NfsError, NfsStatus
from liverecovery.nfs import mount_codec as mnt
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs import portmap_codec as pm
from liverecovery.nfs.filesystem import (
    CreateMode,
    FileAttributes,
    SetAttributes,
    Stability,
)
from liverecovery.nfs.rpc import (
    AcceptStat,
    AuthSys,
    OpaqueAuth,
    RecordReader,
    RpcError,
    decode_reply,
    encode_call,
    record_header,
)
from liverecovery.nfs.xdr import Packer, Unpacker, XdrError

__all__ = ["NfsClient", "RpcConnection"]

_MAX_RECORD: Final = 4 * 1024 * 1024
_R = TypeVar("_R")


class _Args(Protocol):
    def pack(self, p: Packer) -> None: ...


class _Result(Protocol):
    status: NfsStatus


@attrs.define
class _Waiter:
    event: anyio.Event = attrs.field(factory=anyio.Event)
    record: bytes | bytearray | None = None


class RpcConnection(anyio.abc.AsyncResource):
    """ONC RPC calls over one TCP stream, several in flight at once."""

    def __init__(self, stream: anyio.abc.SocketStream, cred: OpaqueAuth, timeout: float) -> None:
        self._stream = stream
        self._cred = cred
        self.timeout = timeout
        self._xids = itertools.count(secrets.randbits(31))
        self._pending: dict[int, _Waiter] = {}
        self._reader = RecordReader(_MAX_RECORD)
        self._reading = False
        self._send_lock = anyio.Lock()
        self._broken: Exception | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        cred: OpaqueAuth | None = None,
        call_timeout: float = 30.0,
        local_host: str | None = None,
    ) -> RpcConnection:
        """Connect, from ``local_host`` when given (the source address servers check).

        :raises NfsClientError: the TCP connection cannot be made.
        """
        try:
            with anyio.fail_after(call_timeout):
                stream = await anyio.connect_tcp(host, port, local_host=local_host)
        except (OSError, TimeoutError) as exc:
            raise NfsClientError(f"cannot connect to {host}:{port}: {exc}") from None
        return cls(stream, cred or AuthSys(machine_name="liverecovery").encode(), call_timeout)

    async def aclose(self) -> None:
        self._fail(NfsClientError("connection closed"))
        await self._stream.aclose()

    def _fail(self, exc: Exception) -> None:
        if self._broken is None:
            self._broken = exc
        for w in self._pending.values():
            w.event.set()

    async def call(self, prog: int, vers: int, proc: int, args: _Args | None = None) -> Unpacker:
        """Send a call and wait for its reply's results. :raises NfsClientError:"""
        if self._broken is not None:
            raise NfsClientError(str(self._broken))
        xid = next(self._xids) & 0xFFFFFFFF
        p = encode_call(xid, prog, vers, proc, self._cred)
        if args is not None:
            args.pack(p)
        body = p.chunks()
        size = sum(memoryview(c).nbytes for c in body)
        waiter = _Waiter()
        self._pending[xid] = waiter
        try:
            with anyio.fail_after(self.timeout):
                async with self._send_lock:
                    try:
                        await self._stream.send(b"".join((record_header(size), *body)))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                        self._fail(NfsClientError(f"send failed: {exc!r}"))
                        raise NfsClientError(f"send failed: {exc!r}") from None
                record = await self._wait(waiter)
        except TimeoutError:
            raise NfsClientError(
                f"no reply to program {prog} procedure {proc} within {self.timeout} s"
            ) from None
        finally:
            self._pending.pop(xid, None)
        try:
            reply = decode_reply(record)
        except RpcError as exc:
            raise NfsClientError(str(exc)) from None
        if not reply.accepted:
            raise NfsClientError(
                f"call rejected: {reply.reject_stat!r} auth={reply.auth_stat!r} "
                f"mismatch={reply.mismatch}"
            )
        if reply.accept_stat != AcceptStat.SUCCESS or reply.results is None:
            raise NfsClientError(
                f"program {prog} v{vers} procedure {proc}: {reply.accept_stat!r}"
                + (f" versions {reply.mismatch}" if reply.mismatch else "")
            )
        return reply.results

    async def _wait(self, waiter: _Waiter) -> bytes | bytearray:
        while True:
            if waiter.record is not None:
                return waiter.record
            if self._broken is not None:
                raise NfsClientError(str(self._broken))
            if not self._reading:
                self._reading = True
                try:
                    while waiter.record is None:
                        await self._read_one()
                    return waiter.record
                finally:
                    self._reading = False
                    for other in self._pending.values():  # hand the socket to another waiter
                        if other.record is None:
                            other.event.set()
                            break
            await waiter.event.wait()
            waiter.event = anyio.Event()

    async def _read_one(self) -> None:
        try:
            record = self._reader.next_record()
            while record is None:
                self._reader.feed(await self._stream.receive(1 << 20))
                record = self._reader.next_record()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._fail(NfsClientError(f"connection lost: {exc!r}"))
            raise NfsClientError(f"connection lost: {exc!r}") from None
        except RpcError as exc:
            self._fail(NfsClientError(str(exc)))
            raise NfsClientError(str(exc)) from None
        if len(record) < 4:
            return
        xid = int.from_bytes(record[:4], "big")
        w = self._pending.get(xid)
        if w is not None:
            w.record = record
            w.event.set()


def _check(res: _R) -> _R:
    status = getattr(res, "status", NfsStatus.OK)
    if status != NfsStatus.OK:
        raise NfsError(status)
    return res


class NfsClient(anyio.abc.AsyncResource):
    """An NFSv3 client bound to one server; ``mount`` gives root handles."""

    def __init__(self, nfs: RpcConnection, mount: RpcConnection, host: str) -> None:
        self._nfs = nfs
        self._mount = mount
        self.host = host

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int | None = None,
        *,
        mount_port: int | None = None,
        portmap_port: int = 111,
        uid: int = 0,
        gid: int = 0,
        call_timeout: float = 30.0,
        local_host: str | None = None,
    ) -> NfsClient:
        """Connect to the NFS (and MOUNT) service.

        With ``port`` given, MOUNT is expected on the same port unless ``mount_port`` says
        otherwise (our server serves every program on one port); with no ``port``, both are asked
        of the portmapper at ``portmap_port``. ``local_host`` binds every connection to that
        source address (e.g. 127.0.0.2, to act as another client on loopback).

        :raises NfsClientError: a connection or portmap lookup failed.
        """
        cred = AuthSys(uid=uid, gid=gid, machine_name="liverecovery").encode()
        if port is not None and mount_port is None:
            mount_port = port
        if port is None or mount_port is None:
            pmap = await RpcConnection.connect(
                host, portmap_port, call_timeout=call_timeout, local_host=local_host
            )
            try:
                if port is None:
                    port = await cls._getport(pmap, n3.NFS_PROGRAM, n3.NFS_VERSION)
                if mount_port is None:
                    mount_port = await cls._getport(pmap, mnt.MOUNT_PROGRAM, mnt.MOUNT_VERSION)
            finally:
                await pmap.aclose()
        nfs = await RpcConnection.connect(
            host, port, cred=cred, call_timeout=call_timeout, local_host=local_host
        )
        if mount_port == port:
            return cls(nfs, nfs, host)
        try:
            mount = await RpcConnection.connect(
                host, mount_port, cred=cred, call_timeout=call_timeout, local_host=local_host
            )
        except BaseException:
            await nfs.aclose()
            raise
        return cls(nfs, mount, host)

    @staticmethod
    async def _getport(pmap: RpcConnection, prog: int, vers: int) -> int:
        u = await pmap.call(
            pm.PMAP_PROGRAM,
            pm.PMAP_VERSION,
            pm.PmapProc.GETPORT,
            pm.Mapping(prog, vers, pm.IPPROTO_TCP, 0),
        )
        port = u.u32()
        if port == 0:
            raise NfsClientError(f"program {prog} v{vers} is not registered over TCP")
        return port

    @staticmethod
    async def getport(
        host: str, prog: int, vers: int, *, portmap_port: int = 111, call_timeout: float = 30.0
    ) -> int:
        """Ask a portmapper for the TCP port of a program. :raises NfsClientError:"""
        pmap = await RpcConnection.connect(host, portmap_port, call_timeout=call_timeout)
        try:
            return await NfsClient._getport(pmap, prog, vers)
        finally:
            await pmap.aclose()

    async def aclose(self) -> None:
        await self._nfs.aclose()
        if self._mount is not self._nfs:
            await self._mount.aclose()

    # -- MOUNT ------------------------------------------------------------------------------

    async def _mnt_call(self, proc: int, args: _Args | None = None) -> Unpacker:
        return await self._mount.call(mnt.MOUNT_PROGRAM, mnt.MOUNT_VERSION, proc, args)

    async def mount(self, path: str) -> bytes:
        """The root handle of ``path``. :raises NfsError: carrying the MNT3 status as NFS status."""
        u = await self._mnt_call(mnt.MountProc.MNT, _Path(path))
        res: mnt.MountRes = self._decode(mnt.MountRes.unpack, u)
        if res.status != mnt.MountStatus.OK:
            raise NfsError(NfsStatus(int(res.status)), f"MNT {path}")
        return res.fh

    async def umount(self, path: str) -> None:
        await self._mnt_call(mnt.MountProc.UMNT, _Path(path))

    async def exports(self) -> list[mnt.MountExport]:
        res: list[mnt.MountExport] = self._decode(
            mnt.unpack_exports, await self._mnt_call(mnt.MountProc.EXPORT)
        )
        return res

    async def mounts(self) -> list[mnt.MountEntry]:
        res: list[mnt.MountEntry] = self._decode(
            mnt.unpack_mountlist, await self._mnt_call(mnt.MountProc.DUMP)
        )
        return res

    # -- NFS --------------------------------------------------------------------------------

    @staticmethod
    def _decode(unpack: Any, u: Unpacker) -> Any:
        try:
            return unpack(u)
        except (XdrError, ValueError) as exc:
            raise NfsClientError(f"malformed reply: {exc}") from None

    async def _call(self, proc: n3.Proc, args: _Args | None, unpack: Any) -> Any:
        u = await self._nfs.call(n3.NFS_PROGRAM, n3.NFS_VERSION, proc, args)
        return _check(self._decode(unpack, u))

    async def null(self) -> None:
        await self._nfs.call(n3.NFS_PROGRAM, n3.NFS_VERSION, n3.Proc.NULL)

    async def getattr(self, fh: bytes) -> FileAttributes:
        res: n3.GetattrRes = await self._call(n3.Proc.GETATTR, n3.FhArgs(fh), n3.GetattrRes.unpack)
        assert res.attributes is not None
        return res.attributes

    async def setattr(
        self, fh: bytes, attributes: SetAttributes, *, guard_ctime_ns: int | None = None
    ) -> n3.Wcc:
        args = n3.SetattrArgs(fh, attributes, guard_ctime_ns)
        res: n3.SetattrRes = await self._call(n3.Proc.SETATTR, args, n3.SetattrRes.unpack)
        return res.wcc

    async def lookup(self, dir_fh: bytes, name: str) -> tuple[bytes, FileAttributes | None]:
        args = n3.DiropArgs(dir_fh, name)
        res: n3.LookupRes = await self._call(n3.Proc.LOOKUP, args, n3.LookupRes.unpack)
        assert res.fh is not None
        return res.fh, res.attributes

    async def lookup_path(self, root: bytes, path: str) -> bytes:
        fh = root
        for name in (x for x in path.split("/") if x):
            fh, _ = await self.lookup(fh, name)
        return fh

    async def access(self, fh: bytes, access: int = n3.ACCESS_ALL) -> int:
        res: n3.AccessRes = await self._call(
            n3.Proc.ACCESS, n3.AccessArgs(fh, access), n3.AccessRes.unpack
        )
        return res.access

    async def readlink(self, fh: bytes) -> str:
        res: n3.ReadlinkRes = await self._call(
            n3.Proc.READLINK, n3.FhArgs(fh), n3.ReadlinkRes.unpack
        )
        return res.target

    async def read(self, fh: bytes, offset: int, length: int) -> tuple[bytes, bool]:
        """``length`` bytes at ``offset`` (fewer at end of file) and whether EOF was reached."""
        res: n3.ReadRes = await self._call(
            n3.Proc.READ, n3.ReadArgs(fh, offset, length), n3.ReadRes.unpack
        )
        data = res.data
        assert isinstance(data, (bytes, bytearray, memoryview))  # decoded: never a Payload
        return bytes(data), res.eof

    async def write(
        self,
        fh: bytes,
        offset: int,
        data: bytes | bytearray | memoryview,
        stable: Stability = Stability.FILE_SYNC,
    ) -> n3.WriteRes:
        """Write ``data``; the result has ``count``, ``committed`` and the write ``verifier``."""
        res: n3.WriteRes = await self._call(
            n3.Proc.WRITE, n3.WriteArgs(fh, offset, stable, data), n3.WriteRes.unpack
        )
        return res

    async def create(
        self,
        dir_fh: bytes,
        name: str,
        attributes: SetAttributes | None = None,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> tuple[bytes, FileAttributes | None]:
        args = n3.CreateArgs(dir_fh, name, mode, attributes or SetAttributes(mode=0o644), verifier)
        res: n3.CreateRes = await self._call(n3.Proc.CREATE, args, n3.CreateRes.unpack)
        return await self._created(dir_fh, name, res)

    async def _created(
        self, dir_fh: bytes, name: str, res: n3.CreateRes
    ) -> tuple[bytes, FileAttributes | None]:
        if res.fh is None:  # the server may omit the handle: look it up
            return await self.lookup(dir_fh, name)
        return res.fh, res.attributes

    async def mkdir(
        self, dir_fh: bytes, name: str, attributes: SetAttributes | None = None
    ) -> tuple[bytes, FileAttributes | None]:
        args = n3.MkdirArgs(dir_fh, name, attributes or SetAttributes(mode=0o755))
        res: n3.CreateRes = await self._call(n3.Proc.MKDIR, args, n3.CreateRes.unpack)
        return await self._created(dir_fh, name, res)

    async def symlink(
        self, dir_fh: bytes, name: str, target: str
    ) -> tuple[bytes, FileAttributes | None]:
        args = n3.SymlinkArgs(dir_fh, name, target, SetAttributes())
        res: n3.CreateRes = await self._call(n3.Proc.SYMLINK, args, n3.CreateRes.unpack)
        return await self._created(dir_fh, name, res)

    async def mknod(self, dir_fh: bytes, name: str, args: n3.MknodArgs) -> bytes | None:
        res: n3.CreateRes = await self._call(n3.Proc.MKNOD, args, n3.CreateRes.unpack)
        return res.fh

    async def remove(self, dir_fh: bytes, name: str) -> None:
        await self._call(n3.Proc.REMOVE, n3.DiropArgs(dir_fh, name), n3.RemoveRes.unpack)

    async def rmdir(self, dir_fh: bytes, name: str) -> None:
        await self._call(n3.Proc.RMDIR, n3.DiropArgs(dir_fh, name), n3.RemoveRes.unpack)

    async def rename(self, from_dir: bytes, from_name: str, to_dir: bytes, to_name: str) -> None:
        args = n3.RenameArgs(from_dir, from_name, to_dir, to_name)
        await self._call(n3.Proc.RENAME, args, n3.RenameRes.unpack)

    async def link(self, fh: bytes, dir_fh: bytes, name: str) -> None:
        await self._call(n3.Proc.LINK, n3.LinkArgs(fh, dir_fh, name), n3.LinkRes.unpack)

    async def readdir_page(
        self, fh: bytes, cookie: int = 0, verifier: bytes = b"\0" * 8, count: int = 32768
    ) -> n3.ReaddirRes:
        args = n3.ReaddirArgs(fh, cookie, verifier, count)
        res: n3.ReaddirRes = await self._call(n3.Proc.READDIR, args, n3.ReaddirRes.unpack)
        return res

    async def readdirplus_page(
        self,
        fh: bytes,
        cookie: int = 0,
        verifier: bytes = b"\0" * 8,
        dircount: int = 8192,
        maxcount: int = 65536,
    ) -> n3.ReaddirplusRes:
        args = n3.ReaddirplusArgs(fh, cookie, verifier, dircount, maxcount)
        res: n3.ReaddirplusRes = await self._call(
            n3.Proc.READDIRPLUS, args, n3.ReaddirplusRes.unpack
        )
        return res

    async def readdir(self, fh: bytes, *, count: int = 32768) -> list[n3.Entry]:
        """Every entry of a directory (``.`` and ``..`` included when the server sends them)."""
        out: list[n3.Entry] = []
        cookie, verf = 0, b"\0" * 8
        while True:
            page = await self.readdir_page(fh, cookie, verf, count)
            out.extend(page.entries)
            if page.eof:
                return out
            if not page.entries:
                raise NfsClientError("READDIR returned no entries and no EOF")
            cookie, verf = page.entries[-1].cookie, page.verifier

    async def readdirplus(
        self, fh: bytes, *, dircount: int = 8192, maxcount: int = 65536
    ) -> list[n3.EntryPlus]:
        out: list[n3.EntryPlus] = []
        cookie, verf = 0, b"\0" * 8
        while True:
            page = await self.readdirplus_page(fh, cookie, verf, dircount, maxcount)
            out.extend(page.entries)
            if page.eof:
                return out
            if not page.entries:
                raise NfsClientError("READDIRPLUS returned no entries and no EOF")
            cookie, verf = page.entries[-1].cookie, page.verifier

    async def fsstat(self, fh: bytes) -> n3.FsstatRes:
        res: n3.FsstatRes = await self._call(n3.Proc.FSSTAT, n3.FhArgs(fh), n3.FsstatRes.unpack)
        return res

    async def fsinfo(self, fh: bytes) -> n3.FsinfoRes:
        res: n3.FsinfoRes = await self._call(n3.Proc.FSINFO, n3.FhArgs(fh), n3.FsinfoRes.unpack)
        return res

    async def pathconf(self, fh: bytes) -> n3.PathconfRes:
        res: n3.PathconfRes = await self._call(
            n3.Proc.PATHCONF, n3.FhArgs(fh), n3.PathconfRes.unpack
        )
        return res

    async def commit(self, fh: bytes, offset: int = 0, length: int = 0) -> bytes:
        """Make UNSTABLE writes (``length`` bytes at ``offset``; 0: all) durable; returns the
        write verifier."""
        res: n3.CommitRes = await self._call(
            n3.Proc.COMMIT, n3.CommitArgs(fh, offset, length), n3.CommitRes.unpack
        )
        return res.verifier


@attrs.frozen
class _Path:
    path: str

    def pack(self, p: Packer) -> None:
        mnt.pack_dirpath(p, self.path)
