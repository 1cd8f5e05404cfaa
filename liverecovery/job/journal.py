"""The job journal: every transition and every completed side effect, on disk before the next step.

One append-only file per job (``<job_results_dir>/journal/<job id>.journal``). Each record is
one line ``<crc32 hex> <json>``; it is flushed and fsynced before ``append`` returns, so after a
crash the journal says exactly which side effects happened. A torn or corrupt tail (a crash in
the middle of a write, a flipped bit) is detected by the checksum: reading stops there and says
where, never raises. The passkey is never written: the spec is recorded without it.

An open journal does its file I/O with ``aiofiles`` (asyncio's default thread pool). Each append
and the open/close are shielded from cancellation: a write the pool has started always finishes
before the caller goes on, so a cancelled job never acts on an effect whose record is not yet on
disk, and two records never interleave. ``read_journal`` and ``unfinished_journals`` stay
synchronous: they run once, at startup, from the CLI and from ``LiveRecovery.resume`` before any
job of the process runs, on files capped at 64 MiB; parsing (``_parse``) is shared, pure, with
the asynchronous read ``Journal.open`` does.
"""

from __future__ import annotations

import errno
import json
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio
import attrs
from aiofiles.threadpool.binary import AsyncFileIO

from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.spec import RecoverySpec

__all__ = [
    "Journal",
    "JournalContents",
    "JournalListener",
    "JournalRecord",
    "journal_dir",
    "read_journal",
    "spec_record",
    "unfinished_journals",
]

_MAX_RECORD = 1 << 20
_MAX_JOURNAL = 64 << 20


def _lines(raw: bytes) -> list[bytes]:
    """Split after each LF only (a stray CR inside a corrupt record must not end it)."""
    parts = raw.split(b"\n")
    out = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def journal_dir(job_results_dir: str | os.PathLike[str]) -> Path:
    """Where the journals of one job results folder live."""
    return Path(job_results_dir) / "journal"


def spec_record(spec: RecoverySpec) -> dict[str, Any]:
    """The spec as a journal record: every field except the passkey."""
    data = attrs.asdict(spec)
    data.pop("passkey", None)
    data["vms"] = list(spec.vms)
    data["has_passkey"] = spec.passkey is not None
    return data


@attrs.frozen
class JournalRecord:
    """One record: its sequence number, kind (``job``, ``state``, ``effect``, ``undone``,
    ``end``) and payload."""

    seq: int
    kind: str
    data: Mapping[str, Any]
    at: float


@attrs.frozen
class JournalContents:
    """What a journal holds, and whether (and where) its tail was unreadable."""

    path: Path
    records: tuple[JournalRecord, ...]
    tail_error: str = ""
    intact_bytes: int = 0

    @property
    def finished(self) -> bool:
        return any(r.kind == "end" for r in self.records)

    @property
    def job_id(self) -> str:
        return self.path.stem

    @property
    def last_state(self) -> str:
        states = [r.data["state"] for r in self.records if r.kind == "state"]
        return str(states[-1]) if states else "created"

    def effects(self) -> list[JournalRecord]:
        """Side effects that happened and were not undone since, oldest first."""
        live: list[JournalRecord] = []
        for r in self.records:
            if r.kind == "effect":
                live.append(r)
            elif r.kind == "undone":
                name = r.data.get("effect")
                for i in range(len(live) - 1, -1, -1):
                    if live[i].data.get("effect") == name:
                        del live[i]
                        break
        return live


def _encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _too_large(p: Path, size: int) -> JournalContents | None:
    if size > _MAX_JOURNAL:
        return JournalContents(p, (), f"{p}: larger than {_MAX_JOURNAL} bytes")
    return None


def _unreadable(p: Path, exc: OSError) -> JournalContents:
    return JournalContents(p, (), f"{p}: cannot read: {exc.strerror}")


def read_journal(path: str | os.PathLike[str]) -> JournalContents:
    """Every intact record of a journal, up to the first torn or corrupt one."""
    p = Path(path)
    try:
        if (too_large := _too_large(p, p.stat().st_size)) is not None:
            return too_large
        raw = p.read_bytes()
    except OSError as exc:
        return _unreadable(p, exc)
    return _parse(p, raw)


async def _aread_journal(p: Path) -> JournalContents:
    """``read_journal`` through aiofiles."""
    try:
        if (too_large := _too_large(p, (await aiofiles.os.stat(p)).st_size)) is not None:
            return too_large
        async with aiofiles.open(p, "rb") as f:
            raw = await f.read()
    except OSError as exc:
        return _unreadable(p, exc)
    return _parse(p, raw)


def _parse(p: Path, raw: bytes) -> JournalContents:
    """The intact records of ``raw`` (the bytes of journal ``p``)."""
    records: list[JournalRecord] = []
    offset = 0

    def stop(problem: str) -> JournalContents:
        where = f"{p}: record {len(records) + 1} at byte {offset}"
        return JournalContents(p, tuple(records), f"{where}: {problem}", offset)

    for line in _lines(raw):
        if not line.endswith(b"\n"):
            return stop("torn (no end of line)")
        if len(line) > _MAX_RECORD or len(line) < 10 or line[8:9] != b" ":
            return stop("malformed")
        body = line[9:-1]
        try:
            crc = int(line[:8], 16)
        except ValueError:
            return stop("malformed checksum")
        if zlib.crc32(body) != crc:
            return stop("checksum mismatch")
        try:
            obj = json.loads(body)
            rec = JournalRecord(
                seq=int(obj["seq"]), kind=str(obj["kind"]), data=obj["data"], at=float(obj["at"])
            )
        except (ValueError, KeyError, TypeError):
            return stop("not a journal record")
        if rec.seq != len(records) + 1 or not isinstance(rec.data, dict):
            return stop("out of sequence")
        records.append(rec)
        offset += len(line)
    return JournalContents(p, tuple(records), "", offset)


def unfinished_journals(job_results_dir: str | os.PathLike[str]) -> list[JournalContents]:
    """The journals of jobs that never recorded their end, oldest first."""
    d = journal_dir(job_results_dir)
    if not d.is_dir():
        return []
    found = [read_journal(p) for p in sorted(d.glob("*.journal"), key=lambda p: p.stat().st_mtime)]
    return [j for j in found if not j.finished]


JournalListener = Callable[[Path, int, bytes], Awaitable[None]]
"""Called with (journal path, record index, the record's line) once a record is on stable
storage, before ``append`` returns: several serving nodes copy it to the shared state there."""


class Journal:
    """An open journal; ``append`` returns once the record is on stable storage (and, with a
    ``listener``, once the listener has it)."""

    def __init__(
        self, path: Path, file: AsyncFileIO, seq: int, listener: JournalListener | None = None
    ) -> None:
        self.path = path
        self._file: AsyncFileIO | None = file
        self._seq = seq
        self._lock = anyio.Lock()
        self._listener = listener

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], listener: JournalListener | None = None
    ) -> Journal:
        """Open (creating, owner-only) a journal for appending after its last intact record.

        A corrupt tail is cut off first, so new records follow the last good one.
        """
        p = Path(path)
        with anyio.CancelScope(shield=True):
            await _make_private_dirs(p.parent)
            exists = await aiofiles.os.path.exists(p)
            contents = await _aread_journal(p) if exists else JournalContents(p, ())
            file = await aiofiles.open(p, "r+b", buffering=0, opener=_open_private)
            try:
                good = contents.intact_bytes
                if (await aiofiles.os.stat(file.fileno())).st_size != good:
                    await file.truncate(good)
                    await _fsync(file.fileno())
                await file.seek(good)
            except BaseException:
                await file.close()
                raise
        return cls(p, file, len(contents.records), listener)

    async def append(self, kind: str, **data: Any) -> None:
        """Write one record and fsync it."""
        async with self._lock:
            if self._file is None:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF), str(self.path))
            self._seq += 1
            line = _encode({"seq": self._seq, "kind": kind, "data": data, "at": time.time()})
            with anyio.CancelScope(shield=True):
                await _write_synced(self._file.fileno(), line)
            if self._listener is not None:  # cancellable: the mirror's poller copies it later
                await self._listener(self.path, self._seq - 1, line)

    async def aclose(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with anyio.CancelScope(shield=True):
                await file.close()


def _open_private(path: str, _flags: int) -> int:
    """Read-write, created owner-only, never truncated: appends go after the intact records."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _write_and_fsync(fd: int, line: bytes) -> None:
    """The whole record, then fsync: one hand-off to a thread per record, not one per call."""
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


_fsync = aiofiles.os.wrap(os.fsync)
_write_synced = aiofiles.os.wrap(_write_and_fsync)
_make_private_dirs = aiofiles.os.wrap(make_private_dirs)
