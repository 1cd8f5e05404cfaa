"""Leases of the service addresses (VIPs) in the shared state, with fencing.

The owner of ``leases/<vip>`` renews it every ``lease_s/5`` by compare-and-swap on the tag it
last wrote; when a renewal finds the tag changed (another node took it) or none has succeeded
for ``lease_s/2`` (counted from when the last good renewal was *sent*), the owner fences itself:
it stops serving the address before anyone may take it. A watcher calls a lease expired when
its tag has not changed for ``lease_s`` on the watcher's own monotonic clock (no wall clock, so
no clock skew between nodes; their rates need only agree within a factor of two), and takes it with
one compare-and-swap: of several watchers, one wins.

The decisions are pure functions (``holder_decision``, ``watcher_decision``); ``LeaseHolder``
and ``LeaseWatcher`` run them against a ``SharedState``.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs

from liverecovery.backends import SharedState, StateObject
from liverecovery.errors import LiveRecoveryError

__all__ = [
    "HolderAction",
    "LeaseHolder",
    "LeaseRecord",
    "LeaseWatcher",
    "holder_decision",
    "lease_key",
    "watcher_decision",
]

RENEW_FRACTION = 1 / 5
FENCE_FRACTION = 1 / 2


def lease_key(vip: str) -> str:
    return f"leases/{vip}"


@attrs.frozen
class LeaseRecord:
    """What a lease object holds; ``seq`` grows with every write, so no two writes have the same
    bytes (an S3 ETag is their MD5)."""

    vip: str
    node: str
    epoch: int
    seq: int

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        try:
            raw = json.loads(data)
            return cls(str(raw["vip"]), str(raw["node"]), int(raw["epoch"]), int(raw["seq"]))
        except (ValueError, KeyError, TypeError):
            return None


class HolderAction(enum.Enum):
    WAIT = "wait"
    RENEW = "renew"
    FENCE = "fence"


def holder_decision(*, now: float, renewed_at: float, lost: bool, lease_s: float) -> HolderAction:
    """What the owner does at ``now`` (its monotonic clock): ``renewed_at`` is when its last
    successful renewal was sent, ``lost`` whether a renewal found another writer's tag."""
    if lost or now - renewed_at >= lease_s * FENCE_FRACTION:
        return HolderAction.FENCE
    if now - renewed_at >= lease_s * RENEW_FRACTION:
        return HolderAction.RENEW
    return HolderAction.WAIT


def watcher_decision(*, now: float, changed_at: float, lease_s: float, first: bool) -> bool:
    """Whether a watcher takes the lease over at ``now``: its tag has not changed since
    ``changed_at`` (when this watcher first saw the current tag, on its own clock) for
    ``lease_s``, and this watcher ranks first among the live nodes."""
    return first and now - changed_at >= lease_s


class LeaseHolder:
    """Holds ``leases/<vip>`` for ``node``: ``acquire``, then ``run`` until fenced.

    ``fence`` is awaited once when the lease is lost or cannot be renewed in time; it must stop
    serving the address (close the listeners and connections) promptly: it has
    ``lease_s/2`` before another node may take over.
    """

    def __init__(
        self,
        state: SharedState,
        vip: str,
        node: str,
        *,
        lease_s: float,
        fence: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.vip = vip
        self.node = node
        self.lease_s = lease_s
        self._fence = fence
        self._clock = clock
        self.record: LeaseRecord | None = None
        self.etag = ""
        self.renewed_at = 0.0
        self.fenced = False
        self.renewals = 0
        self.reason = ""
        """Why it fenced (for the log and the operator)."""
        self._seq = 0
        self._sent: dict[int, float] = {}

    async def acquire(self, stale: StateObject | None) -> bool:
        """Take the lease: create it when ``stale`` is None, else replace exactly that version
        (one of several contenders wins). False when another node got there first."""
        old = LeaseRecord.decode(stale.data) if stale is not None else None
        epoch = (old.epoch + 1) if old else 1
        record = LeaseRecord(self.vip, self.node, epoch, (old.seq + 1) if old else 0)
        sent = self._clock()
        key = lease_key(self.vip)
        if stale is None:
            etag = await self.state.create(key, record.encode())
        else:
            etag = await self.state.replace(key, record.encode(), stale.etag)
        if etag is None:
            return False
        self.record, self.etag, self.renewed_at = record, etag, sent
        return True

    async def _renew(self) -> bool | None:
        """True renewed, False lost (another node's tag), None failed (store unreachable, slow).

        A renewal given up on (timed out, or retried by the client after its reply was lost)
        may still have been applied: the next one then finds another tag. The lease is only
        lost if that tag is not one of this node's own writes (same node and epoch, a ``seq``
        it sent); if it is, it is adopted, counted from when that write was sent.
        """
        assert self.record is not None
        self._seq = max(self._seq, self.record.seq) + 1
        record = attrs.evolve(self.record, seq=self._seq)
        sent = self._clock()
        self._sent[record.seq] = sent
        timeout = max(0.0, self.renewed_at + self.lease_s * FENCE_FRACTION - sent)
        try:
            with anyio.fail_after(timeout):
                etag = await self.state.replace(lease_key(self.vip), record.encode(), self.etag)
                if etag is None:
                    current = await self.state.get(lease_key(self.vip))
                    mine = LeaseRecord.decode(current.data) if current is not None else None
                    if (
                        current is None
                        or mine is None
                        or (mine.node, mine.epoch) != (self.node, self.record.epoch)
                        or mine.seq not in self._sent
                    ):
                        return False
                    record, etag, sent = mine, current.etag, self._sent[mine.seq]
        except (TimeoutError, LiveRecoveryError, OSError):
            return None
        self.record, self.etag, self.renewed_at = record, etag, sent
        self._sent = {k: v for k, v in self._sent.items() if k > record.seq}
        self.renewals += 1
        return True

    async def run(self) -> None:
        """Renew until the lease is lost or lapses; then fence and return."""
        if self.record is None:
            raise RuntimeError("acquire the lease first")
        lost = False
        while True:
            action = holder_decision(
                now=self._clock(), renewed_at=self.renewed_at, lost=lost, lease_s=self.lease_s
            )
            if action is HolderAction.FENCE:
                self.reason = (
                    "another node took the lease over"
                    if lost
                    else f"no renewal succeeded for {self._clock() - self.renewed_at:.1f} s"
                )
                break
            if action is HolderAction.RENEW:
                lost = await self._renew() is False
                continue
            await anyio.sleep(self.lease_s * RENEW_FRACTION / 4)
        self.fenced = True
        with anyio.CancelScope(shield=True):
            await self._fence()


class LeaseWatcher:
    """Watches ``leases/<vip>`` on this node's monotonic clock."""

    def __init__(
        self,
        state: SharedState,
        vip: str,
        *,
        lease_s: float,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.vip = vip
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._clock = clock

    async def wait_expired(self, first: Callable[[], bool] = lambda: True) -> StateObject | None:
        """Poll until the lease is expired (or absent) and ``first()`` says this node is the
        one to take it; the stale version to ``acquire`` with (None: there is none)."""
        seen: str | None = None
        changed_at = self._clock()
        while True:
            try:
                current = await self.state.get(lease_key(self.vip))
            except LiveRecoveryError:
                # the store does not answer: nobody can renew, nobody can take over
                await anyio.sleep(self.poll_s)
                continue
            if current is None:
                if first():
                    return None
            else:
                if current.etag != seen:
                    seen, changed_at = current.etag, self._clock()
                if watcher_decision(
                    now=self._clock(), changed_at=changed_at, lease_s=self.lease_s, first=first()
                ):
                    return current
            await anyio.sleep(self.poll_s)
