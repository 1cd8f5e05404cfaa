"""Verifies every VM of a plan in its boot groups: each an isolated, disposable copy.

The plan's preflight (VMs, hosts, placement, the hosts' NFS limits, the cache space of every
copy at once) runs first and refuses a plan that cannot run before anything starts. Then each
VM is verified by ``verify_vm`` (``spec.verification``: a new name and UUID, NICs disconnected
or on the isolated port group, writes discarded, never migrated, so no storage vMotion slots).
A group starts once the groups it follows are ready: their copies powered on and their checks
ended (their heartbeat among them when the group waits for heartbeats: the failure policy
needs each copy's outcome), and their delay passed. At most ``max_in_flight`` copies are
between their start and their power-on at a time. Copies stay up until every group was run or
not run, so a later group boots next to the earlier ones as it would in a real recovery; then
they are undone, the last group first. A failing VM in an ``on_failure = "stop"`` group means
the groups after it (transitively) are not run (``skip_reasons``, pure); a cancel (the
``cancel`` event, or ``PlanVerificationRun.cancel``: ``plan cancel`` through the control
socket) stops the running checks and starts no more groups. After every outcome every copy is
powered off, unregistered, unmounted and unexported; one report covers the plan. While it runs,
its ``PlanVerificationRun`` answers ``plan status`` with the same table as a plan's run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs

from liverecovery.backends import Backends, GuestOperations, TargetQuery
from liverecovery.config import Settings
from liverecovery.errors import LiveRecoveryError, PlanError, VerificationRefusedError
from liverecovery.job.job import RecoveryJob
from liverecovery.plan.model import BootGroup, FailurePolicy, GroupWait, Plan
from liverecovery.plan.runner import JobStarter, PlannedVm, VmRow, new_run_id, preflight
from liverecovery.plan.verify_report import GroupRecord, PlanVerificationReport, VmRecord
from liverecovery.verify.checks import Check, default_checks, in_run_order
from liverecovery.verify.names import verification_name_problem
from liverecovery.verify.report import VerificationReport
from liverecovery.verify.run import VerifyOptions, refusals, verify_vm

__all__ = ["PlanVerificationRun", "group_checks", "skip_reasons", "verify_plan"]

CANCELLED = "the verification was cancelled"


def skip_reasons(
    predecessors: Mapping[str, Sequence[str]],
    stop_groups: Collection[str],
    failing: Collection[str],
) -> dict[str, str]:
    """Which groups are not run, and why; pure. ``predecessors``: each group's predecessors
    (``Plan.predecessors``); ``stop_groups``: those whose ``on_failure`` is stop;
    ``failing``: those in which some VM fails when the group runs. A group is not run when a
    stop group it follows, directly or not, ran and failed."""
    memo: dict[str, str | None] = {}

    def reason(group: str, seen: frozenset[str]) -> str | None:
        if group in memo:
            return memo[group]
        found: str | None = None
        for pred in predecessors.get(group, ()):
            if pred in seen:  # a cycle: refused by the parser; do not loop here
                continue
            why = reason(pred, seen | {pred})
            if why is not None:
                found = why
                break
            if pred in stop_groups and pred in failing:
                found = f"group {pred!r} failed and its on_failure is stop"
                break
        memo[group] = found
        return found

    return {g: why for g in predecessors if (why := reason(g, frozenset({g}))) is not None}


def group_checks(checks: Sequence[Check], group: BootGroup) -> tuple[Check, ...]:
    """The checks of a group's VMs: a group that waits for heartbeats verifies one (within
    its ``heartbeat_timeout_s``) even when the checks do not name it."""
    if group.wait is GroupWait.HEARTBEAT and not any(c.kind == "heartbeat" for c in checks):
        return tuple(
            in_run_order([*checks, Check("heartbeat", timeout_s=group.heartbeat_timeout_s)])
        )
    return tuple(checks)


async def _check_network(
    plan: Plan, planned: Sequence[PlannedVm], backends: Backends, network: str
) -> None:
    """Every host the plan uses has the isolated port group (each VM's own preflight would
    refuse it too, but only once its group starts).

    :raises PlanError: the hosts without it, all at once.
    """
    problems = []
    for host in sorted({p.host for p in planned}):
        try:
            facts = await backends.vsphere.describe(TargetQuery(host=host, networks=(network,)))
        except LiveRecoveryError as exc:
            raise PlanError(
                f"{plan.source}: cannot ask vSphere about host {host!r}: {exc}"
            ) from None
        if network not in facts.host.networks:
            have = ", ".join(sorted(facts.host.networks)) or "none"
            problems.append(
                f"{plan.source}: host {host!r} has no port group {network!r} for the isolated "
                f"network (its networks: {have})"
            )
    if problems:
        raise PlanError(f"{plan.source}: the isolated network is missing:", tuple(problems))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@attrs.define
class _Vm:
    """One VM's verification while the plan runs."""

    planned: PlannedVm
    checked: anyio.Event = attrs.field(factory=anyio.Event)
    ended: anyio.Event = attrs.field(factory=anyio.Event)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    ran: bool = False
    passed: bool = False
    report: VerificationReport | None = None
    powered_on_at: float | None = None
    reason: str = ""


@attrs.define
class _PlanVerification:
    plan: Plan
    starter: JobStarter
    planned: Sequence[PlannedVm]
    checks: Sequence[Check]
    options: VerifyOptions
    report_dir: Path
    cancel: anyio.Event
    passkey: str | None = None
    t0: float = attrs.field(factory=time.monotonic)
    vms: dict[str, _Vm] = attrs.field(factory=dict)
    skipped: dict[str, str] = attrs.field(factory=dict)
    failing: set[str] = attrs.field(factory=set)
    release: dict[str, anyio.Event] = attrs.field(factory=dict)
    cancelled: bool = False

    def __attrs_post_init__(self) -> None:
        self.vms = {p.vm.vm: _Vm(p) for p in self.planned}
        self.release = {g.name: anyio.Event() for g in self.plan.groups}

    def members(self, group: str) -> list[_Vm]:
        return [v for v in self.vms.values() if v.planned.vm.group == group]

    async def run(self) -> None:
        preds = self.plan.predecessors()
        stop = {g.name for g in self.plan.groups if g.on_failure is FailurePolicy.STOP}
        ready = {g.name: anyio.Event() for g in self.plan.groups}
        limiter = anyio.Semaphore(self.plan.max_in_flight)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_cancel)
            async with anyio.create_task_group() as groups:
                for group in self.plan.groups:
                    groups.start_soon(self._group, tg, group, preds, stop, ready, limiter)
            # Every group ran or was not run: undo the copies, the last group first.
            for group in reversed(self.plan.groups):
                self.release[group.name].set()
                for vm in self.members(group.name):
                    await vm.ended.wait()
            tg.cancel_scope.cancel()

    async def _watch_cancel(self) -> None:
        await self.cancel.wait()
        self.cancelled = True
        for vm in self.vms.values():
            if not vm.checked.is_set():  # copies whose checks ended keep their outcome
                vm.scope.cancel()
        for event in self.release.values():
            event.set()

    async def _group(
        self,
        tg: anyio.abc.TaskGroup,
        group: BootGroup,
        preds: Mapping[str, Sequence[str]],
        stop: set[str],
        ready: Mapping[str, anyio.Event],
        limiter: anyio.Semaphore,
    ) -> None:
        members = self.members(group.name)
        try:
            for name in preds[group.name]:
                await ready[name].wait()
            why = skip_reasons(preds, stop, self.failing).get(group.name)
            if why is None and self.cancelled:
                why = CANCELLED
            if why is not None:
                self.skipped[group.name] = why
                for vm in members:
                    vm.reason = f"not run: {why}"
                    vm.ended.set()
                return
            checks = group_checks(self.checks, group)
            for vm in members:
                tg.start_soon(self._vm, vm, checks, limiter)
            for vm in members:
                await vm.checked.wait()
            if any(not vm.passed for vm in members):
                self.failing.add(group.name)
            if group.delay_s and not self.cancelled:
                with anyio.move_on_after(group.delay_s):
                    await self.cancel.wait()
        finally:
            ready[group.name].set()

    async def _vm(self, vm: _Vm, checks: Sequence[Check], limiter: anyio.Semaphore) -> None:
        p = vm.planned
        vm.ran = True
        slot = [False]

        def release_slot() -> None:
            if slot[0]:
                slot[0] = False
                limiter.release()

        def powered_on() -> None:
            vm.powered_on_at = time.monotonic() - self.t0
            release_slot()

        async def hold(passed: bool) -> None:
            vm.passed = passed
            release_slot()
            vm.checked.set()
            await self.release[p.vm.group].wait()

        def keep(report: VerificationReport) -> None:
            vm.report = report

        spec = p.vm.spec(p.host, p.job_id, self.passkey)
        options = attrs.evolve(self.options, report_dir=self.report_dir / p.job_id)
        try:
            with vm.scope:
                await limiter.acquire()
                slot[0] = True
                await verify_vm(
                    self.starter.start,
                    self.starter.backends,
                    self.starter.settings,
                    spec,
                    checks,
                    options,
                    on_powered_on=powered_on,
                    hold=hold,
                    on_report=keep,
                )
        except LiveRecoveryError as exc:
            vm.reason = str(exc)
        finally:
            release_slot()
            if vm.report is None and not vm.reason:
                vm.ran = not self.cancelled
                vm.reason = CANCELLED if self.cancelled else "the verification did not end"
            vm.passed = vm.report is not None and vm.report.passed
            vm.checked.set()
            vm.ended.set()

    def result(self, run_id: str, started: str) -> PlanVerificationReport:
        records = []
        for vm in self.vms.values():
            p = vm.planned
            report = vm.report
            at = None
            if report is not None and report.time_to_heartbeat_s is not None:
                at = round((vm.powered_on_at or 0.0) + report.time_to_heartbeat_s, 3)
            records.append(
                VmRecord(
                    vm=p.vm.vm,
                    group=p.vm.group,
                    host=p.host,
                    job_id=p.job_id,
                    report=report,
                    ran=vm.ran,
                    heartbeat_at_s=at,
                    reason=vm.reason,
                )
            )
        groups = tuple(
            GroupRecord(g.name, g.name not in self.skipped, self.skipped.get(g.name, ""))
            for g in self.plan.groups
        )
        stopped = next((why for why in self.skipped.values() if why != CANCELLED), "")
        return PlanVerificationReport(
            plan=self.plan.name,
            run_id=run_id,
            started=started,
            finished=_now(),
            duration_s=round(time.monotonic() - self.t0, 3),
            groups=groups,
            vms=tuple(records),
            cancelled=self.cancelled,
            stopped=stopped,
            report_dir=self.report_dir,
        )


class PlanVerificationRun:
    """A plan's verification while it runs, as ``plan status`` and ``plan cancel`` reach it
    (``LiveRecovery.verifications``): its table (``rows``), ``summary`` and ``cancel``."""

    kind = "verification"

    def __init__(self, state: _PlanVerification, run_id: str) -> None:
        self.plan = state.plan
        self.run_id = run_id
        self._state = state
        self._jobs: dict[str, RecoveryJob] = {}
        self._ended = anyio.Event()
        self.report: PlanVerificationReport | None = None
        """The report, once the verification ended."""

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    def cancel(self) -> None:
        """Stop: the running checks end, no more groups start, and every copy is powered off
        and undone (they are isolated copies, not production). Sets the ``cancel`` event
        ``verify_plan`` was given."""
        self._state.cancel.set()

    def _job(self, job_id: str) -> RecoveryJob | None:
        if job_id not in self._jobs:
            for job in self._state.starter.jobs():
                if job.id == job_id:
                    self._jobs[job_id] = job
        return self._jobs.get(job_id)

    def rows(self) -> list[VmRow]:
        """The table now, one row per VM in plan order: ``waiting``, then its job's state until
        its checks end, ``checks passed|failed`` while its copy is held for the later groups,
        then ``passed``, ``failed``, ``not run`` or ``cancelled``."""
        rows = []
        for vm in self._state.vms.values():
            p = vm.planned
            job = self._job(p.job_id)
            if vm.ended.is_set():
                if vm.report is not None:
                    state = "passed" if vm.report.passed else "failed"
                elif not vm.ran:
                    state = "cancelled" if vm.reason == CANCELLED else "not run"
                else:
                    state = "failed"
            elif vm.checked.is_set():
                state = "checks passed" if vm.passed else "checks failed"
            else:
                state = job.state.value if job is not None else "waiting"
            rows.append(
                VmRow.of(
                    p,
                    job,
                    state=state,
                    power_on_s=None if vm.powered_on_at is None else round(vm.powered_on_at, 3),
                    error=vm.reason,
                )
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """JSON-ready, the shape of ``PlanRun.summary``: ``state`` is ``verifying``,
        ``cancelling``, then ``passed``, ``failed`` or ``cancelled``."""
        if self.report is not None:
            state = (
                "cancelled"
                if self.report.cancelled
                else ("passed" if self.report.passed else "failed")
            )
        elif self._state.cancel.is_set():
            state = "cancelling"
        else:
            state = "verifying"
        return {
            "plan": self.plan.name,
            "run_id": self.run_id,
            "kind": self.kind,
            "state": state,
            "stopped": next(iter(self._state.skipped.values()), ""),
            "elapsed_s": round(time.monotonic() - self._state.t0, 3),
            "vms": [r.to_json() for r in self.rows()],
        }

    def _end(self, report: PlanVerificationReport) -> None:
        self.report = report
        self._ended.set()


async def verify_plan(
    starter: JobStarter,
    plan: Plan,
    checks: Sequence[Check] = (),
    options: VerifyOptions | None = None,
    *,
    cancel: anyio.Event | None = None,
    passkey: str | None = None,
    progress: Callable[[str], None] | None = None,
    on_start: Callable[[PlanVerificationRun], None] | None = None,
) -> PlanVerificationReport:
    """Verify every VM of ``plan`` in its boot groups; the report (also written to
    ``<report_dir or job_results_dir/verify>/plan-<name>-<run id>/``).

    ``on_start`` receives the run's handle once preflight passed, before any copy starts (for
    ``plan status`` and ``plan cancel``).

    ``cancel``: set it to stop (the checks that run end, no more groups start, every copy is
    undone; the report says cancelled). Cancelling the caller's scope does the same, and the
    report is then only on disk.

    :raises VerificationRefusedError: the checks cannot run as asked (nothing started).
    :raises PlanError: the plan's preflight refused it, every problem listed (a VM whose name
        leaves no room for its copy's within vSphere's 80 characters among them:
        ``verify.names``), or a host it uses lacks the isolated network (nothing started).
    """
    options = options or VerifyOptions()
    checks = in_run_order(checks or default_checks(network=options.isolated_network is not None))
    backends: Backends = starter.backends
    settings: Settings = starter.settings
    guest = isinstance(backends.vsphere, GuestOperations)
    if problems := refusals(checks, options, guest=guest):
        raise VerificationRefusedError("verification refused: " + "; ".join(problems))
    run_id = new_run_id()
    names = [
        f"{plan.source}:{vm.line}: {why}" if vm.line else f"{plan.source}: {why}"
        for vm in plan.vms
        if (why := verification_name_problem(vm.vm)) is not None
    ]
    try:
        planned = await preflight(plan, backends, settings, run_id=run_id)
    except PlanError as exc:
        if names:  # every problem at once
            raise PlanError(
                f"{plan.source}: the plan has {len(names) + len(exc.problems)} problem(s):",
                (*names, *exc.problems),
            ) from None
        raise
    if names:
        raise PlanError(f"{plan.source}: the plan has {len(names)} problem(s):", tuple(names))
    if options.isolated_network:
        await _check_network(plan, planned, backends, options.isolated_network)
    base = options.report_dir or Path(settings.job_results_dir) / "verify"
    report_dir = base / f"plan-{plan.name}-{run_id}"
    if progress is not None:
        progress(
            f"plan {plan.name} (run {run_id}): verifying {len(planned)} VM(s) in "
            f"{len(plan.groups)} group(s); reports in {report_dir}"
        )
    state = _PlanVerification(
        plan, starter, planned, checks, options, report_dir, cancel or anyio.Event(), passkey
    )
    handle = PlanVerificationRun(state, run_id)
    if on_start is not None:
        on_start(handle)
    started = _now()
    try:
        await state.run()
    except anyio.get_cancelled_exc_class():
        state.cancelled = True
        raise
    finally:
        with anyio.CancelScope(shield=True):
            report = state.result(run_id, started)
            handle._end(report)
            try:
                await report.write(report_dir)
            except OSError as exc:
                if progress is not None:
                    progress(f"cannot write the plan's report into {report_dir}: {exc}")
    return report
