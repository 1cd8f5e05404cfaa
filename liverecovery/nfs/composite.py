"""A ``Filesystem`` whose root lists published sub-filesystems as folders.

One export per ESX host, one folder per recovery job: each job publishes its virtual datastore
folder here. Composite file ids are ``slot << 48 | sub id``; the slot is derived from the folder
name (a hash, probing on collision), so ids stay the same when the same folders are published
again after a server restart. Sub ids of 2**47 and above get ids from an in-memory table (stable
only for the life of the process; local inode numbers never get there in practice).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeAlias

import attrs

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.io.ranges import FileRange
from liverecovery.nfs.filesystem import (
    CreateMode,
    DirEntry,
    DirPage,
    FileAttributes,
    Filesystem,
    FileType,
    FsStat,
    SetAttributes,
    Stability,
    WriteData,
)
from liverecovery.nfs.names import check_name

__all__ = ["CompositeFilesystem"]

ROOT_ID: Final = 1
_SLOT_SHIFT: Final = 48
_SUB_MASK: Final = (1 << _SLOT_SHIFT) - 1
_OVERFLOW: Final = 1 << 47
_SLOTS: Final = 1 << 16

RangeReader: TypeAlias = Callable[[int, int, int], Awaitable[FileRange | None]]


@attrs.define
class _Mounted:
    folder: str
    slot: int
    fs: Filesystem
    overflow_to_sub: dict[int, int] = attrs.field(factory=dict)
    sub_to_overflow: dict[int, int] = attrs.field(factory=dict)
    read_file_range: RangeReader = attrs.field(init=False)
    """``fs.read_file_range``, bound once (not looked up per READ)."""

    def __attrs_post_init__(self) -> None:
        self.read_file_range = self.fs.read_file_range


def _preferred_slot(folder: str) -> int:
    digest = hashlib.blake2b(folder.encode("utf-8", "surrogateescape"), digest_size=4).digest()
    return int.from_bytes(digest, "big") % (_SLOTS - 1) + 1


class CompositeFilesystem(Filesystem):
    """Root directory of an export; folders in it are other filesystems. The root is read-only."""

    def __init__(
        self, space: Filesystem | None = None, *, restoring: Callable[[], bool] | None = None
    ) -> None:
        # True while the server's grace period runs: a folder not published yet may still be
        # (a job resuming after a restart or a takeover): its handles get JUKEBOX, not STALE
        self._restoring = restoring
        self._by_slot: dict[int, _Mounted] = {}
        self._by_name: dict[str, _Mounted] = {}
        self._space = space
        self._mtime_ns = time.time_ns()

    @property
    def root_id(self) -> int:
        return ROOT_ID

    @property
    def read_only(self) -> bool:
        return False

    @property
    def folders(self) -> Mapping[str, Filesystem]:
        return {name: m.fs for name, m in self._by_name.items()}

    def publish(self, folder: str, fs: Filesystem) -> None:
        """:raises NfsError: EXIST when ``folder`` is taken; INVAL/NAMETOOLONG for a bad name."""
        check_name(folder)
        if folder in self._by_name:
            raise NfsError(NfsStatus.EXIST, f"folder {folder!r} is already published")
        slot = _preferred_slot(folder)
        while slot in self._by_slot:
            slot = slot % (_SLOTS - 1) + 1
        m = _Mounted(folder, slot, fs)
        self._by_slot[slot] = m
        self._by_name[folder] = m
        self._mtime_ns = time.time_ns()

    def unpublish(self, folder: str) -> Filesystem:
        """:raises NfsError: NOENT when ``folder`` is not published."""
        m = self._by_name.pop(folder, None)
        if m is None:
            raise NfsError(NfsStatus.NOENT, f"folder {folder!r} is not published")
        del self._by_slot[m.slot]
        self._mtime_ns = time.time_ns()
        return m.fs

    # -- id mapping -------------------------------------------------------------------------

    def _to_composite(self, m: _Mounted, sub_id: int) -> int:
        if sub_id < _OVERFLOW:
            return (m.slot << _SLOT_SHIFT) | sub_id
        cid = m.sub_to_overflow.get(sub_id)
        if cid is None:
            cid = _OVERFLOW | len(m.sub_to_overflow)
            m.sub_to_overflow[sub_id] = cid
            m.overflow_to_sub[cid] = sub_id
        return (m.slot << _SLOT_SHIFT) | cid

    def _split(self, fileid: int) -> tuple[_Mounted, int]:
        m = self._by_slot.get(fileid >> _SLOT_SHIFT)
        if m is None:
            if self._restoring is not None and self._restoring():
                raise NfsError(NfsStatus.JUKEBOX, f"file id {fileid:#x}: folder not restored yet")
            raise NfsError(NfsStatus.STALE, f"file id {fileid:#x}: folder not published")
        sub = fileid & _SUB_MASK
        if sub & _OVERFLOW:
            real = m.overflow_to_sub.get(sub)
            if real is None:
                raise NfsError(NfsStatus.STALE, f"file id {fileid:#x} is unknown")
            sub = real
        return m, sub

    def _attrs(self, m: _Mounted, a: FileAttributes) -> FileAttributes:
        return attrs.evolve(a, fileid=self._to_composite(m, a.fileid))

    def _root_attrs(self) -> FileAttributes:
        t = self._mtime_ns
        return FileAttributes(
            type=FileType.DIR,
            mode=0o755,
            nlink=2 + len(self._by_slot),
            uid=0,
            gid=0,
            size=4096,
            used=4096,
            fileid=ROOT_ID,
            atime_ns=t,
            mtime_ns=t,
            ctime_ns=t,
        )

    def _refuse_root(self, dir_id: int) -> None:
        if dir_id == ROOT_ID:
            raise NfsError(NfsStatus.ACCES, "the export root only holds published folders")

    # -- Filesystem -------------------------------------------------------------------------

    async def getattr(self, fileid: int) -> FileAttributes:
        if fileid == ROOT_ID:
            return self._root_attrs()
        m, sub = self._split(fileid)
        return self._attrs(m, await m.fs.getattr(sub))

    async def setattr(self, fileid: int, attributes: SetAttributes) -> FileAttributes:
        self._refuse_root(fileid)
        m, sub = self._split(fileid)
        return self._attrs(m, await m.fs.setattr(sub, attributes))

    async def lookup(self, dir_id: int, name: str) -> int:
        if dir_id == ROOT_ID:
            if name in (".", ".."):
                return ROOT_ID
            m = self._by_name.get(name)
            if m is None:
                raise NfsError(NfsStatus.NOENT, name)
            return self._to_composite(m, m.fs.root_id)
        m, sub = self._split(dir_id)
        if name == ".." and sub == m.fs.root_id:
            return ROOT_ID
        return self._to_composite(m, await m.fs.lookup(sub, name))

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        if fileid == ROOT_ID:
            raise NfsError(NfsStatus.ISDIR, "the export root is a directory")
        m, sub = self._split(fileid)
        return await m.fs.read(sub, offset, length)

    async def read_file_range(self, fileid: int, offset: int, length: int) -> FileRange | None:
        """The folder's filesystem's file range (None when it has none to give)."""
        if fileid == ROOT_ID:
            raise NfsError(NfsStatus.ISDIR, "the export root is a directory")
        m, sub = self._split(fileid)
        return await m.read_file_range(sub, offset, length)

    async def write(
        self, fileid: int, offset: int, data: WriteData, stability: Stability
    ) -> Stability:
        if fileid == ROOT_ID:
            raise NfsError(NfsStatus.ISDIR, "the export root is a directory")
        m, sub = self._split(fileid)
        return await m.fs.write(sub, offset, data, stability)

    async def commit(self, fileid: int) -> None:
        if fileid == ROOT_ID:
            return
        m, sub = self._split(fileid)
        await m.fs.commit(sub)

    async def create(
        self,
        dir_id: int,
        name: str,
        attributes: SetAttributes,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> int:
        self._refuse_root(dir_id)
        m, sub = self._split(dir_id)
        return self._to_composite(m, await m.fs.create(sub, name, attributes, mode, verifier))

    async def mkdir(self, dir_id: int, name: str, attributes: SetAttributes) -> int:
        self._refuse_root(dir_id)
        m, sub = self._split(dir_id)
        return self._to_composite(m, await m.fs.mkdir(sub, name, attributes))

    async def symlink(self, dir_id: int, name: str, target: str, attributes: SetAttributes) -> int:
        self._refuse_root(dir_id)
        m, sub = self._split(dir_id)
        return self._to_composite(m, await m.fs.symlink(sub, name, target, attributes))

    async def readlink(self, fileid: int) -> str:
        if fileid == ROOT_ID:
            raise NfsError(NfsStatus.INVAL, "the export root is not a symlink")
        m, sub = self._split(fileid)
        return await m.fs.readlink(sub)

    async def link(self, fileid: int, dir_id: int, name: str) -> None:
        self._refuse_root(dir_id)
        m, sub = self._split(fileid)
        dm, dsub = self._split(dir_id)
        if dm is not m:
            raise NfsError(NfsStatus.XDEV, "link across published folders")
        await m.fs.link(sub, dsub, name)

    async def remove(self, dir_id: int, name: str) -> None:
        self._refuse_root(dir_id)
        m, sub = self._split(dir_id)
        await m.fs.remove(sub, name)

    async def rmdir(self, dir_id: int, name: str) -> None:
        self._refuse_root(dir_id)
        m, sub = self._split(dir_id)
        await m.fs.rmdir(sub, name)

    async def rename(self, from_dir: int, from_name: str, to_dir: int, to_name: str) -> None:
        self._refuse_root(from_dir)
        self._refuse_root(to_dir)
        fm, fsub = self._split(from_dir)
        tm, tsub = self._split(to_dir)
        if fm is not tm:
            raise NfsError(NfsStatus.XDEV, "rename across published folders")
        await fm.fs.rename(fsub, from_name, tsub, to_name)

    async def readdir(self, dir_id: int, cookie: int, max_entries: int) -> DirPage:
        if dir_id == ROOT_ID:
            # Cookies are slots: unique, stable while the folder stays published.
            slots = sorted(s for s in self._by_slot if s > cookie)
            page = [
                DirEntry(
                    self._by_slot[s].folder,
                    self._to_composite(self._by_slot[s], self._by_slot[s].fs.root_id),
                    s,
                )
                for s in slots[:max_entries]
            ]
            return DirPage(page, len(slots) <= max_entries, verifier=ROOT_ID)
        m, sub = self._split(dir_id)
        p = await m.fs.readdir(sub, cookie, max_entries)
        entries = [DirEntry(e.name, self._to_composite(m, e.fileid), e.cookie) for e in p.entries]
        return DirPage(entries, p.eof, p.verifier)

    async def fsstat(self) -> FsStat:
        for m in self._by_slot.values():
            return await m.fs.fsstat()
        if self._space is not None:
            return await self._space.fsstat()
        return FsStat(0, 0, 0, 0, 0, 0)

    async def aclose(self) -> None:
        """Published filesystems belong to their publishers; nothing to release here."""
