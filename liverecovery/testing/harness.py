"""A hypothesis state machine that checks liverecovery's invariants on *your* backends.

A backup product subclasses ``LiveRecoveryHarness`` and overrides ``make_backends`` to return
its own ``CatalogReader`` / ``BlockCache`` / ``NfsExporter`` / ``VSphereClient`` (wrapped with
``faulty`` so the harness can fail any call), plus ``leftovers`` to report what its systems still
hold. Hypothesis then drives random interleavings of start / fail-a-backend-call / cancel /
stop --power-off / migrate_now over several jobs and checks, after every step and at the end:

- every job ends ``completed``, ``failed`` or ``cancelled``;
- while a job holds an export, mount, published folder or cache reservation, it is live;
- no automatic power-off after power-on: a VM that reached ``serving`` stays registered and
  powered on unless the operator stopped its job with ``power_off=True`` (a cancel is refused);
- a VM whose storage vMotion finished is never powered off;
- after all jobs end, nothing is left behind but the migrated VMs.

The event loop is driven by hand, so every interleaving hypothesis finds replays exactly::

    class MyProductHarness(LiveRecoveryHarness):
        def make_backends(self, faults):
            return Backends(exporter=faulty(MyExporter(), faults, "exporter"), ...)

    TestMyProduct = MyProductHarness.TestCase

The defaults use the in-memory backends, and liverecovery's own tests run this harness.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Sequence
from typing import Any

import anyio
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from liverecovery.backends import Backends
from liverecovery.config import Settings
from liverecovery.errors import JobStateError
from liverecovery.job.job import RecoveryJob
from liverecovery.job.migration import ManualMigration
from liverecovery.job.states import TERMINAL_STATES, State
from liverecovery.recovery.live import LiveRecovery
from liverecovery.spec import RecoverySpec
from liverecovery.testing.faults import FaultPlan
from liverecovery.testing.memory import (
    MemoryBlockCache,
    MemoryCatalog,
    MemoryExporter,
    MemoryVSphere,
)

__all__ = ["OPERATIONS", "LiveRecoveryHarness"]

OPERATIONS: tuple[str, ...] = (
    "catalog.restore_point",
    "cache.space",
    "cache.reserve",
    "cache.release",
    "exporter.export",
    "exporter.unexport",
    "exporter.publish",
    "exporter.unpublish",
    "vsphere.mount_nfs_datastore",
    "vsphere.unmount_datastore",
    "vsphere.register_vm",
    "vsphere.unregister_vm",
    "vsphere.power_on",
    "vsphere.power_off",
    "vsphere.relocate",
)
"""The backend calls the harness may make fail (the ``faulty`` names)."""


class LiveRecoveryHarness(RuleBasedStateMachine):
    """Override ``make_backends``, ``vms``, ``hosts``, ``datastore`` and ``leftovers``."""

    jobs = Bundle("jobs")
    vms: Sequence[str] = ("a", "b", "c", "d")
    hosts: Sequence[str] = ("esx01", "esx02")
    datastore: str = "datastore1"
    max_failures_per_call: int = 2
    """Fewer injected failures per call than compensation attempts: a rollback always finishes."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.faults = FaultPlan()
        self.backends = self.make_backends(self.faults)
        self.injected: dict[str, int] = {}
        self.started: list[RecoveryJob] = []
        self.stopped: set[str] = set()
        """Jobs the operator stopped with ``power_off=True``: the only ones whose running VM
        may be powered off."""
        self.results_dir = tempfile.mkdtemp(prefix="lr-harness-")
        # No journal: its fsyncs run in worker threads, which would make interleavings depend
        # on thread timing (the journal has tests of its own).
        self.lr = LiveRecovery(
            Settings(
                job_results_dir=self.results_dir,
                compensation_retry_delay_s=0,
                migration_backoff_s=0,
                journal=False,
            ),
            self.backends,
            migration_policy=ManualMigration(),
        )
        self._stop = asyncio.Event()
        self._host = self.loop.create_task(self._run_host())
        self.run(asyncio.sleep(0))

    # -- what a backup product overrides ------------------------------------------------------

    def make_backends(self, faults: FaultPlan) -> Backends:
        """The backends under test, each call going through ``faults``."""
        catalog = MemoryCatalog(faults)
        for vm in self.vms:
            catalog.add_vm(vm, disk_sizes=(4 << 30,))
        vsphere = MemoryVSphere(faults, hosts=tuple(self.hosts))
        return Backends(
            exporter=MemoryExporter(faults),
            catalog=catalog,
            cache=MemoryBlockCache(faults),
            vsphere=vsphere,
            inventory=vsphere,
        )

    def leftovers(self) -> dict[str, object]:
        """What the backends still hold that a finished, un-migrated job could have left."""
        b = self.backends
        exporter, vsphere = b.exporter, b.vsphere
        out: dict[str, object] = {
            "exports": dict(exporter.exports()),
            "reservations": dict(b.cache.reservations()),
        }
        if isinstance(exporter, MemoryExporter):
            out["published"] = list(exporter.published)
        if isinstance(vsphere, MemoryVSphere):
            out["mounts"] = {h: m for h, m in vsphere.datastores.items() if m}
            out["vms"] = [v.ref.name for v in vsphere.vms.values() if not v.migrated]
        return out

    def vm_running(self, job: RecoveryJob) -> bool | None:
        """Whether the job's VM is powered on (None when the backends cannot tell)."""
        vsphere = self.backends.vsphere
        if isinstance(vsphere, MemoryVSphere) and job.vm is not None:
            state = vsphere.vms.get(job.vm.moref)
            return state is not None and state.powered_on
        return None

    # -- the machinery ------------------------------------------------------------------------

    async def _run_host(self) -> None:
        async with self.lr:
            await self._stop.wait()

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` on the harness's loop; jobs only move while something runs."""
        return self.loop.run_until_complete(coro)

    @initialize()
    def warm_up(self) -> None:
        self.run(asyncio.sleep(0))

    @rule(target=jobs, index=st.integers(0, 1 << 16), host=st.integers(0, 1 << 16))
    def start(self, index: int, host: int) -> RecoveryJob:
        spec = RecoverySpec(
            vm=self.vms[index % len(self.vms)],
            esx_host=self.hosts[host % len(self.hosts)],
            datastore=self.datastore,
        )
        job: RecoveryJob = self.run(self.lr.start(spec))
        self.started.append(job)
        return job

    @rule(op=st.sampled_from(OPERATIONS))
    def fail_a_backend_call(self, op: str) -> None:
        if self.injected.get(op, 0) < self.max_failures_per_call:
            self.injected[op] = self.injected.get(op, 0) + 1
            self.faults.fail(op)

    @rule(job=jobs)
    def cancel(self, job: RecoveryJob) -> None:
        async def request() -> None:
            try:
                job.request_cancel()
            except JobStateError:
                assert job.running_from_backup, (job.id, job.state)

        self.run(request())

    @rule(job=jobs)
    def stop_and_power_off(self, job: RecoveryJob) -> None:
        async def request() -> None:
            running = job.running_from_backup
            try:
                job.request_stop(power_off=True)
            except JobStateError:
                assert job.done or job.state in (State.ROLLING_BACK, State.CLEANING_UP)
                return
            if running:
                self.stopped.add(job.id)

        self.run(request())

    @rule(job=jobs)
    def migrate_now(self, job: RecoveryJob) -> None:
        async def request() -> None:
            try:
                await job.migrate_now()
            except JobStateError:
                assert job.done or job.state is State.ROLLING_BACK

        self.run(request())

    @rule(steps=st.integers(1, 20))
    def run_loop(self, steps: int) -> None:
        for _ in range(steps):
            self.run(asyncio.sleep(0))

    @precondition(lambda self: bool(self.started))
    @invariant()
    def migrated_vms_are_never_taken_down(self) -> None:
        for job in self.started:
            if job.migrated:
                assert self.vm_running(job) is not False, job.id

    @precondition(lambda self: bool(self.started))
    @invariant()
    def no_automatic_power_off_after_power_on(self) -> None:
        for job in self.started:
            if State.SERVING in job.states_visited and job.id not in self.stopped:
                assert self.vm_running(job) is not False, (job.id, job.states_visited)

    @precondition(lambda self: bool(self.started))
    @invariant()
    def held_resources_stay_live(self) -> None:
        exports = self.backends.exporter.exports()
        reservations = self.backends.cache.reservations()
        for job in self.started:
            pending = job.pending_compensations
            if "unexport" in pending:
                assert job.export_path in exports, job.id
            if "release_cache_reservation" in pending:
                assert job.id in reservations, job.id

    def teardown(self) -> None:
        try:

            async def finish() -> None:
                with anyio.fail_after(30):
                    while not all(j.done for j in self.started):
                        for j in self.started:
                            if j.state is State.SERVING:
                                await j.migrate_now()
                        await anyio.lowlevel.checkpoint()

            self.run(finish())
            self.no_automatic_power_off_after_power_on()
            for job in self.started:
                assert job.state in TERMINAL_STATES, (job.id, job.state)
                if job.state is State.COMPLETED:
                    assert job.migrated
            left = self.leftovers()
            assert not any(left.values()), left
        finally:
            self._stop.set()
            self.run(self._host)
            self.loop.close()
