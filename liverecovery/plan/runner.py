"""Runs a plan: boot groups in order, one ``RecoveryJob`` per VM, within the hosts' limits.

The plan is a layer above jobs, not a second state machine: each VM is its own job with its own
journal; the runner only decides when to start each one. ``preflight`` checks the whole plan
before anything starts (VMs in the catalog, hosts in vSphere, placement, the hosts' NFS limits)
and lists every problem at once. ``PlanRun.run`` then starts each group once the groups it
follows are ready: their VMs powered on (or failed, under ``on_failure = "continue"``), their
guests heartbeating when the group asks, and its delay passed. At most ``max_in_flight`` jobs
are between their start and their power-on at a time. A failure in a ``stop`` group starts no
later group; a cancel starts no later group and cancels the jobs not yet powered on. Nothing the
runner does powers a VM off: VMs running from the backup are production.

The plan has a journal of its own (``<job_results_dir>/plans/<run id>.journal``: the plan, its
placement and which groups started), so a restarted process resumes it
(``LiveRecovery.resume_plans``): its running jobs are resumed by their own journals and adopted,
groups not yet started are started.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs

from liverecovery.backends import (
    Backends,
    HostFacts,
    TargetQuery,
    guest_heartbeat,
)
from liverecovery.config import Settings
from liverecovery.errors import BackendError, JobStateError, LiveRecoveryError, PlanError
from liverecovery.job.events import StateChanged
from liverecovery.job.job import RecoveryJob
from liverecovery.job.journal import Journal, journal_dir, read_journal
from liverecovery.job.states import RUNNING_STATES, TERMINAL_STATES, State
from liverecovery.plan.barrier import GroupBarrier, LocalBarrier, group_wait_timeout_s
from liverecovery.plan.events import (
    GroupReady,
    GroupSkipped,
    GroupStarted,
    PlanEnded,
    PlanEvent,
    PlanEventLog,
    PlanWarning,
    VmChanged,
)
from liverecovery.plan.limits import ServerLimits, limit_problems
from liverecovery.plan.model import (
    BootGroup,
    FailurePolicy,
    GroupWait,
    Plan,
    PlanVm,
    plan_job_id,
)
from liverecovery.plan.nodes import NodePart, node_of_hosts
from liverecovery.plan.parse import plan_problems, reference_problems
from liverecovery.plan.placement import HostLoad, VmNeeds, place
from liverecovery.spec import RecoverySpec

__all__ = [
    "JobStarter",
    "PlanRun",
    "PlannedVm",
    "VmRow",
    "ResumablePlan",
    "new_run_id",
    "plan_journals",
    "preflight",
    "resumable_plans",
]

_log = logging.getLogger(__name__)
_HEARTBEAT_POLL_S = 1.0
_DOWN = frozenset({State.ROLLING_BACK, State.FAILED, State.CANCELLED})


class JobStarter(Protocol):
    """**Protocol:** what the runner needs of a ``LiveRecovery``."""

    settings: Settings
    backends: Backends

    async def start(self, spec: RecoverySpec) -> RecoveryJob: ...

    def jobs(self) -> list[RecoveryJob]: ...


@attrs.frozen
class PlannedVm:
    """A VM of the plan with its host and job id decided."""

    vm: PlanVm
    host: str
    job_id: str


@attrs.frozen
class VmRow:
    """One line of the plan's table."""

    vm: str
    group: str
    host: str
    job_id: str
    state: str
    power_on_s: float | None
    bytes_served: int
    bytes_restored: int
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def of(
        cls,
        planned: PlannedVm,
        job: RecoveryJob | None,
        *,
        state: str,
        power_on_s: float | None,
        error: str,
    ) -> VmRow:
        """The row of ``planned``, its byte counts from its job (zero before it has one)."""
        stats = job.stats if job is not None else None
        return cls(
            vm=planned.vm.vm,
            group=planned.vm.group,
            host=planned.host,
            job_id=planned.job_id,
            state=state,
            power_on_s=power_on_s,
            bytes_served=stats.bytes_served if stats else 0,
            bytes_restored=stats.bytes_restored if stats else 0,
            error=error,
        )


def _job_id(run_id: str, plan: Plan, vm: str) -> str:
    """``<plan>-<run>.<vm>``; a hash of the VM name instead when that is longer than 64
    characters or holds characters a job id cannot."""
    base = f"{plan.name}-{run_id}"
    job_id = plan_job_id(base, vm)
    if job_id == f"{base}.{vm}":
        return job_id
    return plan_job_id(base, hashlib.sha256(vm.encode()).hexdigest()[:16])


async def preflight(
    plan: Plan, backends: Backends, settings: Settings, *, run_id: str
) -> list[PlannedVm]:
    """Check the whole plan before anything starts and decide each VM's host and job id.

    :raises PlanError: every problem at once: the plan's shape (``plan_problems``: a plan built
        in Python was not checked by the parser), VMs not in the catalog, hosts vSphere does
        not know, the hosts' NFS limits (naming the host and the counts).
    """
    if problems := plan_problems(plan):  # a plan built in Python skipped the parser
        raise PlanError(f"{plan.source}: the plan has {len(problems)} problem(s):", tuple(problems))
    problems = []
    try:
        names = list(await backends.catalog.vm_names())
    except LiveRecoveryError as exc:
        raise PlanError(f"{plan.source}: cannot list the backup catalog: {exc}") from None
    hosts = sorted({*plan.hosts, *(v.host for v in plan.vms if v.host is not None)})
    facts: dict[str, HostFacts] = {}
    for host in hosts:
        try:
            facts[host] = (await backends.vsphere.describe(TargetQuery(host=host))).host
        except LiveRecoveryError as exc:
            raise PlanError(
                f"{plan.source}: cannot ask vSphere about host {host!r}: {exc}"
            ) from None
    found_hosts = [h for h, f in facts.items() if f.found]
    problems += reference_problems(plan, vm_names=names, host_names=found_hosts)
    for host, f in sorted(facts.items()):
        if f.found and f.maintenance:
            problems.append(
                f"{plan.source}: host {host!r} is in maintenance mode: it powers on no VM"
            )
        elif f.found and f.connection_state != "connected":
            problems.append(f"{plan.source}: host {host!r} is {f.connection_state}, not connected")
    needs: dict[str, VmNeeds] = {}
    space: dict[str, int] = {}
    for vm in plan.vms:
        if vm.vm not in names:
            continue
        try:
            point = await backends.catalog.restore_point(vm.vm, vm.point_id)
        except LiveRecoveryError as exc:
            problems.append(f"{plan.source}:{vm.line}: vm {vm.vm!r}: {exc}")
            continue
        needs[vm.vm] = VmNeeds(point.memory_mb * (1 << 20), point.num_cpus)
        space[vm.vm] = settings.job_space_bytes(point.total_disk_bytes)
    loads = {h: HostLoad(f.memory_free_bytes, f.cpu_free_mhz) for h, f in facts.items() if f.found}
    mine = _this_nodes(plan, settings, loads, needs, space)
    problems += await _cache_problems(
        plan, backends, settings, sum(space[v] for v in mine), len(mine)
    )
    if problems:
        raise PlanError(f"{plan.source}: the plan has {len(problems)} problem(s):", tuple(problems))
    placement = place(plan, loads=loads, needs=needs)
    addresses = {placement[v.vm]: v.esx_address or placement[v.vm] for v in plan.vms}
    problems += limit_problems(
        placement,
        facts,
        client_addresses=addresses,
        server=ServerLimits(settings.nfs_max_connections, settings.nfs_max_connections_per_address),
    )
    if problems:
        raise PlanError(
            f"{plan.source}: the plan does not fit the ESX hosts' limits:", tuple(problems)
        )
    return [PlannedVm(v, placement[v.vm], _job_id(run_id, plan, v.vm)) for v in plan.vms]


def _this_nodes(
    plan: Plan,
    settings: Settings,
    loads: Mapping[str, HostLoad],
    needs: Mapping[str, VmNeeds],
    space: Mapping[str, int],
) -> list[str]:
    """The VMs (of those in ``space``) this node's cache serves: all of them alone; with
    ``settings.nodes`` those whose host ranks this node first (``plan.nodes``)."""
    if not settings.nodes:
        return list(space)
    try:
        placement = place(plan, loads=loads, needs=needs)
    except ValueError:  # no hosts to place on: reported as a problem of its own
        return list(space)
    owner = node_of_hosts(set(placement.values()), settings.nodes)
    return [vm for vm in space if owner[placement[vm]] == settings.node_name]


async def _cache_problems(
    plan: Plan, backends: Backends, settings: Settings, need: int, count: int
) -> list[str]:
    """The cache space every VM of the plan reserves while it runs from the backup, at once
    (each job's own preflight rule, summed): refused now rather than half-way through."""
    space = await backends.cache.space()
    keep = math.ceil(space.total_bytes * settings.cache_min_free_percent / 100)
    available = space.free_bytes - keep - sum(backends.cache.reservations().values())
    if need <= available:
        return []
    gib = 1 << 30
    here = " on this node" if settings.nodes else ""
    return [
        f"{plan.source}: the plan's {count} VMs{here} need {need / gib:.2f} GiB of cache space "
        f"together (each max(job_space_floor_bytes, job_space_fraction x its disks)) and the "
        f"cache at {settings.effective_cache_root} has {max(0, available) / gib:.2f} GiB "
        f"available ({space.free_bytes / gib:.2f} GiB free, {keep / gib:.2f} GiB kept free)"
    ]


def plan_journals(job_results_dir: str | os.PathLike[str]) -> Path:
    """Where plan journals live (apart from the jobs' own, which resume reads)."""
    return Path(job_results_dir) / "plans"


class PlanRun:
    """A plan being run: its events, its table, ``wait`` and ``cancel``."""

    kind = "recovery"

    def __init__(
        self,
        plan: Plan,
        starter: JobStarter,
        planned: Sequence[PlannedVm],
        *,
        run_id: str,
        passkey: str | None = None,
        adopt: Mapping[str, RecoveryJob] | None = None,
        started_groups: Sequence[str] = (),
        ready_groups: Sequence[str] = (),
        ended_jobs: Mapping[str, str] | None = None,
        barrier: GroupBarrier | None = None,
        part: NodePart | None = None,
    ) -> None:
        self.plan = plan
        self.part = part
        """What this node runs of the plan (None: all of it, alone); ``planned`` is its VMs."""
        self._barrier: GroupBarrier = barrier or LocalBarrier()
        self.run_id = run_id
        self.planned = tuple(planned)
        self._starter = starter
        self._passkey = passkey
        self._adopt = dict(adopt or {})
        self._started_before = set(started_groups)
        self._ready_before = set(ready_groups)
        self._ended_before = dict(ended_jobs or {})
        self._log = PlanEventLog()
        self._jobs: dict[str, RecoveryJob] = {}
        self._states: dict[str, str] = {p.vm.vm: "waiting" for p in self.planned}
        self._errors: dict[str, str] = {}
        self._power_on: dict[str, float] = {}
        self._stopped = ""
        self._cancelled = False
        self._done = anyio.Event()
        self._journal: Journal | None = None
        self._scope = anyio.CancelScope()
        self._cancel_event = anyio.Event()
        self._exiting = False
        self.state = "running"

    # -- what callers see ------------------------------------------------------------------------

    def events(self) -> AsyncIterator[PlanEvent]:
        """Every event of the plan from its start, then new ones, until it ends."""
        return self._log.follow()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def job(self, vm: str) -> RecoveryJob | None:
        """The job of ``vm``, once started."""
        return self._jobs.get(vm)

    def rows(self) -> list[VmRow]:
        """The plan's table now: one row per VM, in plan order."""
        rows = []
        for p in self.planned:
            job = self._jobs.get(p.vm.vm)
            rows.append(
                VmRow.of(
                    p,
                    job,
                    state=job.state.value if job is not None else self._states[p.vm.vm],
                    power_on_s=self._power_on.get(p.vm.vm),
                    error=self._errors.get(p.vm.vm, ""),
                )
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: the plan's state and its table."""
        return {
            "plan": self.plan.name,
            "run_id": self.run_id,
            "kind": self.kind,
            "state": self.state,
            "stopped": self._stopped,
            "elapsed_s": self._log.elapsed(),
            "node": self.part.to_json() if self.part is not None else None,
            "vms": [r.to_json() for r in self.rows()],
        }

    async def wait(self) -> dict[str, Any]:
        """Wait until every group was started or skipped and every job ended; the summary."""
        await self._done.wait()
        return self.summary()

    def cancel(self) -> None:
        """Start no more groups or jobs and cancel the jobs not yet powered on (rolled back).
        VMs running from the backup keep running: they are production."""
        if self._cancelled or self.done:
            return
        self._cancelled = True
        self._cancel_event.set()
        self._log.append(
            PlanWarning("cancelled: no more groups start; running VMs keep running", self._now())
        )
        for job in self._jobs.values():
            if not job.done and not job.running_from_backup:
                with contextlib.suppress(JobStateError):
                    job.request_cancel()

    # -- the driver ------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._log.elapsed()

    def request_exit(self) -> None:
        """The process stops serving: stop the runner where it is, without ending the plan's
        journal (``resume_plans`` continues it); the jobs decide for themselves."""
        self._exiting = True
        self._scope.cancel()

    async def run(self) -> None:
        """Run the plan to its end: every group started or skipped, every job ended."""
        with self._scope:
            await self._run()
        if self._exiting and not self.done:
            self.state = "interrupted"
            self._log.append(PlanEnded(self.state, self._now()))
            self._log.close()
            self._done.set()

    async def _run(self) -> None:
        try:
            await self.open_journal()
            preds = self.plan.predecessors()
            ready = {g.name: anyio.Event() for g in self.plan.groups}
            limiter = anyio.CapacityLimiter(self.plan.max_in_flight)
            async with anyio.create_task_group() as tg:
                async with anyio.create_task_group() as groups:
                    for group in self.plan.groups:
                        groups.start_soon(self._group, tg, group, preds[group.name], ready, limiter)
                if self._cancelled:
                    # Jobs not yet powered on roll back; running VMs run on outside the plan.
                    for job in list(self._jobs.values()):
                        if not job.running_from_backup:
                            with contextlib.suppress(Exception):
                                await job.wait()
                    tg.cancel_scope.cancel()
            failed = [vm for vm, s in self._states.items() if s in ("failed", "cancelled")]
            if self._cancelled:
                self.state = "cancelled"
            elif self._stopped:
                self.state = "stopped"
            elif failed:
                self.state = "completed with failures"
            else:
                self.state = "completed"
            await self._record("end", state=self.state)
        except BaseException:
            self.state = "interrupted"
            raise
        finally:
            self._log.append(PlanEnded(self.state, self._now()))
            self._log.close()
            self._done.set()
            with anyio.CancelScope(shield=True):
                await self._barrier.aclose()
            if self._journal is not None:
                with anyio.CancelScope(shield=True):
                    await self._journal.aclose()

    async def open_journal(self) -> None:
        """Open (or, resumed, continue) the plan's journal; ``run`` does it if not done yet.

        :raises BackendError: it cannot be written (nothing was started).
        """
        settings = self._starter.settings
        if not settings.journal or self._journal is not None:
            return
        path = plan_journals(settings.job_results_dir) / f"{self.plan.name}-{self.run_id}.journal"
        resumed = path.exists()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._journal = await Journal.open(path)
            if resumed:
                await self._journal.append("resumed")
            else:
                await self._journal.append(
                    "plan",
                    run_id=self.run_id,
                    plan=self.plan.to_json(),
                    placement={p.vm.vm: p.host for p in self.planned},
                    job_ids={p.vm.vm: p.job_id for p in self.planned},
                )
        except OSError as exc:
            raise BackendError(
                f"cannot write the plan journal {path}: {exc.strerror}", operation="journal"
            ) from None

    async def _record(self, kind: str, **data: Any) -> None:
        if self._journal is None:
            return
        try:
            await self._journal.append(kind, **data)
        except OSError as exc:
            self._log.append(PlanWarning(f"cannot write the plan journal: {exc}", self._now()))

    async def _group(
        self,
        tg: anyio.abc.TaskGroup,
        group: BootGroup,
        after: tuple[str, ...],
        ready: Mapping[str, anyio.Event],
        limiter: anyio.CapacityLimiter,
    ) -> None:
        try:
            for name in after:
                await ready[name].wait()
            settings = self._starter.settings
            for name in after:  # ... and on every other node running the plan
                if self._cancelled or self._stopped:
                    break
                why = await self._wait_everywhere(name, settings)
                if why and not self._cancelled and not self._stopped:
                    self._stopped = f"group {name!r} did not get ready on every node: {why}"
                    self._log.append(PlanWarning(self._stopped, self._now()))
            members = [p for p in self.planned if p.vm.group == group.name]
            if (self._cancelled or self._stopped) and group.name not in self._started_before:
                reason = "the plan was cancelled" if self._cancelled else self._stopped
                for p in members:
                    self._states[p.vm.vm] = "skipped"
                self._log.append(GroupSkipped(group.name, self._now(), reason))
                await self._record("group_skipped", group=group.name, reason=reason)
                await self._barrier.arrive(group.name, stopped=reason)
                return
            if group.name not in self._started_before:
                await self._record("group_started", group=group.name)
            self._log.append(GroupStarted(group.name, self._now()))
            async with anyio.create_task_group() as vms:
                for p in members:
                    vms.start_soon(self._vm, tg, p, limiter)
            failed = tuple(
                p.vm.vm for p in members if self._states[p.vm.vm] in ("failed", "cancelled")
            )
            if failed and group.on_failure is FailurePolicy.STOP and not self._stopped:
                self._stopped = (
                    f"group {group.name!r} failed ({', '.join(failed)}) and its on_failure is stop"
                )
                self._log.append(PlanWarning(self._stopped, self._now()))
            if group.name not in self._ready_before:
                if group.wait is GroupWait.HEARTBEAT:
                    await self._heartbeats(group, members)
                if group.delay_s:
                    with anyio.move_on_after(group.delay_s):
                        await self._cancel_event.wait()
                await self._record("group_ready", group=group.name)
            stop = self._stopped if failed and group.on_failure is FailurePolicy.STOP else ""
            await self._barrier.arrive(group.name, stopped=stop or self._cancel_reason())
            self._log.append(GroupReady(group.name, self._now(), failed))
        finally:
            ready[group.name].set()

    async def _wait_everywhere(self, group: str, settings: Settings) -> str:
        """The barrier's answer for ``group`` ("": ready on every node); a cancel ends it."""
        why = ""
        async with anyio.create_task_group() as tg:

            async def on_cancel() -> None:
                await self._cancel_event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_cancel)
            why = await self._barrier.wait(
                group, group_wait_timeout_s(settings, self.plan.group(group))
            )
            tg.cancel_scope.cancel()
        return why

    def _cancel_reason(self) -> str:
        return "the plan was cancelled" if self._cancelled else ""

    async def _heartbeats(self, group: BootGroup, members: Sequence[PlannedVm]) -> None:
        """Wait until each powered-on VM's guest reports a heartbeat (bounded)."""
        vsphere = self._starter.backends.vsphere
        waiting = {p.vm.vm: self._jobs[p.vm.vm] for p in members if p.vm.vm in self._power_on}
        with anyio.move_on_after(group.heartbeat_timeout_s) as scope:
            while waiting:
                for vm, job in list(waiting.items()):
                    if job.vm is None or job.state in _DOWN:  # rolled back: no guest
                        del waiting[vm]
                        continue
                    try:
                        beat = await guest_heartbeat(vsphere, job.vm)
                    except LiveRecoveryError as exc:
                        beat = None
                        self._log.append(
                            PlanWarning(f"vm {vm!r}: heartbeat query failed: {exc}", self._now())
                        )
                    if beat is None:
                        self._log.append(
                            PlanWarning(
                                f"group {group.name!r}: the vSphere client cannot report guest "
                                "heartbeats; going on without them",
                                self._now(),
                            )
                        )
                        return
                    if beat:
                        del waiting[vm]
                if waiting and not self._cancelled:
                    with anyio.move_on_after(_HEARTBEAT_POLL_S):
                        await self._cancel_event.wait()
                if self._cancelled:
                    return
        if scope.cancelled_caught:
            self._log.append(
                PlanWarning(
                    f"group {group.name!r}: no guest heartbeat from {', '.join(sorted(waiting))} "
                    f"within {group.heartbeat_timeout_s:g} s; going on",
                    self._now(),
                )
            )

    async def _vm(
        self, tg: anyio.abc.TaskGroup, p: PlannedVm, limiter: anyio.CapacityLimiter
    ) -> None:
        """Start the VM's job (or adopt its resumed job) and wait until it is powered on or
        ended; a task in ``tg`` follows it to its end."""
        name = p.vm.vm
        if p.job_id in self._ended_before:
            self._states[name] = self._ended_before[p.job_id]
            return
        async with limiter:
            if self._cancelled:
                self._states[name] = "skipped"
                return
            job = self._adopt.get(p.job_id)
            if job is None:
                try:
                    job = await self._starter.start(p.vm.spec(p.host, p.job_id, self._passkey))
                except LiveRecoveryError as exc:
                    self._states[name] = "failed"
                    self._errors[name] = str(exc)
                    self._log.append(
                        VmChanged(
                            name, p.vm.group, p.host, p.job_id, State.FAILED, self._now(), str(exc)
                        )
                    )
                    return
            self._jobs[name] = job
            powered = anyio.Event()
            tg.start_soon(self._follow, p, job, powered)
            await powered.wait()

    async def _follow(self, p: PlannedVm, job: RecoveryJob, powered: anyio.Event) -> None:
        name = p.vm.vm
        try:
            if job.state in RUNNING_STATES:  # adopted after a restart: already powered on
                self._power_on[name] = self._now()
                powered.set()
            async for event in job.events():
                if not isinstance(event, StateChanged):
                    continue
                self._states[name] = event.state.value
                error = ""
                if event.state in RUNNING_STATES and name not in self._power_on:
                    self._power_on[name] = self._now()
                    powered.set()
                if event.state in TERMINAL_STATES:
                    error = "; ".join(str(e) for e in job.errors)
                    if error:
                        self._errors[name] = error
                    powered.set()
                self._log.append(
                    VmChanged(name, p.vm.group, p.host, p.job_id, event.state, self._now(), error)
                )
            if job.state in RUNNING_STATES or job.running_from_backup:
                self._power_on.setdefault(name, self._now())
            self._states[name] = job.state.value
        finally:
            powered.set()


def new_run_id() -> str:
    """A short id telling runs of the same plan apart."""
    return uuid.uuid4().hex[:6]


@attrs.frozen
class ResumablePlan:
    """An unfinished plan found in its journal, ready to run again."""

    plan: Plan
    run_id: str
    planned: tuple[PlannedVm, ...]
    adopt: Mapping[str, RecoveryJob]
    started_groups: tuple[str, ...]
    ready_groups: tuple[str, ...]
    ended_jobs: Mapping[str, str]

    def run(
        self, starter: JobStarter, passkey: str | None = None, barrier: GroupBarrier | None = None
    ) -> PlanRun:
        """The run that continues the plan (``passkey``: for the jobs not yet started;
        ``barrier``: the other nodes running it)."""
        return PlanRun(
            self.plan,
            starter,
            self.planned,
            run_id=self.run_id,
            passkey=passkey,
            adopt=self.adopt,
            started_groups=self.started_groups,
            ready_groups=self.ready_groups,
            ended_jobs=self.ended_jobs,
            barrier=barrier,
        )


def _ended_state(settings: Settings, job_id: str) -> str | None:
    """The end state a job's journal recorded; None: no journal (never started) or no end."""
    path = journal_dir(settings.job_results_dir) / f"{job_id}.journal"
    if not path.exists():
        return None
    contents = read_journal(path)
    ends = [r for r in contents.records if r.kind == "end"]
    return str(ends[-1].data.get("state", "failed")) if ends else "failed"


def resumable_plans(
    settings: Settings, jobs: Mapping[str, RecoveryJob], errors: list[str]
) -> list[ResumablePlan]:
    """The plans whose journal has no end, with the jobs (by id, already resumed) they adopt.
    Unreadable plan journals are appended to ``errors``."""
    folder = plan_journals(settings.job_results_dir)
    if not settings.journal or not folder.is_dir():
        return []
    found: list[ResumablePlan] = []
    for path in sorted(folder.glob("*.journal")):
        try:
            contents = read_journal(path)
            if not contents.records or contents.records[0].kind != "plan":
                raise PlanError(f"not a plan journal ({contents.tail_error})")
            if any(r.kind == "end" for r in contents.records):
                continue
            data = contents.records[0].data
            plan = Plan.from_json(data["plan"])
            run_id = str(data["run_id"])
            placement, job_ids = dict(data["placement"]), dict(data["job_ids"])
            planned = tuple(PlannedVm(v, placement[v.vm], job_ids[v.vm]) for v in plan.vms)
        except (LiveRecoveryError, KeyError, TypeError, ValueError, OSError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        adopt = {p.job_id: jobs[p.job_id] for p in planned if p.job_id in jobs}
        ended: dict[str, str] = {}
        for p in planned:
            if p.job_id not in adopt and (state := _ended_state(settings, p.job_id)) is not None:
                ended[p.job_id] = state
        kinds = [(r.kind, r.data.get("group")) for r in contents.records]
        found.append(
            ResumablePlan(
                plan,
                run_id,
                planned,
                adopt,
                tuple(str(g) for k, g in kinds if k == "group_started"),
                tuple(str(g) for k, g in kinds if k == "group_ready"),
                ended,
            )
        )
    return found
