"""The published VM folder's own files (the rewritten .vmx, descriptors, nvram and every file
the ESX host creates: ``vmware.log``, the swap file, ``.lck-*``) written through to the shared
state, with file ids that are the same on every node, and rebuilt by a node that takes over.

``StoreBackedFolder`` wraps the ``LocalFilesystem`` of ``<job_results_dir>/jobs/<id>/folder``.
Its file ids are not inode numbers (another node's inodes differ) but ids it hands out itself
(the folder's root 1, files and directories from 2) and keeps in the folder's *index*:
``jobs/<job id>/files/index/<epoch:010d>``, JSON ``{seq, next, entries: {path: {id, type,
size, inc}}}``. The index is written before the reply to every call that changes the names
(CREATE, MKDIR, REMOVE, RMDIR, RENAME) or shrinks a file, so a handle the ESX host holds names
the same file on the next node.

Contents go in 64 KiB blocks, as the overlays do:
``jobs/<job id>/files/<file id>/<inc>/<epoch:010d>/<block:012d>`` holds the bytes of one block
as this owner last made them stable (the last block of a file shorter): a FILE_SYNC or
DATA_SYNC WRITE PUTs the blocks it touched before it returns, UNSTABLE ones at COMMIT. Blocks,
not whole files: the swap file is the size of the VM's memory and sparse (blocks never written
are holes, never sent), and a log line rewrites one block, not the log. A file's size is the
larger of its index ``size`` (set at CREATE and SETATTR) and the end of its last block. A file
that shrinks gets a new incarnation ``inc`` (its blocks below the new size are written again
under it), so bytes beyond the new end never come back.

Opening under epoch ``N`` restores first (``datastore/store_epochs.py``: the newest epoch with
a restored-complete marker, and nothing older), gives ids to files the folder has that the index
does not (the builder's .vmx, descriptors, nvram on the first node), writes the index and every
block into epoch ``N`` and marks ``N`` complete, before the folder is served.

Symbolic and hard links are refused (NOTSUPP): ESXi makes none in a VM folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import attrs

from liverecovery.backends import SharedState
from liverecovery.datastore.store_epochs import (
    EpochWriter,
    complete_epoch,
    job_prefix,
    mark_restored,
    run_limited,
)
from liverecovery.errors import NfsError, NfsStatus, OverlayError
from liverecovery.io.ranges import FileRange
from liverecovery.io.threads import run_sync
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
from liverecovery.nfs.localfs import LocalFilesystem, name_cookie

__all__ = [
    "FILES_PART",
    "FOLDER_BLOCK",
    "FOLDER_ROOT_ID",
    "StoreBackedFolder",
    "files_key",
    "store_backed_folders",
]

FOLDER_ROOT_ID: Final = 1
FOLDER_BLOCK: Final = 64 * 1024
FILES_PART: Final = "files"
"""The part name of a job's folder files in the restored-complete markers."""


def files_key(job_id: str) -> str:
    """The shared-state prefix of one job's folder files."""
    return f"{job_prefix(job_id)}/files"


def _index_key(job_id: str, epoch: int) -> str:
    return f"{files_key(job_id)}/index/{epoch:010d}"


def _blocks_prefix(job_id: str, fileid: int, inc: int) -> str:
    return f"{files_key(job_id)}/{fileid}/{inc}"


@attrs.define
class _Entry:
    id: int
    type: str  # "file" or "dir"
    size: int = 0
    inc: int = 0


def _join(parent: str, name: str) -> str:
    return name if not parent else f"{parent}/{name}"


class StoreBackedFolder(Filesystem):
    """The VM folder ``inner`` with store-kept file ids and contents (see the module)."""

    def __init__(
        self, inner: LocalFilesystem, state: SharedState, *, job_id: str, epoch: int
    ) -> None:
        self.inner = inner
        self.state = state
        self.job_id = job_id
        self.epoch = epoch
        self._writer = EpochWriter(state, epoch)
        self._entries: dict[str, _Entry] = {}
        self._paths: dict[int, str] = {FOLDER_ROOT_ID: ""}
        self._inner_ids: dict[int, int] = {FOLDER_ROOT_ID: inner.root_id}
        self._ids: dict[int, int] = {inner.root_id: FOLDER_ROOT_ID}
        self._next = FOLDER_ROOT_ID + 1
        self._seq = 0
        self._names = anyio.Lock()  # one change of the names (and its index PUT) at a time
        self._locks: dict[tuple[int, int], anyio.Lock] = {}
        self._unsent: dict[int, set[int]] = {}  # file id -> blocks UNSTABLE writes touched

    @property
    def puts(self) -> int:
        """PUTs (blocks and index) this folder sent."""
        return self._writer.puts

    @classmethod
    async def open(
        cls, folder: Path, state: SharedState, *, job_id: str, epoch: int
    ) -> StoreBackedFolder:
        """Restore ``folder`` from the store, adopt it into ``epoch`` and serve it from there.

        :raises OverlayError: the store's index or blocks are not what this module writes.
        """
        self = cls(LocalFilesystem(folder), state, job_id=job_id, epoch=epoch)
        try:
            source = await complete_epoch(state, job_id, FILES_PART, epoch)
            restored = [] if source is None else await self._restore(source)
            fresh = await run_sync(self._adopt_untracked)
            await self._put_index()
            sent = fresh if source == epoch else restored + fresh
            await run_limited([partial(self._send_file, f) for f in sent])
            await mark_restored(state, job_id, FILES_PART, epoch)
        except BaseException:
            await self.inner.aclose()
            raise
        return self

    # -- restore -------------------------------------------------------------------------------

    async def _restore(self, source: int) -> list[int]:
        """Rebuild the folder from ``source``'s index and blocks; the file ids restored."""
        key = _index_key(self.job_id, source)
        got = await self.state.get(key)
        if got is None:
            raise OverlayError(
                f"shared state key {key}: epoch {source} is marked restored but has no index"
            )
        try:
            doc = json.loads(got.data)
            entries = {
                str(path): _Entry(int(e["id"]), str(e["type"]), int(e["size"]), int(e["inc"]))
                for path, e in doc["entries"].items()
            }
            self._next = int(doc["next"])
            self._seq = int(doc["seq"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OverlayError(f"shared state key {key}: not a folder index ({exc})") from None
        for path, entry in entries.items():
            if entry.type not in ("file", "dir") or entry.id <= FOLDER_ROOT_ID:
                raise OverlayError(f"shared state key {key}: bad entry {path!r}")
            if any(p in ("", ".", "..") for p in path.split("/")):
                raise OverlayError(f"shared state key {key}: bad path {path!r}")
        self._entries = entries
        root = self.inner.root
        files: list[int] = []
        for path, entry in sorted(entries.items()):  # parents before their children
            target = root / path
            if entry.type == "dir":
                await run_sync(lambda t=target: t.mkdir(mode=0o700, exist_ok=True))
                continue
            blocks: dict[int, bytes] = {}
            prefix = f"{_blocks_prefix(self.job_id, entry.id, entry.inc)}/{source:010d}"
            for bkey in await self.state.keys(prefix):
                tail = bkey[len(prefix) + 1 :]
                if not tail.isdigit():
                    raise OverlayError(f"shared state key {bkey}: not a file block <block>")
                block = await self.state.get(bkey)
                if block is None:
                    raise OverlayError(f"shared state key {bkey}: listed but gone")
                if len(block.data) > FOLDER_BLOCK:
                    raise OverlayError(f"shared state key {bkey}: longer than a block")
                blocks[int(tail)] = block.data
            size = max([entry.size, *(b * FOLDER_BLOCK + len(d) for b, d in blocks.items())])
            await run_sync(_write_file, target, blocks, size)
            entry.size = size
            files.append(entry.id)
        await run_sync(self._map_inodes)
        return files

    def _map_inodes(self) -> None:
        root = self.inner.root
        for path, entry in self._entries.items():
            ino = os.lstat(root / path).st_ino
            self._paths[entry.id] = path
            self._inner_ids[entry.id] = ino
            self._ids[ino] = entry.id

    def _adopt_untracked(self) -> list[int]:
        """Give ids to what the folder holds that the index does not; the new file ids."""
        fresh: list[int] = []
        root = self.inner.root
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            parent = "" if rel == "." else rel.replace(os.sep, "/")
            for name in sorted([*dirnames, *filenames]):
                path = _join(parent, name)
                if path in self._entries:
                    continue
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISDIR(st.st_mode):
                    kind = "dir"
                elif stat.S_ISREG(st.st_mode):
                    kind = "file"
                else:
                    continue  # not served from the store (never made through NFS here)
                entry = self._track(path, st.st_ino, kind, st.st_size)
                if kind == "file":
                    fresh.append(entry.id)
        return fresh

    def _track(self, path: str, ino: int, kind: str, size: int) -> _Entry:
        entry = _Entry(self._next, kind, size)
        self._next += 1
        self._entries[path] = entry
        self._paths[entry.id] = path
        self._inner_ids[entry.id] = ino
        self._ids[ino] = entry.id
        return entry

    # -- the store -----------------------------------------------------------------------------

    async def _put_index(self) -> None:
        self._seq += 1  # every index's bytes differ: a tag may be a digest of them
        doc = {
            "seq": self._seq,
            "next": self._next,
            "entries": {p: attrs.asdict(e) for p, e in sorted(self._entries.items())},
        }
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        await self._writer.put(_index_key(self.job_id, self.epoch), data)

    async def _send_file(self, fileid: int) -> None:
        path = self._paths.get(fileid)
        if path is None:
            return
        blocks = await run_sync(_data_blocks, self.inner.root / path)
        await self._send(fileid, blocks, skip_holes=True)

    async def _send(self, fileid: int, blocks: Sequence[int], *, skip_holes: bool = False) -> None:
        for block in blocks:
            await self._send_block(fileid, block, skip_holes)

    async def _send_block(self, fileid: int, block: int, skip_holes: bool = False) -> None:
        lock = self._locks.setdefault((fileid, block), anyio.Lock())
        async with lock:  # the read below sees every write that landed before it
            unsent = self._unsent.get(fileid)
            if unsent is not None:
                unsent.discard(block)
            try:
                path = self._paths.get(fileid)
                if path is None:
                    return  # removed meanwhile
                # the incarnation before the bytes: a shrink meanwhile sends every block again
                # under its new one, so these bytes (maybe from before it) go to the old one
                inc = self._entries[path].inc
                data, _ = await self.inner.read(
                    self._inner_ids[fileid], block * FOLDER_BLOCK, FOLDER_BLOCK
                )
                if skip_holes and not any(data):
                    return  # a hole (the swap file): zeros are what a missing block means
                prefix = _blocks_prefix(self.job_id, fileid, inc)
                await self._writer.put(f"{prefix}/{self.epoch:010d}/{block:012d}", data)
            except BaseException:
                self._unsent.setdefault(fileid, set()).add(block)
                raise

    # -- ids -----------------------------------------------------------------------------------

    def _inner(self, fileid: int) -> int:
        ino = self._inner_ids.get(fileid)
        if ino is None:
            raise NfsError(NfsStatus.STALE, f"file id {fileid} no longer exists")
        return ino

    async def _stable(self, ino: int, dir_id: int, name: str) -> int:
        """The id of the inner file ``ino`` (``name`` in ``dir_id``), given one if new (a file
        that appeared behind the server's back)."""
        fid = self._ids.get(ino)
        if fid is not None:
            return fid
        async with self._names:
            fid = self._ids.get(ino)
            if fid is not None:
                return fid
            a = await self.inner.getattr(ino)
            kind = "dir" if a.type == FileType.DIR else "file"
            entry = self._track(_join(self._paths[dir_id], name), ino, kind, a.size)
            await self._put_index()
            if kind == "file":
                await self._send_file(entry.id)
            return entry.id

    def _forget(self, path: str) -> None:
        for p in [q for q in self._entries if q == path or q.startswith(path + "/")]:
            entry = self._entries.pop(p)
            self._paths.pop(entry.id, None)
            ino = self._inner_ids.pop(entry.id, None)
            if ino is not None and self._ids.get(ino) == entry.id:
                del self._ids[ino]
            self._unsent.pop(entry.id, None)

    def _attrs(self, fileid: int, a: FileAttributes) -> FileAttributes:
        return attrs.evolve(a, fileid=fileid)

    # -- Filesystem ----------------------------------------------------------------------------

    @property
    def root_id(self) -> int:
        return FOLDER_ROOT_ID

    @property
    def read_only(self) -> bool:
        return self.inner.read_only

    async def getattr(self, fileid: int) -> FileAttributes:
        return self._attrs(fileid, await self.inner.getattr(self._inner(fileid)))

    async def setattr(self, fileid: int, attributes: SetAttributes) -> FileAttributes:
        ino = self._inner(fileid)
        if attributes.size is None:
            return self._attrs(fileid, await self.inner.setattr(ino, attributes))
        async with self._names:
            before = (await self.inner.getattr(ino)).size
            got = await self.inner.setattr(ino, attributes)
            await self._resized(fileid, before, attributes.size)
        return self._attrs(fileid, got)

    async def _resized(self, fileid: int, before: int, size: int) -> None:
        """Record a file's new size (the names lock held); a shrink starts an incarnation."""
        path = self._paths.get(fileid)
        if path is None:
            return
        entry = self._entries[path]
        if size < before or size < entry.size:
            entry.inc += 1
            entry.size = size
            self._unsent.pop(fileid, None)
            await self._send_file(fileid)
        entry.size = max(entry.size, size)
        await self._put_index()

    async def lookup(self, dir_id: int, name: str) -> int:
        ino = await self.inner.lookup(self._inner(dir_id), name)
        if name in (".", ".."):
            return self._ids.get(ino, FOLDER_ROOT_ID)
        return await self._stable(ino, dir_id, name)

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        return await self.inner.read(self._inner(fileid), offset, length)

    async def read_file_range(self, fileid: int, offset: int, length: int) -> FileRange | None:
        return await self.inner.read_file_range(self._inner(fileid), offset, length)

    async def write(
        self, fileid: int, offset: int, data: WriteData, stability: Stability
    ) -> Stability:
        """Write locally; a stable write's blocks are in the store before this returns."""
        done = await self.inner.write(self._inner(fileid), offset, data, stability)
        if not len(data):
            return done
        blocks = range(offset // FOLDER_BLOCK, (offset + len(data) - 1) // FOLDER_BLOCK + 1)
        if done == Stability.UNSTABLE:
            self._unsent.setdefault(fileid, set()).update(blocks)
        else:
            await self._send(fileid, blocks)
        return done

    async def commit(self, fileid: int) -> None:
        await self.inner.commit(self._inner(fileid))
        await self._send(fileid, sorted(self._unsent.get(fileid, ())))

    async def create(
        self,
        dir_id: int,
        name: str,
        attributes: SetAttributes,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> int:
        parent = self._inner(dir_id)
        async with self._names:
            before: int | None = None
            path = _join(self._paths[dir_id], name)
            existing = self._entries.get(path)
            if existing is not None:
                before = (await self.getattr(existing.id)).size
            ino = await self.inner.create(parent, name, attributes, mode, verifier)
            fid = self._ids.get(ino)
            if fid is None:
                size = (await self.inner.getattr(ino)).size
                if existing is not None:  # replaced behind our back: a new file
                    self._forget(path)
                fid = self._track(path, ino, "file", size).id
                await self._put_index()
            elif attributes.size is not None and before is not None:
                await self._resized(fid, before, attributes.size)
            return fid

    async def mkdir(self, dir_id: int, name: str, attributes: SetAttributes) -> int:
        parent = self._inner(dir_id)
        async with self._names:
            ino = await self.inner.mkdir(parent, name, attributes)
            fid = self._track(_join(self._paths[dir_id], name), ino, "dir", 0).id
            await self._put_index()
            return fid

    async def symlink(self, dir_id: int, name: str, target: str, attributes: SetAttributes) -> int:
        raise NfsError(NfsStatus.NOTSUPP, "symbolic links in a store-backed VM folder")

    async def readlink(self, fileid: int) -> str:
        return await self.inner.readlink(self._inner(fileid))

    async def link(self, fileid: int, dir_id: int, name: str) -> None:
        raise NfsError(NfsStatus.NOTSUPP, "hard links in a store-backed VM folder")

    async def remove(self, dir_id: int, name: str) -> None:
        parent = self._inner(dir_id)
        async with self._names:
            await self.inner.remove(parent, name)
            self._forget(_join(self._paths[dir_id], name))
            await self._put_index()

    async def rmdir(self, dir_id: int, name: str) -> None:
        parent = self._inner(dir_id)
        async with self._names:
            await self.inner.rmdir(parent, name)
            self._forget(_join(self._paths[dir_id], name))
            await self._put_index()

    async def rename(self, from_dir: int, from_name: str, to_dir: int, to_name: str) -> None:
        src_parent, dst_parent = self._inner(from_dir), self._inner(to_dir)
        async with self._names:
            await self.inner.rename(src_parent, from_name, dst_parent, to_name)
            src = _join(self._paths[from_dir], from_name)
            dst = _join(self._paths[to_dir], to_name)
            if src == dst:
                return
            moved = {p: e for p, e in self._entries.items() if p == src or p.startswith(src + "/")}
            if dst in self._entries and dst not in moved:
                self._forget(dst)
            for p, entry in moved.items():
                new = dst + p[len(src) :]
                del self._entries[p]
                self._entries[new] = entry
                self._paths[entry.id] = new
            await self._put_index()

    async def readdir(self, dir_id: int, cookie: int, max_entries: int) -> DirPage:
        page = await self.inner.readdir(self._inner(dir_id), cookie, max_entries)
        entries = [
            DirEntry(e.name, await self._stable(e.fileid, dir_id, e.name), e.cookie)
            if e.name not in (".", "..")
            else e
            for e in page.entries
        ]
        return DirPage(entries, page.eof, verifier=name_cookie(str(dir_id)))

    async def fsstat(self) -> FsStat:
        return await self.inner.fsstat()

    async def aclose(self) -> None:
        """Send what UNSTABLE writes left (best effort), then close the local folder."""
        try:
            with contextlib.suppress(Exception):
                for fid in list(self._unsent):
                    await self._send(fid, sorted(self._unsent.get(fid, ())))
        finally:
            await self.inner.aclose()


def _data_blocks(path: Path) -> list[int]:
    """The blocks of ``path`` that hold data (``SEEK_DATA``/``SEEK_HOLE``: the swap file is
    gigabytes of hole, never read)."""
    blocks: list[int] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return blocks
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            first, last = start // FOLDER_BLOCK, (end - 1) // FOLDER_BLOCK
            blocks.extend(b for b in range(first, last + 1) if not blocks or b > blocks[-1])
            offset = end
    finally:
        os.close(fd)
    return blocks


def _write_file(path: Path, blocks: dict[int, bytes], size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        for block, data in sorted(blocks.items()):
            os.pwrite(fd, data, block * FOLDER_BLOCK)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def store_backed_folders(
    state: SharedState, epoch: int
) -> Callable[[Path, str], Awaitable[Filesystem]]:
    """A folder factory for ``FreBuilder``: each job's VM folder
    (``<job_results_dir>/jobs/<job id>/folder``) is rebuilt from the store and written through
    to it under ``epoch`` (the lease epoch this node serves under)."""

    async def open_folder(folder: Path, job_id: str) -> Filesystem:
        return await StoreBackedFolder.open(folder, state, job_id=job_id, epoch=epoch)

    return open_folder
