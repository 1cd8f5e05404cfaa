"""NFSv3 (RFC 1813) arguments and results: pure XDR codecs, symmetric for server and client.

Every message class has ``pack(p)`` and ``unpack(u)``; result classes that carry attributes take
the export's ``fsid`` when packing (``FileAttributes`` has none) and drop it when unpacking.
Handles, names and paths are bounded when decoding so a hostile length is refused, not allocated.

Messages declare their fields once, with their XDR types (``xdr_spec``), and get both methods
generated; only ``WriteArgs`` and ``ReadRes`` are written by hand, for their zero-copy data.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Annotated, Final, TypeAlias

import attrs

from liverecovery.errors import NfsStatus
from liverecovery.nfs import xdr_spec as xs
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
    "READ_OK",
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


_NS: Final = 1_000_000_000
_MAX_ENTRIES: Final = 1 << 16

# -- wire types, declared once -------------------------------------------------------------------

FATTR3: Final = xs.Record(
    FileAttributes,
    (
        xs.Field("type", xs.Enum(FileType, "ftype3")),
        xs.Field("mode", xs.MASKED_U32),
        xs.Field("nlink", xs.MASKED_U32),
        xs.Field("uid", xs.MASKED_U32),
        xs.Field("gid", xs.MASKED_U32),
        xs.Field("size", xs.U64),
        xs.Field("used", xs.U64),
        xs.Field(None, xs.Ignored("Q")),  # rdev (specdata3): always 0
        xs.Field(None, xs.FromContext("Q", "fsid")),
        xs.Field("fileid", xs.U64),
        xs.Field("atime_ns", xs.NFSTIME),
        xs.Field("mtime_ns", xs.NFSTIME),
        xs.Field("ctime_ns", xs.NFSTIME),
    ),
)
"""fattr3: the server fills in fsid (from the export) and rdev (0); unpacking drops both."""
POST_OP_ATTR: Final = xs.Optional(FATTR3)
_OPTIONAL_U32: Final = xs.Optional(xs.U32)
_SET_TIME: Final = xs.Choice(
    "time_how", {0: xs.Const(None), 1: xs.Const(SERVER_TIME), 2: xs.NFSTIME}
)
SATTR3: Final = xs.Record(
    SetAttributes,
    (
        xs.Field("mode", _OPTIONAL_U32),
        xs.Field("uid", _OPTIONAL_U32),
        xs.Field("gid", _OPTIONAL_U32),
        xs.Field("size", xs.Optional(xs.U64)),
        xs.Field("atime_ns", _SET_TIME),
        xs.Field("mtime_ns", _SET_TIME),
    ),
)
FH3: Final = xs.Opaque(FHSIZE)
POST_OP_FH: Final = xs.Optional(FH3)

Uint32: TypeAlias = Annotated[int, xs.U32]
Uint64: TypeAlias = Annotated[int, xs.U64]
Bool: TypeAlias = Annotated[bool, xs.BOOL]
Fh: TypeAlias = Annotated[bytes, FH3]
Name: TypeAlias = Annotated[str, xs.String(NAME_BOUND)]
Path: TypeAlias = Annotated[str, xs.String(PATH_BOUND)]
Verifier: TypeAlias = Annotated[bytes, xs.Fixed(8)]
Time: TypeAlias = Annotated[int, xs.NFSTIME]
Sattr: TypeAlias = Annotated[SetAttributes, SATTR3]
PostOpAttr: TypeAlias = Annotated[FileAttributes | None, POST_OP_ATTR]
PostOpFh: TypeAlias = Annotated[bytes | None, POST_OP_FH]
Status: TypeAlias = Annotated[NfsStatus, xs.Enum(NfsStatus, "nfsstat3", "unknown value")]
OK: Final = xs.When("status", NfsStatus.OK)
"""Condition of the fields a result has only when its status is NFS3_OK."""

_fattr = xs.codec(FATTR3, ("fsid",))
_post_op_attr = xs.codec(POST_OP_ATTR, ("fsid",))
_sattr = xs.codec(SATTR3)
_fh = xs.codec(FH3)
_post_op_fh = xs.codec(POST_OP_FH)
FATTR_SIZE: Final = 21 * 4
POST_OP_ATTR_SIZE: Final = 4 + FATTR_SIZE


def _split_time(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, _NS)
    return min(max(sec, 0), 0xFFFFFFFF), nsec


def pack_fattr(p: Packer, a: FileAttributes, fsid: int) -> None:
    _fattr.pack(p, a, fsid)


def unpack_fattr(u: Unpacker) -> FileAttributes:
    result: FileAttributes = _fattr.unpack(u)
    return result


def pack_post_op_attr(p: Packer, a: FileAttributes | None, fsid: int) -> None:
    _post_op_attr.pack(p, a, fsid)


def unpack_post_op_attr(u: Unpacker) -> FileAttributes | None:
    result: FileAttributes | None = _post_op_attr.unpack(u)
    return result


def pack_sattr(p: Packer, s: SetAttributes) -> None:
    _sattr.pack(p, s)


def unpack_sattr(u: Unpacker) -> SetAttributes:
    result: SetAttributes = _sattr.unpack(u)
    return result


def pack_fh(p: Packer, fh: bytes) -> None:
    p.opaque(fh)


def unpack_fh(u: Unpacker) -> bytes:
    return u.opaque(FHSIZE)


def pack_post_op_fh(p: Packer, fh: bytes | None) -> None:
    _post_op_fh.pack(p, fh)


def unpack_post_op_fh(u: Unpacker) -> bytes | None:
    result: bytes | None = _post_op_fh.unpack(u)
    return result


def fh_size(fh: bytes) -> int:
    return 4 + len(fh) + (-len(fh) & 3)


def name_size(name: str) -> int:
    n = len(name.encode("utf-8", "surrogateescape"))
    return 4 + n + (-n & 3)


class _Result(xs.Struct):
    """Base of results: packing takes the export's fsid (it goes into every fattr3)."""

    __slots__ = ()

    def pack(self, p: Packer, fsid: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} is not decorated with @message")


@xs.message
@attrs.frozen
class WccAttr:
    """Pre-operation attributes (wcc_attr)."""

    size: Uint64
    mtime_ns: Time
    ctime_ns: Time

    @classmethod
    def of(cls, a: FileAttributes) -> WccAttr:
        return cls(a.size, a.mtime_ns, a.ctime_ns)


@xs.message
@attrs.frozen
class Wcc(_Result):
    """wcc_data: attributes before and after a change, each optional."""

    before: Annotated[WccAttr | None, xs.Optional(xs.spec(WccAttr))] = None
    after: PostOpAttr = None


WccData: TypeAlias = Annotated[Wcc, xs.spec(Wcc)]


# -- arguments -----------------------------------------------------------------------------------


@xs.message
@attrs.frozen
class FhArgs(xs.Message):
    """Arguments that are just a handle: GETATTR, READLINK, FSSTAT, FSINFO, PATHCONF."""

    fh: Fh


@xs.message
@attrs.frozen
class SetattrArgs(xs.Message):
    fh: Fh
    attributes: Sattr
    guard_ctime_ns: Annotated[int | None, xs.Optional(xs.NFSTIME)] = None


@xs.message
@attrs.frozen
class DiropArgs(xs.Message):
    """A directory handle and a name: LOOKUP, REMOVE, RMDIR."""

    dir: Fh
    name: Name


@xs.message
@attrs.frozen
class AccessArgs(xs.Message):
    fh: Fh
    access: Uint32


@xs.message
@attrs.frozen
class ReadArgs(xs.Message):
    fh: Fh
    offset: Uint64
    count: Uint32


_WRITE_HEAD: Final = struct.Struct(">QIII")


@attrs.frozen
class WriteArgs(xs.Message):
    """Hand-written: ``data`` is a view into the received record (no copy), and the wire's
    ``count`` must equal its length."""

    fh: bytes
    offset: int
    stable: Stability
    data: bytes | bytearray | memoryview = attrs.field(eq=False)

    def pack(self, p: Packer) -> None:
        p.opaque(self.fh)
        n = memoryview(self.data).nbytes
        p.pack_struct(_WRITE_HEAD, self.offset, n, self.stable, n)
        p.opaque_body(self.data, n)

    @classmethod
    def unpack(cls, u: Unpacker) -> WriteArgs:
        fh = u.opaque(FHSIZE)
        offset, count, how, n = u.unpack_struct(_WRITE_HEAD)
        stable = _STABILITY.get(how)
        if stable is None:
            raise XdrError(f"stable_how: invalid value {how}")
        if n > MAX_DATA:
            raise XdrError(f"opaque at byte {u.position - 4} has length {n} > {MAX_DATA}")
        data = u.fixed_view(n)
        if count != n:
            raise XdrError(f"WRITE count {count} != data length {n}")
        return cls(fh, offset, stable, data)


_STABILITY: Final = {int(s): s for s in Stability}


@xs.message
@attrs.frozen
class CreateArgs(xs.Message):
    dir: Fh
    name: Name
    mode: Annotated[CreateMode, xs.Enum(CreateMode, "createmode3")] = CreateMode.UNCHECKED
    attributes: Annotated[SetAttributes, SATTR3, xs.Unless("mode", CreateMode.EXCLUSIVE)] = (
        attrs.field(factory=SetAttributes)
    )
    verifier: Annotated[bytes, xs.Fixed(8), xs.When("mode", CreateMode.EXCLUSIVE)] = b""


@xs.message
@attrs.frozen
class MkdirArgs(xs.Message):
    dir: Fh
    name: Name
    attributes: Sattr = attrs.field(factory=SetAttributes)


@xs.message(order=("dir", "name", "attributes", "target"))
@attrs.frozen
class SymlinkArgs(xs.Message):
    dir: Fh
    name: Name
    target: Path
    attributes: Sattr = attrs.field(factory=SetAttributes)


_DEVICE: Final = (FileType.CHR, FileType.BLK)


@xs.message
@attrs.frozen
class MknodArgs(xs.Message):
    dir: Fh
    name: Name
    type: Annotated[FileType, xs.Enum(FileType, "ftype3")]
    attributes: Annotated[
        SetAttributes, SATTR3, xs.When("type", *_DEVICE, FileType.SOCK, FileType.FIFO)
    ] = attrs.field(factory=SetAttributes)
    spec: Annotated[tuple[int, int], xs.Tuple((xs.U32, xs.U32)), xs.When("type", *_DEVICE)] = (
        0,
        0,
    )


@xs.message
@attrs.frozen
class RenameArgs(xs.Message):
    from_dir: Fh
    from_name: Name
    to_dir: Fh
    to_name: Name


@xs.message
@attrs.frozen
class LinkArgs(xs.Message):
    fh: Fh
    dir: Fh
    name: Name


@xs.message
@attrs.frozen
class ReaddirArgs(xs.Message):
    fh: Fh
    cookie: Uint64
    verifier: Verifier
    count: Uint32


@xs.message
@attrs.frozen
class ReaddirplusArgs(xs.Message):
    fh: Fh
    cookie: Uint64
    verifier: Verifier
    dircount: Uint32
    maxcount: Uint32


@xs.message
@attrs.frozen
class CommitArgs(xs.Message):
    fh: Fh
    offset: Uint64 = 0
    count: Uint32 = 0


# -- results -------------------------------------------------------------------------------------


@xs.message
@attrs.frozen
class GetattrRes(_Result):
    status: Status
    attributes: Annotated[FileAttributes | None, FATTR3, OK] = None


@xs.message
@attrs.frozen
class SetattrRes(_Result):
    status: Status
    wcc: WccData = Wcc()


@xs.message
@attrs.frozen
class LookupRes(_Result):
    status: Status
    fh: Annotated[bytes | None, FH3, OK] = None
    attributes: Annotated[FileAttributes | None, POST_OP_ATTR, OK] = None
    dir_attributes: PostOpAttr = None


@xs.message
@attrs.frozen
class AccessRes(_Result):
    status: Status
    attributes: PostOpAttr = None
    access: Annotated[int, xs.U32, OK] = 0


@xs.message
@attrs.frozen
class ReadlinkRes(_Result):
    status: Status
    attributes: PostOpAttr = None
    target: Annotated[str, xs.String(PATH_BOUND), OK] = ""


_READ_OK: Final = struct.Struct(">III")  # count, eof, length of the data
READ_OK: Final = _READ_OK
"""READ3resok after the post-op attributes: count, eof, the data's length."""
_READ_OK_PAYLOAD: Final = struct.Struct(">II")  # count, eof (opaque_payload packs the length)
_STATUS: Final = {int(s): s for s in NfsStatus}


@attrs.frozen
class ReadRes(_Result):
    """Hand-written: ``data`` may be a ``Payload`` the sender splices from a file, and the wire's
    ``count`` must equal the data's length."""

    status: NfsStatus
    attributes: FileAttributes | None = None
    eof: bool = False
    data: bytes | bytearray | memoryview | Payload = attrs.field(default=b"", eq=False)
    """The bytes read, or a ``Payload`` (bytes the sender moves from a file to the socket)."""

    def pack(self, p: Packer, fsid: int) -> None:
        p.u32(self.status)
        _post_op_attr.pack(p, self.attributes, fsid)
        if self.status == NfsStatus.OK:
            data = self.data
            if isinstance(data, (bytes, bytearray, memoryview)):
                n = memoryview(data).nbytes
                p.pack_struct(_READ_OK, n, 1 if self.eof else 0, n)
                p.opaque_body(data, n)
            else:
                p.pack_struct(_READ_OK_PAYLOAD, data.nbytes, 1 if self.eof else 0)
                p.opaque_payload(data)

    @classmethod
    def unpack(cls, u: Unpacker) -> ReadRes:
        value = u.u32()
        status = _STATUS.get(value)
        if status is None:
            raise XdrError(f"nfsstat3: unknown value {value}")
        a: FileAttributes | None = _post_op_attr.unpack(u)
        if status != NfsStatus.OK:
            return cls(status, a)
        count, eof = u.u32(), u.boolean()
        data = u.opaque(MAX_DATA)
        if count != len(data):
            raise XdrError(f"READ count {count} != data length {len(data)}")
        return cls(status, a, eof, data)


@xs.message
@attrs.frozen
class WriteRes(_Result):
    status: Status
    wcc: WccData = Wcc()
    count: Annotated[int, xs.U32, OK] = 0
    committed: Annotated[Stability, xs.Enum(Stability, "stable_how"), OK] = Stability.UNSTABLE
    verifier: Annotated[bytes, xs.Fixed(8), OK] = b"\0" * 8


@xs.message
@attrs.frozen
class CreateRes(_Result):
    """CREATE, MKDIR, SYMLINK and MKNOD results."""

    status: Status
    fh: Annotated[bytes | None, POST_OP_FH, OK] = None
    attributes: Annotated[FileAttributes | None, POST_OP_ATTR, OK] = None
    dir_wcc: WccData = Wcc()


@xs.message
@attrs.frozen
class RemoveRes(_Result):
    """REMOVE and RMDIR results."""

    status: Status
    dir_wcc: WccData = Wcc()


@xs.message
@attrs.frozen
class RenameRes(_Result):
    status: Status
    from_wcc: WccData = Wcc()
    to_wcc: WccData = Wcc()


@xs.message
@attrs.frozen
class LinkRes(_Result):
    status: Status
    attributes: PostOpAttr = None
    dir_wcc: WccData = Wcc()


@xs.message
@attrs.frozen
class Entry:
    fileid: Uint64
    name: Name
    cookie: Uint64

    def wire_size(self) -> int:
        """Bytes this entry takes in a READDIR reply (value_follows + fileid + name + cookie)."""
        return 4 + 8 + name_size(self.name) + 8


@xs.message
@attrs.frozen
class EntryPlus:
    fileid: Uint64
    name: Name
    cookie: Uint64
    attributes: PostOpAttr = None
    fh: PostOpFh = None

    def wire_size(self) -> int:
        attr = POST_OP_ATTR_SIZE if self.attributes is not None else 4
        fh = 4 + fh_size(self.fh) if self.fh is not None else 4
        return 4 + 8 + name_size(self.name) + 8 + attr + fh


READDIR_RES_OVERHEAD: Final = 4 + POST_OP_ATTR_SIZE + 8 + 4 + 4
"""status + dir attributes + cookie verifier + end of list + eof."""


@xs.message
@attrs.frozen
class ReaddirRes(_Result):
    status: Status
    dir_attributes: PostOpAttr = None
    verifier: Annotated[bytes, xs.Fixed(8), OK] = b"\0" * 8
    entries: Annotated[
        Sequence[Entry],
        xs.List(xs.spec(Entry), _MAX_ENTRIES, "READDIR reply has too many entries"),
        OK,
    ] = ()
    eof: Annotated[bool, xs.BOOL, OK] = False


@xs.message
@attrs.frozen
class ReaddirplusRes(_Result):
    status: Status
    dir_attributes: PostOpAttr = None
    verifier: Annotated[bytes, xs.Fixed(8), OK] = b"\0" * 8
    entries: Annotated[
        Sequence[EntryPlus],
        xs.List(xs.spec(EntryPlus), _MAX_ENTRIES, "READDIRPLUS reply has too many entries"),
        OK,
    ] = ()
    eof: Annotated[bool, xs.BOOL, OK] = False


@xs.message
@attrs.frozen
class FsstatRes(_Result):
    status: Status
    attributes: PostOpAttr = None
    tbytes: Annotated[int, xs.U64, OK] = 0
    fbytes: Annotated[int, xs.U64, OK] = 0
    abytes: Annotated[int, xs.U64, OK] = 0
    tfiles: Annotated[int, xs.U64, OK] = 0
    ffiles: Annotated[int, xs.U64, OK] = 0
    afiles: Annotated[int, xs.U64, OK] = 0
    invarsec: Annotated[int, xs.U32, OK] = 0


@xs.message
@attrs.frozen
class FsinfoRes(_Result):
    status: Status
    attributes: PostOpAttr = None
    rtmax: Annotated[int, xs.U32, OK] = 0
    rtpref: Annotated[int, xs.U32, OK] = 0
    rtmult: Annotated[int, xs.U32, OK] = 0
    wtmax: Annotated[int, xs.U32, OK] = 0
    wtpref: Annotated[int, xs.U32, OK] = 0
    wtmult: Annotated[int, xs.U32, OK] = 0
    dtpref: Annotated[int, xs.U32, OK] = 0
    maxfilesize: Annotated[int, xs.U64, OK] = 0
    time_delta_ns: Annotated[int, xs.NFSTIME, OK] = 0
    properties: Annotated[int, xs.U32, OK] = 0


@xs.message
@attrs.frozen
class PathconfRes(_Result):
    status: Status
    attributes: PostOpAttr = None
    linkmax: Annotated[int, xs.U32, OK] = 0
    name_max: Annotated[int, xs.U32, OK] = 0
    no_trunc: Annotated[bool, xs.BOOL, OK] = True
    chown_restricted: Annotated[bool, xs.BOOL, OK] = True
    case_insensitive: Annotated[bool, xs.BOOL, OK] = False
    case_preserving: Annotated[bool, xs.BOOL, OK] = True


@xs.message
@attrs.frozen
class CommitRes(_Result):
    status: Status
    wcc: WccData = Wcc()
    verifier: Annotated[bytes, xs.Fixed(8), OK] = b"\0" * 8
