"""Stopping a long-running command cleanly: Ctrl-C from an operator, SIGTERM from a service
manager. Handlers are installed explicitly, so a command started in the background by a
shell (which ignores SIGINT there) still stops on either signal.

A hung vCenter must not keep the process alive: a pyVmomi call blocked in a socket read holds
a worker thread that Python would wait for at exit (and a second Ctrl-C would print a
threading traceback). So a command that was told to stop has a deadline (``hard_exit_after``),
and ``exit_without_lingering`` leaves at once when only such threads remain: the job journal
is fsynced record by record, so what was not undone is left for ``liverecovery resume``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

import anyio

__all__ = [
    "STOP_GRACE_S",
    "exit_without_lingering",
    "hard_exit_after",
    "stop_signals",
    "threads_now",
    "wait_for_stop_signal",
]

STOP_GRACE_S = 5.0
"""How long a command that was told to stop may take to roll back and close before it leaves."""

_IDLE_WORKER_WAIT_S = 1.0


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


def _leave(code: int, message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def hard_exit_after(seconds: float, message: Callable[[], str], code: int = 130) -> None:
    """Leave the process ``seconds`` from now, whatever it is doing, printing ``message()``
    first (what was left and how to resume). A daemon timer: it never keeps the process
    alive itself."""

    def fire() -> None:
        try:
            text = message()
        except Exception as exc:  # the message is best effort; leaving is not
            text = f"liverecovery: stopping ({exc})"
        _leave(code, text)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def threads_now() -> frozenset[threading.Thread]:
    """The threads alive now (before a command runs, for ``exit_without_lingering``)."""
    return frozenset(threading.enumerate())


def exit_without_lingering(code: int, before: frozenset[threading.Thread]) -> None:
    """Return normally when no non-daemon thread started since ``before`` is still alive;
    otherwise (a worker thread blocked in a call to a hung server, which Python would wait
    for at exit) leave the process now with ``code``."""
    deadline = time.monotonic() + _IDLE_WORKER_WAIT_S
    for t in threading.enumerate():
        if t in before or t.daemon or t is threading.current_thread():
            continue
        # Idle worker threads end by themselves right after the event loop; a blocked one not.
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            _leave(code, "")
