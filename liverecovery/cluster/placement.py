"""Which node serves what: rendezvous (highest-random-weight) hashing.

``place(key, nodes)`` is the node whose ``H(key, node)`` is highest, H the first 8 bytes of
SHA-256 over ``key NUL node`` (stable across processes and Python versions, unlike ``hash``).
Every node computes the same answer from the same node list, with no coordination. Placing
the recovery jobs by their destination ESX host puts all the VMs of one host on one node (one
NFS mount per host and node); when a node leaves, only the keys it had move, each to its
next-ranked node, and when one joins it takes only the keys it now ranks first for. The same
ranking, over the live nodes, says who takes a dead node's service address over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["place", "rendezvous_rank", "weight"]


def weight(key: str, node: str) -> int:
    """``H(key, node)``: a 64-bit number."""
    digest = hashlib.sha256(key.encode() + b"\0" + node.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rendezvous_rank(key: str, nodes: Iterable[str]) -> list[str]:
    """The distinct ``nodes``, best first for ``key`` (ties, practically impossible, by name)."""
    return sorted(set(nodes), key=lambda n: (-weight(key, n), n))


def place(key: str, nodes: Iterable[str]) -> str:
    """The node ``key`` (e.g. an ESX host's name) goes to. :raises ValueError: no nodes."""
    ranked = rendezvous_rank(key, nodes)
    if not ranked:
        raise ValueError("no serving node to place on")
    return ranked[0]
