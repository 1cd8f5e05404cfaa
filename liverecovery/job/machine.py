"""The transitions ``AsyncMachine`` built from the state table.

Callbacks here only decide (conditions) and record (a synchronous state-change hook); they never
do I/O. transitions 0.9.3 swallows ``CancelledError`` raised inside callbacks and runs callbacks of
one list concurrently, so the job's I/O runs outside the machine and fires triggers afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from transitions.core import MachineError
from transitions.extensions.asyncio import AsyncMachine

from liverecovery.errors import JobStateError
from liverecovery.job.states import TRANSITIONS, State

__all__ = ["JobMachine"]


class _Model:
    """The object transitions attaches ``state`` and the trigger methods to."""

    state: str

    def __init__(self, has_errors: Callable[[], bool]) -> None:
        self._has_errors = has_errors

    def has_errors(self, _event: Any = None) -> bool:
        return self._has_errors()


class JobMachine:
    """A job's state, changed only through the triggers of ``TRANSITIONS``."""

    def __init__(
        self,
        *,
        has_errors: Callable[[], bool],
        on_change: Callable[[State, State], None],
        initial: State = State.CREATED,
    ) -> None:
        self._model = _Model(has_errors)
        self._on_change = on_change
        self._machine = AsyncMachine(
            model=self._model,
            states=[s.value for s in State],
            transitions=[
                {
                    "trigger": t.trigger,
                    "source": t.source.value,
                    "dest": t.dest.value,
                    "conditions": list(t.conditions),
                    "unless": list(t.unless),
                }
                for t in TRANSITIONS
            ],
            initial=initial.value,
            auto_transitions=False,
            send_event=True,
            after_state_change=self._after_change,
        )

    @property
    def state(self) -> State:
        return State(self._model.state)

    def can(self, trigger: str) -> bool:
        """Whether ``trigger`` has a row for the current state."""
        return any(t.trigger == trigger and t.source == self.state for t in TRANSITIONS)

    async def fire(self, trigger: str) -> State:
        """Fire ``trigger`` and return the new state.

        :raises JobStateError: no transition for ``trigger`` from the current state, or no row's
            conditions held.
        """
        before = self.state
        try:
            # Triggers do no I/O; shielded, a cancellation cannot land inside transitions,
            # which would swallow it (0.9.3) and leave the trigger half-processed.
            with anyio.CancelScope(shield=True):
                moved: Any = await getattr(self._model, trigger)()
        except (MachineError, AttributeError):
            raise JobStateError(f"cannot {trigger!r} from state {before.value!r}") from None
        await anyio.lowlevel.checkpoint()
        if not moved:
            raise JobStateError(f"no transition for {trigger!r} from {before.value!r} applied")
        return self.state

    def _after_change(self, event: Any) -> None:
        self._on_change(State(event.transition.source), State(event.transition.dest))
