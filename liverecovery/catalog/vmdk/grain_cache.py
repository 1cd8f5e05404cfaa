"""A small thread-safe LRU of inflated grains, so neighbouring reads of a compressed disk
inflate each grain once."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["GrainCache"]


class GrainCache:
    """Keeps up to ``capacity_bytes`` of inflated grains, least recently used evicted first."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._used = 0
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: int, value: bytes) -> None:
        if len(value) > self._capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)
            self._items[key] = value
            self._used += len(value)
            while self._used > self._capacity:
                _, evicted = self._items.popitem(last=False)
                self._used -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0
