"""Shared helpers for the block cache tests: deterministic block contents and counting fetchers."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable

from liverecovery.backends import BlockKey


def block_bytes(key: BlockKey, length: int) -> bytes:
    """Deterministic, key-specific contents standing in for the backup's bytes."""
    seed = hashlib.sha256(f"{key.source}/{key.index}".encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


class CountingSource:
    """A "backup" whose fetches are counted per key; ``length(key)`` decides each block's size."""

    def __init__(self, length: Callable[[BlockKey], int]) -> None:
        self.length = length
        self.fetches: Counter[BlockKey] = Counter()

    def fetcher(self, key: BlockKey) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            self.fetches[key] += 1
            return block_bytes(key, self.length(key))

        return fetch
