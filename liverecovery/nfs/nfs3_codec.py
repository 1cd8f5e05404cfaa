"""NFSv3 (RFC 1813) arguments and results: pure XDR codecs, symmetric for server and client.

Every message class has ``pack(p)`` and ``unpack(u)``; result classes that carry attributes take
the export's ``fsid`` when packing (``FileAttributes`` has none) and drop it when unpacking.
Handles, names and paths are bounded when decoding so a hostile length is refused, not allocated.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from liverecovery.errors import NfsStatus
from liverecovery.nfs.filesystem import (
    SERVER_TIME,
    CreateMode,
    FileAttributes,
    FileType,
    SetAttributes,
    Stability,
)
from liverecovery.nfs.xdr import Packer, Payload, Unpacker, XdrError

__all__ = [
    "ACCESS_ALL",
    "AccessArgs",
    "AccessRes",
    "CommitArgs",
    "CommitRes",
    "CreateArgs",
    "CreateRes",
    "DiropArgs",
    "Entry",
    "EntryPlus",
    "FhArgs",
    "FsinfoRes",
    "FsstatRes",
    "GetattrRes",
    "LinkArgs",
    "LinkRes",
    "LookupRes",
    "MkdirArgs",
    "MknodArgs",
    "NFS_PROGRAM",
    "NFS_VERSION",
    "PathconfRes",
    "Proc",
    "ReadArgs",
    "ReadRes",
    "ReaddirArgs",
    "ReaddirRes",
    "ReaddirplusArgs",
    "ReaddirplusRes",
    "ReadlinkRes",
    "RemoveRes",
    "RenameArgs",
    "RenameRes",
    "SetattrArgs",
    "SetattrRes",
    "SymlinkArgs",
    "Wcc",
    "WccAttr",
    "WriteArgs",
    "WriteRes",
]

NFS_PROGRAM: Final = 100003
NFS_VERSION: Final = 3
FHSIZE: Final = 64
NAME_BOUND: Final = 1024
"""Longest name accepted on the wire; the server then refuses > 255 bytes with NAMETOOLONG."""
PATH_BOUND: Final = 4096
MAX_DATA: Final = 1 << 20
"""Largest READ/WRITE payload (FSINFO rtmax/wtmax)."""

ACCESS_READ: Final = 0x01
ACCESS_LOOKUP: Final = 0x02
ACCESS_MODIFY: Final = 0x04
ACCESS_EXTEND: Final = 0x08
ACCESS_DELETE: Final = 0x10
ACCESS_EXECUTE: Final = 0x20
ACCESS_ALL: Final = 0x3F

FSF_LINK: Final = 0x01
FSF_SYMLINK: Final = 0x02
FSF_HOMOGENEOUS: Final = 0x08
FSF_CANSETTIME: Final = 0x10


class Proc(enum.IntEnum):
    NULL = 0
    GETATTR = 1
    SETATTR = 2
    LOOKUP = 3
    ACCESS = 4
    READLINK = 5
    READ = 6
    WRITE = 7
    CREATE = 8
    MKDIR = 9
    SYMLINK = 10
    MKNOD = 11
    REMOVE = 12
    RMDIR = 13
    RENAME = 14
    LINK = 15
    READDIR = 16
    READDIRPLUS = 17
    FSSTAT = 18
    FSINFO = 19
    PATHCONF = 20
    COMMIT = 21


_FATTR: Final = struct.Struct(">IIIIIQQIIQQIIIIII")
_WCC_ATTR: Final = struct.Struct(">QIIII")
_NS: Final = 1_000_000_000
FATTR_SIZE: Final = _FATTR.size
POST_OP_ATTR_SIZE: Final = 4 + _FATTR.size


def _split_time(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, _NS)
    return min(max(sec, 0), 0xFFFFFFFF), nsec


def _enum(cls: type[enum.IntEnum], value: int, what: str) -> int:
    try:
        return cls(value)
    except ValueError:
        raise XdrError(f"{what}: invalid value {value}") from None


def pack_fattr(p: Packer, a: FileAttributes, fsid: int) -> None:
    at, mt, ct = _split_time(a.atime_ns), _split_time(a.mtime_ns), _split_time(a.ctime_ns)
    p.pack_struct(
        _FATTR,
        a.type,
        a.mode & 0xFFFFFFFF,
        a.nlink & 0xFFFFFFFF,
        a.uid & 0xFFFFFFFF,
        a.gid & 0xFFFFFFFF,
        a.size,
        a.used,
        0,
        0,
        fsid,
        a.fileid,
        *at,
        *mt,
        *ct,
    )


def unpack_fattr(u: Unpacker) -> FileAttributes:
    v = u.unpack_struct(_FATTR)
    ftype = _enum(FileType, v[0], "ftype3")
    return FileAttributes(
        type=FileType(ftype),
        mode=v[1],
        nlink=v[2],
        uid=v[3],
        gid=v[4],
        size=v[5],
        used=v[6],
        fileid=v[10],
        atime_ns=v[11] * _NS + v[12],
        mtime_ns=v[13] * _NS + v[14],
        ctime_ns=v[15] * _NS + v[16],
    )


def pack_post_op_attr(p: Packer, a: FileAttributes | None, fsid: int) -> None:
    if a is None:
        p.u32(0)
    else:
        p.u32(1)
        pack_fattr(p, a, fsid)


def unpack_post_op_attr(u: Unpacker) -> FileAttributes | None:
    return unpack_fattr(u) if u.boolean() else None


@attrs.frozen
class WccAttr:
    """Pre-operation attributes (wcc_attr)."""

    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, a: FileAttributes) -> WccAttr:
        return cls(a.size, a.mtime_ns, a.ctime_ns)


@attrs.frozen
class Wcc:
    """wcc_data: attributes before and after a change, each optional."""

    before: WccAttr | None = None
    after: FileAttributes | None = None

    def pack(self, p: Packer, fsid: int) -> None:
        if self.before is None:
            p.u32(0)
        else:
            b = self.before
            p.u32(1)
            p.pack_struct(_WCC_ATTR, b.size, *_split_time(b.mtime_ns), *_split_time(b.ctime_ns))
        pack_post_op_attr(p, self.after, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> Wcc:
        before = None
        if u.boolean():
            size, ms, mn, cs, cn = u.unpack_struct(_WCC_ATTR)
            before = WccAttr(size, ms * _NS + mn, cs * _NS + cn)
        return cls(before, unpack_post_op_attr(u))


def pack_sattr(p: Packer, s: SetAttributes) -> None:
    for value in (s.mode, s.uid, s.gid):
        if value is None:
            p.u32(0)
        else:
            p.u32(1)
            p.u32(value)
    if s.size is None:
        p.u32(0)
    else:
        p.u32(1)
        p.u64(s.size)
    for t in (s.atime_ns, s.mtime_ns):
        if t is None:
            p.u32(0)
        elif t is SERVER_TIME:
            p.u32(1)
        else:
            assert isinstance(t, int)
            p.u32(2)
            sec, nsec = _split_time(t)
            p.u32(sec)
            p.u32(nsec)


def unpack_sattr(u: Unpacker) -> SetAttributes:
    mode = u.u32() if u.boolean() else None
    uid = u.u32() if u.boolean() else None
    gid = u.u32() if u.boolean() else None
    size = u.u64() if u.boolean() else None
    times: list[int | object | None] = []
    for _ in range(2):
        how = u.u32()
        if how == 0:
            times.append(None)
        elif how == 1:
            times.append(SERVER_TIME)
        elif how == 2:
            sec, nsec = u.u32(), u.u32()
            times.append(sec * _NS + nsec)
        else:
            raise XdrError(f"time_how: invalid value {how}")
    return SetAttributes(mode, uid, gid, size, times[0], times[1])  # type: ignore[arg-type]


def pack_fh(p: Packer, fh: bytes) -> None:
    p.opaque(fh)


def unpack_fh(u: Unpacker) -> bytes:
    return u.opaque(FHSIZE)


def pack_post_op_fh(p: Packer, fh: bytes | None) -> None:
    if fh is None:
        p.u32(0)
    else:
        p.u32(1)
        p.opaque(fh)


def unpack_post_op_fh(u: Unpacker) -> bytes | None:
    return unpack_fh(u) if u.boolean() else None


def fh_size(fh: bytes) -> int:
    return 4 + len(fh) + (-len(fh) & 3)


def name_size(name: str) -> int:
    n = len(name.encode("utf-8", "surrogateescape"))
    return 4 + n + (-n & 3)


# -- arguments -----------------------------------------------------------------------------------


@attrs.frozen
class FhArgs:
    """Arguments that are just a handle: GETATTR, READLINK, FSSTAT, FSINFO, PATHCONF."""

    fh: bytes

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)

    @classmethod
    def unpack(cls, u: Unpacker) -> FhArgs:
        return cls(unpack_fh(u))


@attrs.frozen
class SetattrArgs:
    fh: bytes
    attributes: SetAttributes
    guard_ctime_ns: int | None = None

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        pack_sattr(p, self.attributes)
        if self.guard_ctime_ns is None:
            p.u32(0)
        else:
            p.u32(1)
            sec, nsec = _split_time(self.guard_ctime_ns)
            p.u32(sec)
            p.u32(nsec)

    @classmethod
    def unpack(cls, u: Unpacker) -> SetattrArgs:
        fh = unpack_fh(u)
        sattr = unpack_sattr(u)
        guard = None
        if u.boolean():
            sec, nsec = u.u32(), u.u32()
            guard = sec * _NS + nsec
        return cls(fh, sattr, guard)


@attrs.frozen
class DiropArgs:
    """A directory handle and a name: LOOKUP, REMOVE, RMDIR."""

    dir: bytes
    name: str

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.dir)
        p.string(self.name)

    @classmethod
    def unpack(cls, u: Unpacker) -> DiropArgs:
        return cls(unpack_fh(u), u.string(NAME_BOUND))


@attrs.frozen
class AccessArgs:
    fh: bytes
    access: int

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        p.u32(self.access)

    @classmethod
    def unpack(cls, u: Unpacker) -> AccessArgs:
        return cls(unpack_fh(u), u.u32())


@attrs.frozen
class ReadArgs:
    fh: bytes
    offset: int
    count: int

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        p.u64(self.offset)
        p.u32(self.count)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReadArgs:
        return cls(unpack_fh(u), u.u64(), u.u32())


@attrs.frozen
class WriteArgs:
    fh: bytes
    offset: int
    stable: Stability
    data: bytes | bytearray | memoryview = attrs.field(eq=False)

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        p.u64(self.offset)
        p.u32(len(self.data))
        p.u32(self.stable)
        p.opaque(self.data)

    @classmethod
    def unpack(cls, u: Unpacker) -> WriteArgs:
        fh = unpack_fh(u)
        offset = u.u64()
        count = u.u32()
        stable = Stability(_enum(Stability, u.u32(), "stable_how"))
        data = u.opaque_view(MAX_DATA)
        if count != len(data):
            raise XdrError(f"WRITE count {count} != data length {len(data)}")
        return cls(fh, offset, stable, data)


@attrs.frozen
class CreateArgs:
    dir: bytes
    name: str
    mode: CreateMode = CreateMode.UNCHECKED
    attributes: SetAttributes = attrs.field(factory=SetAttributes)
    verifier: bytes = b""

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.dir)
        p.string(self.name)
        p.u32(self.mode)
        if self.mode == CreateMode.EXCLUSIVE:
            p.fixed(self.verifier.ljust(8, b"\0")[:8])
        else:
            pack_sattr(p, self.attributes)

    @classmethod
    def unpack(cls, u: Unpacker) -> CreateArgs:
        d, name = unpack_fh(u), u.string(NAME_BOUND)
        mode = CreateMode(_enum(CreateMode, u.u32(), "createmode3"))
        if mode == CreateMode.EXCLUSIVE:
            return cls(d, name, mode, SetAttributes(), u.fixed(8))
        return cls(d, name, mode, unpack_sattr(u))


@attrs.frozen
class MkdirArgs:
    dir: bytes
    name: str
    attributes: SetAttributes = attrs.field(factory=SetAttributes)

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.dir)
        p.string(self.name)
        pack_sattr(p, self.attributes)

    @classmethod
    def unpack(cls, u: Unpacker) -> MkdirArgs:
        return cls(unpack_fh(u), u.string(NAME_BOUND), unpack_sattr(u))


@attrs.frozen
class SymlinkArgs:
    dir: bytes
    name: str
    target: str
    attributes: SetAttributes = attrs.field(factory=SetAttributes)

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.dir)
        p.string(self.name)
        pack_sattr(p, self.attributes)
        p.string(self.target)

    @classmethod
    def unpack(cls, u: Unpacker) -> SymlinkArgs:
        d, name = unpack_fh(u), u.string(NAME_BOUND)
        sattr = unpack_sattr(u)
        return cls(d, name, u.string(PATH_BOUND), sattr)


@attrs.frozen
class MknodArgs:
    dir: bytes
    name: str
    type: FileType
    attributes: SetAttributes = attrs.field(factory=SetAttributes)
    spec: tuple[int, int] = (0, 0)

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.dir)
        p.string(self.name)
        p.u32(self.type)
        if self.type in (FileType.CHR, FileType.BLK):
            pack_sattr(p, self.attributes)
            p.u32(self.spec[0])
            p.u32(self.spec[1])
        elif self.type in (FileType.SOCK, FileType.FIFO):
            pack_sattr(p, self.attributes)

    @classmethod
    def unpack(cls, u: Unpacker) -> MknodArgs:
        d, name = unpack_fh(u), u.string(NAME_BOUND)
        ftype = FileType(_enum(FileType, u.u32(), "ftype3"))
        sattr, spec = SetAttributes(), (0, 0)
        if ftype in (FileType.CHR, FileType.BLK):
            sattr = unpack_sattr(u)
            spec = (u.u32(), u.u32())
        elif ftype in (FileType.SOCK, FileType.FIFO):
            sattr = unpack_sattr(u)
        return cls(d, name, ftype, sattr, spec)


@attrs.frozen
class RenameArgs:
    from_dir: bytes
    from_name: str
    to_dir: bytes
    to_name: str

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.from_dir)
        p.string(self.from_name)
        pack_fh(p, self.to_dir)
        p.string(self.to_name)

    @classmethod
    def unpack(cls, u: Unpacker) -> RenameArgs:
        return cls(unpack_fh(u), u.string(NAME_BOUND), unpack_fh(u), u.string(NAME_BOUND))


@attrs.frozen
class LinkArgs:
    fh: bytes
    dir: bytes
    name: str

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        pack_fh(p, self.dir)
        p.string(self.name)

    @classmethod
    def unpack(cls, u: Unpacker) -> LinkArgs:
        return cls(unpack_fh(u), unpack_fh(u), u.string(NAME_BOUND))


@attrs.frozen
class ReaddirArgs:
    fh: bytes
    cookie: int
    verifier: bytes
    count: int

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        p.u64(self.cookie)
        p.fixed(self.verifier)
        p.u32(self.count)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReaddirArgs:
        return cls(unpack_fh(u), u.u64(), u.fixed(8), u.u32())


@attrs.frozen
class ReaddirplusArgs:
    fh: bytes
    cookie: int
    verifier: bytes
    dircount: int
    maxcount: int

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        p.u64(self.cookie)
        p.fixed(self.verifier)
        p.u32(self.dircount)
        p.u32(self.maxcount)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReaddirplusArgs:
        return cls(unpack_fh(u), u.u64(), u.fixed(8), u.u32(), u.u32())


@attrs.frozen
class CommitArgs:
    fh: bytes
    offset: int = 0
    count: int = 0

    def pack(self, p: Packer) -> None:
        pack_fh(p, self.fh)
        p.u64(self.offset)
        p.u32(self.count)

    @classmethod
    def unpack(cls, u: Unpacker) -> CommitArgs:
        return cls(unpack_fh(u), u.u64(), u.u32())


# -- results -------------------------------------------------------------------------------------


def _status(u: Unpacker) -> NfsStatus:
    value = u.u32()
    try:
        return NfsStatus(value)
    except ValueError:
        raise XdrError(f"nfsstat3: unknown value {value}") from None


@attrs.frozen
class GetattrRes:
    status: NfsStatus
    attributes: FileAttributes | None = None

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        if self.status == NfsStatus.OK:
            assert self.attributes is not None
            pack_fattr(p, self.attributes, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> GetattrRes:
        status = _status(u)
        return cls(status, unpack_fattr(u) if status == NfsStatus.OK else None)


@attrs.frozen
class SetattrRes:
    status: NfsStatus
    wcc: Wcc = Wcc()

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        self.wcc.pack(p, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> SetattrRes:
        return cls(_status(u), Wcc.unpack(u))


@attrs.frozen
class LookupRes:
    status: NfsStatus
    fh: bytes | None = None
    attributes: FileAttributes | None = None
    dir_attributes: FileAttributes | None = None

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        if self.status == NfsStatus.OK:
            assert self.fh is not None
            pack_fh(p, self.fh)
            pack_post_op_attr(p, self.attributes, fsid)
        pack_post_op_attr(p, self.dir_attributes, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> LookupRes:
        status = _status(u)
        if status == NfsStatus.OK:
            fh = unpack_fh(u)
            return cls(status, fh, unpack_post_op_attr(u), unpack_post_op_attr(u))
        return cls(status, dir_attributes=unpack_post_op_attr(u))


@attrs.frozen
class AccessRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    access: int = 0

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            p.u32(self.access)

    @classmethod
    def unpack(cls, u: Unpacker) -> AccessRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        return cls(status, a, u.u32() if status == NfsStatus.OK else 0)


@attrs.frozen
class ReadlinkRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    target: str = ""

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            p.string(self.target)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReadlinkRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        return cls(status, a, u.string(PATH_BOUND) if status == NfsStatus.OK else "")


@attrs.frozen
class ReadRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    eof: bool = False
    data: bytes | bytearray | memoryview | Payload = attrs.field(default=b"", eq=False)
    """The bytes read, or a ``Payload`` (bytes the sender moves from a file to the socket)."""

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            data = self.data
            if isinstance(data, (bytes, bytearray, memoryview)):
                p.u32(len(data))
                p.boolean(self.eof)
                p.opaque(data)
            else:
                p.u32(data.nbytes)
                p.boolean(self.eof)
                p.opaque_payload(data)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReadRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        count, eof = u.u32(), u.boolean()
        data = u.opaque(MAX_DATA)
        if count != len(data):
            raise XdrError(f"READ count {count} != data length {len(data)}")
        return cls(status, a, eof, data)


@attrs.frozen
class WriteRes:
    status: NfsStatus
    wcc: Wcc = Wcc()
    count: int = 0
    committed: Stability = Stability.UNSTABLE
    verifier: bytes = b"\0" * 8

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        self.wcc.pack(p, fsid)
        if self.status == NfsStatus.OK:
            p.u32(self.count)
            p.u32(self.committed)
            p.fixed(self.verifier)

    @classmethod
    def unpack(cls, u: Unpacker) -> WriteRes:
        status = _status(u)
        wcc = Wcc.unpack(u)
        if status != NfsStatus.OK:
            return cls(status, wcc)
        count = u.u32()
        committed = Stability(_enum(Stability, u.u32(), "stable_how"))
        return cls(status, wcc, count, committed, u.fixed(8))


@attrs.frozen
class CreateRes:
    """CREATE, MKDIR, SYMLINK and MKNOD results."""

    status: NfsStatus
    fh: bytes | None = None
    attributes: FileAttributes | None = None
    dir_wcc: Wcc = Wcc()

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        if self.status == NfsStatus.OK:
            pack_post_op_fh(p, self.fh)
            pack_post_op_attr(p, self.attributes, fsid)
        self.dir_wcc.pack(p, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> CreateRes:
        status = _status(u)
        if status == NfsStatus.OK:
            fh = unpack_post_op_fh(u)
            a = unpack_post_op_attr(u)
            return cls(status, fh, a, Wcc.unpack(u))
        return cls(status, dir_wcc=Wcc.unpack(u))


@attrs.frozen
class RemoveRes:
    """REMOVE and RMDIR results."""

    status: NfsStatus
    dir_wcc: Wcc = Wcc()

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        self.dir_wcc.pack(p, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> RemoveRes:
        return cls(_status(u), Wcc.unpack(u))


@attrs.frozen
class RenameRes:
    status: NfsStatus
    from_wcc: Wcc = Wcc()
    to_wcc: Wcc = Wcc()

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        self.from_wcc.pack(p, fsid)
        self.to_wcc.pack(p, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> RenameRes:
        return cls(_status(u), Wcc.unpack(u), Wcc.unpack(u))


@attrs.frozen
class LinkRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    dir_wcc: Wcc = Wcc()

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        self.dir_wcc.pack(p, fsid)

    @classmethod
    def unpack(cls, u: Unpacker) -> LinkRes:
        return cls(_status(u), unpack_post_op_attr(u), Wcc.unpack(u))


@attrs.frozen
class Entry:
    fileid: int
    name: str
    cookie: int

    def wire_size(self) -> int:
        """Bytes this entry takes in a READDIR reply (value_follows + fileid + name + cookie)."""
        return 4 + 8 + name_size(self.name) + 8


@attrs.frozen
class EntryPlus:
    fileid: int
    name: str
    cookie: int
    attributes: FileAttributes | None = None
    fh: bytes | None = None

    def wire_size(self) -> int:
        attr = POST_OP_ATTR_SIZE if self.attributes is not None else 4
        fh = 4 + fh_size(self.fh) if self.fh is not None else 4
        return 4 + 8 + name_size(self.name) + 8 + attr + fh


READDIR_RES_OVERHEAD: Final = 4 + POST_OP_ATTR_SIZE + 8 + 4 + 4
"""status + dir attributes + cookie verifier + end of list + eof."""

_MAX_ENTRIES: Final = 1 << 16


@attrs.frozen
class ReaddirRes:
    status: NfsStatus
    dir_attributes: FileAttributes | None = None
    verifier: bytes = b"\0" * 8
    entries: Sequence[Entry] = ()
    eof: bool = False

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.dir_attributes, fsid)
        if self.status == NfsStatus.OK:
            p.fixed(self.verifier)
            for e in self.entries:
                p.u32(1)
                p.u64(e.fileid)
                p.string(e.name)
                p.u64(e.cookie)
            p.u32(0)
            p.boolean(self.eof)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReaddirRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        verf = u.fixed(8)
        entries: list[Entry] = []
        while u.boolean():
            if len(entries) >= _MAX_ENTRIES:
                raise XdrError("READDIR reply has too many entries")
            entries.append(Entry(u.u64(), u.string(NAME_BOUND), u.u64()))
        return cls(status, a, verf, entries, u.boolean())


@attrs.frozen
class ReaddirplusRes:
    status: NfsStatus
    dir_attributes: FileAttributes | None = None
    verifier: bytes = b"\0" * 8
    entries: Sequence[EntryPlus] = ()
    eof: bool = False

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.dir_attributes, fsid)
        if self.status == NfsStatus.OK:
            p.fixed(self.verifier)
            for e in self.entries:
                p.u32(1)
                p.u64(e.fileid)
                p.string(e.name)
                p.u64(e.cookie)
                pack_post_op_attr(p, e.attributes, fsid)
                pack_post_op_fh(p, e.fh)
            p.u32(0)
            p.boolean(self.eof)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReaddirplusRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        verf = u.fixed(8)
        entries: list[EntryPlus] = []
        while u.boolean():
            if len(entries) >= _MAX_ENTRIES:
                raise XdrError("READDIRPLUS reply has too many entries")
            fileid, name, cookie = u.u64(), u.string(NAME_BOUND), u.u64()
            entries.append(
                EntryPlus(fileid, name, cookie, unpack_post_op_attr(u), unpack_post_op_fh(u))
            )
        return cls(status, a, verf, entries, u.boolean())


_FSSTAT: Final = struct.Struct(">QQQQQQI")


@attrs.frozen
class FsstatRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    tbytes: int = 0
    fbytes: int = 0
    abytes: int = 0
    tfiles: int = 0
    ffiles: int = 0
    afiles: int = 0
    invarsec: int = 0

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            p.pack_struct(
                _FSSTAT,
                self.tbytes,
                self.fbytes,
                self.abytes,
                self.tfiles,
                self.ffiles,
                self.afiles,
                self.invarsec,
            )

    @classmethod
    def unpack(cls, u: Unpacker) -> FsstatRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        return cls(status, a, *u.unpack_struct(_FSSTAT))


_FSINFO: Final = struct.Struct(">IIIIIIIQIII")


@attrs.frozen
class FsinfoRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    rtmax: int = 0
    rtpref: int = 0
    rtmult: int = 0
    wtmax: int = 0
    wtpref: int = 0
    wtmult: int = 0
    dtpref: int = 0
    maxfilesize: int = 0
    time_delta_ns: int = 0
    properties: int = 0

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            sec, nsec = _split_time(self.time_delta_ns)
            p.pack_struct(
                _FSINFO,
                self.rtmax,
                self.rtpref,
                self.rtmult,
                self.wtmax,
                self.wtpref,
                self.wtmult,
                self.dtpref,
                self.maxfilesize,
                sec,
                nsec,
                self.properties,
            )

    @classmethod
    def unpack(cls, u: Unpacker) -> FsinfoRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        v = u.unpack_struct(_FSINFO)
        return cls(
            status,
            a,
            rtmax=v[0],
            rtpref=v[1],
            rtmult=v[2],
            wtmax=v[3],
            wtpref=v[4],
            wtmult=v[5],
            dtpref=v[6],
            maxfilesize=v[7],
            time_delta_ns=v[8] * _NS + v[9],
            properties=v[10],
        )


@attrs.frozen
class PathconfRes:
    status: NfsStatus
    attributes: FileAttributes | None = None
    linkmax: int = 0
    name_max: int = 0
    no_trunc: bool = True
    chown_restricted: bool = True
    case_insensitive: bool = False
    case_preserving: bool = True

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        pack_post_op_attr(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            p.u32(self.linkmax)
            p.u32(self.name_max)
            for flag in (
                self.no_trunc,
                self.chown_restricted,
                self.case_insensitive,
                self.case_preserving,
            ):
                p.boolean(flag)

    @classmethod
    def unpack(cls, u: Unpacker) -> PathconfRes:
        status = _status(u)
        a = unpack_post_op_attr(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        return cls(status, a, u.u32(), u.u32(), u.boolean(), u.boolean(), u.boolean(), u.boolean())


@attrs.frozen
class CommitRes:
    status: NfsStatus
    wcc: Wcc = Wcc()
    verifier: bytes = b"\0" * 8

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        self.wcc.pack(p, fsid)
        if self.status == NfsStatus.OK:
            p.fixed(self.verifier)

    @classmethod
    def unpack(cls, u: Unpacker) -> CommitRes:
        status = _status(u)
        wcc = Wcc.unpack(u)
        return cls(status, wcc, u.fixed(8) if status == NfsStatus.OK else b"\0" * 8)
