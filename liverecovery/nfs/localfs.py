"""A ``Filesystem`` over a local directory: what ``liverecovery serve`` and the tests export.

File ids are inode numbers (stable across restarts); ids are resolved to paths through a cache,
re-walking the tree when a cached path no longer holds that inode. Symlinks are never followed.
Directory cookies are a hash of the entry's name, so they stay valid while the directory changes
and across restarts. Blocking I/O runs in worker threads, except reads the page cache holds
(``RWF_NOWAIT``) and UNSTABLE writes while they stay fast (``inline_io``); FILE_SYNC/DATA_SYNC
writes and COMMIT fsync, in a worker thread, before returning. Large READs are answered with
``read_file_range`` (overriding the ``Filesystem`` default): the server splices the bytes from the file to the
socket without copying them (``zero_copy``).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import os
import stat
import time
from collections import OrderedDict
from pathlib import Path
from typing import Final, TypeVar

from liverecovery.errors import NfsError, NfsStatus
from liverecovery.io.ranges import FileRange
from liverecovery.io.threads import InlineWrites, on_own_fd, run_read, run_sync, run_write
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
from liverecovery.nfs.names import check_name

__all__ = ["LocalFilesystem"]

_ERRNO_STATUS: Final = {
    errno.EPERM: NfsStatus.PERM,
    errno.ENOENT: NfsStatus.NOENT,
    errno.EIO: NfsStatus.IO,
    errno.ENXIO: NfsStatus.NXIO,
    errno.EACCES: NfsStatus.ACCES,
    errno.EEXIST: NfsStatus.EXIST,
    errno.EXDEV: NfsStatus.XDEV,
    errno.ENODEV: NfsStatus.NODEV,
    errno.ENOTDIR: NfsStatus.NOTDIR,
    errno.EISDIR: NfsStatus.ISDIR,
    errno.EINVAL: NfsStatus.INVAL,
    errno.EFBIG: NfsStatus.FBIG,
    errno.ENOSPC: NfsStatus.NOSPC,
    errno.EROFS: NfsStatus.ROFS,
    errno.EMLINK: NfsStatus.MLINK,
    errno.ENAMETOOLONG: NfsStatus.NAMETOOLONG,
    errno.ENOTEMPTY: NfsStatus.NOTEMPTY,
    errno.EDQUOT: NfsStatus.DQUOT,
    errno.ESTALE: NfsStatus.STALE,
    errno.ELOOP: NfsStatus.INVAL,
}
_TYPES: Final = {
    stat.S_IFREG: FileType.REG,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFBLK: FileType.BLK,
    stat.S_IFCHR: FileType.CHR,
    stat.S_IFLNK: FileType.LNK,
    stat.S_IFSOCK: FileType.SOCK,
    stat.S_IFIFO: FileType.FIFO,
}
_T = TypeVar("_T")
_MAX_OPEN: Final = 128
_NOWAIT: Final = getattr(os, "RWF_NOWAIT", None)
_INLINE_MAX: Final = 1 << 20
_NS: Final = 1_000_000_000
_INLINE_WRITE_MAX: Final = 1 << 20


def _dup(fd: int) -> int:
    try:
        return os.dup(fd)
    except OSError as exc:
        raise _nfs_error(exc, "dup") from None


def _nfs_error(exc: OSError, where: str) -> NfsError:
    status = _ERRNO_STATUS.get(exc.errno or 0, NfsStatus.IO)
    return NfsError(status, f"{where}: {exc.strerror}")


def _attributes(st: os.stat_result) -> FileAttributes:
    return FileAttributes(
        type=_TYPES.get(stat.S_IFMT(st.st_mode), FileType.REG),
        mode=stat.S_IMODE(st.st_mode),
        nlink=st.st_nlink,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        used=st.st_blocks * 512,
        fileid=st.st_ino,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )


def name_cookie(name: str) -> int:
    """A directory cookie derived from the name: stable, non-zero, below 2**63."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) | 1


class _Listing:
    """A directory's entries sorted by cookie, valid while the directory's stat is unchanged."""

    __slots__ = ("cookies", "entries", "key")

    def __init__(self, key: tuple[int, ...], entries: list[DirEntry]) -> None:
        self.key = key
        self.entries = entries
        self.cookies = [e.cookie for e in entries]


class LocalFilesystem(Filesystem):
    """Serves the directory ``root``; ``read_only`` refuses every change with ROFS."""

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self._root = os.path.realpath(root)
        st = os.lstat(self._root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self._root} is not a directory")
        self._root_id = st.st_ino
        self._dev = st.st_dev
        self._read_only = read_only
        self._paths: dict[int, str] = {self._root_id: self._root}
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._dirty: set[int] = set()
        self._inline = InlineWrites(_INLINE_WRITE_MAX)
        self._listings: OrderedDict[int, _Listing] = OrderedDict()

    @property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def root_id(self) -> int:
        return self._root_id

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- id <-> path ------------------------------------------------------------------------

    def _path(self, fileid: int) -> str:
        path = self._paths.get(fileid)
        if path is not None:
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is not None and st.st_ino == fileid and st.st_dev == self._dev:
                return path
            del self._paths[fileid]
        found = self._search(fileid)
        if found is None:
            raise NfsError(NfsStatus.STALE, f"file id {fileid} no longer exists")
        return found

    def _search(self, fileid: int) -> str | None:
        """Walk the tree for an inode (after a restart or an outside rename); caches what it sees."""
        for dirpath, dirnames, filenames in os.walk(self._root):
            for name in (*dirnames, *filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if st.st_dev != self._dev:
                    continue
                self._paths.setdefault(st.st_ino, full)
                if st.st_ino == fileid:
                    self._paths[fileid] = full
                    return full
        return None

    def _dir_path(self, dir_id: int) -> str:
        path = self._path(dir_id)
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NfsError(NfsStatus.NOTDIR, f"file id {dir_id} is not a directory")
        return path

    def _child(self, dir_id: int, name: str) -> str:
        check_name(name)
        return os.path.join(self._dir_path(dir_id), name)

    def _remember(self, path: str) -> int:
        st = os.lstat(path)
        self._paths[st.st_ino] = path
        return st.st_ino

    def _writable(self) -> None:
        if self._read_only:
            raise NfsError(NfsStatus.ROFS, "read-only filesystem")

    def _forget_listing(self, dir_path: str) -> None:
        with contextlib.suppress(OSError):
            self._listings.pop(os.lstat(dir_path).st_ino, None)

    # -- open files -------------------------------------------------------------------------

    def _fd(self, fileid: int) -> int:
        fd = self._fds.get(fileid)
        if fd is not None:
            self._fds.move_to_end(fileid)
            return fd
        path = self._path(fileid)
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_RDONLY if self._read_only else os.O_RDWR)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NfsError(NfsStatus.INVAL, f"file id {fileid} is a symlink") from None
            if exc.errno == errno.EISDIR:
                raise NfsError(NfsStatus.ISDIR, f"file id {fileid} is a directory") from None
            raise _nfs_error(exc, path) from None
        if os.fstat(fd).st_ino != fileid:
            os.close(fd)
            raise NfsError(NfsStatus.STALE, f"file id {fileid} was replaced")
        self._fds[fileid] = fd
        while len(self._fds) > _MAX_OPEN:
            old_id, old_fd = self._fds.popitem(last=False)
            self._close(old_id, old_fd)
        return fd

    def _close(self, fileid: int, fd: int) -> None:
        try:
            if fileid in self._dirty:
                os.fsync(fd)
                self._dirty.discard(fileid)
        finally:
            os.close(fd)

    def _drop_fd(self, fileid: int) -> None:
        fd = self._fds.pop(fileid, None)
        if fd is not None:
            self._close(fileid, fd)

    # -- Filesystem -------------------------------------------------------------------------

    async def getattr(self, fileid: int) -> FileAttributes:
        return self.getattr_inline(fileid)

    def getattr_inline(self, fileid: int) -> FileAttributes:
        """``getattr`` without awaiting (an ``fstat`` or ``lstat``: the server calls it inline)."""
        fd = self._fds.get(fileid)
        try:
            if fd is not None:
                return _attributes(os.fstat(fd))
            st = os.lstat(self._path(fileid))
        except OSError as exc:
            raise _nfs_error(exc, f"file id {fileid}") from None
        if st.st_ino != fileid:
            raise NfsError(NfsStatus.STALE, f"file id {fileid} was replaced")
        return _attributes(st)

    async def setattr(self, fileid: int, attributes: SetAttributes) -> FileAttributes:
        self._writable()
        return await run_sync(self._setattr, fileid, attributes)

    def _setattr(self, fileid: int, a: SetAttributes) -> FileAttributes:
        path = self._path(fileid)
        try:
            st = os.lstat(path)
            if a.mode is not None and not stat.S_ISLNK(st.st_mode):
                os.chmod(path, a.mode & 0o7777)
            if a.uid is not None or a.gid is not None:
                os.lchown(path, -1 if a.uid is None else a.uid, -1 if a.gid is None else a.gid)
            if a.size is not None:
                if not stat.S_ISREG(st.st_mode):
                    raise NfsError(NfsStatus.INVAL, "size can only be set on a regular file")
                # Its own descriptor: this runs in a worker thread, and the kept ones belong
                # to the event loop.
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    if os.fstat(fd).st_ino != fileid:
                        raise NfsError(NfsStatus.STALE, f"file id {fileid} was replaced")
                    os.ftruncate(fd, a.size)
                finally:
                    os.close(fd)
            if a.atime_ns is not None or a.mtime_ns is not None:
                now = time.time_ns()
                cur = os.lstat(path)

                def pick(v: object, current: int) -> int:
                    if v is None:
                        return current
                    return now if v is SERVER_TIME else int(v)  # type: ignore[call-overload]

                times = (pick(a.atime_ns, cur.st_atime_ns), pick(a.mtime_ns, cur.st_mtime_ns))
                os.utime(path, ns=times, follow_symlinks=False)
            return _attributes(os.lstat(path))
        except OSError as exc:
            raise _nfs_error(exc, path) from None

    async def lookup(self, dir_id: int, name: str) -> int:
        check_name(name, allow_dots=True)
        dir_path = self._dir_path(dir_id)
        if name == ".":
            return dir_id
        if name == "..":
            if dir_id == self._root_id:
                return dir_id
            return self._remember(os.path.dirname(dir_path))
        try:
            return self._remember(os.path.join(dir_path, name))
        except OSError as exc:
            raise _nfs_error(exc, name) from None

    async def read(self, fileid: int, offset: int, length: int) -> tuple[bytes, bool]:
        got = self.read_inline(fileid, offset, length)
        if got is not None:
            return got  # type: ignore[return-value]  # a bytearray: bytes to every reader
        return await run_read(on_own_fd, self._read, _dup(self._fd(fileid)), offset, length)

    def read_inline(self, fileid: int, offset: int, length: int) -> tuple[bytearray, bool] | None:
        """A read of data already in the page cache, copied inline (memory speed); None when it
        would wait for the disk (then ``read`` pays for a worker thread)."""
        fd = self._fd(fileid)
        if _NOWAIT is None or length > _INLINE_MAX:
            return None
        try:
            size = os.fstat(fd).st_size
            want = max(0, min(length, size - offset))
            if want == 0:
                return bytearray(), offset >= size
            buf = bytearray(want)
            if os.preadv(fd, [buf], offset, _NOWAIT) == want:
                return buf, offset + want >= size
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise _nfs_error(exc, "read") from None
        return None

    async def read_file_range(self, fileid: int, offset: int, length: int) -> FileRange | None:
        """The READ's bytes as a range of the file (a duplicate descriptor), for splicing;
        None at or past end of file (``read`` answers those)."""
        fd = self._fd(fileid)
        try:
            st = os.fstat(fd)
            want = min(length, st.st_size - offset)
            if want <= 0 or not stat.S_ISREG(st.st_mode):
                return None
            return FileRange(os.dup(fd), offset, want)
        except OSError as exc:
            raise _nfs_error(exc, "read") from None

    @staticmethod
    def _read(fd: int, offset: int, length: int) -> tuple[bytes, bool]:
        try:
            data = os.pread(fd, length, offset)
            if 0 < len(data) < length:
                parts = [data]
                got = len(data)
                while got < length:
                    more = os.pread(fd, length - got, offset + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise _nfs_error(exc, "read") from None
        return data, offset + len(data) >= size

    async def write(
        self, fileid: int, offset: int, data: WriteData, stability: Stability
    ) -> Stability:
        self._writable()
        fd = self._fd(fileid)
        if stability != Stability.UNSTABLE:
            await run_write(on_own_fd, self._write, _dup(fd), offset, data, stability)
            return stability
        self._dirty.add(fileid)
        if self._inline.allowed(len(data)):
            # An UNSTABLE write only copies into the page cache (a COMMIT makes it durable).
            self._inline.run(self._write, fd, offset, data, stability)
            return stability
        await run_write(on_own_fd, self._write, _dup(fd), offset, data, stability)
        return stability

    @staticmethod
    def _write(fd: int, offset: int, data: WriteData, stability: Stability) -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n
            if stability == Stability.FILE_SYNC:
                os.fsync(fd)
            elif stability == Stability.DATA_SYNC:
                os.fdatasync(fd)
        except OSError as exc:
            raise _nfs_error(exc, "write") from None

    async def commit(self, fileid: int) -> None:
        if self._read_only:
            return
        fd = self._fd(fileid)
        await run_write(on_own_fd, os.fsync, _dup(fd))
        self._dirty.discard(fileid)

    async def create(
        self,
        dir_id: int,
        name: str,
        attributes: SetAttributes,
        mode: CreateMode = CreateMode.UNCHECKED,
        verifier: bytes = b"",
    ) -> int:
        self._writable()
        path = self._child(dir_id, name)
        return await run_sync(self._create, path, attributes, mode, verifier)

    def _create(self, path: str, a: SetAttributes, mode: CreateMode, verifier: bytes) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        if mode != CreateMode.UNCHECKED:
            flags |= os.O_EXCL
        perm = 0o644 if a.mode is None else a.mode & 0o7777
        try:
            fd = os.open(path, flags, perm)
        except FileExistsError:
            if mode == CreateMode.EXCLUSIVE:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and self._verifier_times(verifier) == (
                    st.st_atime_ns,
                    st.st_mtime_ns,
                ):
                    return self._remember(path)
            raise NfsError(NfsStatus.EXIST, os.path.basename(path)) from None
        except OSError as exc:
            raise _nfs_error(exc, path) from None
        try:
            if mode == CreateMode.EXCLUSIVE:
                # The verifier is kept in atime/mtime, as knfsd does; the client then SETATTRs.
                os.utime(fd, ns=self._verifier_times(verifier))
            else:
                if a.size is not None:
                    os.ftruncate(fd, a.size)
                if a.uid is not None or a.gid is not None:
                    os.fchown(fd, -1 if a.uid is None else a.uid, -1 if a.gid is None else a.gid)
        except OSError as exc:
            raise _nfs_error(exc, path) from None
        finally:
            os.close(fd)
        self._forget_listing(os.path.dirname(path))
        return self._remember(path)

    @staticmethod
    def _verifier_times(verifier: bytes) -> tuple[int, int]:
        v = verifier.ljust(8, b"\0")
        return int.from_bytes(v[:4], "big") * _NS, int.from_bytes(v[4:8], "big") * _NS

    async def mkdir(self, dir_id: int, name: str, attributes: SetAttributes) -> int:
        self._writable()
        path = self._child(dir_id, name)
        try:
            os.mkdir(path, 0o755 if attributes.mode is None else attributes.mode & 0o7777)
        except OSError as exc:
            raise _nfs_error(exc, name) from None
        self._forget_listing(os.path.dirname(path))
        return self._remember(path)

    async def symlink(self, dir_id: int, name: str, target: str, attributes: SetAttributes) -> int:
        self._writable()
        path = self._child(dir_id, name)
        try:
            os.symlink(target, path)
        except OSError as exc:
            raise _nfs_error(exc, name) from None
        self._forget_listing(os.path.dirname(path))
        return self._remember(path)

    async def readlink(self, fileid: int) -> str:
        path = self._path(fileid)
        try:
            return os.readlink(path)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise NfsError(NfsStatus.INVAL, f"file id {fileid} is not a symlink") from None
            raise _nfs_error(exc, path) from None

    async def link(self, fileid: int, dir_id: int, name: str) -> None:
        self._writable()
        src = self._path(fileid)
        dst = self._child(dir_id, name)
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            raise _nfs_error(exc, name) from None
        self._forget_listing(os.path.dirname(dst))

    async def remove(self, dir_id: int, name: str) -> None:
        self._writable()
        path = self._child(dir_id, name)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                raise NfsError(NfsStatus.ISDIR, name)
            self._drop_fd(st.st_ino)
            os.unlink(path)
        except OSError as exc:
            raise _nfs_error(exc, name) from None
        if self._paths.get(st.st_ino) == path:
            del self._paths[st.st_ino]
        self._forget_listing(os.path.dirname(path))

    async def rmdir(self, dir_id: int, name: str) -> None:
        self._writable()
        path = self._child(dir_id, name)
        try:
            ino = os.lstat(path).st_ino
            os.rmdir(path)
        except OSError as exc:
            raise _nfs_error(exc, name) from None
        self._paths.pop(ino, None)
        self._listings.pop(ino, None)
        self._forget_listing(os.path.dirname(path))

    async def rename(self, from_dir: int, from_name: str, to_dir: int, to_name: str) -> None:
        self._writable()
        src = self._child(from_dir, from_name)
        dst = self._child(to_dir, to_name)
        try:
            st = os.lstat(src)
            try:
                replaced: int | None = os.lstat(dst).st_ino
            except FileNotFoundError:
                replaced = None
            if replaced is not None and replaced != st.st_ino:
                self._drop_fd(replaced)
            os.rename(src, dst)
        except OSError as exc:
            raise _nfs_error(exc, f"{from_name} -> {to_name}") from None
        if replaced is not None and replaced != st.st_ino:
            self._paths.pop(replaced, None)
        self._paths[st.st_ino] = dst
        if stat.S_ISDIR(st.st_mode):
            prefix = src + os.sep
            for fid, p in list(self._paths.items()):
                if p.startswith(prefix):
                    self._paths[fid] = dst + p[len(src) :]
        self._forget_listing(os.path.dirname(src))
        self._forget_listing(os.path.dirname(dst))

    async def readdir(self, dir_id: int, cookie: int, max_entries: int) -> DirPage:
        dir_path = self._dir_path(dir_id)
        listing = await run_sync(self._listing, dir_id, dir_path)
        start = bisect.bisect_right(listing.cookies, cookie) if cookie else 0
        end = start + max(max_entries, 0)
        page = listing.entries[start:end]
        for e in page:
            self._paths.setdefault(e.fileid, os.path.join(dir_path, e.name))
        return DirPage(page, end >= len(listing.entries), verifier=name_cookie(str(dir_id)))

    def _listing(self, dir_id: int, dir_path: str) -> _Listing:
        st = os.lstat(dir_path)
        key = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)
        cached = self._listings.get(dir_id)
        if cached is not None and cached.key == key:
            return cached
        entries: dict[int, DirEntry] = {}
        try:
            with os.scandir(dir_path) as it:
                found = sorted((e.name, e.inode()) for e in it)
            for name, ino in found:
                c = name_cookie(name)
                while c in entries:  # a hash collision: deterministic because names are sorted
                    c = (c + 2) & ((1 << 63) - 1) or 1
                entries[c] = DirEntry(name, ino, c)
        except OSError as exc:
            raise _nfs_error(exc, dir_path) from None
        listing = _Listing(key, [entries[c] for c in sorted(entries)])
        self._listings[dir_id] = listing
        while len(self._listings) > 64:
            self._listings.popitem(last=False)
        return listing

    async def fsstat(self) -> FsStat:
        sv = os.statvfs(self._root)
        return FsStat(
            total_bytes=sv.f_blocks * sv.f_frsize,
            free_bytes=sv.f_bfree * sv.f_frsize,
            avail_bytes=sv.f_bavail * sv.f_frsize,
            total_files=sv.f_files,
            free_files=sv.f_ffree,
            avail_files=sv.f_favail,
        )

    async def aclose(self) -> None:
        while self._fds:
            fileid, fd = self._fds.popitem()
            self._close(fileid, fd)
