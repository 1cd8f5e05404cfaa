"""The job journal: every transition and every completed side effect, on disk before the next step.

One append-only file per job (``<job_results_dir>/journal/<job id>.journal``). Each record is
one line ``<crc32 hex> <json>``; it is flushed and fsynced before ``append`` returns, so after a
crash the journal says exactly which side effects happened. A torn or corrupt tail (a crash in
the middle of a write, a flipped bit) is detected by the checksum: reading stops there and says
where, never raises. The passkey is never written: the spec is recorded without it.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs

from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.spec import RecoverySpec

__all__ = [
    "Journal",
    "JournalContents",
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


def read_journal(path: str | os.PathLike[str]) -> JournalContents:
    """Every intact record of a journal, up to the first torn or corrupt one."""
    p = Path(path)
    records: list[JournalRecord] = []
    try:
        if p.stat().st_size > _MAX_JOURNAL:
            return JournalContents(p, (), f"{p}: larger than {_MAX_JOURNAL} bytes")
        raw = p.read_bytes()
    except OSError as exc:
        return JournalContents(p, (), f"{p}: cannot read: {exc.strerror}")
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


class Journal:
    """An open journal; ``append`` returns once the record is on stable storage."""

    def __init__(self, path: Path, fd: int, seq: int) -> None:
        self.path = path
        self._fd = fd
        self._seq = seq
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Open (creating, owner-only) a journal for appending after its last intact record.

        A corrupt tail is cut off first, so new records follow the last good one.
        """
        p = Path(path)

        def do_open() -> tuple[int, int]:
            make_private_dirs(p.parent)
            contents = read_journal(p) if p.exists() else JournalContents(p, ())
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            good = contents.intact_bytes
            if os.fstat(fd).st_size != good:
                os.ftruncate(fd, good)
                os.fsync(fd)
            os.lseek(fd, good, os.SEEK_SET)
            return fd, len(contents.records)

        fd, seq = await anyio.to_thread.run_sync(do_open)
        return cls(p, fd, seq)

    async def append(self, kind: str, **data: Any) -> None:
        """Write one record and fsync it."""
        async with self._lock:
            self._seq += 1
            line = _encode({"seq": self._seq, "kind": kind, "data": data, "at": time.time()})
            await anyio.to_thread.run_sync(_write_sync, self._fd, line)

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await anyio.to_thread.run_sync(os.close, fd)


def _write_sync(fd: int, line: bytes) -> None:
    view = memoryview(line)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)
