"""``Fills``: the blocks whose filler is reading them from the backup right now.

A cache lookup that misses makes its caller the block's filler; a lookup of the same block while
that fill is under way waits here for the filler's bytes instead of missing too, so concurrent
misses of one block read the backup once. Nothing here calls back into the caller.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import anyio

__all__ = ["Fills"]

K = TypeVar("K", bound=Hashable)


class _Fill:
    """One fill under way: its bytes once handed over, or the error it was abandoned with.

    The event is made by the first waiter (most fills have none: making one costs more than a
    miss's bookkeeping)."""

    __slots__ = ("data", "error", "event")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.error: Exception | None = None
        self.event: anyio.Event | None = None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()


class Fills(Generic[K]):
    """The fills under way, by key. Used from one event loop."""

    __slots__ = ("_fills",)

    def __init__(self) -> None:
        self._fills: dict[K, _Fill] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._fills

    async def join(self, key: K) -> bytes | None:
        """The bytes of the fill under way for ``key`` once handed over; None when there is no
        fill under way: the caller is now the filler and must ``end`` it.

        :raises Exception: the error the filler abandoned the fill with.
        """
        while True:
            fill = self._fills.get(key)
            if fill is None:
                self._fills[key] = _Fill()
                return None
            if fill.data is not None:
                return fill.data
            if fill.event is None:
                fill.event = anyio.Event()
            await fill.event.wait()
            if fill.data is not None:
                return fill.data
            if fill.error is not None:
                raise fill.error
            # Abandoned without an error (its filler was cancelled): try again, maybe filling.

    def hand_over(self, key: K, data: bytes) -> None:
        """Give the fill's bytes to its waiters (and to joins until ``end``)."""
        fill = self._fills.get(key)
        if fill is not None:
            fill.data = data
            fill.wake()

    def end(self, key: K, error: Exception | None = None) -> None:
        """End the fill. Without bytes handed over, its waiters raise ``error`` or, when None,
        join again (one of them becoming the filler)."""
        fill = self._fills.pop(key, None)
        if fill is not None:
            if fill.data is None:
                fill.error = error
            fill.wake()
