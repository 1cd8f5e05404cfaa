"""Job journals mirrored in the shared state, so another node can resume a dead node's jobs.

A journal is append-only, one checksummed record per line (``job/journal.py``); its mirror is
one object per record, ``journals/<vip>/<job id>/<n:010d>.<epoch:010d>`` (record ``n`` of the
file, counted from 0, as written by the node holding the address's lease ``epoch``; a bare
``<n:010d>`` is epoch 0), each written with ``create``: a record is never overwritten, so a
fenced node that wakes up cannot rewrite history, and a record it had in flight when it was
fenced lands under its own, older epoch: where the new owner wrote record ``n`` too, the
restorer takes the newest epoch's, so the late one never hides the new owner's.
``JournalMirror`` copies the records that are complete on disk (every ``interval_s``, and once
more on ``sync``); ``restore_journals`` writes them back
into a node's journal folder, in order, up to the first missing record, before that node calls
``LiveRecovery.resume()``.

A job that ended for good (its journal's last record is ``end`` in state ``completed``: the
migration confirmed; or ``cancelled``: the operator stopped it, the VM powered off) needs nothing
in the store any more: the mirror deletes ``jobs/<job id>/`` (overlay blocks, folder files,
markers) and then the job's journal records, the first record first, so a node restoring
meanwhile finds no journal to resume (``restore_journals`` stops at the first gap). A job that
*failed* keeps its store copy (as ``keep_overlay`` keeps the local overlay of a VM lost while it
ran), and so does every job with ``keep_ended``.

A serving node makes the mirror its journals' listener (``JournalMirror.appended``): each record
is in the store before the job acts on it. ``run`` (every ``interval_s``) and ``sync`` copy
whatever a listener did not (records of a journal opened without one, a PUT that failed); a
record missing anyway is the case ``job/resume.py`` handles for a crash between a side effect
and its record: what vSphere shows is reconciled with the journal.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import anyio

from liverecovery.backends import SharedState
from liverecovery.errors import LiveRecoveryError
from liverecovery.io.private_dirs import make_private_dirs, write_private_file

__all__ = [
    "ENDED_FOR_GOOD",
    "JournalMirror",
    "ended_for_good",
    "forget_job",
    "journal_records_key",
    "newest_records",
    "parse_record_name",
    "record_name",
    "restore_journals",
]

_SUFFIX = ".journal"
ENDED_FOR_GOOD = frozenset({"completed", "cancelled"})
"""The end states after which a job's state in the store is deleted."""


def journal_records_key(vip: str, job_id: str) -> str:
    return f"journals/{vip}/{job_id}"


def record_name(n: int, epoch: int = 0) -> str:
    """The key part of record ``n`` written under lease ``epoch``."""
    return f"{n:010d}.{epoch:010d}" if epoch else f"{n:010d}"


def parse_record_name(name: str) -> tuple[int, int] | None:
    """(record index, epoch) of a key part ``record_name`` made; None for anything else."""
    n, _, epoch = name.partition(".")
    if len(n) != 10 or not n.isdigit() or (epoch and (len(epoch) != 10 or not epoch.isdigit())):
        return None
    return int(n), int(epoch or 0)


def newest_records(names: Sequence[str]) -> list[str]:
    """The key parts of a journal's records to restore, in order: for each index the newest
    epoch's, from record 0 up to the first missing index (pure)."""
    best: dict[int, tuple[int, str]] = {}
    for name in names:
        parsed = parse_record_name(name)
        if parsed is None:
            continue
        n, epoch = parsed
        if n not in best or epoch > best[n][0]:
            best[n] = (epoch, name)
    out = []
    for n in range(len(best)):
        if n not in best:
            break  # a gap: what follows it cannot be trusted to follow
        out.append(best[n][1])
    return out


def ended_for_good(lines: Sequence[bytes]) -> bool:
    """Whether a journal's last record is ``end`` in a state of ``ENDED_FOR_GOOD`` (pure; a
    record that does not parse is not an end)."""
    if not lines:
        return False
    _, _, body = lines[-1].partition(b" ")
    try:
        record = json.loads(body)
        return bool(record["kind"] == "end" and record["data"]["state"] in ENDED_FOR_GOOD)
    except (ValueError, KeyError, TypeError):
        return False


async def forget_job(state: SharedState, vip: str, job_id: str) -> None:
    """Delete everything of ``job_id`` in the store: ``jobs/<job id>/``, then its journal
    records under ``vip``, record 0 first (a restorer then finds no journal)."""
    await state.delete(await state.keys(f"jobs/{job_id}"))
    records = await state.keys(journal_records_key(vip, job_id))
    first = [k for k in records if (p := parse_record_name(k.rsplit("/", 1)[-1])) and not p[0]]
    await state.delete(first)
    await state.delete([k for k in records if k not in first])


def _complete_lines(raw: bytes) -> list[bytes]:
    """The complete (LF-terminated) lines of ``raw``, each with its LF."""
    parts = raw.split(b"\n")
    return [part + b"\n" for part in parts[:-1]]


class JournalMirror:
    """Copies the journals in ``journal_dir`` to the shared state under the address ``vip``."""

    def __init__(
        self,
        state: SharedState,
        vip: str,
        journal_dir: Path,
        *,
        interval_s: float = 0.1,
        keep_ended: bool = False,
        epoch: int = 0,
    ) -> None:
        """``epoch``: the lease epoch this node writes under (0: none)."""
        self.state = state
        self.epoch = epoch
        self.vip = vip
        self.journal_dir = journal_dir
        self.interval_s = interval_s
        self.keep_ended = keep_ended
        """Keep the store copy of jobs that ended (``Settings.keep_overlay``)."""
        self._sent: dict[str, int] = {}
        self._forgotten: set[str] = set()
        self._closed = False

    def _key(self, base: str, n: int) -> str:
        return f"{base}/{record_name(n, self.epoch)}"

    def close(self) -> None:
        """Write nothing more (a fenced node: the new owner appends to these journals now)."""
        self._closed = True

    async def appended(self, path: Path, index: int, line: bytes) -> None:
        """A job's record just made durable locally (a ``JournalListener``): copied before
        the job goes on, so a record announcing a side effect (a registration, a power-on)
        is in the store before the effect, and a node taking over knows of it. The records
        before it that ``sync`` has not copied yet go first.

        :raises BackendError: the store did not take it (the job does not go on).
        """
        job_id = path.name[: -len(_SUFFIX)]
        if self._closed or job_id in self._forgotten or not path.name.endswith(_SUFFIX):
            return
        base = journal_records_key(self.vip, job_id)
        if self._sent.get(job_id, 0) < index:
            lines = _complete_lines(await anyio.Path(path).read_bytes())
            for n in range(self._sent.get(job_id, 0), min(index, len(lines))):
                await self.state.create(self._key(base, n), lines[n])
        await self.state.create(self._key(base, index), line)
        self._sent[job_id] = max(self._sent.get(job_id, 0), index + 1)

    async def sync(self) -> int:
        """Copy every complete record not in the store yet; how many were copied."""
        copied = 0
        if self._closed:
            return 0
        try:
            paths = sorted(await anyio.to_thread.run_sync(self._journals))
        except FileNotFoundError:
            return 0
        for path in paths:
            job_id = path.name[: -len(_SUFFIX)]
            if job_id in self._forgotten:
                continue
            lines = _complete_lines(await anyio.Path(path).read_bytes())
            if not self.keep_ended and ended_for_good(lines):
                await forget_job(self.state, self.vip, job_id)
                self._forgotten.add(job_id)
                continue
            base = journal_records_key(self.vip, job_id)
            for n in range(self._sent.get(job_id, 0), len(lines)):
                # None: the record exists (copied before a restart of this mirror): keep it
                if await self.state.create(self._key(base, n), lines[n]) is not None:
                    copied += 1
                self._sent[job_id] = n + 1
        return copied

    def _journals(self) -> list[Path]:
        return [p for p in self.journal_dir.iterdir() if p.name.endswith(_SUFFIX)]

    async def run(self) -> None:
        while True:
            with contextlib.suppress(LiveRecoveryError):  # the store is away: next round
                await self.sync()
            await anyio.sleep(self.interval_s)


def _write_longer(path: Path, data: bytes) -> bool:
    """Write ``data`` at ``path`` unless a file at least as long is there."""
    make_private_dirs(path.parent)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size >= len(data):
            return False
    write_private_file(path, data)
    return True


async def restore_journals(state: SharedState, vip: str, journal_dir: Path) -> list[str]:
    """Write the journals mirrored for ``vip`` into ``journal_dir`` (a journal already there
    and at least as long is kept); the job ids restored."""
    keys = await state.keys(f"journals/{vip}")
    jobs: dict[str, list[str]] = {}
    for key in keys:
        _, _, job_id, record = key.split("/", 3)
        jobs.setdefault(job_id, []).append(record)
    restored = []
    for job_id, records in sorted(jobs.items()):
        lines = []
        for record in newest_records(records):
            got = await state.get(f"{journal_records_key(vip, job_id)}/{record}")
            if got is None:
                break
            lines.append(got.data)
        data = b"".join(lines)
        path = journal_dir / f"{job_id}{_SUFFIX}"

        written: bool = bool(data) and await anyio.to_thread.run_sync(_write_longer, path, data)
        if written:
            restored.append(job_id)
    return restored
