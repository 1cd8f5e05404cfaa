"""The MOUNT program, version 3 (RFC 1813 appendix I): root handles of exports for their clients.

MNT gives the handle of an export (or of a directory below it) to an allowed client; DUMP and
EXPORT answer only with what concerns the caller, so a client outside every allow list learns
nothing (not even which paths exist or which hosts may use them).
"""

from __future__ import annotations

import logging
from typing import Final

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs import mount_codec as mnt
from liverecovery.nfs.connection import LogThrottle
from liverecovery.nfs.dispatch import GarbageArgs, proc_unavailable
from liverecovery.nfs.exports import ExportRegistry
from liverecovery.nfs.filesystem import FileType
from liverecovery.nfs.names import check_name
from liverecovery.nfs.rpc import encode_accepted
from liverecovery.nfs.xdr import Part, Unpacker, XdrError

__all__ = ["MountProgram"]

log = logging.getLogger(__name__)

_MOUNT_STATUS: Final = {
    NfsStatus.NOENT: mnt.MountStatus.NOENT,
    NfsStatus.NOTDIR: mnt.MountStatus.NOTDIR,
    NfsStatus.NAMETOOLONG: mnt.MountStatus.NAMETOOLONG,
}
"""MNT's answer to a failed lookup of the path below an export (ACCES for any other)."""
_MAX_MOUNTS: Final = 4096
"""Mounts remembered for DUMP (informational only): the oldest is forgotten beyond this, so
clients that never UMNT (or vary the path's spelling) cannot grow it without bound."""


class MountProgram:
    """MOUNT v3 over the exports of ``exports``; remembers who mounted what (for DUMP)."""

    PROGRAM: Final = mnt.MOUNT_PROGRAM
    VERSION: Final = mnt.MOUNT_VERSION

    def __init__(self, exports: ExportRegistry) -> None:
        self._exports = exports
        self._mounts: dict[tuple[str, str], None] = {}
        self._throttle = LogThrottle(60.0, log)
        exports.on_unexport(self._forget)

    def _forget(self, path: str) -> None:
        self._mounts = {(h, p): None for h, p in self._mounts if p != path}

    async def call(self, xid: int, proc: int, args: Unpacker, peer: str) -> list[Part]:
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
                self._mounts.pop((peer, path), None)
            elif proc == mnt.MountProc.UMNTALL:
                self._mounts = {(h, d): None for h, d in self._mounts if h != peer}
            elif proc == mnt.MountProc.EXPORT:
                exports = [
                    mnt.MountExport(e.path, e.clients)
                    for e in self._exports.entries()
                    if e.allows(peer)
                ]
                mnt.pack_exports(p, exports)
            else:
                return proc_unavailable(xid)
        except XdrError as exc:
            raise GarbageArgs(str(exc)) from None
        return [p.getvalue()]

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
            self._throttle.log(logging.WARNING, "mnt", "refused mount of %s by %s", exp.path, peer)
            return mnt.MountRes(mnt.MountStatus.ACCES)
        fileid = exp.fs.root_id
        try:
            for name in rest:
                check_name(name)
                fileid = await exp.fs.lookup(fileid, name)
            if (await exp.fs.getattr(fileid)).type != FileType.DIR:
                return mnt.MountRes(mnt.MountStatus.NOTDIR)
        except NfsError as exc:
            return mnt.MountRes(_MOUNT_STATUS.get(exc.status, mnt.MountStatus.ACCES))
        self._mounts[(peer, dirpath)] = None
        if len(self._mounts) > _MAX_MOUNTS:
            del self._mounts[next(iter(self._mounts))]
        return mnt.MountRes(mnt.MountStatus.OK, self._exports.handle(exp, fileid), (1,))
