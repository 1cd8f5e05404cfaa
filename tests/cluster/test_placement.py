"""Rendezvous hashing: stable, total, and only a leaving node's keys move."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.cluster.placement import place, rendezvous_rank, weight

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
node_sets = st.lists(names, min_size=2, max_size=6, unique=True)


def test_known_values_do_not_change() -> None:
    # a plan made by one version must place the same way on the next (and in every process)
    assert weight("esx-01", "node-a") == int.from_bytes(
        __import__("hashlib").sha256(b"esx-01\0node-a").digest()[:8], "big"
    )
    assert place("esx-01", ["node-a", "node-b"]) == place("esx-01", ["node-b", "node-a"])


def test_no_nodes_is_an_error() -> None:
    with pytest.raises(ValueError, match="no serving node"):
        place("esx-01", [])


@given(key=names, nodes=node_sets)
def test_rank_is_a_permutation_and_order_free(key: str, nodes: list[str]) -> None:
    ranked = rendezvous_rank(key, nodes)
    assert sorted(ranked) == sorted(nodes)
    assert rendezvous_rank(key, reversed(nodes)) == ranked
    assert place(key, nodes) == ranked[0]


@given(keys=st.lists(names, min_size=1, max_size=40, unique=True), nodes=node_sets, data=st.data())
def test_only_the_leaving_nodes_keys_move(
    keys: list[str], nodes: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(nodes))
    rest = [n for n in nodes if n != gone]
    for key in keys:
        before = place(key, nodes)
        after = place(key, rest)
        if before != gone:
            assert after == before
        else:
            assert after == rendezvous_rank(key, nodes)[1]


def test_spreads_keys_over_nodes() -> None:
    nodes = [f"node-{i}" for i in range(4)]
    counts = {n: 0 for n in nodes}
    for i in range(4000):
        counts[place(f"esx-{i:04d}", nodes)] += 1
    assert all(800 < c < 1200 for c in counts.values()), counts
