"""Which boot groups a plan verification runs, given the groups' shape, their failure
policies and which groups hold a failing VM (``skip_reasons``, pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.plan.model import BootGroup, GroupWait
from liverecovery.plan.verify import group_checks, skip_reasons
from liverecovery.verify.checks import Check


@st.composite
def shapes(draw: st.DrawFn) -> tuple[dict[str, tuple[str, ...]], set[str], set[str]]:
    """Groups g0..gn in plan order, each after the one before it or after any earlier
    groups; which are ``stop`` groups; which hold a VM that fails."""
    n = draw(st.integers(1, 8))
    names = [f"g{i}" for i in range(n)]
    preds: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(names):
        if i and draw(st.booleans()):
            preds[name] = tuple(draw(st.sets(st.sampled_from(names[:i]))))
        else:
            preds[name] = (names[i - 1],) if i else ()
    stop = draw(st.sets(st.sampled_from(names)))
    failing = draw(st.sets(st.sampled_from(names)))
    return preds, stop, failing


def simulate(
    preds: dict[str, tuple[str, ...]], stop: set[str], failing: set[str]
) -> dict[str, bool]:
    """Run the groups forward as the runner does: a group runs when each of its predecessors
    ran and did not fail under ``stop``."""
    ran: dict[str, bool] = {}
    for name in preds:  # plan order: predecessors come first
        ran[name] = all(ran[p] and not (p in stop and p in failing) for p in preds[name])
    return ran


@given(shapes())
def test_skipped_groups_are_those_the_forward_run_does_not_start(
    shape: tuple[dict[str, tuple[str, ...]], set[str], set[str]],
) -> None:
    preds, stop, failing = shape
    skipped = skip_reasons(preds, stop, failing)
    ran = simulate(preds, stop, failing)
    assert set(skipped) == {g for g, r in ran.items() if not r}
    for why in skipped.values():
        culprit = why.split("'")[1]
        assert culprit in stop and culprit in failing and ran[culprit]


@given(shapes())
def test_continue_everywhere_runs_every_group(
    shape: tuple[dict[str, tuple[str, ...]], set[str], set[str]],
) -> None:
    preds, _stop, failing = shape
    assert skip_reasons(preds, set(), failing) == {}


@given(st.integers(1, 8), st.data())
def test_a_chain_stops_after_its_first_failing_stop_group(n: int, data: st.DataObject) -> None:
    names = [f"g{i}" for i in range(n)]
    preds = {g: ((names[i - 1],) if i else ()) for i, g in enumerate(names)}
    stop = data.draw(st.sets(st.sampled_from(names)))
    failing = data.draw(st.sets(st.sampled_from(names)))
    first = next((i for i, g in enumerate(names) if g in stop and g in failing), n)
    assert set(skip_reasons(preds, stop, failing)) == set(names[first + 1 :])


def test_a_group_waiting_for_heartbeats_verifies_one() -> None:
    group = BootGroup("db", wait=GroupWait.HEARTBEAT, heartbeat_timeout_s=42)
    checks = group_checks([Check("screenshot"), Check("partitions")], group)
    assert [c.kind for c in checks] == ["partitions", "heartbeat", "screenshot"]
    assert checks[1].timeout_s == 42 and checks[1].required
    given_one = [Check("heartbeat", timeout_s=5)]
    assert group_checks(given_one, group) == tuple(given_one)
    assert group_checks([Check("partitions")], BootGroup("app")) == (Check("partitions"),)
