"""The virtual datastore: the VM folder as the ESX host sees it over NFS.

Small files (the rewritten .vmx, the flat descriptors, the .nvram) and every file the ESX host
creates (``.lck-*``, ``vmware.log``, ``.vswp``, ``.vmsd``, ``.vmx~``, snapshot deltas) live in an
inner filesystem, the job's overlay directory. The ``-flat.vmdk`` files are virtual: they appear
in the root directory with the size their descriptor declares and are served by ``FlatDisk``
(overlay ▶ cache ▶ backup). Virtual file ids start at 2**46: above the inner filesystem's ids
(inode numbers), below the 2**47 an export's composite root keeps stable across restarts, so a
flat disk keeps its file handle when the server comes back.
"""

from __future__ import annotations

import time

import anyio.lowlevel

from liverecovery.datastore.flatdisk import FlatDisk
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

__all__ = ["VIRTUAL_ID_BASE", "VirtualDatastore"]

VIRTUAL_ID_BASE = 1 << 46
_VIRTUAL_COOKIE_BASE = 0xFFFF_FFFF_0000_0000


class VirtualDatastore(Filesystem):
    """A ``Filesystem``: ``inner`` plus one virtual flat file per disk in its root."""

    def __init__(self, inner: Filesystem, disks: dict[str, FlatDisk]) -> None:
        self._inner = inner
        self._inner_ranges = inner.read_file_range
        self._names = list(disks)
        self._disks = {VIRTUAL_ID_BASE + i + 1: disks[n] for i, n in enumerate(self._names)}
        self._ids = {n: VIRTUAL_ID_BASE + i + 1 for i, n in enumerate(self._names)}
        self._removed: set[int] = set()
        now = time.time_ns()
        self._mtime = dict.fromkeys(self._disks, now)
        self._ctime = now

    @property
    def root_id(self) -> int:
        return self._inner.root_id

    @property
    def read_only(self) -> bool:
        return self._inner.read_only

    @property
    def disks(self) -> dict[str, FlatDisk]:
        """The flat disks by file name."""
        return {n: self._disks[self._ids[n]] for n in self._names}

    def _virtual(self, fileid: int) -> FlatDisk | None:
        if fileid < VIRTUAL_ID_BASE:
            return None
        disk = self._disks.get(fileid)
        if disk is None or fileid in self._removed:
            raise NfsError(NfsStatus.STALE, f"file id {fileid}")
        return disk

    def _visible(self, name: str) -> int | None:
        fid = self._ids.get(name)
        return None if fid is None or fid in self._removed else fid

    def _attrs(self, fileid: int, disk: FlatDisk) -> FileAttributes:
        mode = 0o400 if self.read_only else 0o600
        return FileAttributes(
            type=FileType.REG,
            mode=mode,
            nlink=1,
            uid=0,
            gid=0,
            size=disk.size,
            used=disk.size,
            fileid=fileid,
            atime_ns=self._mtime[fileid],
            mtime_ns=self._mtime[fileid],
            ctime_ns=self._ctime,
        )

    def _shadowed(self, dir_id: int, name: str) -> bool:
        return dir_id == self.root_id and self._visible(name) is not None

    # -- Filesystem --------------------------------------------------------------------------

    async def getattr(self, fileid: int) -> FileAttributes:
        disk = self._virtual(fileid)
        if disk is None:
            return await self._inner.getattr(fileid)
        return self._attrs(fileid, disk)  # no checkpoint: every READ and WRITE reply asks

    async def setattr(self, fileid: int, attributes: SetAttributes) -> FileAttributes:
        disk = self._virtual(fileid)
        if disk is None:
            return await self._inner.setattr(fileid, attributes)
        if self.read_only:
            raise NfsError(NfsStatus.ROFS)
        if attributes.size is not None and attributes.size != disk.size:
            raise NfsError(NfsStatus.INVAL, "a flat disk keeps the size its descriptor declares")
        if isinstance(attributes.mtime_ns, int):
            self._mtime[fileid] = attributes.mtime_ns
        elif attributes.mtime_ns is not None:
            self._mtime[fileid] = time.time_ns()
        await anyio.lowlevel.checkpoint()
        return self._attrs(fileid, disk)

    async def lookup(self, dir_id: int, name: str) -> int:
        if dir_id == self.root_id:
            fid = self._visible(name)
            if fid is not None:
                await anyio.lowlevel.checkpoint()
                return fid
        if dir_id >= VIRTUAL_ID_BASE:
            self._virtual(dir_id)
            raise NfsError(NfsStatus.NOTDIR)
        return await self._inner.lookup(dir_id, name)

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        disk = self._disks.get(fileid)  # the hot path: a visible flat disk, one lookup
        if disk is not None and fileid not in self._removed:
            return await disk.read(offset, length)
        disk = self._virtual(fileid)
        if disk is None:
            return await self._inner.read(fileid, offset, length)
        return await disk.read(offset, length)

    async def read_file_range(self, fileid: int, offset: int, length: int) -> FileRange | None:
        """A flat disk's cached block, or the inner filesystem's file, as a file range to
        splice (``Filesystem.read_file_range``); None: the server reads the bytes."""
        disk = self._disks.get(fileid)
        if disk is not None and fileid not in self._removed:
            return await disk.read_file_range(offset, length)
        disk = self._virtual(fileid)
        if disk is not None:
            return await disk.read_file_range(offset, length)
        return await self._inner_ranges(fileid, offset, length)

    async def write(
        self, fileid: int, offset: int, data: WriteData, stability: Stability
    ) -> Stability:
        disk = self._virtual(fileid)
        if disk is None:
            return await self._inner.write(fileid, offset, data, stability)
        if self.read_only:
            raise NfsError(NfsStatus.ROFS)
        if offset + len(data) > disk.size:
            raise NfsError(NfsStatus.FBIG, "write past the end of a flat disk")
        try:
            done = await disk.write(offset, data, stability)
        except PermissionError:
            raise NfsError(NfsStatus.ROFS) from None
        self._mtime[fileid] = time.time_ns()
        return done

    async def commit(self, fileid: int) -> None:
        disk = self._virtual(fileid)
        if disk is None:
            await self._inner.commit(fileid)
        else:
            await disk.commit()

    async def create(
        self,
        dir_id: int,
        name: str,
        attributes: SetAttributes,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> int:
        if self._shadowed(dir_id, name):
            if mode is not CreateMode.UNCHECKED:
                raise NfsError(NfsStatus.EXIST, name)
            fid = self._ids[name]
            await self.setattr(fid, attributes)
            return fid
        return await self._inner.create(dir_id, name, attributes, mode, verifier)

    async def mkdir(self, dir_id: int, name: str, attributes: SetAttributes) -> int:
        if self._shadowed(dir_id, name):
            raise NfsError(NfsStatus.EXIST, name)
        return await self._inner.mkdir(dir_id, name, attributes)

    async def symlink(self, dir_id: int, name: str, target: str, attributes: SetAttributes) -> int:
        if self._shadowed(dir_id, name):
            raise NfsError(NfsStatus.EXIST, name)
        return await self._inner.symlink(dir_id, name, target, attributes)

    async def readlink(self, fileid: int) -> str:
        if self._virtual(fileid) is not None:
            raise NfsError(NfsStatus.INVAL, "not a symbolic link")
        return await self._inner.readlink(fileid)

    async def link(self, fileid: int, dir_id: int, name: str) -> None:
        if self._virtual(fileid) is not None or self._shadowed(dir_id, name):
            raise NfsError(NfsStatus.NOTSUPP, "hard links to flat disks")
        await self._inner.link(fileid, dir_id, name)

    async def remove(self, dir_id: int, name: str) -> None:
        fid = self._visible(name) if dir_id == self.root_id else None
        if fid is None:
            await self._inner.remove(dir_id, name)
            return
        if self.read_only:
            raise NfsError(NfsStatus.ROFS)
        # ESXi deletes the source disks after a storage vMotion: hide it; the backup is untouched.
        self._removed.add(fid)
        self._ctime = time.time_ns()
        await anyio.lowlevel.checkpoint()

    async def rmdir(self, dir_id: int, name: str) -> None:
        if self._shadowed(dir_id, name):
            raise NfsError(NfsStatus.NOTDIR, name)
        await self._inner.rmdir(dir_id, name)

    async def rename(self, from_dir: int, from_name: str, to_dir: int, to_name: str) -> None:
        if self._shadowed(from_dir, from_name) or self._shadowed(to_dir, to_name):
            raise NfsError(NfsStatus.ACCES, "flat disks cannot be renamed")
        await self._inner.rename(from_dir, from_name, to_dir, to_name)

    async def readdir(self, dir_id: int, cookie: int, max_entries: int) -> DirPage:
        if dir_id != self.root_id:
            if dir_id >= VIRTUAL_ID_BASE:
                self._virtual(dir_id)
                raise NfsError(NfsStatus.NOTDIR)
            return await self._inner.readdir(dir_id, cookie, max_entries)
        entries: list[DirEntry] = []
        verifier = 0
        if cookie < _VIRTUAL_COOKIE_BASE:
            page = await self._inner.readdir(dir_id, cookie, max_entries)
            verifier = page.verifier
            entries.extend(e for e in page.entries if not self._shadowed(dir_id, e.name))
            if not page.eof:
                return DirPage(entries, False, verifier)
            start = 0
        else:
            start = cookie - _VIRTUAL_COOKIE_BASE
        for i in range(start, len(self._names)):
            if len(entries) >= max_entries:
                return DirPage(entries, False, verifier)
            fid = self._ids[self._names[i]]
            if fid not in self._removed:
                entries.append(DirEntry(self._names[i], fid, _VIRTUAL_COOKIE_BASE + i + 1))
        return DirPage(entries, True, verifier)

    async def fsstat(self) -> FsStat:
        return await self._inner.fsstat()

    async def aclose(self) -> None:
        try:
            for disk in self._disks.values():
                await disk.aclose()
        finally:
            await self._inner.aclose()
