"""``LiveRecovery``: runs recovery jobs against one set of backends.

    async with LiveRecovery(settings, backends) as lr:
        job = await lr.start(RecoverySpec(vm="web01", esx_host="esx01", datastore="ds1"))
        async for event in job.events():
            print(event)
        await job.wait()

Leaving the ``async with`` block cancels the jobs not yet powered on and waits for their
rollback. A job whose VM runs from the backup is production: it is *left running* — nothing is
powered off, unregistered, unmounted or unexported, its journal stays open, a warning says what
was left (``JobWarning``, the log, ``LiveRecovery.left_running``) and ``resume()`` in a later
``LiveRecovery`` serves it again. The caller owns the backends and closes them.

``LiveRecovery.from_settings`` is the usual way in: it also starts (and closes) the real
backends, our NFS server, the on-disk cache, the directory catalog and the File Recovery
Enabler (``liverecovery.recovery.assembly``)::

    vsphere = await PyvmomiVSphereClient.connect("vc.example", user, password)
    async with vsphere, LiveRecovery.from_settings(settings, vsphere=vsphere) as lr:
        job = await lr.start(spec)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc

from liverecovery.backends import (
    Backends,
    BlockCache,
    CatalogReader,
    DatastoreBuilder,
    VSphereClient,
)
from liverecovery.config import Settings
from liverecovery.datastore.copying import CopyingBuilder
from liverecovery.errors import (
    BackendError,
    ConcurrentSessionError,
    JobStateError,
    LiveRecoveryError,
)
from liverecovery.job.job import JobContext, RecoveryJob
from liverecovery.job.journal import JournalListener, journal_dir, unfinished_journals
from liverecovery.job.migration import (
    DelayedMigration,
    ManualMigration,
    MigrationPolicy,
    ReadRateMigration,
)
from liverecovery.job.sessions import SessionKind, SessionRegistry
from liverecovery.job.sharing import HostShares
from liverecovery.job.throttle import MigrationSlots
from liverecovery.plan.model import Plan
from liverecovery.plan.node_run import node_barrier, take_part
from liverecovery.plan.nodes import check_run_id, plan_run_id
from liverecovery.plan.runner import PlanRun, new_run_id, preflight, resumable_plans
from liverecovery.plan.verify import PlanVerificationRun, verify_plan
from liverecovery.plan.verify_report import PlanVerificationReport
from liverecovery.recovery.assembly import Assembly, VSphereFactory, assemble
from liverecovery.spec import RecoverySpec
from liverecovery.verify.checks import Check
from liverecovery.verify.report import VerificationReport
from liverecovery.verify.run import VerifyOptions, verify_vm

__all__ = ["LiveRecovery"]

_log = logging.getLogger(__name__)


def default_policy(settings: Settings) -> MigrationPolicy:
    """The migration trigger the settings name."""
    if settings.migration_trigger == "manual":
        return ManualMigration()
    if settings.migration_trigger == "delay":
        return DelayedMigration(settings.serve_before_migrate_s)
    return ReadRateMigration()


class LiveRecovery:
    """Starts jobs, lists them, and guards the rules that span jobs (sharing, sessions)."""

    def __init__(
        self,
        settings: Settings | None = None,
        backends: Backends | None = None,
        *,
        builder: DatastoreBuilder | None = None,
        migration_policy: MigrationPolicy | None = None,
        journal_listener: JournalListener | None = None,
    ) -> None:
        """``journal_listener``: given every job journal record before the job goes on (a
        serving node of several copies them to the shared state, ``recovery/node.py``)."""
        if backends is None:
            raise JobStateError(
                "LiveRecovery needs backends; liverecovery.testing.memory_backends() gives "
                "in-memory ones"
            )
        self.settings = settings or Settings()
        self.backends = backends
        self.sessions = SessionRegistry.for_settings(self.settings)
        self.shares = HostShares(
            backends.exporter, backends.vsphere, self.settings.export_root, backends.inventory
        )
        self._ctx = JobContext(
            settings=self.settings,
            backends=backends,
            shares=self.shares,
            sessions=self.sessions,
            builder=builder or CopyingBuilder(),
            migration_policy=migration_policy or default_policy(self.settings),
            space_lock=anyio.Lock(),
            migration_slots=MigrationSlots.for_settings(self.settings),
            journal_dir=journal_dir(self.settings.job_results_dir)
            if self.settings.journal
            else None,
            journal_listener=journal_listener,
        )
        self._jobs: dict[str, RecoveryJob] = {}
        self._plans: list[PlanRun] = []
        self._verifications: list[PlanVerificationRun] = []
        self.resume_errors: list[str] = []
        self.assembly: Assembly | None = None
        """The parts ``from_settings`` started (the NFS server, cache, catalog, builder)."""
        self._tg: anyio.abc.TaskGroup | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        vsphere: VSphereClient | VSphereFactory,
        catalog: CatalogReader | None = None,
        cache: BlockCache | None = None,
        migration_policy: MigrationPolicy | None = None,
        nfs_state_dir: Path | None = None,
    ) -> AbstractAsyncContextManager[LiveRecovery]:
        """A ``LiveRecovery`` on the real backends, for ``async with``.

        Starts our NFS server (``nfs_listen_host``, ``nfs_port``, ``portmap_port``), the on-disk
        block cache, the catalog (a ``DirectoryCatalog`` at ``settings.backup_root`` unless
        given) and the File Recovery Enabler with durable write overlays; leaving the block
        rolls back the jobs still running, then closes every part it started. ``vsphere`` is a
        client the caller keeps (``PyvmomiVSphereClient.connect(...)``) or a factory given the
        started NFS server (see ``liverecovery.recovery.assembly``).

        :raises SettingsError: no catalog and no ``backup_root``.
        """
        return _from_settings(
            cls,
            settings,
            vsphere=vsphere,
            catalog=catalog,
            cache=cache,
            migration_policy=migration_policy,
            nfs_state_dir=nfs_state_dir,
        )

    async def __aenter__(self) -> LiveRecovery:
        if self._tg is not None:
            raise JobStateError("LiveRecovery is already running")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        for run in self._plans:
            run.request_exit()
        for job in self._jobs.values():
            job.request_exit()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None
            self.sessions.release_all()
            if left := self.left_running:
                _log.warning(
                    "left %d job(s) running from the backup (their VMs are production and are "
                    "never powered off automatically): %s; LiveRecovery.resume() or "
                    "'liverecovery resume' serves them again",
                    len(left),
                    ", ".join(f"{j.id} (VM {j.spec.vm})" for j in left),
                )

    def abandon(self, why: str) -> None:
        """Stop every job and plan at once without touching vSphere or undoing anything
        (``RecoveryJob.abandon``): a serving node that lost its service address to another
        node, which owns them now."""
        for run in self._plans:
            run.request_exit()
        for job in self._jobs.values():
            job.abandon(why)

    @property
    def left_running(self) -> list[RecoveryJob]:
        """Jobs whose VM was left running from the backup when this ``LiveRecovery`` stopped
        serving them (``resume`` continues them)."""
        return [j for j in self._jobs.values() if j.left_running]

    async def start(self, spec: RecoverySpec) -> RecoveryJob:
        """Start a job; it runs in the background. Preflight failures surface in ``wait()``.

        :raises JobStateError: not inside ``async with``, or the job id is already in use.
        """
        if self._tg is None:
            raise JobStateError("use 'async with LiveRecovery(...)' before starting jobs")
        job = RecoveryJob(spec, self._ctx)
        if job.id in self._jobs:
            raise JobStateError(f"a job with id {job.id!r} already exists")
        self._jobs[job.id] = job
        self._tg.start_soon(job.run, name=f"liverecovery job {job.id}")
        await anyio.lowlevel.checkpoint()
        return job

    async def resume(self) -> list[RecoveryJob]:
        """Pick up every job whose journal has no end, after a restart of the process.

        Each is reconciled with what the backends report, then continues (a VM running from
        the backup is served again under the same export path and file handles) or rolls back
        what is left. Journals that cannot be read are skipped and listed in ``resume_errors``,
        and so are jobs whose VM another process holds (the job itself may still be running
        there: its journal is left alone).

        :raises JobStateError: not inside ``async with``.
        """
        if self._tg is None:
            raise JobStateError("use 'async with LiveRecovery(...)' before resuming jobs")
        if not self.settings.journal:
            return []
        resumed: list[RecoveryJob] = []
        for contents in unfinished_journals(self.settings.job_results_dir):
            if contents.job_id in self._jobs:
                continue
            try:
                job = RecoveryJob.from_journal(contents, self._ctx)
            except (LiveRecoveryError, KeyError, TypeError, ValueError) as exc:
                self.resume_errors.append(f"{contents.path}: {exc}")
                continue
            try:
                # Before the job touches its journal: the process that wrote it may be alive.
                self.sessions.acquire(job.spec.vm, SessionKind.RECOVERY, job.id)
            except (ConcurrentSessionError, BackendError) as exc:
                self.resume_errors.append(f"{contents.path}: not resumed: {exc}")
                continue
            self._jobs[job.id] = job
            self._tg.start_soon(
                self._run_releasing, job, name=f"liverecovery job {job.id} (resumed)"
            )
            resumed.append(job)
        await anyio.lowlevel.checkpoint()
        return resumed

    async def _run_releasing(self, job: RecoveryJob) -> None:
        """Run a resumed job; its session (taken by ``resume``) ends with it, however it ends."""
        try:
            await job.run()
        finally:
            self.sessions.release(job.spec.vm, job.id)

    async def run_plan(
        self, plan: Plan, *, passkey: str | None = None, run_id: str | None = None
    ) -> PlanRun:
        """Check ``plan`` as a whole, then run it in the background; returns its handle
        (``events()``, ``rows()``, ``wait()``, ``cancel()``).

        With ``settings.nodes`` this node runs its part only (the VMs whose ESX host ranks it
        first) and starts each boot group once the groups before it are ready on every node
        (``docs/scale-out.md``). ``run_id``: default a new one alone, or with nodes one every
        node derives from the plan's content (give one to run the same plan again).

        :raises PlanError: every problem of the plan at once (VMs not in the catalog, unknown
            hosts, the hosts' NFS limits, cache space); nothing was started then.
        :raises BackendError: the plan's journal (or the shared state) cannot be written;
            nothing was started.
        :raises SettingsError: ``run_id`` cannot name a run.
        :raises JobStateError: not inside ``async with``.
        """
        if self._tg is None:
            raise JobStateError("use 'async with LiveRecovery(...)' before running a plan")
        nodes = bool(self.settings.nodes)
        if run_id is not None:
            check_run_id(run_id)
        run_id = run_id or (plan_run_id(plan) if nodes else new_run_id())
        planned = await preflight(plan, self.backends, self.settings, run_id=run_id)
        if not nodes:
            run = PlanRun(plan, self, planned, run_id=run_id, passkey=passkey)
        else:
            mine, part, barrier = await take_part(plan, planned, self.settings, run_id=run_id)
            run = PlanRun(
                plan, self, mine, run_id=run_id, passkey=passkey, barrier=barrier, part=part
            )
        await run.open_journal()  # a plan that cannot keep its journal does not start
        self._plans.append(run)
        self._tg.start_soon(run.run, name=f"liverecovery plan {plan.name}")
        await anyio.lowlevel.checkpoint()
        return run

    async def resume_plans(self, *, passkey: str | None = None) -> list[PlanRun]:
        """Resume the plans a stopped process left unfinished: their jobs are resumed
        (``resume``) and adopted, groups not yet started are started, and no running VM is
        touched. Plan journals that cannot be read are listed in ``resume_errors``.

        :raises JobStateError: not inside ``async with``.
        """
        if self._tg is None:
            raise JobStateError("use 'async with LiveRecovery(...)' before resuming plans")
        await self.resume()
        runs: list[PlanRun] = []
        for found in resumable_plans(self.settings, self._jobs, self.resume_errors):
            barrier = None
            if self.settings.nodes:  # wait for the other nodes again, through the same records
                barrier = node_barrier(found.plan, self.settings, run_id=found.run_id)
            run = found.run(self, passkey, barrier)
            self._plans.append(run)
            self._tg.start_soon(run.run, name=f"liverecovery plan {run.plan.name} (resumed)")
            runs.append(run)
        await anyio.lowlevel.checkpoint()
        return runs

    def plans(self) -> list[PlanRun]:
        """Every plan run or resumed here, oldest first."""
        return list(self._plans)

    async def verify(
        self,
        spec: RecoverySpec,
        checks: Sequence[Check] = (),
        options: VerifyOptions | None = None,
    ) -> VerificationReport:
        """Verify that ``spec``'s restore point boots: power it on from the backup as an
        isolated, disposable copy, run ``checks`` (default: partitions, heartbeat, and the IP
        address when on an isolated network), then power it off and undo everything, whatever
        happened. Returns the report, also written to the job results folder
        (``liverecovery.verify``). ``spec.datastore`` is not used: the copy is never migrated.

        :raises VerificationRefusedError: the checks cannot run as asked.
        :raises PreflightError: the job's preflight refused; nothing was touched.
        """
        return await verify_vm(self.start, self.backends, self.settings, spec, checks, options)

    async def verify_plan(
        self,
        plan: Plan,
        checks: Sequence[Check] = (),
        options: VerifyOptions | None = None,
        *,
        cancel: anyio.Event | None = None,
        passkey: str | None = None,
    ) -> PlanVerificationReport:
        """Verify every VM of ``plan`` in its boot groups, each as ``verify`` does (isolated,
        disposable, never migrated), within the plan's ``max_in_flight`` and the hosts' NFS
        limits; a failure in an ``on_failure = "stop"`` group leaves the groups after it not
        run. Returns one report for the plan (``liverecovery.plan.verify``), also written to
        the results folder. ``cancel``: set it to stop (``plan cancel`` through the control
        socket sets it too); every copy is undone either way. ``passkey``: for backups that
        need one. While it runs, ``verifications()`` lists it (``plan status``).

        :raises VerificationRefusedError: the checks cannot run as asked.
        :raises PlanError: the plan's preflight refused it; nothing was started.
        """
        if self._tg is None:
            raise JobStateError("use 'async with LiveRecovery(...)' before verifying a plan")
        return await verify_plan(
            self,
            plan,
            checks,
            options,
            cancel=cancel,
            passkey=passkey,
            on_start=self._verifications.append,
        )

    def verifications(self) -> list[PlanVerificationRun]:
        """Every plan verification started here (``verify_plan``), oldest first."""
        return list(self._verifications)

    def jobs(self) -> list[RecoveryJob]:
        """Every job started, oldest first."""
        return list(self._jobs.values())

    def job(self, job_id: str) -> RecoveryJob:
        """:raises JobStateError: no job with that id."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobStateError(f"no job {job_id!r}") from None

    @asynccontextmanager
    async def browse_session(self, vm: str, owner: str) -> AsyncIterator[None]:
        """Hold a live browse session on ``vm`` for the block's duration.

        :raises ConcurrentSessionError: a live recovery of ``vm`` is running, in this process
            or in another one sharing ``settings.job_results_dir``.
        """
        self.sessions.acquire(vm, SessionKind.BROWSE, owner)
        try:
            yield
        finally:
            self.sessions.release(vm, owner)


@asynccontextmanager
async def _from_settings(
    cls: type[LiveRecovery],
    settings: Settings,
    *,
    vsphere: VSphereClient | VSphereFactory,
    catalog: CatalogReader | None,
    cache: BlockCache | None,
    migration_policy: MigrationPolicy | None,
    nfs_state_dir: Path | None,
) -> AsyncIterator[LiveRecovery]:
    async with assemble(
        settings, vsphere=vsphere, catalog=catalog, cache=cache, nfs_state_dir=nfs_state_dir
    ) as parts:
        lr = cls(
            parts.settings, parts.backends, builder=parts.builder, migration_policy=migration_policy
        )
        lr.assembly = parts
        async with lr:
            yield lr
