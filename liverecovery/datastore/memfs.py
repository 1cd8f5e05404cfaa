"""A complete ``Filesystem`` held in memory.

Used where a job's folder needs no backing store (small staged files, tests, embedders' tests).
Writes are "durable" as soon as they are in memory, so every stability level is met at once.
"""

from __future__ import annotations

import time

import anyio.lowlevel
import attrs

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.nfs.filesystem import (
    SERVER_TIME,
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

__all__ = ["MemoryFilesystem"]


@attrs.define
class _Node:
    fileid: int
    type: FileType
    mode: int
    data: bytearray = attrs.field(factory=bytearray)
    """The file's bytes up to the last one written; the rest, up to ``size``, reads as zeros."""
    size: int = 0
    """The file's size: a truncate that extends it allocates nothing."""
    children: dict[str, int] = attrs.field(factory=dict)
    cookies: dict[str, int] = attrs.field(factory=dict)
    next_cookie: int = 1
    target: str = ""
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    verifier: bytes = b""
    atime_ns: int = attrs.field(factory=time.time_ns)
    mtime_ns: int = attrs.field(factory=time.time_ns)
    ctime_ns: int = attrs.field(factory=time.time_ns)


class MemoryFilesystem(Filesystem):
    """A tree of files in memory; ``read_only`` refuses every change with ROFS.

    Files are sparse past their last written byte (a swap file made by a truncate costs
    nothing), and the bytes held in memory are bounded by ``memory_limit``: a WRITE that would
    pass it gets NOSPC, never a ``MemoryError`` (a client's WRITE at a huge offset must not make
    the server allocate it).
    """

    def __init__(
        self,
        *,
        read_only: bool = False,
        capacity: int = 1 << 40,
        memory_limit: int = 1 << 30,
    ) -> None:
        self._nodes: dict[int, _Node] = {1: _Node(1, FileType.DIR, 0o755, nlink=2)}
        self._next_id = 2
        self._read_only = read_only
        self._capacity = capacity
        self._memory_limit = memory_limit
        self._held = 0
        """Bytes held in the files' ``data``."""

    @property
    def root_id(self) -> int:
        return 1

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- helpers for whoever fills the filesystem ---------------------------------------------

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> int:
        """Create (or replace) a file at a ``/``-separated path, creating folders on the way."""
        *dirs, name = [p for p in path.split("/") if p]
        parent = self.root_id
        for d in dirs:
            node = self._nodes[parent]
            if d not in node.children:
                child = self._new(FileType.DIR, 0o755)
                child.nlink = 2
                self._link(node, d, child.fileid)
            parent = node.children[d]
        pnode = self._nodes[parent]
        if name in pnode.children:
            self._set_content(self._nodes[pnode.children[name]], data)
            return pnode.children[name]
        node = self._new(FileType.REG, mode)
        self._set_content(node, data)
        self._link(pnode, name, node.fileid)
        return node.fileid

    def _forget(self, fileid: int) -> None:
        """Drop an unlinked node and the bytes it held."""
        self._held -= len(self._nodes.pop(fileid).data)

    def _set_content(self, node: _Node, data: bytes) -> None:
        self._held += len(data) - len(node.data)
        node.data = bytearray(data)
        node.size = len(data)

    def file_bytes(self, path: str) -> bytes:
        """The content of the file at ``path``. :raises NfsError: NOENT."""
        node = self._nodes[self.root_id]
        for part in (p for p in path.split("/") if p):
            if part not in node.children:
                raise NfsError(NfsStatus.NOENT, path)
            node = self._nodes[node.children[part]]
        return bytes(node.data) + bytes(node.size - len(node.data))

    # -- internals ---------------------------------------------------------------------------

    def _new(self, type_: FileType, mode: int) -> _Node:
        node = _Node(self._next_id, type_, mode)
        self._nodes[node.fileid] = node
        self._next_id += 1
        return node

    def _link(self, parent: _Node, name: str, fileid: int) -> None:
        parent.children[name] = fileid
        parent.cookies[name] = parent.next_cookie
        parent.next_cookie += 1
        parent.mtime_ns = parent.ctime_ns = time.time_ns()

    def _unlink(self, parent: _Node, name: str) -> None:
        del parent.children[name]
        del parent.cookies[name]
        parent.mtime_ns = parent.ctime_ns = time.time_ns()

    def _get(self, fileid: int) -> _Node:
        node = self._nodes.get(fileid)
        if node is None:
            raise NfsError(NfsStatus.STALE, f"file id {fileid}")
        return node

    def _dir(self, fileid: int) -> _Node:
        node = self._get(fileid)
        if node.type is not FileType.DIR:
            raise NfsError(NfsStatus.NOTDIR, f"file id {fileid}")
        return node

    def _writable(self) -> None:
        if self._read_only:
            raise NfsError(NfsStatus.ROFS)

    def _attrs(self, node: _Node) -> FileAttributes:
        size = node.size if node.type is FileType.REG else 4096
        if node.type is FileType.LNK:
            size = len(node.target.encode())
        return FileAttributes(
            type=node.type,
            mode=node.mode,
            nlink=node.nlink,
            uid=node.uid,
            gid=node.gid,
            size=size,
            used=size,
            fileid=node.fileid,
            atime_ns=node.atime_ns,
            mtime_ns=node.mtime_ns,
            ctime_ns=node.ctime_ns,
        )

    def _apply(self, node: _Node, a: SetAttributes) -> None:
        now = time.time_ns()
        if a.mode is not None:
            node.mode = a.mode & 0o7777
        if a.uid is not None:
            node.uid = a.uid
        if a.gid is not None:
            node.gid = a.gid
        if a.size is not None:
            if node.type is not FileType.REG:
                raise NfsError(NfsStatus.INVAL, "size of a non-file")
            if a.size > self._capacity:
                raise NfsError(NfsStatus.FBIG)
            if a.size < len(node.data):
                self._held -= len(node.data) - a.size
                del node.data[a.size :]
            node.size = a.size
            node.mtime_ns = now
        if a.atime_ns is not None:
            node.atime_ns = now if a.atime_ns is SERVER_TIME else int(a.atime_ns)
        if a.mtime_ns is not None:
            node.mtime_ns = now if a.mtime_ns is SERVER_TIME else int(a.mtime_ns)
        node.ctime_ns = now

    # -- Filesystem --------------------------------------------------------------------------

    async def getattr(self, fileid: int) -> FileAttributes:
        await anyio.lowlevel.checkpoint()
        return self._attrs(self._get(fileid))

    async def setattr(self, fileid: int, attributes: SetAttributes) -> FileAttributes:
        self._writable()
        node = self._get(fileid)
        self._apply(node, attributes)
        await anyio.lowlevel.checkpoint()
        return self._attrs(node)

    async def lookup(self, dir_id: int, name: str) -> int:
        await anyio.lowlevel.checkpoint()
        node = self._dir(dir_id)
        if name == ".":
            return dir_id
        if name not in node.children:
            raise NfsError(NfsStatus.NOENT, name)
        return node.children[name]

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        await anyio.lowlevel.checkpoint()
        node = self._get(fileid)
        if node.type is FileType.DIR:
            raise NfsError(NfsStatus.ISDIR)
        end = min(node.size, offset + max(length, 0))
        if offset >= end:
            return b"", True
        data = bytes(node.data[offset:end])
        if len(data) < end - offset:  # the sparse tail reads as zeros
            data += bytes(end - offset - len(data))
        return data, end >= node.size

    async def write(
        self, fileid: int, offset: int, data: WriteData, stability: Stability
    ) -> Stability:
        self._writable()
        node = self._get(fileid)
        if node.type is not FileType.REG:
            raise NfsError(NfsStatus.ISDIR if node.type is FileType.DIR else NfsStatus.INVAL)
        end = offset + len(data)
        if end > self._capacity:
            raise NfsError(NfsStatus.FBIG)
        if end > len(node.data) and data:
            grow = end - len(node.data)
            if self._held + grow > self._memory_limit:
                raise NfsError(NfsStatus.NOSPC, f"memory filesystem full ({self._held} bytes held)")
            node.data.extend(bytes(grow))
            self._held += grow
        if data:
            node.data[offset:end] = data
            node.size = max(node.size, end)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        await anyio.lowlevel.checkpoint()
        return Stability.FILE_SYNC

    async def commit(self, fileid: int) -> None:
        self._get(fileid)
        await anyio.lowlevel.checkpoint()

    async def create(
        self,
        dir_id: int,
        name: str,
        attributes: SetAttributes,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> int:
        self._writable()
        parent = self._dir(dir_id)
        await anyio.lowlevel.checkpoint()
        existing = parent.children.get(name)
        if existing is not None:
            node = self._nodes[existing]
            if mode is CreateMode.GUARDED:
                raise NfsError(NfsStatus.EXIST, name)
            if mode is CreateMode.EXCLUSIVE:
                if node.verifier != verifier:
                    raise NfsError(NfsStatus.EXIST, name)
                return existing
            if node.type is not FileType.REG:
                raise NfsError(NfsStatus.EXIST, name)
            self._apply(node, attributes)
            return existing
        node = self._new(FileType.REG, 0o644)
        if mode is CreateMode.EXCLUSIVE:
            node.verifier = verifier
        else:
            self._apply(node, attributes)
        self._link(parent, name, node.fileid)
        return node.fileid

    async def mkdir(self, dir_id: int, name: str, attributes: SetAttributes) -> int:
        self._writable()
        parent = self._dir(dir_id)
        await anyio.lowlevel.checkpoint()
        if name in parent.children:
            raise NfsError(NfsStatus.EXIST, name)
        node = self._new(FileType.DIR, 0o755)
        node.nlink = 2
        self._apply(node, attributes)
        self._link(parent, name, node.fileid)
        parent.nlink += 1
        return node.fileid

    async def symlink(self, dir_id: int, name: str, target: str, attributes: SetAttributes) -> int:
        self._writable()
        parent = self._dir(dir_id)
        await anyio.lowlevel.checkpoint()
        if name in parent.children:
            raise NfsError(NfsStatus.EXIST, name)
        node = self._new(FileType.LNK, 0o777)
        node.target = target
        self._link(parent, name, node.fileid)
        return node.fileid

    async def readlink(self, fileid: int) -> str:
        await anyio.lowlevel.checkpoint()
        node = self._get(fileid)
        if node.type is not FileType.LNK:
            raise NfsError(NfsStatus.INVAL, "not a symbolic link")
        return node.target

    async def link(self, fileid: int, dir_id: int, name: str) -> None:
        self._writable()
        await anyio.lowlevel.checkpoint()
        raise NfsError(NfsStatus.NOTSUPP, "hard links")

    async def remove(self, dir_id: int, name: str) -> None:
        self._writable()
        parent = self._dir(dir_id)
        await anyio.lowlevel.checkpoint()
        fileid = parent.children.get(name)
        if fileid is None:
            raise NfsError(NfsStatus.NOENT, name)
        if self._nodes[fileid].type is FileType.DIR:
            raise NfsError(NfsStatus.ISDIR, name)
        self._unlink(parent, name)
        self._forget(fileid)

    async def rmdir(self, dir_id: int, name: str) -> None:
        self._writable()
        parent = self._dir(dir_id)
        await anyio.lowlevel.checkpoint()
        fileid = parent.children.get(name)
        if fileid is None:
            raise NfsError(NfsStatus.NOENT, name)
        node = self._nodes[fileid]
        if node.type is not FileType.DIR:
            raise NfsError(NfsStatus.NOTDIR, name)
        if node.children:
            raise NfsError(NfsStatus.NOTEMPTY, name)
        self._unlink(parent, name)
        parent.nlink -= 1
        self._forget(fileid)

    async def rename(self, from_dir: int, from_name: str, to_dir: int, to_name: str) -> None:
        self._writable()
        src, dst = self._dir(from_dir), self._dir(to_dir)
        await anyio.lowlevel.checkpoint()
        fileid = src.children.get(from_name)
        if fileid is None:
            raise NfsError(NfsStatus.NOENT, from_name)
        if src is dst and from_name == to_name:
            return
        target = dst.children.get(to_name)
        if target is not None:
            tnode, node = self._nodes[target], self._nodes[fileid]
            if (tnode.type is FileType.DIR) != (node.type is FileType.DIR):
                raise NfsError(NfsStatus.ISDIR if tnode.type is FileType.DIR else NfsStatus.NOTDIR)
            if tnode.children:
                raise NfsError(NfsStatus.NOTEMPTY, to_name)
            self._unlink(dst, to_name)
            self._forget(target)
        self._unlink(src, from_name)
        self._link(dst, to_name, fileid)

    async def readdir(self, dir_id: int, cookie: int, max_entries: int) -> DirPage:
        await anyio.lowlevel.checkpoint()
        node = self._dir(dir_id)
        entries = sorted(
            (DirEntry(name, fid, node.cookies[name]) for name, fid in node.children.items()),
            key=lambda e: e.cookie,
        )
        after = [e for e in entries if e.cookie > cookie]
        page = after[: max(0, max_entries)]
        return DirPage(entries=page, eof=len(page) == len(after))

    async def fsstat(self) -> FsStat:
        await anyio.lowlevel.checkpoint()
        used = sum(n.size for n in self._nodes.values())
        free = max(0, self._capacity - used)
        return FsStat(
            self._capacity,
            free,
            free,
            1 << 20,
            (1 << 20) - len(self._nodes),
            (1 << 20) - len(self._nodes),
        )

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
