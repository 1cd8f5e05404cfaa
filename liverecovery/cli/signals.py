"""Stopping a long-running command cleanly: Ctrl-C from an operator, SIGTERM from a service
manager. Handlers are installed explicitly, so a command started in the background by a
shell (which ignores SIGINT there) still stops on either signal."""

from __future__ import annotations

import signal

import anyio

__all__ = ["wait_for_stop_signal"]


async def wait_for_stop_signal() -> signal.Signals:
    """Return when SIGINT or SIGTERM arrives."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            return signal.Signals(signum)
    raise RuntimeError("the signal receiver closed")  # pragma: no cover
