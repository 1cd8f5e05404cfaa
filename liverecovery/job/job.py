"""One recovery job: runs each step's I/O outside the state machine and records the outcome.

The lifecycle is data (``states.py``, driven by ``machine.py``); this module is its driver: in
each step state it runs the step, then fires ``advance``, ``fail`` or ``cancel``. Every side
effect a step completes is journaled and pushes its compensation, built from the effects table
(``effects.py``). Before power-on, a failure or a cancel pops them in reverse (power off,
unregister, unpublish, unmount, unexport, release the cache reservation); cleanup after a
migration pops the ones that remain.

Once the VM is powered on from the backup it is production, and nothing the job does by itself
takes it down: a failed storage vMotion goes back to serving with a ``JobWarning`` and is
retried (``migration_retries``, ``migration_backoff_s``), then waits for ``migrate_now``; a
cancel is refused; only ``stop(power_off=True)``, an operator's explicit request, powers it off
and undoes the rest. When the process stops serving it (``LiveRecovery`` exits, or a resume
cannot re-establish it) the job is *left running*: nothing is undone, the journal stays open,
and ``resume`` serves it again. Once the storage vMotion has finished the VM lives on its
destination datastore, so its ``vm_bound`` compensations (power-off, unregister) are dropped. A compensation that keeps failing is recorded and the rollback goes on with
the rest; the job then ends ``failed`` with every error attached. After a restart,
``reconcile.py`` rebuilds the same compensations from the journal.

A backup verification's job (``spec.verification``) runs an isolated, disposable copy: it is
never migrated (it serves until stopped), and a cancel, the process stopping or a teardown
powers it off and undoes everything instead of leaving it running: the one case where the
library powers a VM off by itself, because that VM is not production.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from liverecovery.backends import RestorePoint, ServedDisk, StagedVm, StagingContext, VmRef
from liverecovery.config import Settings
from liverecovery.errors import (
    BackendError,
    BackendTimeoutError,
    JobCancelledError,
    JobInterruptedError,
    JobLeftRunningError,
    JobStateError,
    RollbackError,
)
from liverecovery.job import effects, preflight, reconcile
from liverecovery.job.background import Background
from liverecovery.job.context import JobContext
from liverecovery.job.events import (
    CompensationRan,
    Event,
    EventLog,
    JobWarning,
    Progress,
    StateChanged,
)
from liverecovery.job.journal import Journal, JournalContents, spec_record
from liverecovery.job.machine import JobMachine
from liverecovery.job.sessions import SessionKind
from liverecovery.job.sharing import datastore_name_for
from liverecovery.job.states import (
    RUNNING_STATES,
    STEP_STATES,
    STEP_TIMEOUTS,
    TERMINAL_STATES,
    State,
)
from liverecovery.job.summary import JobStats, JobSummary
from liverecovery.job.throttle import Slot
from liverecovery.spec import RecoverySpec

__all__ = ["JobContext", "JobStats", "JobStatus", "JobSummary", "RecoveryJob", "retry_delay"]

_log = logging.getLogger(__name__)

_CANCELLED = object()

_POWER_STATE_BOUND_S = 5.0
"""How long a job asks vSphere whether an interrupted power-on took effect."""


def retry_delay(settings: Settings, failures: int) -> float | None:
    """How long to wait before retrying a storage vMotion that failed ``failures`` times in a
    row: ``migration_backoff_s`` doubled per earlier failure; None once ``migration_retries``
    automatic retries are used up (then only ``migrate_now`` starts it again)."""
    if failures < 1 or failures > settings.migration_retries:
        return None
    return float(settings.migration_backoff_s * 2 ** (failures - 1))


@attrs.frozen
class JobStatus:
    """What ``status`` shows of a job: where it stands and what it last warned about."""

    job_id: str
    vm: str
    state: State
    seconds_in_state: float
    bytes_served: int
    bytes_restored: int
    bytes_to_restore: int
    running_from_backup: bool
    migration_failures: int
    next_migration_retry_s: float | None
    """Seconds until the next automatic storage vMotion retry (None: none scheduled)."""
    last_warning: str
    left_running: bool

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["state"] = self.state.value
        return data


class RecoveryJob:
    """A live recovery of one VM; created and run by ``LiveRecovery.start``."""

    def __init__(
        self, spec: RecoverySpec, ctx: JobContext, *, resumed: JournalContents | None = None
    ) -> None:
        self.id = spec.job_id or uuid.uuid4().hex[:12]
        self.spec = spec
        self._ctx = ctx
        self._resumed = resumed
        initial = State(resumed.last_state) if resumed is not None else State.CREATED
        self._events = EventLog()
        self._machine = JobMachine(
            has_errors=lambda: bool(self._errors), on_change=self._changed, initial=initial
        )
        self._errors: list[BaseException] = []
        self._step_error: BaseException | None = None
        self._compensations: list[effects.Compensation] = []
        self._compensations_run: list[str] = []
        self._states: list[State] = [initial]
        self._entered: dict[State, float] = {initial: time.monotonic()}
        self._timings: dict[str, float] = {}
        self._done = anyio.Event()
        self._state_changed = anyio.Event()
        """Set at each state change, then replaced (waiters see the next one)."""
        self._cancel_requested = False
        self._stop_requested = False
        self._stop_settled = anyio.Event()
        self._leave_running = False
        self._vm_lost = False
        self._migration_failures = 0
        self._retry_at: float | None = None
        self._last_warning = ""
        self.left_running = False
        """The process stopped serving the job while its VM runs from the backup (see
        ``request_exit``): nothing was undone and ``resume`` continues it."""
        self._scope: anyio.CancelScope | None = None
        self._abandoned = ""
        self._migrate_now = anyio.Event()
        self._session_held = False
        self._journal: Journal | None = None
        self._background = Background(ctx.settings, self._progress)
        self._tg: anyio.abc.TaskGroup | None = None
        self._migrated_fraction = 0.0
        self.point: RestorePoint | None = None
        self.export_path: str | None = None
        self.datastore: str | None = None
        self.folder = f"{spec.vm}-{self.id}"
        self.staged: StagedVm | None = None
        self.vm: VmRef | None = None
        self.migrated = False
        self._steps: dict[State, Callable[[], Awaitable[None]]] = {
            State.PREFLIGHT: self._preflight,
            State.EXPORTING: self._export,
            State.MOUNTING: self._mount,
            State.STAGING: self._stage,
            State.REGISTERING: self._register,
            State.POWERING_ON: self._power_on,
            State.SERVING: self._serve,
            State.MIGRATING: self._migrate,
            State.CLEANING_UP: self._cleanup,
        }

    # -- what callers see ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def context(self) -> JobContext:
        """What the job shares with the other jobs of its ``LiveRecovery``."""
        return self._ctx

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def states_visited(self) -> tuple[State, ...]:
        return tuple(self._states)

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """Every error of the job: the one that failed it first, then failed compensations."""
        return tuple(self._errors)

    @property
    def compensations_run(self) -> tuple[str, ...]:
        """Names of the compensations run (by a rollback or by cleanup), in order."""
        return tuple(self._compensations_run)

    @property
    def pending_compensations(self) -> tuple[str, ...]:
        """Names of the compensations a rollback would run now, in the order it would."""
        return tuple(c.name for c in reversed(self._compensations))

    @property
    def disposable(self) -> bool:
        """A verification's isolated copy: powered off and undone whenever it stops."""
        return self.spec.verification

    @property
    def running_from_backup(self) -> bool:
        """The VM is powered on from the backup (and has not migrated): it is production, and
        only ``stop(power_off=True)`` takes it down."""
        if self.migrated:
            return False
        if self.state in RUNNING_STATES:
            return True
        return self.state is not State.ROLLING_BACK and any(
            c.effect == "powered_on" for c in self._compensations
        )

    @property
    def keep_overlay(self) -> bool:
        """Whether undoing the folder keeps the write overlay: ``keep_overlay`` is set, or the
        VM was powered off outside the job (found on resume), so the writes it made while it
        ran from the backup may be all there is of them."""
        return self._ctx.settings.keep_overlay or self._vm_lost

    @property
    def last_warning(self) -> str:
        return self._last_warning

    def status(self) -> JobStatus:
        """Where the job stands now (``liverecovery status``)."""
        now = time.monotonic()
        s = self.stats
        retry = None if self._retry_at is None else max(0.0, round(self._retry_at - now, 3))
        return JobStatus(
            job_id=self.id,
            vm=self.spec.vm,
            state=self.state,
            seconds_in_state=round(now - self._entered.get(self.state, now), 3),
            bytes_served=s.bytes_served,
            bytes_restored=s.bytes_restored,
            bytes_to_restore=s.bytes_to_restore,
            running_from_backup=self.running_from_backup,
            migration_failures=self._migration_failures,
            next_migration_retry_s=retry,
            last_warning=self._last_warning,
            left_running=self.left_running,
        )

    @property
    def stats(self) -> JobStats:
        """Live statistics summed over the job's served disks."""
        disks = list(self.staged.disks.values()) if self.staged else []
        total = self.point.total_disk_bytes if self.point else 0
        restore = self._background.restore
        to_restore = restore.total_bytes if restore else total
        restored = restore.done_bytes if restore else 0
        if self.migrated:
            restored = to_restore
        return JobStats(
            bytes_served=sum(d.stats.bytes_served for d in disks),
            cache_hits=sum(d.stats.cache_hits for d in disks),
            cache_misses=sum(d.stats.cache_misses for d in disks),
            bytes_fetched=sum(d.stats.bytes_fetched for d in disks),
            bytes_restored=restored,
            bytes_to_restore=to_restore,
            bytes_migrated=int(self._migrated_fraction * total),
            overlay_bytes=sum(d.overlay_bytes for d in disks),
        )

    def events(self) -> AsyncIterator[Event]:
        """Every event from the job's start, then live ones until the job ends."""
        return self._events.follow()

    def summary(self) -> JobSummary:
        return JobSummary(
            job_id=self.id,
            vm=self.spec.vm,
            state=self.state,
            states_visited=self.states_visited,
            timings=dict(self._timings),
            compensations=self.compensations_run,
            errors=tuple(str(e) for e in self._errors),
            vm_ref=self.vm,
        )

    async def wait(self) -> JobSummary:
        """Wait for the job to end.

        :raises JobCancelledError: it was cancelled and rolled back cleanly.
        :raises Exception: the error that failed it (failed compensations in its notes and in
            ``job.errors``), or ``RollbackError`` when only compensations failed.
        :raises JobLeftRunningError: the process stopped serving it while its VM runs from
            the backup; ``resume`` continues it.
        """
        await self._done.wait()
        if self.state is State.FAILED:
            raise self._failure()
        if self.state is State.CANCELLED:
            if self._stop_requested:
                raise JobCancelledError(
                    f"job {self.id} was stopped: its VM was powered off and everything undone"
                )
            raise JobCancelledError(f"job {self.id} was cancelled and rolled back")
        if self.left_running:
            raise JobLeftRunningError(self._left_running_message())
        return self.summary()

    def _running_refusal(self, what: str) -> JobStateError:
        vm = self.vm.name if self.vm else self.spec.vm
        return JobStateError(
            f"job {self.id}: VM {vm!r} is running from the backup ({self.state.value}); "
            f"{what} would power it off, which happens only on an explicit request: "
            f"job.stop(power_off=True) or 'liverecovery stop {self.id} --power-off'. "
            f"To bring it home instead: job.migrate_now() or 'liverecovery migrate-now {self.id}'"
        )

    def request_cancel(self) -> None:
        """Ask the job to stop and roll back, before its VM is powered on; returns at once.

        :raises JobStateError: the VM runs from the backup (a cancel never powers it off; see
            ``stop``). The job keeps serving.
        """
        if self.done or self.state is State.ROLLING_BACK:
            return
        if self.running_from_backup and self.disposable:
            self.request_stop(power_off=True)
            return
        if self.running_from_backup:
            raise self._running_refusal("a cancel")
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    async def cancel(self) -> State:
        """Cancel the job and wait for its rollback; returns the final state.

        :raises JobStateError: the VM runs from the backup (see ``request_cancel``).
        """
        self.request_cancel()
        while not self.done:
            if self.running_from_backup and not self.disposable:  # powered on first
                raise self._running_refusal("a cancel")
            await self._state_changed.wait()
        return self.state

    def request_stop(self, *, power_off: bool = False) -> None:
        """Stop the job; returns at once. Before power-on this is a cancel. Once the VM runs
        from the backup, ``power_off=True`` is the operator's explicit request to power it
        off, unregister it and undo the rest (unpublish, unmount, unexport).

        :raises JobStateError: the VM runs from the backup and ``power_off`` is False (the job
            keeps serving); or the job has migrated, ended or is rolling back already.
        """
        if self.done or self.state in (State.ROLLING_BACK, State.CLEANING_UP):
            raise JobStateError(f"job {self.id} is {self.state.value}; nothing to stop")
        if not self.running_from_backup:
            self.request_cancel()
            return
        if not power_off and not self.disposable:  # a verification's copy is no production
            raise self._running_refusal("stopping it")
        self._stop_requested = True
        self._stop_settled = anyio.Event()
        if self._scope is not None:
            self._scope.cancel()

    async def stop(self, *, power_off: bool = False) -> State:
        """``request_stop``, then wait for the job to end; returns its state: ``cancelled``
        (or ``failed`` when an undo failed), or ``serving`` when the VM could not be powered
        off (it keeps running; ``last_warning`` says why)."""
        self.request_stop(power_off=power_off)
        settled = self._stop_settled
        with anyio.CancelScope() as scope:

            async def until_done() -> None:
                await self._done.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(until_done)
                await settled.wait()
                tg.cancel_scope.cancel()
        return self.state

    def request_exit(self) -> None:
        """The process is about to stop serving (``LiveRecovery`` exits): a job whose VM runs
        from the backup is left running (nothing undone, the journal left open for
        ``resume``); any other job is cancelled and rolled back."""
        if self.done or self.state is State.ROLLING_BACK:
            return
        if self.disposable:
            # Stopped and undone; left running only if it cannot be powered off.
            self._leave_running = True
            self.request_cancel()
            return
        self._leave_running = True
        if self.running_from_backup:
            if self._scope is not None:
                self._scope.cancel()
            return
        self.request_cancel()

    def abandon(self, why: str) -> None:
        """Stop at once, touching nothing outside this process: no vSphere call, no undo, no
        journal record. For a serving node that lost its service address (fenced): the node
        that took it over owns the job now, and anything done here would fight it. The job
        ends left running (``left_running``), whatever its state."""
        if self.done or self._abandoned:
            return
        self._abandoned = why
        if self._scope is not None:
            self._scope.cancel()

    async def _abandon_here(self) -> None:
        """What ``abandon`` does in the job's task: close the local folder, say why."""
        self._stop_background()
        self.left_running = True
        bound = self._ctx.settings.timeouts.compensation
        with anyio.CancelScope(shield=True):
            if self.staged is not None and self.export_path is not None:
                with contextlib.suppress(Exception), anyio.move_on_after(bound):
                    await self._ctx.backends.exporter.unpublish(self.export_path, self.folder)
                with contextlib.suppress(Exception), anyio.move_on_after(bound):
                    await self.staged.filesystem.aclose()
        self._warn(f"abandoned ({self._abandoned}) in state {self.state.value}: nothing undone")

    async def migrate_now(self) -> None:
        """Start (or retry) the storage vMotion now, without waiting for the migration policy
        or a retry's back-off.

        :raises JobStateError: the job has ended or is rolling back.
        """
        if self.done or self.state is State.ROLLING_BACK:
            raise JobStateError(f"job {self.id} is {self.state.value}; nothing to migrate")
        if self.disposable:
            raise JobStateError(f"job {self.id} verifies a backup: its VM is never migrated")
        self._migrate_now.set()
        await anyio.lowlevel.checkpoint()

    # -- the driver ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the job to a terminal state. Run by ``LiveRecovery`` in its task group."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self._open_journal()
                await self._drive()
            finally:
                self._stop_background()
                self._tg = None
                with anyio.CancelScope(shield=True):
                    await self._close_journal()

    @classmethod
    def from_journal(cls, contents: JournalContents, ctx: JobContext) -> RecoveryJob:
        """A job rebuilt from an unfinished journal (the passkey is not needed again: its
        preflight passed before the restart).

        :raises JobStateError: the journal does not start with a job record.
        """
        if not contents.records or contents.records[0].kind != "job":
            raise JobStateError(f"{contents.path}: not a job journal ({contents.tail_error})")
        data = dict(contents.records[0].data["spec"])
        data.pop("has_passkey", None)
        data.pop("passkey", None)
        vms = data.pop("vms")
        data["job_id"] = contents.job_id
        return cls(RecoverySpec(vm=vms, **data), ctx, resumed=contents)

    async def _open_journal(self) -> None:
        if self._ctx.journal_dir is None:
            return
        try:
            self._journal = await Journal.open(
                self._ctx.journal_dir / f"{self.id}.journal", self._ctx.journal_listener
            )
            if self._resumed is not None:
                await self._journal.append("resumed", from_state=self.state.value)
            else:
                await self._journal.append("job", job_id=self.id, spec=spec_record(self.spec))
        except OSError as exc:
            # Without a journal the job cannot promise crash recovery: it does not start.
            self._journal = None
            self._step_error = BackendError(
                f"cannot write the job journal in {self._ctx.journal_dir}: {exc.strerror}",
                operation="journal",
            )
            self._errors.append(self._step_error)

    async def _close_journal(self) -> None:
        if self._journal is None:
            return
        try:
            if self.state in TERMINAL_STATES:
                await self._journal.append("end", state=self.state.value)
        except OSError:
            pass
        finally:
            await self._journal.aclose()
            self._journal = None

    async def _record(self, kind: str, *, strict: bool = True, **data: Any) -> None:
        """Append to the journal, fsynced. Inside a step a failure fails the step (the crash
        guarantee cannot be kept); elsewhere it becomes a warning."""
        if self._journal is None:
            return
        try:
            await self._journal.append(kind, **data)
        except OSError as exc:
            message = f"cannot write the job journal: {exc.strerror}"
            if strict:
                raise BackendError(message, operation="journal") from exc
            self._events.append(JobWarning(self.id, message))

    async def _drive(self) -> None:
        try:
            if self._resumed is not None and not self._step_error:
                try:
                    await self._reconcile_bounded(self._resumed)
                except Exception as exc:
                    self._step_error = exc
                    self._errors.append(exc)
                    if self.running_from_backup:
                        # The journal says the VM runs from the backup: never undo it here.
                        await self._leave(f"resuming it failed: {exc}")
                        return
                    if self.state not in (State.ROLLING_BACK, *TERMINAL_STATES):
                        await self._fire("fail")
            else:
                first = "cancel" if self._cancel_requested or self._step_error else "advance"
                await self._fire(first)
            while self.state in STEP_STATES or await self._rolled_back():
                state = self.state
                outcome = await self._run_step(state)
                if self._abandoned:
                    await self._abandon_here()
                    return
                stopping = self.disposable and (self._stop_requested or self._cancel_requested)
                if self._leave_running and self.running_from_backup and not stopping:
                    await self._leave("the process stopped serving it")
                    return
                if state in RUNNING_STATES:
                    await self._after_running_step(state, outcome)
                elif (
                    self.running_from_backup and state is State.POWERING_ON and not self.disposable
                ):
                    # Powered on before a failure or a cancel took effect: it is production
                    # now, and keeps running.
                    interrupted = outcome is not None or self._cancel_requested
                    if interrupted and not self._stop_requested:
                        self._cancel_requested = False
                        why = (
                            f"an error ({outcome})"
                            if isinstance(outcome, BaseException)
                            else "a cancel"
                        )
                        self._warn(
                            f"the VM was powered on before {why} took effect: it keeps "
                            f"running from the backup; stop it with 'liverecovery stop "
                            f"{self.id} --power-off' if that is what you want"
                        )
                    await self._fire("advance")
                elif outcome is _CANCELLED:
                    await self._fire("cancel")
                elif isinstance(outcome, BaseException):
                    self._step_error = outcome
                    self._errors.append(outcome)
                    await self._fire("fail")
                elif self._cancel_requested and state is not State.CLEANING_UP:
                    await self._fire("cancel")
                else:
                    await self._fire("advance")
        except anyio.get_cancelled_exc_class():
            # The whole LiveRecovery is being torn down: undo what was done, unless the VM
            # runs from the backup (then it is left running for resume) or the job was
            # abandoned (another node owns it now).
            self._stop_background()
            with anyio.CancelScope(shield=True):
                if self._abandoned:
                    await self._abandon_here()
                elif self.running_from_backup and self.disposable:
                    self._stop_requested = True
                    if self.state in RUNNING_STATES:
                        await self._fire("stop")
                    elif self.state is not State.ROLLING_BACK:
                        await self._fire("cancel")
                    await self._rollback()
                    await self._fire("rolled_back")
                elif self.running_from_backup:
                    await self._leave("the process was torn down")
                elif self.state not in TERMINAL_STATES:
                    self._cancel_requested = True
                    if self.state is not State.ROLLING_BACK:
                        await self._fire("cancel")
                    await self._rollback()
                    await self._fire("rolled_back")
            raise
        finally:
            if self._session_held:
                self._ctx.sessions.release(self.spec.vm, self.id)
            self._events.close()
            self._done.set()
            self._state_changed.set()

    async def _rolled_back(self) -> bool:
        """Run a rollback the loop reached; True when the job goes back to serving (an
        operator's stop could not power the VM off), False when it has ended."""
        if self.state is not State.ROLLING_BACK:
            return False
        self._stop_background()
        with anyio.CancelScope(shield=True):
            if await self._rollback():
                await self._fire("power_off_failed")
                self._restart_background()
                self._stop_settled.set()
                return True
            await self._fire("rolled_back")
        return False

    async def _after_running_step(self, state: State, outcome: object) -> None:
        """Decide after a step while the VM runs from the backup: only an explicit stop
        takes it down; a failed migration goes back to serving and is retried."""
        if self._stop_requested:
            await self._fire("stop")
            return
        if self.disposable:
            return  # a verification's copy serves until it is stopped, whatever happened
        if state is State.SERVING:
            if isinstance(outcome, BaseException):
                if self._migration_failures and self._retry_at is None:
                    self._warn(f"still serving from the backup: {outcome}")
                    return  # retries used up: serve on until migrate-now or stop
                self._warn(f"{outcome}; starting the storage vMotion")
            await self._fire("advance")
            return
        if outcome is None:
            await self._fire("advance")
            return
        error = outcome if isinstance(outcome, BaseException) else JobInterruptedError("cancelled")
        self._migration_failures += 1
        delay = retry_delay(self._ctx.settings, self._migration_failures)
        self._retry_at = None if delay is None else time.monotonic() + delay
        if delay is None:
            then = (
                f"automatic retries are used up (migration_retries = "
                f"{self._ctx.settings.migration_retries}); it keeps serving until "
                f"'liverecovery migrate-now {self.id}' or 'liverecovery stop {self.id} --power-off'"
            )
        else:
            then = f"retrying in {delay:g} s"
        self._warn(
            f"storage vMotion failed ({self._migration_failures} time(s)): {error}; the VM "
            f"keeps running from the backup; {then}"
        )
        await self._record(
            "migration_failed", strict=False, error=str(error), failures=self._migration_failures
        )
        await self._fire("migration_failed")

    async def _leave(self, why: str) -> None:
        """Stop serving a VM that runs from the backup without touching vSphere: nothing is
        undone, the journal stays open (``resume`` serves it again). The folder is unpublished
        and closed here, unjournaled, so its overlay is flushed and a resume republishes it."""
        self._stop_background()
        self.left_running = True
        vm = self.vm.name if self.vm else self.spec.vm
        message = (
            f"left running ({why}): VM {vm!r} runs from the backup, its datastore "
            f"{self.datastore} stays mounted and export {self.export_path} stays declared; "
            "run 'liverecovery resume' (or LiveRecovery.resume()) to serve it again and go on"
        )
        bound = self._ctx.settings.timeouts.compensation
        with anyio.CancelScope(shield=True):
            if self.staged is not None and self.export_path is not None:
                with contextlib.suppress(Exception), anyio.move_on_after(bound):
                    await self._ctx.backends.exporter.unpublish(self.export_path, self.folder)
                with contextlib.suppress(Exception), anyio.move_on_after(bound):
                    await self.staged.filesystem.aclose()
            await self._record("left_running", strict=False, state=self.state.value, why=why)
        self._warn(message)
        _log.info("job %s: %s", self.id, message)

    def _left_running_message(self) -> str:
        return f"job {self.id}: {self._last_warning}"

    def _warn(self, message: str) -> None:
        self._last_warning = message
        self._events.append(JobWarning(self.id, message))

    async def _run_step(self, state: State) -> object:
        timeout_name = STEP_TIMEOUTS[state]
        timeout: float = getattr(self._ctx.settings.timeouts, timeout_name)
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._cancel_requested or self._stop_requested or self._abandoned:
                scope.cancel()
            if self._leave_running and self.running_from_backup:
                scope.cancel()
            try:
                with anyio.move_on_after(timeout) as deadline:
                    await self._steps[state]()
                if deadline.cancelled_caught:
                    return BackendTimeoutError(
                        f"{state.value} did not finish within timeouts.{timeout_name} = "
                        f"{timeout:g} s",
                        operation=state.value,
                    )
            except Exception as exc:
                return exc
            finally:
                self._scope = None
        if scope.cancelled_caught:
            return _CANCELLED
        return None

    async def _fire(self, trigger: str) -> None:
        state = await self._machine.fire(trigger)
        await self._record("state", strict=False, state=state.value)

    def _changed(self, previous: State, state: State) -> None:
        now = time.monotonic()
        self._timings[previous.value] = round(
            self._timings.get(previous.value, 0.0) + now - self._entered[previous], 6
        )
        self._entered[state] = now
        self._states.append(state)
        self._events.append(StateChanged(self.id, previous, state, self._events.elapsed()))
        self._state_changed.set()
        self._state_changed = anyio.Event()

    async def _did(self, effect: str, *, adopted: bool = False, **data: Any) -> None:
        """A side effect is in place: hold its undo (from the effects table), and journal it.
        ``adopted``: a previous process made it (resume)."""
        self._compensations.append(effects.compensation(effect, data, self, adopted=adopted))
        await self._record(effects.effect(effect).kind, effect=effect, **data)

    async def _adopt(self, effect: str, data: Mapping[str, Any]) -> None:
        await self._did(effect, adopted=True, **data)

    def _progress(self) -> None:
        s = self.stats
        self._events.append(
            Progress(
                self.id,
                self.state,
                s.bytes_served,
                s.bytes_restored,
                s.bytes_to_restore,
                s.bytes_migrated,
                self.point.total_disk_bytes if self.point else 0,
            )
        )

    def _stop_background(self) -> None:
        """Stop background restore and progress reports (before cleanup or rollback)."""
        self._background.stop()

    def _failure(self) -> BaseException:
        if self._step_error is not None:
            return self._step_error
        return RollbackError(
            f"job {self.id} was cancelled and {len(self._errors)} compensation(s) failed: "
            + "; ".join(str(e) for e in self._errors),
            tuple(self._errors),
        )

    # -- compensations -------------------------------------------------------------------------

    async def _compensate(self, comp: effects.Compensation) -> BaseException | None:
        """Run one compensation with retries; record it; return its last error, if any."""
        error = await effects.attempt(comp, self._ctx.settings)
        self._compensations_run.append(comp.name)
        self._events.append(CompensationRan(self.id, comp.name, str(error) if error else ""))
        if error is None:
            await self._record(
                effects.UNDONE_KIND, strict=False, effect=comp.effect, name=comp.name
            )
        return error

    async def _rollback(self) -> bool:
        """Undo what is held, in reverse. Returns True when an operator's stop could not
        power the VM off: it still runs from the backup, so nothing it needs is undone and
        the job goes back to serving it."""
        while self._compensations:
            comp = self._compensations.pop()
            error = await self._compensate(comp)
            if error is not None:
                self._errors.append(error)
                if self._errors[0] is not error:
                    self._errors[0].add_note(f"rollback: {comp.name} failed: {error}")
                if comp.effect == "powered_on" and self._stop_requested:
                    self._compensations.append(comp)
                    self._stop_requested = False
                    self._warn(
                        f"stop: powering the VM off failed ({error}); it keeps running from "
                        "the backup and the job goes on serving it; try the stop again"
                    )
                    return True
        return False

    # -- the steps (I/O, outside the machine) ----------------------------------------------------

    async def _preflight(self) -> None:
        ctx, spec = self._ctx, self.spec
        preflight.check_single_vm(spec)
        ctx.sessions.acquire(spec.vm, SessionKind.RECOVERY, self.id)
        self._session_held = True
        point = await ctx.backends.catalog.restore_point(spec.vm, spec.point_id)
        self.point = point
        preflight.check_media(point)
        preflight.check_passkey(ctx.settings, point, spec.passkey)
        await preflight.check_targets(
            spec,
            point,
            ctx.settings,
            ctx.backends.catalog,
            ctx.backends.vsphere,
            datastore_name_for(spec.esx_host),
        )
        async with ctx.space_lock:
            await preflight.check_cache_space(ctx.settings, ctx.backends.cache, point, self.id)
        reserved = ctx.backends.cache.reservations().get(self.id, 0)
        await self._did("cache_reserved", bytes=reserved, point_id=point.point_id)

    @contextlib.contextmanager
    def _whole(self) -> Iterator[None]:
        """Around a side effect and the record of its undo, for a disposable job: a cancel
        waits for the call to end, so the rollback knows whether it took effect (cut in the
        middle, a powered-on copy could be left behind). Still bounded by the step's timeout.
        """
        if not self.disposable:
            yield
            return
        name = STEP_TIMEOUTS[self.state]
        bound: float = getattr(self._ctx.settings.timeouts, name)
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + bound
            yield
        if scope.cancelled_caught:
            raise BackendTimeoutError(
                f"{self.state.value} did not finish within timeouts.{name} = {bound:g} s",
                operation=self.state.value,
            )

    async def _export(self) -> None:
        host = self.spec.esx_host
        with self._whole():
            self.export_path = await self._ctx.shares.acquire_export(
                host, self.spec.client_address, self.id
            )
            await self._did("exported", host=host, path=self.export_path)

    async def _mount(self) -> None:
        host = self.spec.esx_host
        remote = self._ctx.settings.nfs_address or "127.0.0.1"
        with self._whole():
            self.datastore = await self._ctx.shares.acquire_mount(host, remote, self.id)
            await self._did("mounted", host=host, datastore=self.datastore)

    async def _stage(self) -> None:
        await self._build_and_publish()

    def staging_context(self, datastore: str | None = None) -> StagingContext:
        """What the datastore builder is given to build (or discard) this job's VM folder."""
        datastore = datastore or self.datastore
        assert self.point is not None and datastore is not None
        ctx = self._ctx
        return StagingContext(
            job_id=self.id,
            spec=self.spec,
            point=self.point,
            settings=ctx.settings,
            catalog=ctx.backends.catalog,
            datastore=datastore,
            folder=self.folder,
        )

    async def _build_and_publish(self, *, replace: bool = False) -> None:
        """Build the VM folder and publish it (``replace``: unpublish a stale one first)."""
        assert self.point is not None and self.datastore and self.export_path
        ctx = self._ctx
        staging = self.staging_context()
        try:
            staged = await ctx.builder.build(staging)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await ctx.builder.discard(staging)
            raise
        path, exporter = self.export_path, ctx.backends.exporter
        try:
            if replace:
                with contextlib.suppress(BackendError):
                    await exporter.unpublish(path, self.folder)
            await exporter.publish(path, self.folder, staged.filesystem)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await staged.filesystem.aclose()
                await ctx.builder.discard(staging)
            raise
        self.staged = staged
        await self._did("published", path=path, folder=self.folder)

    async def _register(self) -> None:
        assert self.staged is not None
        vsphere = self._ctx.backends.vsphere
        vmx_path = f"[{self.datastore}] {self.folder}/{self.staged.vmx_name}"
        # Journaled first: a restart finds a registration that finished after a crash by path.
        await self._record(effects.effect("registered").intent, vmx_path=vmx_path)
        with self._whole():
            try:
                vm = await vsphere.register_vm(
                    self.spec.esx_host,
                    vmx_path,
                    self.spec.vm_name,
                    folder=self.spec.folder,
                    resource_pool=self.spec.resource_pool,
                )
            except BaseException:
                # Cut short or answered with an error, the registration may have happened all
                # the same: found by its path, it is undone with the rest (else a VM is left
                # registered on a datastore the rollback unmounts, its name taken). Not when
                # abandoned: another node owns the job now.
                if self._abandoned:
                    raise
                with anyio.CancelScope(shield=True):
                    found = await self._registered_anyway(vmx_path)
                    if found is not None:
                        self.vm = found
                        await self._did(
                            "registered", moref=found.moref, name=found.name, vmx_path=vmx_path
                        )
                raise
            self.vm = vm
            await self._did("registered", moref=vm.moref, name=vm.name, vmx_path=vm.vmx_path)

    async def _registered_anyway(self, vmx_path: str) -> VmRef | None:
        """The VM registered from ``vmx_path`` after a registration call that did not succeed,
        asked for at most ``_POWER_STATE_BOUND_S``; None when there is none or vSphere cannot
        say (then a warning names the path, for the operator to check)."""
        inventory = self._ctx.backends.inventory
        if inventory is None:
            return None
        with anyio.move_on_after(_POWER_STATE_BOUND_S):
            try:
                return await inventory.find_vm(vmx_path)
            except BackendError as exc:
                self._warn(
                    f"after the registration failed, vSphere could not say whether {vmx_path} "
                    f"was registered ({exc}); check that no VM is left registered from it"
                )
                return None
        self._warn(
            f"after the registration failed, vSphere did not say in time whether {vmx_path} "
            "was registered; check that no VM is left registered from it"
        )
        return None

    async def _power_on(self) -> None:
        assert self.vm is not None
        with self._whole():
            try:
                await self._ctx.backends.vsphere.power_on(self.vm)
            except BaseException:
                # Cut short (a cancel, the step's timeout) or answered with an error, the call
                # may still have powered the VM on: then it is production, and the rollback
                # must not unexport its datastore from under it. (Abandoned: another node
                # owns the job; nothing is undone here anyway.)
                if self._abandoned:
                    raise
                with anyio.CancelScope(shield=True):
                    if await self._powered_on_anyway():
                        await self._did("powered_on", moref=self.vm.moref)
                raise
            await self._did("powered_on", moref=self.vm.moref)
        self._progress()
        self._start_background()

    async def _powered_on_anyway(self) -> bool:
        """Whether the VM runs after a power-on call that did not succeed: vSphere's answer,
        asked for at most ``_POWER_STATE_BOUND_S``; when vSphere cannot say, yes (a VM that may
        run from the backup is left running, never undone under it). Without an inventory to
        ask, no: the call's error stands."""
        inventory = self._ctx.backends.inventory
        if inventory is None or self.vm is None:
            return False
        with anyio.move_on_after(_POWER_STATE_BOUND_S):
            try:
                state = await inventory.power_state(self.vm)
            except BackendError as exc:
                self._warn(
                    f"after the power-on failed, vSphere could not say whether the VM "
                    f"runs ({exc}); it is treated as running"
                )
                return True
            return state == "poweredOn"
        self._warn(
            "after the power-on failed, vSphere did not say in time whether the VM runs; "
            "it is treated as running"
        )
        return True

    # -- resuming after a restart ------------------------------------------------------------------

    async def _reconcile_bounded(self, contents: JournalContents) -> None:
        """``_reconcile`` within ``timeouts.resume``: a hung vCenter fails the resume."""
        bound = self._ctx.settings.timeouts.resume
        with anyio.move_on_after(bound) as deadline:
            await self._reconcile(contents)
        if deadline.cancelled_caught:
            raise BackendTimeoutError(
                f"resuming job {self.id} did not finish within timeouts.resume = {bound:g} s "
                "(vSphere, the catalog or the export did not answer)",
                operation="resume",
            )

    async def _reconcile(self, contents: JournalContents) -> None:
        """Compare the journal with reality (``reconcile.py``), re-establish what a continuing
        job holds and adopt the undos of what is in place, then move the machine along the
        table to where the job goes on."""
        ctx = self._ctx
        ctx.sessions.acquire(self.spec.vm, SessionKind.RECOVERY, self.id)
        self._session_held = True
        found = await reconcile.survey(contents, self.spec, ctx.backends.inventory)
        plan = found.plan
        self.vm = found.vm
        await self._record("reconciled", target=plan.target.value, reason=plan.reason)
        self._events.append(JobWarning(self.id, f"resumed: {plan.reason}"))
        if plan.last_state in TERMINAL_STATES:
            return
        await reconcile.reestablish(
            self,
            found,
            adopt=self._adopt,
            publish_again=lambda: self._build_and_publish(replace=True),
        )
        if plan.target is State.ROLLING_BACK and self.disposable and self.state in RUNNING_STATES:
            # A verification's copy: stopped and undone, overlay and all, like any other stop.
            self._stop_requested = True
            await self._fire("stop")
            return
        if plan.target is State.ROLLING_BACK:
            self._step_error = JobInterruptedError(
                f"job {self.id} was interrupted ({plan.reason}); rolled back what it had done"
            )
            self._errors.append(self._step_error)
            if self.state in RUNNING_STATES:
                # Resumed as running, but vSphere says the VM is powered off (outside the job).
                self._vm_lost = True
                self._warn(
                    "the VM was powered off outside the job while it ran from the backup: the "
                    "rest is undone, but its write overlay (the writes it made) is kept under "
                    f"{self._ctx.settings.job_results_dir / 'jobs' / self.id}"
                )
                await self._fire("vm_lost")
            elif self.state is not State.ROLLING_BACK:
                await self._fire("fail")
            return
        while self.state is not plan.target:
            await self._fire("advance")
        if plan.target in (State.SERVING, State.MIGRATING):
            self._start_background()

    def _start_background(self) -> None:
        """Background restore and progress reports, from power-on until cleanup."""
        assert self._tg is not None
        self._background.start(self._tg, self._served_disks())

    def _restart_background(self) -> None:
        """Background work again after a stop that could not power the VM off."""
        assert self._tg is not None
        self._background.restart(self._tg, self._served_disks())

    def _served_disks(self) -> list[ServedDisk]:
        return list(self.staged.disks.values()) if self.staged else []

    async def _serve(self) -> None:
        if self.disposable:
            await anyio.sleep_forever()

        async def policy() -> None:
            if not self._migration_failures:
                await self._ctx.migration_policy.wait_until_ready(lambda: self.stats.bytes_served)
            elif self._retry_at is not None:
                await anyio.sleep(max(0.0, self._retry_at - time.monotonic()))
            else:
                await anyio.sleep_forever()  # retries used up: only migrate_now
            self._migrate_now.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(policy)
            await self._migrate_now.wait()
            tg.cancel_scope.cancel()

    async def _migrate(self) -> None:
        assert self.vm is not None

        def progress(done: int, total: int) -> None:
            if total > 0:
                self._migrated_fraction = min(1.0, done / total)
            self._progress()

        self._migrate_now = anyio.Event()  # a later migrate_now starts the next attempt
        self._retry_at = None
        async with contextlib.AsyncExitStack() as stack:
            slot = None
            if self._ctx.migration_slots is not None:  # wait for a slot, still serving
                slot = await stack.enter_async_context(
                    self._ctx.migration_slots.slot(self.spec.esx_host)
                )
            await self._record(
                "migration_started", moref=self.vm.moref, datastore=self.spec.datastore
            )
            watchdog = anyio.CancelScope()
            if slot is not None and self._tg is not None and self._ctx.settings.migration_stall_s:
                self._tg.start_soon(self._release_when_stalled, slot, watchdog)
            try:
                self.vm = await self._ctx.backends.vsphere.relocate(
                    self.vm, self.spec.datastore, progress
                )
            finally:
                watchdog.cancel()
        self.migrated = True
        await self._record("migrated", strict=False, moref=self.vm.moref, vmx_path=self.vm.vmx_path)
        self._migrated_fraction = 1.0
        # The VM now lives on its destination datastore: never take it down from here on.
        self._compensations = [c for c in self._compensations if not c.vm_bound]
        self._progress()

    async def _release_when_stalled(self, slot: Slot, scope: anyio.CancelScope) -> None:
        """Give the migration slot back once the copy's progress has not moved for
        ``migration_stall_s``: the storage vMotion goes on, the next VM's may start."""
        stall = self._ctx.settings.migration_stall_s
        with scope:
            seen, since = self._migrated_fraction, time.monotonic()
            while True:
                await anyio.sleep(min(stall / 4, 60.0))
                if self._migrated_fraction != seen:
                    seen, since = self._migrated_fraction, time.monotonic()
                elif time.monotonic() - since >= stall:
                    slot.release()
                    self._warn(
                        f"the storage vMotion made no progress for {stall:g} s (at {seen:.0%}); "
                        "its migration slot goes to the next VM while it goes on"
                    )
                    return

    async def _cleanup(self) -> None:
        self._stop_background()
        while self._compensations:
            comp = self._compensations.pop()
            # A compensation runs to its end (each attempt is bounded by its timeout): cut in
            # the middle, nobody could tell whether it took effect. A cancel lands between two.
            with anyio.CancelScope(shield=True):
                error = await self._compensate(comp)
            if error is not None:
                raise error
            await anyio.lowlevel.checkpoint()
        if self._ctx.settings.keep_overlay:
            self._events.append(JobWarning(self.id, "keep_overlay is set: the overlay is kept"))
