"""The NFSv3 program (RFC 1813): one handler per procedure, one dispatch table, one error map.

``Nfs3Program.call`` decodes a call's arguments with the table's codec, resolves the handle it
acts on to an export and file id, and runs the procedure's handler against the export's
``Filesystem``. A handler returns its result, or raises ``NfsError``: ``call`` turns that into
the procedure's failure result in one place (and STALE into JUKEBOX during the grace period
after a restart). Arguments no file can satisfy get their status before any filesystem sees
them, as knfsd answers them: a WRITE or size past 2^63 - 1 is FBIG, a READ there is an empty
read at end of file, a COMMIT there is INVAL, a symlink target with NUL is INVAL; an argument the
operating system still refuses as a value (``OverflowError``, ``ValueError``) is INVAL, never
SYSTEM_ERR. Large READs are spliced from the file when the filesystem can say where their
bytes are (``Filesystem.read_file_range``) and a pipe pool is set.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs import zero_copy
from liverecovery.nfs.dispatch import GarbageArgs, proc_unavailable
from liverecovery.nfs.exports import Export, ExportRegistry
from liverecovery.nfs.filesystem import FileAttributes, Filesystem, FileType
from liverecovery.nfs.names import NAME_MAX, check_name
from liverecovery.nfs.rpc import encode_accepted
from liverecovery.nfs.xdr import Part, Unpacker, XdrError

__all__ = ["MAX_IO", "MAX_OFFSET", "Nfs3Program"]

log = logging.getLogger(__name__)

MAX_IO: Final = n3.MAX_DATA
MAX_OFFSET: Final = (1 << 63) - 1
"""The largest file offset (and size) there is: off_t is signed 64-bit (FSINFO maxfilesize)."""
_DIR_ACCESS: Final = n3.ACCESS_ALL
_FILE_ACCESS: Final = n3.ACCESS_ALL & ~n3.ACCESS_DELETE & ~n3.ACCESS_LOOKUP
_WRITE_ACCESS: Final = n3.ACCESS_MODIFY | n3.ACCESS_EXTEND | n3.ACCESS_DELETE
_SPLICE_MIN: Final = 16 * 1024
"""READs at least this large are spliced from the file when the filesystem can say where their
bytes are (``read_file_range``): below it, copying is cheaper than the pipe round trip."""
_COPY_MAX: Final = 128 * 1024
"""READs up to this large of data a filesystem has at once (``read_inline``: the page cache) are
copied inline even where they could be spliced. Measured with a C client, 32 in flight
(benchmarks/RESULTS.md, 5/8 second round): a spliced 64 KiB reply costs the receiver 3x the CPU
of a copied one (its data arrives as page fragments), and the copy plus the gathered ``writev``
costs the server less than the pipe round trip too; from ~256 KiB the splice's saving on the
server is larger than the receiver's extra cost."""

_GETATTR_OK_HEAD: Final = struct.Struct(">7I")
"""An accepted reply's header (xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, SUCCESS) and the status:
the hot replies are packed in one go (a GETATTR's then ends with the fattr3)."""
_READ_OK_HEAD: Final = struct.Struct(">8I")
"""The same, then post_op_attr's "present"."""
_PAD: Final = (b"", b"\0\0\0", b"\0\0", b"\0")
"""XDR padding after ``n`` bytes of opaque data, by ``n % 4``."""

_KEEPS_ATTRIBUTES: Final = frozenset(
    {
        n3.Proc.GETATTR,
        n3.Proc.LOOKUP,
        n3.Proc.ACCESS,
        n3.Proc.READLINK,
        n3.Proc.READ,
        n3.Proc.READDIR,
        n3.Proc.READDIRPLUS,
        n3.Proc.FSSTAT,
        n3.Proc.FSINFO,
        n3.Proc.PATHCONF,
    }
)
"""Procedures that change no file: every other one drops its export's cached attributes."""

_Entry: TypeAlias = tuple[Callable[[Unpacker], Any], Callable[..., Awaitable[Any]], type[Any]]
"""A procedure: its arguments' decoder, its handler, its result type (for failures)."""


def _primary_handle(args: Any) -> bytes:
    """The handle a procedure acts on: the object's, or the (source) directory's."""
    for name in ("fh", "dir", "from_dir"):
        fh = getattr(args, name, None)
        if isinstance(fh, bytes):
            return fh
    raise TypeError(f"{type(args).__name__} has no handle")


class Nfs3Program:
    """NFS version 3 over the exports of ``exports``."""

    PROGRAM: Final = n3.NFS_PROGRAM
    VERSION: Final = n3.NFS_VERSION

    def __init__(self, exports: ExportRegistry, write_verifier: bytes) -> None:
        self._resolve = exports.resolve
        self._fh = exports.handle
        self._in_grace = exports.in_grace
        self.write_verifier = write_verifier
        """Sent with every WRITE and COMMIT reply; a new one (a new server) tells clients to
        resend the UNSTABLE writes a restart may have lost."""
        self.pipes: zero_copy.PipePool | None = None
        """Pipes for spliced READ data, while the server runs on a platform that splices."""
        self._procs = self._table()

    async def call(self, xid: int, proc: int, args: Unpacker, peer: str) -> list[Part]:
        """The reply to one NFSv3 call (``answer``, awaited when it is not ready at once)."""
        reply = self.answer(xid, proc, args, peer)
        return reply if isinstance(reply, list) else await reply

    def answer(
        self, xid: int, proc: int, args: Unpacker, peer: str
    ) -> list[Part] | Awaitable[list[Part]]:
        """The reply to one NFSv3 call when it is ready at once (GETATTR with cached
        attributes, READ of data in the page cache: no task, no await), else the coroutine
        that answers it.

        :raises GarbageArgs: the arguments do not decode.
        """
        if proc == n3.Proc.NULL:
            return encode_accepted(xid).parts()
        entry = self._procs.get(proc)
        if entry is None:
            return proc_unavailable(xid)
        unpack, handler, result_type = entry
        try:
            decoded = unpack(args)
        except (XdrError, ValueError) as exc:
            raise GarbageArgs(str(exc)) from None
        if proc == n3.Proc.READ:
            reply = self._read_now(xid, decoded, peer)
            if reply is not None:
                return reply
        elif proc == n3.Proc.GETATTR:
            reply = self._getattr_now(xid, decoded, peer)
            if reply is not None:
                return reply
        return self._complete(xid, proc, decoded, peer, handler, result_type)

    async def _complete(
        self,
        xid: int,
        proc: int,
        decoded: Any,
        peer: str,
        handler: Callable[..., Awaitable[Any]],
        result_type: type[Any],
    ) -> list[Part]:
        """The one place an ``NfsError`` becomes a status."""
        fsid = 0
        exp: Export | None = None
        fileid = epoch = 0
        try:
            exp, fileid = self._resolve(_primary_handle(decoded), peer)
            fsid = exp.export_id
            epoch = exp.attribute_epoch
            result = await handler(exp, fileid, decoded, peer)
            if result.status is NfsStatus.STALE and self._in_grace():
                # A folder not published again yet: the client retries, its VM keeps going.
                result = result_type(NfsStatus.JUKEBOX)
        except NfsError as exc:
            result = result_type(exc.status)
        except (OverflowError, ValueError) as exc:
            # An argument in range for XDR that the OS still refuses as a value: the client's.
            log.debug("NFS3 procedure %s from %s: argument refused: %s", proc, peer, exc)
            result = result_type(NfsStatus.INVAL)
        finally:
            if exp is not None and proc not in _KEEPS_ATTRIBUTES:
                exp.forget_attributes()  # after the change: no READ re-caches the old ones
        p = encode_accepted(xid)
        result.pack(p, fsid)
        if proc == n3.Proc.GETATTR and exp is not None and result.status is NfsStatus.OK:
            exp.remember_attributes(fileid, result.attributes, epoch)
        return p.parts()

    # -- answers ready at once: the hot path ----------------------------------------------

    def _getattr_now(self, xid: int, a: n3.FhArgs, peer: str) -> list[Part] | None:
        """GETATTR answered from the attributes cached for the handle (or read inline), or None
        (then the awaited path answers it, errors included)."""
        try:
            exp, fileid = self._resolve(a.fh, peer)  # (the allow list, before anything else)
            packed = exp.packed_attributes(fileid)
        except (NfsError, OverflowError, ValueError):
            return None
        if packed is None:
            return None
        return [_GETATTR_OK_HEAD.pack(xid, 1, 0, 0, 0, 0, NfsStatus.OK) + packed]

    def _read_now(self, xid: int, a: n3.ReadArgs, peer: str) -> list[Part] | None:
        """A READ of data the filesystem has at once (page cache), copied inline, with cached
        attributes; None: the awaited path answers it (large reads it splices, errors...)."""
        length = min(a.count, MAX_IO)
        if length > _COPY_MAX and self.pipes is not None:
            return None
        if a.offset > MAX_OFFSET - length:
            return None
        try:
            exp, fileid = self._resolve(a.fh, peer)  # (the allow list, before anything else)
            read_inline = exp.read_inline
            if read_inline is None:
                return None
            got = read_inline(fileid, a.offset, length)
            if got is None:
                return None
            packed = exp.packed_attributes(fileid)
        except (NfsError, OverflowError, ValueError):
            return None
        if packed is None:
            return None
        data, eof = got
        n = len(data)
        head = b"".join(
            (
                _READ_OK_HEAD.pack(xid, 1, 0, 0, 0, 0, NfsStatus.OK, 1),
                packed,
                n3.READ_OK.pack(n, 1 if eof else 0, n),
            )
        )
        return [head, data, _PAD[n & 3]] if n & 3 else [head, data]

    def _table(self) -> dict[int, _Entry]:
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

    async def _getattr(self, exp: Export, fid: int, a: n3.FhArgs, peer: str) -> n3.GetattrRes:
        return n3.GetattrRes(NfsStatus.OK, await exp.fs.getattr(fid))

    async def _setattr(self, exp: Export, fid: int, a: n3.SetattrArgs, peer: str) -> n3.SetattrRes:
        before = await exp.fs.getattr(fid)
        wcc_before = n3.WccAttr.of(before)
        if a.attributes.size is not None and a.attributes.size > MAX_OFFSET:
            return n3.SetattrRes(NfsStatus.FBIG, n3.Wcc(wcc_before, before))
        if a.guard_ctime_ns is not None and a.guard_ctime_ns != before.ctime_ns:
            return n3.SetattrRes(NfsStatus.NOT_SYNC, n3.Wcc(wcc_before, before))
        try:
            after = await exp.fs.setattr(fid, a.attributes)
        except NfsError as exc:
            return n3.SetattrRes(
                exc.status, n3.Wcc(wcc_before, await self._attrs_or_none(exp.fs, fid))
            )
        return n3.SetattrRes(NfsStatus.OK, n3.Wcc(wcc_before, after))

    async def _lookup(self, exp: Export, fid: int, a: n3.DiropArgs, peer: str) -> n3.LookupRes:
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

    async def _access(self, exp: Export, fid: int, a: n3.AccessArgs, peer: str) -> n3.AccessRes:
        attrs_ = await exp.fs.getattr(fid)
        allowed = _DIR_ACCESS if attrs_.type == FileType.DIR else _FILE_ACCESS
        if exp.fs.read_only:
            allowed &= ~_WRITE_ACCESS
        return n3.AccessRes(NfsStatus.OK, attrs_, a.access & allowed)

    async def _readlink(self, exp: Export, fid: int, a: n3.FhArgs, peer: str) -> n3.ReadlinkRes:
        target = await exp.fs.readlink(fid)
        return n3.ReadlinkRes(NfsStatus.OK, await self._attrs_or_none(exp.fs, fid), target)

    async def _read(self, exp: Export, fid: int, a: n3.ReadArgs, peer: str) -> n3.ReadRes:
        length = min(a.count, MAX_IO)
        if a.offset > MAX_OFFSET - length:  # past any file's end (knfsd reads nothing there)
            return n3.ReadRes(NfsStatus.OK, await exp.fs.getattr(fid), True, b"")
        try:
            if length >= _SPLICE_MIN and self.pipes is not None:
                piped = await self._read_piped(exp, fid, a.offset, length)
                if piped is not None:
                    return piped
            data, eof = await exp.fs.read(fid, a.offset, length)
        except NfsError as exc:
            return n3.ReadRes(exc.status, await self._attrs_or_none(exp.fs, fid))
        return n3.ReadRes(NfsStatus.OK, await self._attrs_or_none(exp.fs, fid), eof, data)

    async def _read_piped(
        self, exp: Export, fid: int, offset: int, length: int
    ) -> n3.ReadRes | None:
        """A READ whose data the connection splices from the file; None: read the bytes."""
        rng = await exp.read_file_range(fid, offset, length)
        if rng is None or self.pipes is None:
            if rng is not None:
                rng.close()
            return None
        loaded = await zero_copy.load(self.pipes, rng)
        if loaded is None:
            return None
        data, eof = loaded
        try:
            attributes = await self._attrs_or_none(exp.fs, fid)
        except BaseException:
            data.release()
            raise
        return n3.ReadRes(NfsStatus.OK, attributes, eof, data)

    async def _write(self, exp: Export, fid: int, a: n3.WriteArgs, peer: str) -> n3.WriteRes:
        before = await self._wcc_before(exp.fs, fid)
        if a.offset + len(a.data) > MAX_OFFSET:
            return n3.WriteRes(
                NfsStatus.FBIG, n3.Wcc(before, await self._attrs_or_none(exp.fs, fid))
            )
        try:
            committed = await exp.fs.write(fid, a.offset, a.data, a.stable)
        except NfsError as exc:
            return n3.WriteRes(exc.status, n3.Wcc(before, await self._attrs_or_none(exp.fs, fid)))
        after = await self._attrs_or_none(exp.fs, fid)
        return n3.WriteRes(
            NfsStatus.OK, n3.Wcc(before, after), len(a.data), committed, self.write_verifier
        )

    async def _created(
        self, exp: Export, dir_id: int, before: n3.WccAttr | None, make: Awaitable[int]
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

    async def _create(self, exp: Export, fid: int, a: n3.CreateArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        if a.attributes.size is not None and a.attributes.size > MAX_OFFSET:
            return n3.CreateRes(
                NfsStatus.FBIG, dir_wcc=n3.Wcc(before, await self._attrs_or_none(exp.fs, fid))
            )
        make = exp.fs.create(fid, a.name, a.attributes, a.mode, a.verifier)
        return await self._created(exp, fid, before, make)

    async def _mkdir(self, exp: Export, fid: int, a: n3.MkdirArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        return await self._created(exp, fid, before, exp.fs.mkdir(fid, a.name, a.attributes))

    async def _symlink(self, exp: Export, fid: int, a: n3.SymlinkArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        if not a.target or "\0" in a.target:  # no path has a NUL; knfsd refuses both
            after = await self._attrs_or_none(exp.fs, fid)
            return n3.CreateRes(NfsStatus.INVAL, dir_wcc=n3.Wcc(before, after))
        make = exp.fs.symlink(fid, a.name, a.target, a.attributes)
        return await self._created(exp, fid, before, make)

    async def _mknod(self, exp: Export, fid: int, a: n3.MknodArgs, peer: str) -> n3.CreateRes:
        check_name(a.name)
        before = await self._wcc_before(exp.fs, fid)
        status = (
            NfsStatus.BADTYPE
            if a.type in (FileType.REG, FileType.DIR, FileType.LNK)
            else NfsStatus.NOTSUPP
        )
        return n3.CreateRes(status, dir_wcc=n3.Wcc(before, await self._attrs_or_none(exp.fs, fid)))

    async def _removed(
        self, exp: Export, fid: int, name: str, op: Callable[[int, str], Awaitable[None]]
    ) -> n3.RemoveRes:
        check_name(name)
        before = await self._wcc_before(exp.fs, fid)
        status = NfsStatus.OK
        try:
            await op(fid, name)
        except NfsError as exc:
            status = exc.status
        return n3.RemoveRes(status, n3.Wcc(before, await self._attrs_or_none(exp.fs, fid)))

    async def _remove(self, exp: Export, fid: int, a: n3.DiropArgs, peer: str) -> n3.RemoveRes:
        return await self._removed(exp, fid, a.name, exp.fs.remove)

    async def _rmdir(self, exp: Export, fid: int, a: n3.DiropArgs, peer: str) -> n3.RemoveRes:
        return await self._removed(exp, fid, a.name, exp.fs.rmdir)

    async def _rename(self, exp: Export, fid: int, a: n3.RenameArgs, peer: str) -> n3.RenameRes:
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

    async def _link(self, exp: Export, fid: int, a: n3.LinkArgs, peer: str) -> n3.LinkRes:
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
        self, exp: Export, fid: int, cookie: int, verifier: bytes, max_entries: int
    ) -> tuple[FileAttributes, Any, bytes]:
        dir_attrs = await exp.fs.getattr(fid)
        if dir_attrs.type != FileType.DIR:
            raise NfsError(NfsStatus.NOTDIR, "not a directory")
        page = await exp.fs.readdir(fid, cookie, max_entries)
        verf = (page.verifier & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        if cookie and verifier != b"\0" * 8 and verifier != verf:
            raise NfsError(NfsStatus.BAD_COOKIE, "cookie verifier does not match")
        return dir_attrs, page, verf

    async def _readdir(self, exp: Export, fid: int, a: n3.ReaddirArgs, peer: str) -> n3.ReaddirRes:
        count = min(a.count, MAX_IO)
        if count < n3.READDIR_RES_OVERHEAD:  # not even an empty listing fits
            return n3.ReaddirRes(NfsStatus.TOOSMALL, await self._attrs_or_none(exp.fs, fid))
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
        self, exp: Export, fid: int, a: n3.ReaddirplusArgs, peer: str
    ) -> n3.ReaddirplusRes:
        maxcount = min(a.maxcount, MAX_IO)
        if maxcount < n3.READDIR_RES_OVERHEAD:
            return n3.ReaddirplusRes(NfsStatus.TOOSMALL, await self._attrs_or_none(exp.fs, fid))
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

    async def _fsstat(self, exp: Export, fid: int, a: n3.FhArgs, peer: str) -> n3.FsstatRes:
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

    async def _fsinfo(self, exp: Export, fid: int, a: n3.FhArgs, peer: str) -> n3.FsinfoRes:
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

    async def _pathconf(self, exp: Export, fid: int, a: n3.FhArgs, peer: str) -> n3.PathconfRes:
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

    async def _commit(self, exp: Export, fid: int, a: n3.CommitArgs, peer: str) -> n3.CommitRes:
        before = await self._wcc_before(exp.fs, fid)
        if a.offset > MAX_OFFSET:
            return n3.CommitRes(
                NfsStatus.INVAL, n3.Wcc(before, await self._attrs_or_none(exp.fs, fid))
            )
        await exp.fs.commit(fid)
        after = await self._attrs_or_none(exp.fs, fid)
        return n3.CommitRes(NfsStatus.OK, n3.Wcc(before, after), self.write_verifier)
