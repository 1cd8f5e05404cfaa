"""The session rule across processes: one lock file per VM, one holder record per open session.

Two processes (two notebooks, the CLI and an embedding product) that share a job results folder
must not run a live recovery and a live browse of the same VM at once. Each VM gets a lock file
``<job_results_dir>/sessions/<name>-<hash>.lock``: a live browse holds a shared ``flock`` on it,
a live recovery an exclusive one, always non-blocking, so a conflict is refused at once. The
kernel drops the locks of a process that dies, even by SIGKILL: nothing stale can block a VM.

``flock`` locks belong to an open file description, not to a process, so two ``SessionFiles``
in one process exclude each other exactly as two processes do. The descriptors are close-on-exec;
a child made by a bare ``fork()`` (no exec) inherits them and keeps the lock while it lives.

Next to the lock, each session writes a holder record (``<name>-<hash>.<token>.holder``: owner,
kind, pid, host) that it keeps locked while it lives, so a refused caller can say who holds the
VM and skip the records left behind by a process that died. Records are advice for messages;
the lock file alone decides. Lock files are never removed (removing a lock file races with
someone opening it); records are removed on release, and those of dead processes by the next
session opened (``sweep_dead``), so killed processes leave no growing residue.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import time
from pathlib import Path

import attrs

from liverecovery.errors import BackendError, ConcurrentSessionError

__all__ = ["FileSession", "SessionFiles", "SessionHolder", "SessionKind", "lock_key"]

_READABLE = 32
_RECORD_MAX = 4096
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


class SessionKind(enum.StrEnum):
    RECOVERY = "live recovery"
    BROWSE = "live browse"


def lock_key(vm: str) -> str:
    """A file-name-safe key for ``vm``: a readable prefix and a hash of the whole name, so two
    names that read alike (``a/b`` and ``a_b``) never share a lock."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", vm)[:_READABLE] or "_"
    digest = hashlib.sha256(vm.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{readable}-{digest}"


@attrs.frozen
class SessionHolder:
    """Who holds a session, as its holder record says."""

    owner: str
    kind: SessionKind
    pid: int
    host: str

    def describe(self) -> str:
        return f"{self.owner}, pid {self.pid} on {self.host}"


def _flock(fd: int, kind: SessionKind) -> bool:
    """Take the lock for ``kind`` without waiting; False when another holder conflicts."""
    mode = fcntl.LOCK_EX if kind is SessionKind.RECOVERY else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _os_error(path: Path, exc: OSError) -> BackendError:
    return BackendError(
        f"cannot use the session lock {path}: {exc.strerror or exc}", operation="session lock"
    )


@attrs.define(eq=False)
class FileSession:
    """One open session: the VM's lock file (locked) and this session's holder record."""

    files: SessionFiles
    vm: str
    kind: SessionKind
    owner: str
    _lock_fd: int
    _record_fd: int
    _record_path: Path
    closed: bool = False

    def convert(self, kind: SessionKind) -> None:
        """Change this session's kind (the same owner asking again for the other kind).

        Linux drops the old lock when a conversion is refused; it is taken back when it can
        be. If it cannot (someone took the VM in between), the session is closed.

        :raises ConcurrentSessionError: another holder conflicts with ``kind``.
        """
        if kind is self.kind:
            return
        path = self.files.lock_path(self.vm)
        try:
            if _flock(self._lock_fd, kind):
                self.kind = kind
                self._rewrite_record()
                return
            kept = _flock(self._lock_fd, self.kind)
            refused = self.files.conflict(self.vm, kind, mine=self._record_path)
            if not kept:
                self.close()
                refused.add_note(f"the {self.kind} of {self.owner} was lost on the way")
        except OSError as exc:
            self.close()
            raise _os_error(path, exc) from exc
        raise refused

    def _rewrite_record(self) -> None:
        data = self.files.record_bytes(self.vm, self.kind, self.owner)
        os.ftruncate(self._record_fd, 0)
        os.pwrite(self._record_fd, data, 0)

    def close(self) -> None:
        """Remove the holder record and unlock (closing the descriptors drops the locks)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record_path)
        os.close(self._record_fd)
        os.close(self._lock_fd)


@attrs.define
class SessionFiles:
    """The lock directory of one job results folder (created owner-only, 0o700)."""

    directory: Path = attrs.field(converter=Path)

    def lock_path(self, vm: str) -> Path:
        return self.directory / f"{lock_key(vm)}.lock"

    def open(self, vm: str, kind: SessionKind, owner: str) -> FileSession:
        """Open a session on ``vm`` for ``owner``, or refuse it at once.

        :raises ConcurrentSessionError: a session in another process (or another
            ``SessionFiles``) conflicts; the message names the VM and who holds it.
        :raises BackendError: the lock directory or file cannot be used.
        """
        path = self.lock_path(vm)
        try:
            self._ensure_directory()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _FLAGS, 0o600)
        except OSError as exc:
            raise _os_error(path, exc) from exc
        try:
            if not _flock(fd, kind):
                raise self.conflict(vm, kind)
            if kind is SessionKind.RECOVERY:
                self._sweep(vm)  # nobody else holds the VM: every record left is stale
            self.sweep_dead()  # records of dead processes, on every VM
            record_fd, record_path = self._write_record(vm, kind, owner)
        except OSError as exc:
            os.close(fd)
            raise _os_error(path, exc) from exc
        except BaseException:
            os.close(fd)
            raise
        return FileSession(self, vm, kind, owner, fd, record_fd, record_path)

    def holders(self, vm: str, *, mine: Path | None = None) -> list[SessionHolder]:
        """The live holders of sessions on ``vm`` (records of dead processes are skipped, and
        ``mine``, the asker's own record)."""
        found: list[SessionHolder] = []
        for path in sorted(self.directory.glob(f"{lock_key(vm)}.*.holder")):
            if path == mine:
                continue
            holder = _live_record(path)
            if holder is not None:
                found.append(holder)
        return found

    def conflict(
        self, vm: str, kind: SessionKind, *, mine: Path | None = None
    ) -> ConcurrentSessionError:
        """The error for a refused ``kind`` session on ``vm``, naming the holders found."""
        holders = [
            h
            for h in self.holders(vm, mine=mine)
            if kind is SessionKind.RECOVERY or h.kind is SessionKind.RECOVERY
        ]
        described = tuple(f"{h.kind}: {h.describe()}" for h in holders)
        if holders:
            parts = []
            for other in (SessionKind.RECOVERY, SessionKind.BROWSE):
                who = "; ".join(h.describe() for h in holders if h.kind is other)
                if who:
                    parts.append(f"a {other} of it is running ({who})")
            running = " and ".join(parts)
        elif kind is SessionKind.BROWSE:
            running = f"a {SessionKind.RECOVERY} of it is running"
        else:
            running = f"a {SessionKind.RECOVERY} or {SessionKind.BROWSE} of it is running"
        return ConcurrentSessionError(
            f"cannot start a {kind} of VM {vm!r}: {running} in another process "
            f"(lock {self.lock_path(vm)})",
            vm=vm,
            holders=described,
        )

    def record_bytes(self, vm: str, kind: SessionKind, owner: str) -> bytes:
        record = {
            "vm": vm,
            "kind": kind.value,
            "owner": owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        return json.dumps(record).encode()[:_RECORD_MAX]

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            os.chmod(self.directory, 0o700)

    def _write_record(self, vm: str, kind: SessionKind, owner: str) -> tuple[int, Path]:
        """Write the record under a temporary name, lock it, then rename it into place, so a
        reader never sees a record that is not locked by a live writer."""
        stem = f"{lock_key(vm)}.{secrets.token_hex(8)}"
        tmp, final = self.directory / f"{stem}.tmp", self.directory / f"{stem}.holder"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: never contended
            os.write(fd, self.record_bytes(vm, kind, owner))
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd, final

    def live_owners(self) -> set[str]:
        """The owners (job ids, browse ids) of every live session, on any VM."""
        owners: set[str] = set()
        for path in sorted(self.directory.glob("*.holder")):
            holder = _live_record(path)
            if holder is not None:
                owners.add(holder.owner)
        return owners

    def sweep_dead(self, *, tmp_age_s: float = 60.0) -> int:
        """Remove the holder records of processes that died (killed ones never release), on
        every VM; a record its writer still holds is never touched. Half-written ``.tmp``
        records are removed once older than ``tmp_age_s`` (a live writer renames its record
        within microseconds). Returns how many were removed."""
        removed = 0
        now = time.time()
        try:
            paths = sorted(self.directory.glob("*.holder")) + sorted(self.directory.glob("*.tmp"))
        except OSError:
            return 0
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | _FLAGS)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer holds it: alive
                if path.suffix == ".tmp" and now - os.fstat(fd).st_mtime < tmp_age_s:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
            finally:
                os.close(fd)
        return removed

    def _sweep(self, vm: str) -> None:
        key = lock_key(vm)
        for pattern in (f"{key}.*.holder", f"{key}.*.tmp"):
            for path in self.directory.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _live_record(path: Path) -> SessionHolder | None:
    """The holder a record names, if its writer still holds it (else it died: None)."""
    try:
        fd = os.open(path, os.O_RDONLY | _FLAGS)
    except OSError:
        return None  # released meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # its writer still holds it: alive
        else:
            return None  # nobody holds it: its process died
        return _parse_record(os.read(fd, _RECORD_MAX))
    finally:
        os.close(fd)


def _parse_record(raw: bytes) -> SessionHolder | None:
    try:
        data = json.loads(raw)
        return SessionHolder(
            owner=str(data["owner"]),
            kind=SessionKind(data["kind"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
        )
    except (ValueError, KeyError, TypeError):
        return None  # torn or foreign: it only ever improves a message
