"""MOUNT v3 (RFC 1813 appendix I) messages: pure XDR codecs."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

import attrs

from liverecovery.nfs.xdr import Packer, Unpacker, XdrError

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


def pack_dirpath(p: Packer, path: str) -> None:
    p.string(path)


def unpack_dirpath(u: Unpacker) -> str:
    return u.string(MNTPATHLEN)


@attrs.frozen
class MountRes:
    status: MountStatus
    fh: bytes = b""
    auth_flavors: tuple[int, ...] = ()

    def pack(self, p: Packer) -> None:
        p.u32(self.status)
        if self.status == MountStatus.OK:
            p.opaque(self.fh)
            p.u32(len(self.auth_flavors))
            for f in self.auth_flavors:
                p.u32(f)

    @classmethod
    def unpack(cls, u: Unpacker) -> MountRes:
        value = u.u32()
        try:
            status = MountStatus(value)
        except ValueError:
            raise XdrError(f"mountstat3: unknown value {value}") from None
        if status != MountStatus.OK:
            return cls(status)
        fh = u.opaque(64)
        flavors = tuple(u.u32() for _ in range(u.array_length(64)))
        return cls(status, fh, flavors)


@attrs.frozen
class MountEntry:
    hostname: str
    directory: str


@attrs.frozen
class MountExport:
    directory: str
    groups: tuple[str, ...] = ()


def pack_mountlist(p: Packer, entries: Sequence[MountEntry]) -> None:
    for e in entries:
        p.u32(1)
        p.string(e.hostname)
        p.string(e.directory)
    p.u32(0)


def unpack_mountlist(u: Unpacker) -> list[MountEntry]:
    out: list[MountEntry] = []
    while u.boolean():
        if len(out) >= _LIST_BOUND:
            raise XdrError("mount list too long")
        out.append(MountEntry(u.string(MNTNAMLEN), u.string(MNTPATHLEN)))
    return out


def pack_exports(p: Packer, exports: Sequence[MountExport]) -> None:
    for e in exports:
        p.u32(1)
        p.string(e.directory)
        for g in e.groups:
            p.u32(1)
            p.string(g)
        p.u32(0)
    p.u32(0)


def unpack_exports(u: Unpacker) -> list[MountExport]:
    out: list[MountExport] = []
    while u.boolean():
        if len(out) >= _LIST_BOUND:
            raise XdrError("export list too long")
        directory = u.string(MNTPATHLEN)
        groups: list[str] = []
        while u.boolean():
            if len(groups) >= _LIST_BOUND:
                raise XdrError("export group list too long")
            groups.append(u.string(MNTNAMLEN))
        out.append(MountExport(directory, tuple(groups)))
    return out
