"""Fault injection for backend calls: fail, hang, slow down, or pause at a named operation.

Every in-memory backend calls ``await faults.hit("vsphere.power_on")`` (the backend's name and the
method) before doing anything, so a test or an embedder's harness can make any call misbehave in
any state of a job, and can see the order calls were made in.
"""

from __future__ import annotations

import enum
import math

import anyio
import anyio.lowlevel
import attrs

from liverecovery.errors import BackendError

__all__ = ["Fault", "FaultKind", "FaultPlan", "Pause"]


class FaultKind(enum.StrEnum):
    FAIL = "fail"
    HANG = "hang"
    SLOW = "slow"
    PAUSE = "pause"


@attrs.define(eq=False)
class Pause:
    """Holds a call until ``release()``; ``reached`` is set when a call arrives."""

    reached: anyio.Event = attrs.field(factory=anyio.Event)
    released: anyio.Event = attrs.field(factory=anyio.Event)

    def release(self) -> None:
        self.released.set()


@attrs.define
class Fault:
    """What happens to the next ``times`` calls of ``operation``."""

    operation: str
    kind: FaultKind
    times: float = 1
    delay: float = 0.0
    error: Exception | None = None
    pause: Pause | None = None


@attrs.define
class FaultPlan:
    """Faults by operation name, and the log of every call made."""

    faults: list[Fault] = attrs.field(factory=list)
    calls: list[str] = attrs.field(factory=list)

    def fail(self, operation: str, error: Exception | None = None, *, times: float = 1) -> None:
        """The next ``times`` calls raise ``error`` (default: a BackendError naming the call)."""
        self.faults.append(Fault(operation, FaultKind.FAIL, times=times, error=error))

    def hang(self, operation: str, *, times: float = 1) -> None:
        """The next ``times`` calls never return (until cancelled or timed out)."""
        self.faults.append(Fault(operation, FaultKind.HANG, times=times))

    def slow(self, operation: str, seconds: float, *, times: float = math.inf) -> None:
        """Calls take ``seconds`` longer."""
        self.faults.append(Fault(operation, FaultKind.SLOW, times=times, delay=seconds))

    def pause(self, operation: str) -> Pause:
        """The next call waits until the returned ``Pause`` is released."""
        pause = Pause()
        self.faults.append(Fault(operation, FaultKind.PAUSE, pause=pause))
        return pause

    def clear(self) -> None:
        """Remove every fault (the call log is kept)."""
        self.faults.clear()

    def count(self, operation: str) -> int:
        """How many calls of ``operation`` were made."""
        return self.calls.count(operation)

    async def hit(self, operation: str) -> None:
        """Record a call and apply the first matching fault.

        :raises BackendError: a FAIL fault without a specific error.
        """
        self.calls.append(operation)
        for fault in self.faults:
            if fault.operation != operation or fault.times <= 0:
                continue
            fault.times -= 1
            if fault.kind is FaultKind.FAIL:
                raise fault.error or BackendError(
                    f"injected failure of {operation}", operation=operation
                )
            if fault.kind is FaultKind.HANG:
                await anyio.sleep_forever()
            if fault.kind is FaultKind.SLOW:
                await anyio.sleep(fault.delay)
            if fault.kind is FaultKind.PAUSE and fault.pause is not None:
                fault.pause.reached.set()
                await fault.pause.released.wait()
            return
        await anyio.lowlevel.checkpoint()
