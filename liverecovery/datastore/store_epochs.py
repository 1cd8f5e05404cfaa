"""The epochs of a job's state in the shared store: which one a taking-over node restores, how
it makes the restored state its own, and the writes an owner makes under its epoch.

Each part of a job written through to the store (one disk's overlay, the VM folder's files) is
kept per lease epoch. A node that opens a part under epoch ``N`` restores it from the newest
epoch ``E <= N`` that has a *restored-complete* marker (``jobs/<job id>/restored/<part>/<E>``),
and from that epoch only; it then writes everything it restored into its own epoch ``N`` and
writes ``N``'s marker, before it serves. So a fenced node's PUT that lands late in its old epoch
is never seen by a later owner: the next owner copied what it served into its own epoch, and
every owner after reads that epoch, not older ones. A part with no marker at all (written
before markers existed) is restored with the older rule: each block's copy of the highest
epoch.

``EpochWriter`` is the one way an owner writes a key of its epoch: ``create`` the first time,
then ``replace`` on the tag it last wrote; bytes it already wrote are not sent again (a tag
may be a digest of the bytes, so equal bytes could not be told apart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable

import anyio

from liverecovery.backends import SharedState
from liverecovery.errors import OverlayError

__all__ = [
    "COPY_PARALLELISM",
    "EpochWriter",
    "complete_epoch",
    "job_prefix",
    "mark_restored",
    "restored_key",
    "run_limited",
]

COPY_PARALLELISM = 16
"""PUTs in flight while a new owner copies what it restored into its own epoch."""


def job_prefix(job_id: str) -> str:
    """Everything of one job in the shared state is under this prefix."""
    return f"jobs/{job_id}"


def restored_key(job_id: str, part: str, epoch: int) -> str:
    """The restored-complete marker of ``part`` (``overlay-<disk>``, ``files``) for ``epoch``."""
    return f"{job_prefix(job_id)}/restored/{part}/{epoch:010d}"


async def complete_epoch(
    state: SharedState, job_id: str, part: str, up_to: int | None = None
) -> int | None:
    """The newest epoch (``<= up_to`` if given) whose owner finished restoring ``part``; None
    when no owner ever marked it (a new part, or one written before markers existed).

    :raises OverlayError: a marker key that is not an epoch (named).
    """
    prefix = f"{job_prefix(job_id)}/restored/{part}"
    best: int | None = None
    for key in await state.keys(prefix):
        tail = key[len(prefix) + 1 :]
        if not tail.isdigit():
            raise OverlayError(f"shared state key {key}: not a restored-complete marker <epoch>")
        epoch = int(tail)
        if (up_to is None or epoch <= up_to) and (best is None or epoch > best):
            best = epoch
    return best


async def mark_restored(state: SharedState, job_id: str, part: str, epoch: int) -> None:
    """Write ``epoch``'s restored-complete marker of ``part`` (kept if it is already there)."""
    await state.create(restored_key(job_id, part, epoch), f"{epoch}\n".encode())


async def run_limited(
    calls: Iterable[Callable[[], Awaitable[object]]], limit: int = COPY_PARALLELISM
) -> None:
    """Await every call, at most ``limit`` at once; the first failure cancels the rest and is
    raised (itself, not in an exception group)."""
    sem = anyio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        async with sem:
            await call()

    try:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(one, call)
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None  # one error, as a sequential loop would raise


class EpochWriter:
    """Writes keys of one owner's epoch: ``create`` first, then ``replace`` on its own tag."""

    def __init__(self, state: SharedState, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"lease epoch must be >= 0, got {epoch}")
        self.state = state
        self.epoch = epoch
        self._tags: dict[str, str] = {}
        self._digests: dict[str, bytes] = {}
        self.puts = 0

    def forget(self, key: str) -> None:
        """Drop what is known of ``key`` (its next write re-reads the store)."""
        self._tags.pop(key, None)
        self._digests.pop(key, None)

    async def put(self, key: str, data: bytes) -> bool:
        """Make ``key`` hold ``data``; whether a PUT was sent.

        :raises OverlayError: another writer changed ``key`` since this one wrote it.
        :raises BackendError: the store did not answer (``BackupUnavailableError``).
        """
        digest = hashlib.sha256(data).digest()
        if self._digests.get(key) == digest:
            return False
        tag = self._tags.get(key)
        if tag is None:
            new = await self.state.create(key, data)
            if new is None:  # there from before (a restart of this owner): take its tag
                current = await self.state.get(key)
                if current is not None and current.data == data:
                    new = current.etag
                elif current is not None:
                    new = await self.state.replace(key, data, current.etag)
        else:
            new = await self.state.replace(key, data, tag)
        if new is None:
            raise OverlayError(
                f"shared state key {key}: changed in the store under this node's lease epoch "
                f"{self.epoch}; another writer holds it"
            )
        self._tags[key] = new
        self._digests[key] = digest
        self.puts += 1
        return True
