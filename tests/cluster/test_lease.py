"""Leases: the pure decisions, a simulation of holder and watcher over hypothesis-chosen
interleavings (renewals that succeed, fail, time out or land late; polls; clock rates), and
``LeaseHolder``/``LeaseWatcher`` against a real ``SharedState``."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery.catalog.shared_state import DirectorySharedState
from liverecovery.cluster.lease import (
    HolderAction,
    LeaseHolder,
    LeaseRecord,
    LeaseWatcher,
    holder_decision,
    lease_key,
    watcher_decision,
)
from liverecovery.errors import BackendError

LEASE = 10.0


def test_holder_decisions() -> None:
    def at(now: float, lost: bool = False) -> HolderAction:
        return holder_decision(now=now, renewed_at=100.0, lost=lost, lease_s=LEASE)

    assert at(100.5) is HolderAction.WAIT
    assert at(102.0) is HolderAction.RENEW
    assert at(104.9) is HolderAction.RENEW
    assert at(105.0) is HolderAction.FENCE
    assert at(100.1, lost=True) is HolderAction.FENCE


def test_watcher_decisions() -> None:
    assert not watcher_decision(now=109.9, changed_at=100.0, lease_s=LEASE, first=True)
    assert watcher_decision(now=110.0, changed_at=100.0, lease_s=LEASE, first=True)
    assert not watcher_decision(now=200.0, changed_at=100.0, lease_s=LEASE, first=False)


@attrs.frozen
class Attempt:
    ok: bool  # the store applied the write
    delay: float  # seconds until the reply (or the write's landing)


attempts_st = st.lists(
    st.builds(Attempt, st.booleans() | st.just(True), st.floats(0.0, 8.0)), max_size=40
)


def simulate(
    attempts: list[Attempt], poll_s: float, rate_h: float, rate_w: float, horizon: float = 150.0
) -> tuple[float | None, float | None, float]:
    """Real-time simulation with the pure decisions: (fenced at, taken over at, last landing).

    The holder's and the watcher's clocks run at ``rate_h`` and ``rate_w`` of real time. A
    renewal is bounded as ``LeaseHolder`` bounds it (until its fence deadline); a write the
    holder gave up on may still land later (the watcher then sees a change).
    """
    dt = 0.01
    landings = [0.0]  # the acquire landed at 0
    renewed_h = 0.0
    pending: tuple[float, bool, float] | None = None  # resolve at, success, sent (holder clock)
    fenced = taken = None
    todo = iter(attempts)
    seen_count = 0
    changed_w = 0.0
    next_poll = 0.0
    steps = 0
    while steps * dt < horizon and taken is None:
        t = steps * dt
        steps += 1
        if fenced is None:
            if pending is not None and t >= pending[0]:
                if pending[1]:
                    renewed_h = pending[2]
                pending = None
            if pending is None:
                action = holder_decision(
                    now=t * rate_h, renewed_at=renewed_h, lost=False, lease_s=LEASE
                )
                if action is HolderAction.FENCE:
                    fenced = t
                elif action is HolderAction.RENEW:
                    a = next(todo, Attempt(False, 0.0))
                    budget = (renewed_h + LEASE / 2 - t * rate_h) / rate_h  # real seconds
                    if a.ok:
                        landings.append(t + a.delay)
                    pending = (t + min(a.delay, budget), a.ok and a.delay < budget, t * rate_h)
        if t >= next_poll:
            count = sum(1 for x in landings if x <= t)
            if count != seen_count:
                seen_count, changed_w = count, t * rate_w
            if watcher_decision(now=t * rate_w, changed_at=changed_w, lease_s=LEASE, first=True):
                taken = t
            next_poll += poll_s
    return fenced, taken, max(landings)


@settings(max_examples=300, deadline=None)
@given(
    attempts=attempts_st,
    poll_s=st.floats(0.05, 2.0),
    rate_h=st.floats(0.8, 1.2),
    rate_w=st.floats(0.8, 1.2),
)
def test_the_holder_is_fenced_before_anyone_takes_over(
    attempts: list[Attempt], poll_s: float, rate_h: float, rate_w: float
) -> None:
    fenced, taken, last_landing = simulate(attempts, poll_s, rate_h, rate_w)
    if taken is not None:
        assert fenced is not None and fenced < taken
        # and a dead holder's address is not left unserved for long
        assert taken <= last_landing + (LEASE + poll_s) / rate_w + 2 * poll_s + 0.05


def test_a_healthy_holder_keeps_its_lease() -> None:
    fenced, taken, _ = simulate([Attempt(True, 0.05)] * 200, 0.5, 1.0, 1.2)
    assert fenced is None and taken is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlakyState(DirectorySharedState):
    """A directory state whose writes can be made to fail (the store went away)."""

    down = False

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        if self.down:
            raise BackendError("store unreachable", operation="shared_state")
        return await super().replace(key, data, etag)


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_holder_fences_when_another_node_took_the_lease(tmp_path: Path) -> None:
    state = DirectorySharedState(tmp_path / "s")
    fenced: list[float] = []

    async def fence() -> None:
        fenced.append(time.monotonic())

    holder = LeaseHolder(state, "127.0.0.2", "a", lease_s=1.0, fence=fence)
    assert await holder.acquire(None)
    other = LeaseHolder(state, "127.0.0.2", "b", lease_s=1.0, fence=fence)
    assert not await other.acquire(None)  # exists: create fails
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.run)
            await anyio.sleep(0.5)
            assert holder.renewals >= 1 and not fenced
            current = await state.get(lease_key("127.0.0.2"))
            assert current is not None
            assert await other.acquire(current)  # a CAS on the current tag: b takes it
    assert holder.fenced and len(fenced) == 1
    got = await state.get(lease_key("127.0.0.2"))
    assert got is not None
    record = LeaseRecord.decode(got.data)
    assert record is not None and (record.node, record.epoch) == ("b", 2)


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_holder_fences_itself_before_a_watcher_may_take_over(tmp_path: Path) -> None:
    state = FlakyState(tmp_path / "s")
    fenced: list[float] = []

    async def fence() -> None:
        fenced.append(time.monotonic())

    holder = LeaseHolder(state, "127.0.0.2", "a", lease_s=1.0, fence=fence)
    assert await holder.acquire(None)
    watcher = LeaseWatcher(
        DirectorySharedState(tmp_path / "s"), "127.0.0.2", lease_s=1.0, poll_s=0.05
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.run)
            await anyio.sleep(0.6)
            down_at = time.monotonic()
            state.down = True  # renewals fail from now on
            stale = await watcher.wait_expired()
            taken_at = time.monotonic()
    assert stale is not None and fenced
    assert fenced[0] < taken_at
    assert fenced[0] - down_at <= 0.5 + 0.1  # within lease_s/2 of the last good renewal
    b = LeaseHolder(
        DirectorySharedState(tmp_path / "s"), "127.0.0.2", "b", lease_s=1.0, fence=fence
    )
    c = LeaseHolder(
        DirectorySharedState(tmp_path / "s"), "127.0.0.2", "c", lease_s=1.0, fence=fence
    )
    assert await b.acquire(stale)
    assert not await c.acquire(stale)  # of two contenders with the same stale tag, one wins


def test_lease_record_round_trip_and_garbage() -> None:
    r = LeaseRecord("127.0.0.2", "a", 3, 17)
    assert LeaseRecord.decode(r.encode()) == r
    assert LeaseRecord.decode(b"not json") is None
    assert LeaseRecord.decode(b'{"vip": 1}') is None


class RetriedState(DirectorySharedState):
    """Applies the next renewal but answers 412, as a client's retry of a PUT whose first reply
    was lost finds the write its first attempt made."""

    retried = False
    foreign = False

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        result = await super().replace(key, data, etag)
        if self.retried and result is not None:
            self.retried = False
            if self.foreign:  # another node's write came in between: really lost
                record = LeaseRecord.decode(data)
                assert record is not None
                other = attrs.evolve(record, node="b", epoch=record.epoch + 1)
                await super().replace(key, other.encode(), result)
            return None
        return result


@pytest.mark.anyio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("foreign", [False, True])
async def test_a_renewal_retried_by_the_client_is_not_a_lost_lease(
    tmp_path: Path, foreign: bool
) -> None:
    state = RetriedState(tmp_path / "s")
    state.foreign = foreign
    fenced: list[str] = []

    async def fence() -> None:
        fenced.append("fenced")

    holder = LeaseHolder(state, "127.0.0.2", "a", lease_s=1.0, fence=fence)
    assert await holder.acquire(None)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.run)
            await anyio.sleep(0.3)
            state.retried = True
            await anyio.sleep(1.0)
            if foreign:
                assert fenced and holder.reason == "another node took the lease over"
            else:
                assert not fenced, holder.reason
                before = holder.renewals
                await anyio.sleep(0.5)
                assert holder.renewals > before  # renewing normally again
            tg.cancel_scope.cancel()
