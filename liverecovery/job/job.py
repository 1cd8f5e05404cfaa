"""One recovery job: runs each step's I/O outside the state machine and records the outcome.

Every completed step pushes the compensation that undoes it. A failure or a cancel pops them in
reverse (power off, unregister, unpublish, unmount, unexport, release the cache reservation);
cleanup after a migration pops the ones that remain. Once the storage vMotion has finished the
VM lives on its destination datastore, so its power-off and unregister compensations are dropped:
a rollback never takes a migrated VM down. A compensation that keeps failing is recorded and
the rollback goes on with the rest; the job then ends ``failed`` with every error attached.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from liverecovery.backends import (
    Backends,
    DatastoreBuilder,
    RestorePoint,
    StagedVm,
    StagingContext,
    VmRef,
    VSphereInventory,
)
from liverecovery.config import Settings
from liverecovery.datastore.restore import BackgroundRestore
from liverecovery.errors import (
    BackendError,
    BackendTimeoutError,
    JobCancelledError,
    JobInterruptedError,
    JobStateError,
    RollbackError,
    VSphereError,
)
from liverecovery.job import preflight
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
from liverecovery.job.migration import MigrationPolicy
from liverecovery.job.resume import plan_resume
from liverecovery.job.sessions import SessionKind, SessionRegistry
from liverecovery.job.sharing import HostShares, datastore_name_for
from liverecovery.job.states import STEP_STATES, STEP_TIMEOUTS, TERMINAL_STATES, State
from liverecovery.spec import RecoverySpec

__all__ = ["JobContext", "JobStats", "JobSummary", "RecoveryJob"]


@attrs.frozen
class JobContext:
    """What a job shares with the other jobs of one ``LiveRecovery``."""

    settings: Settings
    backends: Backends
    shares: HostShares
    sessions: SessionRegistry
    builder: DatastoreBuilder
    migration_policy: MigrationPolicy
    space_lock: anyio.Lock
    journal_dir: Path | None = None


@attrs.frozen
class JobStats:
    """The job's statistics at one moment; they feed its progress events.

    ``bytes_to_restore`` is what background restore must bring in (the allocated bytes of the
    served disks; the VM's total disk size when no disk is served through the cache).
    """

    bytes_served: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_fetched: int = 0
    bytes_restored: int = 0
    bytes_to_restore: int = 0
    bytes_migrated: int = 0
    overlay_bytes: int = 0


@attrs.frozen
class JobSummary:
    """How a job ended: its final state, the states it went through and how long each took."""

    job_id: str
    vm: str
    state: State
    states_visited: tuple[State, ...]
    timings: dict[str, float]
    compensations: tuple[str, ...]
    errors: tuple[str, ...]
    vm_ref: VmRef | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "job_id": self.job_id,
            "vm": self.vm,
            "state": self.state.value,
            "states_visited": [s.value for s in self.states_visited],
            "timings": self.timings,
            "compensations": list(self.compensations),
            "errors": list(self.errors),
            "vm_moref": self.vm_ref.moref if self.vm_ref else None,
        }


@attrs.frozen
class _Compensation:
    name: str
    undo: Callable[[], Awaitable[None]]
    vm_bound: bool = False
    effect: str = ""


_CANCELLED = object()


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
        self._compensations: list[_Compensation] = []
        self._compensations_run: list[str] = []
        self._states: list[State] = [initial]
        self._entered: dict[State, float] = {initial: time.monotonic()}
        self._timings: dict[str, float] = {}
        self._done = anyio.Event()
        self._cancel_requested = False
        self._scope: anyio.CancelScope | None = None
        self._migrate_now = anyio.Event()
        self._session_held = False
        self._journal: Journal | None = None
        self._bg_scopes: list[anyio.CancelScope] = []
        self._bg_stopped = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._restore: BackgroundRestore | None = None
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
    def stats(self) -> JobStats:
        """Live statistics summed over the job's served disks."""
        disks = list(self.staged.disks.values()) if self.staged else []
        total = self.point.total_disk_bytes if self.point else 0
        to_restore = self._restore.total_bytes if self._restore else total
        restored = self._restore.done_bytes if self._restore else 0
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
        """
        await self._done.wait()
        if self.state is State.FAILED:
            raise self._failure()
        if self.state is State.CANCELLED:
            raise JobCancelledError(f"job {self.id} was cancelled and rolled back")
        return self.summary()

    def request_cancel(self) -> None:
        """Ask the job to stop and roll back; returns at once."""
        if self.done or self.state is State.ROLLING_BACK:
            return
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    async def cancel(self) -> State:
        """Cancel the job and wait for its rollback; returns the final state."""
        self.request_cancel()
        await self._done.wait()
        return self.state

    async def migrate_now(self) -> None:
        """Start the storage vMotion without waiting for the migration policy.

        :raises JobStateError: the job has ended or is rolling back.
        """
        if self.done or self.state is State.ROLLING_BACK:
            raise JobStateError(f"job {self.id} is {self.state.value}; nothing to migrate")
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
            self._journal = await Journal.open(self._ctx.journal_dir / f"{self.id}.journal")
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
                    await self._reconcile(self._resumed)
                except Exception as exc:
                    self._step_error = exc
                    self._errors.append(exc)
                    if self.state not in (State.ROLLING_BACK, *TERMINAL_STATES):
                        await self._fire("fail")
            else:
                first = "cancel" if self._cancel_requested or self._step_error else "advance"
                await self._fire(first)
            while self.state in STEP_STATES:
                state = self.state
                outcome = await self._run_step(state)
                if outcome is _CANCELLED:
                    await self._fire("cancel")
                elif isinstance(outcome, BaseException):
                    self._step_error = outcome
                    self._errors.append(outcome)
                    await self._fire("fail")
                elif self._cancel_requested and state is not State.CLEANING_UP:
                    await self._fire("cancel")
                else:
                    await self._fire("advance")
            if self.state is State.ROLLING_BACK:
                self._stop_background()
                with anyio.CancelScope(shield=True):
                    await self._rollback()
                    await self._fire("rolled_back")
        except anyio.get_cancelled_exc_class():
            # The whole LiveRecovery is being torn down: still undo what was done.
            self._stop_background()
            with anyio.CancelScope(shield=True):
                self._cancel_requested = True
                if self.state not in TERMINAL_STATES:
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

    async def _run_step(self, state: State) -> object:
        timeout_name = STEP_TIMEOUTS[state]
        timeout: float = getattr(self._ctx.settings.timeouts, timeout_name)
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._cancel_requested:
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

    async def _did(
        self,
        effect: str,
        undo_name: str,
        undo: Callable[[], Awaitable[None]],
        *,
        vm_bound: bool = False,
        **data: Any,
    ) -> None:
        """A side effect completed: remember how to undo it, and journal it."""
        self._compensations.append(_Compensation(undo_name, undo, vm_bound, effect))
        await self._record("effect", effect=effect, **data)

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

    def _background_scope(self) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        if self._bg_stopped:
            scope.cancel()
        self._bg_scopes.append(scope)
        return scope

    def _stop_background(self) -> None:
        """Stop background restore and progress reports (before cleanup or rollback)."""
        self._bg_stopped = True
        for scope in self._bg_scopes:
            scope.cancel()

    async def _report_progress(self) -> None:
        with self._background_scope():
            while True:
                await anyio.sleep(self._ctx.settings.progress_interval_s)
                self._progress()

    async def _background_restore(self, restore: BackgroundRestore) -> None:
        with self._background_scope():
            await restore.run()
            self._progress()

    def _failure(self) -> BaseException:
        if self._step_error is not None:
            return self._step_error
        return RollbackError(
            f"job {self.id} was cancelled and {len(self._errors)} compensation(s) failed: "
            + "; ".join(str(e) for e in self._errors),
            tuple(self._errors),
        )

    # -- compensations -------------------------------------------------------------------------

    async def _compensate(self, comp: _Compensation) -> BaseException | None:
        """Run one compensation with retries; record it; return its last error, if any."""
        settings = self._ctx.settings
        error: BaseException | None = None
        for attempt in range(settings.compensation_attempts):
            if attempt:
                await anyio.sleep(settings.compensation_retry_delay_s * attempt)
            with anyio.move_on_after(settings.timeouts.compensation) as deadline:
                try:
                    await comp.undo()
                    error = None
                except Exception as exc:
                    error = exc
            if deadline.cancelled_caught:
                error = BackendTimeoutError(
                    f"{comp.name} did not finish within timeouts.compensation = "
                    f"{settings.timeouts.compensation:g} s",
                    operation=comp.name,
                )
            if error is None:
                break
        self._compensations_run.append(comp.name)
        self._events.append(CompensationRan(self.id, comp.name, str(error) if error else ""))
        if error is None:
            await self._record("undone", strict=False, effect=comp.effect, name=comp.name)
        return error

    async def _rollback(self) -> None:
        while self._compensations:
            comp = self._compensations.pop()
            error = await self._compensate(comp)
            if error is not None:
                self._errors.append(error)
                if self._errors[0] is not error:
                    self._errors[0].add_note(f"rollback: {comp.name} failed: {error}")

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
        async with ctx.space_lock:
            await preflight.check_cache_space(ctx.settings, ctx.backends.cache, point, self.id)
        reserved = ctx.backends.cache.reservations().get(self.id, 0)
        await self._did(
            "cache_reserved",
            "release_cache_reservation",
            lambda: ctx.backends.cache.release(self.id),
            bytes=reserved,
            point_id=point.point_id,
        )

    async def _export(self) -> None:
        host, shares = self.spec.esx_host, self._ctx.shares
        self.export_path = await shares.acquire_export(host, self.spec.client_address, self.id)

        async def unexport() -> None:
            await shares.release_export(host, self.id)

        await self._did("exported", "unexport", unexport, host=host, path=self.export_path)

    async def _mount(self) -> None:
        host, shares = self.spec.esx_host, self._ctx.shares
        remote = self._ctx.settings.nfs_address or "127.0.0.1"
        self.datastore = await shares.acquire_mount(host, remote, self.id)

        async def unmount() -> None:
            await shares.release_mount(host, self.id)

        await self._did("mounted", "unmount", unmount, host=host, datastore=self.datastore)

    async def _stage(self) -> None:
        await self._build_and_publish()

    def _staging_context(self, datastore: str | None = None) -> StagingContext:
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
        staging = self._staging_context()
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

        async def unpublish() -> None:
            await exporter.unpublish(path, self.folder)
            await staged.filesystem.aclose()
            if not ctx.settings.keep_overlay:
                await ctx.builder.discard(staging)

        await self._did("published", "unpublish", unpublish, path=path, folder=self.folder)

    # -- resuming after a restart ------------------------------------------------------------------

    async def _reconcile(self, contents: JournalContents) -> None:
        """Compare the journal with reality, re-establish what a continuing job holds (export
        with the same path and handles, the datastore mount, the VM folder), rebuild the undo
        list for what is in place, and move the machine to where the job goes on."""
        ctx, spec = self._ctx, self.spec
        backends, host = ctx.backends, spec.esx_host
        inventory = backends.vsphere if isinstance(backends.vsphere, VSphereInventory) else None
        ctx.sessions.acquire(spec.vm, SessionKind.RECOVERY, self.id)
        self._session_held = True
        facts = plan_resume(contents, vm_running=None).effects
        found: dict[str, dict[str, Any]] = {}
        if inventory is not None:
            found = await self._found_effects(contents, facts, inventory)
        if "registered" in facts or "registered" in found:
            r = facts.get("registered") or found["registered"]
            self.vm = VmRef(str(r["moref"]), str(r["name"]), str(r["vmx_path"]))
        vm_running: bool | None = None
        if inventory is not None and self.vm is not None:
            try:
                vm_running = await inventory.power_state(self.vm) == "poweredOn"
            except VSphereError:
                vm_running = False
            if vm_running and "powered_on" not in facts:
                found["powered_on"] = {"effect": "powered_on", "moref": self.vm.moref}
        plan = plan_resume(contents, vm_running=vm_running, found=found)
        await self._record("reconciled", target=plan.target.value, reason=plan.reason)
        self._events.append(JobWarning(self.id, f"resumed: {plan.reason}"))
        if plan.last_state in TERMINAL_STATES:
            return
        effects, continuing = plan.effects, plan.target is not State.ROLLING_BACK
        if "cache_reserved" in effects:
            c = effects["cache_reserved"]
            self.point = await backends.catalog.restore_point(spec.vm, c.get("point_id"))
            if continuing:
                await backends.cache.reserve(self.id, int(c.get("bytes", 0)))
            await self._did(
                "cache_reserved",
                "release_cache_reservation",
                lambda: backends.cache.release(self.id),
                bytes=int(c.get("bytes", 0)),
                point_id=c.get("point_id"),
            )
        if "exported" in effects:
            path = str(effects["exported"]["path"])
            if continuing or path in backends.exporter.exports():
                await ctx.shares.adopt_export(host, spec.client_address, self.id, path)
                self.export_path = path

                async def unexport() -> None:
                    await ctx.shares.release_export(host, self.id)

                await self._did("exported", "unexport", unexport, host=host, path=path)
        if "mounted" in effects and (self.export_path or not continuing):
            # Rolling back, a mount is undone even though the export died with the process.
            datastore = str(effects["mounted"]["datastore"])
            mounted = True
            if inventory is not None:
                mounted = datastore in await inventory.nfs_datastores(host)
            if continuing or mounted:
                remote = ctx.settings.nfs_address or "127.0.0.1"
                await ctx.shares.adopt_mount(host, remote, self.id, datastore, mounted)
                self.datastore = datastore

                async def unmount() -> None:
                    await ctx.shares.release_mount(host, self.id)

                await self._did("mounted", "unmount", unmount, host=host, datastore=datastore)
        if "published" in effects and self.point and self.datastore and self.export_path:
            if continuing and plan.migrated is None:
                await self._build_and_publish(replace=True)
            else:
                await self._adopt_folder()
        elif self.point is not None and not ctx.settings.keep_overlay:
            # Killed while staging: a half-built overlay directory may be there.
            await ctx.builder.discard(self._staging_context(datastore_name_for(host)))
        if plan.migrated is not None:
            m = plan.migrated
            name = self.vm.name if self.vm else spec.vm
            self.vm = VmRef(str(m["moref"]), name, str(m["vmx_path"]))
            self.migrated = True
        elif self.vm is not None:
            await self._adopt_vm(effects, inventory, running=vm_running is not False)
        # Move the machine along the table to where the job goes on.
        if plan.target is State.ROLLING_BACK:
            self._step_error = JobInterruptedError(
                f"job {self.id} was interrupted ({plan.reason}); rolled back what it had done"
            )
            self._errors.append(self._step_error)
            if self.state is not State.ROLLING_BACK:
                await self._fire("fail")
            return
        while self.state is not plan.target:
            await self._fire("advance")
        if plan.target in (State.SERVING, State.MIGRATING):
            self._start_background()

    async def _found_effects(
        self,
        contents: JournalContents,
        facts: Mapping[str, Mapping[str, Any]],
        inventory: VSphereInventory,
    ) -> dict[str, dict[str, Any]]:
        """Side effects vSphere shows that the journal lacks: the process died between the
        call and its journal record (a datastore mount or a VM registration in flight)."""
        found: dict[str, dict[str, Any]] = {}
        host, last = self.spec.esx_host, State(contents.last_state)
        if last is State.MOUNTING and "mounted" not in facts and "exported" in facts:
            datastore = datastore_name_for(host)
            if datastore in await inventory.nfs_datastores(host):
                found["mounted"] = {"effect": "mounted", "host": host, "datastore": datastore}
        if last is State.REGISTERING and "registered" not in facts:
            intent = next(
                (r.data for r in reversed(contents.records) if r.kind == "registering"), None
            )
            if intent is not None:
                vm = await inventory.find_vm(str(intent["vmx_path"]))
                if vm is not None:
                    found["registered"] = {
                        "effect": "registered",
                        "moref": vm.moref,
                        "name": vm.name,
                        "vmx_path": vm.vmx_path,
                    }
        return found

    async def _adopt_folder(self) -> None:
        """Undo for a folder published before the restart: unpublish if still there, then
        remove the overlay directory."""
        assert self.point is not None and self.datastore and self.export_path
        ctx, path = self._ctx, self.export_path
        staging = self._staging_context()

        async def unpublish() -> None:
            with contextlib.suppress(BackendError):
                await ctx.backends.exporter.unpublish(path, self.folder)
            if not ctx.settings.keep_overlay:
                await ctx.builder.discard(staging)

        await self._did("published", "unpublish", unpublish, path=path, folder=self.folder)

    async def _adopt_vm(
        self,
        effects: Mapping[str, Mapping[str, Any]],
        inventory: VSphereInventory | None,
        *,
        running: bool,
    ) -> None:
        """Undo for the VM registered (and powered on) before the restart, skipping whatever
        vSphere says is already undone."""
        vsphere = self._ctx.backends.vsphere

        async def state() -> str | None:
            if inventory is None or self.vm is None:
                return "unknown"
            try:
                return await inventory.power_state(self.vm)
            except VSphereError:
                return None

        async def unregister() -> None:
            now = await state()
            if self.vm is not None and now is not None:
                if now == "poweredOn":
                    # A power-on that was in flight at the crash finished after it.
                    await vsphere.power_off(self.vm)
                await vsphere.unregister_vm(self.vm)

        async def power_off() -> None:
            if self.vm is not None and await state() in ("poweredOn", "unknown"):
                await vsphere.power_off(self.vm)

        assert self.vm is not None
        await self._registered(unregister)
        if "powered_on" in effects and running:
            await self._did(
                "powered_on", "power_off", power_off, vm_bound=True, moref=self.vm.moref
            )

    async def _registered(self, unregister: Callable[[], Awaitable[None]]) -> None:
        """The VM is registered: journal where, and remember how to unregister it."""
        assert self.vm is not None
        await self._did(
            "registered",
            "unregister",
            unregister,
            vm_bound=True,
            moref=self.vm.moref,
            name=self.vm.name,
            vmx_path=self.vm.vmx_path,
        )

    async def _register(self) -> None:
        assert self.staged is not None
        vsphere = self._ctx.backends.vsphere
        vmx_path = f"[{self.datastore}] {self.folder}/{self.staged.vmx_name}"
        # Journaled first: a restart finds a registration that finished after a crash by path.
        await self._record("registering", vmx_path=vmx_path)
        self.vm = await vsphere.register_vm(
            self.spec.esx_host, vmx_path, self.spec.vm + self.spec.name_suffix
        )

        async def unregister() -> None:
            assert self.vm is not None
            await vsphere.unregister_vm(self.vm)

        await self._registered(unregister)

    async def _power_on(self) -> None:
        assert self.vm is not None
        vsphere = self._ctx.backends.vsphere
        await vsphere.power_on(self.vm)

        async def power_off() -> None:
            assert self.vm is not None
            await vsphere.power_off(self.vm)

        await self._did("powered_on", "power_off", power_off, vm_bound=True, moref=self.vm.moref)
        self._progress()
        self._start_background()

    def _start_background(self) -> None:
        """Background restore and progress reports, from power-on until cleanup."""
        assert self._tg is not None
        if self.staged is not None and self.staged.disks:
            self._restore = BackgroundRestore(
                list(self.staged.disks.values()),
                bandwidth_bps=self._ctx.settings.restore_bandwidth_bps or None,
            )
            self._tg.start_soon(self._background_restore, self._restore)
        self._tg.start_soon(self._report_progress)

    async def _serve(self) -> None:
        async def policy() -> None:
            await self._ctx.migration_policy.wait_until_ready(lambda: self.stats.bytes_served)
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

        await self._record("migration_started", moref=self.vm.moref, datastore=self.spec.datastore)
        self.vm = await self._ctx.backends.vsphere.relocate(self.vm, self.spec.datastore, progress)
        self.migrated = True
        await self._record("migrated", strict=False, moref=self.vm.moref, vmx_path=self.vm.vmx_path)
        self._migrated_fraction = 1.0
        # The VM now lives on its destination datastore: never take it down from here on.
        self._compensations = [c for c in self._compensations if not c.vm_bound]
        self._progress()

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
