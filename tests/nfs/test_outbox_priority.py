"""A running VM's small READ replies go out ahead of a copy's queued 1 MiB READ replies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from liverecovery.nfs.connection import outbox_position

SMALL = 64 << 10
LARGE = 1 << 20

steps = st.lists(
    st.one_of(st.sampled_from([SMALL, 4 << 10, 128 << 10, LARGE, (128 << 10) + 1]), st.none()),
    max_size=60,
)


@given(steps)
def test_outbox_order(ops: list[int | None]) -> None:
    outbox: list[tuple[int, int]] = []  # (size, arrival)
    sent: list[tuple[int, int]] = []
    for arrival, op in enumerate(ops):
        if op is None:  # the socket took the head
            if outbox:
                sent.append(outbox.pop(0))
            continue
        head = outbox[0] if outbox else None
        outbox.insert(outbox_position([size for size, _ in outbox], op), (op, arrival))
        if head is not None:
            assert outbox[0] == head  # a half-sent reply is never split
        behind = outbox[1:]
        kinds = [size <= 128 << 10 for size, _ in behind]
        assert kinds == sorted(kinds, reverse=True)  # small ones ahead of every large one
    order = sent + outbox
    for small in (True, False):  # each kind keeps its own arrival order
        arrivals = [a for size, a in order if (size <= 128 << 10) is small]
        assert arrivals == sorted(arrivals)


def test_a_small_reply_overtakes_queued_copy_reads() -> None:
    queued = [LARGE] * 8  # a copy's READs, the first half sent
    assert outbox_position(queued, SMALL) == 1
    assert outbox_position([*queued[:1], SMALL, *queued[1:]], SMALL) == 2
    assert outbox_position(queued, LARGE) == 8
    assert outbox_position([], SMALL) == 0
    assert outbox_position([LARGE], SMALL) == 1
