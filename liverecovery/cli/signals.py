"""Stopping a long-running command cleanly: Ctrl-C from an operator, SIGTERM from a service
manager. Handlers are installed explicitly, so a command started in the background by a
shell (which ignores SIGINT there) still stops on either signal."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager

import anyio

__all__ = ["stop_signals", "wait_for_stop_signal"]


def stop_signals() -> AbstractContextManager[AsyncIterator[int]]:
    """Handle SIGINT and SIGTERM from now on (enter it before announcing readiness, so a
    signal sent as soon as the command says it is ready stops it cleanly)."""
    return anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


async def wait_for_stop_signal(signals: AsyncIterator[int] | None = None) -> signal.Signals:
    """Return when SIGINT or SIGTERM arrives (on ``signals`` from ``stop_signals`` if given)."""
    if signals is not None:
        async for signum in signals:
            return signal.Signals(signum)
        raise RuntimeError("the signal receiver closed")  # pragma: no cover
    with stop_signals() as received:
        return await wait_for_stop_signal(received)
