"""MOUNT v3 (RFC 1813 appendix I) messages: pure XDR codecs, declared once (``xdr_spec``)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated, Final

import attrs

from liverecovery.nfs import xdr_spec as xs
from liverecovery.nfs.xdr import Packer, Unpacker

__all__ = [
    "MOUNT_PROGRAM",
    "MOUNT_VERSION",
    "MountEntry",
    "MountExport",
    "MountProc",
    "MountRes",
    "MountStatus",
    "pack_dirpath",
    "pack_exports",
    "pack_mountlist",
    "unpack_dirpath",
    "unpack_exports",
    "unpack_mountlist",
]

MOUNT_PROGRAM: Final = 100005
MOUNT_VERSION: Final = 3
MNTPATHLEN: Final = 1024
MNTNAMLEN: Final = 255
_LIST_BOUND: Final = 100_000


class MountProc(enum.IntEnum):
    NULL = 0
    MNT = 1
    DUMP = 2
    UMNT = 3
    UMNTALL = 4
    EXPORT = 5


class MountStatus(enum.IntEnum):
    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    ACCES = 13
    NOTDIR = 20
    INVAL = 22
    NAMETOOLONG = 63
    NOTSUPP = 10004
    SERVERFAULT = 10006


_OK: Final = xs.When("status", MountStatus.OK)


_DIRPATH: Final = xs.codec(xs.String(MNTPATHLEN))


def pack_dirpath(p: Packer, path: str) -> None:
    _DIRPATH.pack(p, path)


def unpack_dirpath(u: Unpacker) -> str:
    return u.string(MNTPATHLEN)


@xs.message
@attrs.frozen
class MountRes(xs.Message):
    status: Annotated[MountStatus, xs.Enum(MountStatus, "mountstat3", "unknown value")]
    fh: Annotated[bytes, xs.Opaque(64), _OK] = b""
    auth_flavors: Annotated[tuple[int, ...], xs.Array(xs.U32, 64), _OK] = ()


@xs.message
@attrs.frozen
class MountEntry:
    hostname: Annotated[str, xs.String(MNTNAMLEN)]
    directory: Annotated[str, xs.String(MNTPATHLEN)]


@xs.message
@attrs.frozen
class MountExport:
    directory: Annotated[str, xs.String(MNTPATHLEN)]
    groups: Annotated[
        tuple[str, ...],
        xs.List(xs.String(MNTNAMLEN), _LIST_BOUND, "export group list too long", tuple),
    ] = ()


_MOUNTLIST: Final = xs.codec(xs.List(xs.spec(MountEntry), _LIST_BOUND, "mount list too long"))
_EXPORTS: Final = xs.codec(xs.List(xs.spec(MountExport), _LIST_BOUND, "export list too long"))


def pack_mountlist(p: Packer, entries: Sequence[MountEntry]) -> None:
    _MOUNTLIST.pack(p, entries)


def unpack_mountlist(u: Unpacker) -> list[MountEntry]:
    out: list[MountEntry] = _MOUNTLIST.unpack(u)
    return out


def pack_exports(p: Packer, exports: Sequence[MountExport]) -> None:
    _EXPORTS.pack(p, exports)


def unpack_exports(u: Unpacker) -> list[MountExport]:
    out: list[MountExport] = _EXPORTS.unpack(u)
    return out
