"""Random interleavings of start / fail-a-backend-call / cancel / migrate_now over several jobs.

The event loop is driven by hand: jobs only move when a rule runs the loop, so every
interleaving hypothesis finds is replayed exactly when it shrinks a failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.lowlevel
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from liverecovery import JobStateError, LiveRecovery, ManualMigration, State
from liverecovery.job.job import RecoveryJob
from liverecovery.job.states import TERMINAL_STATES

from .helpers import World, fast_settings, spec

VMS = ("a", "b", "c", "d")
HOSTS = ("esx01", "esx02")
OPERATIONS = (
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


class JobInterleavings(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World(hosts=HOSTS)
        for vm in VMS:
            self.world.catalog.add_vm(vm, disk_sizes=(4 << 30,))
        # Fewer failures per call than compensation attempts: a rollback always finishes.
        self.injected: dict[str, int] = {}
        # No journal here: its fsyncs run in worker threads, which would make the hand-driven
        # loop's interleavings depend on thread timing (the journal has tests of its own).
        self.lr = LiveRecovery(
            fast_settings(journal=False), self.world.backends, migration_policy=ManualMigration()
        )
        self.stop = asyncio.Event()
        self.host = self.loop.create_task(self._host())
        self.started: list[RecoveryJob] = []
        self._run(asyncio.sleep(0))

    async def _host(self) -> None:
        async with self.lr:
            await self.stop.wait()

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def warm_up(self) -> None:
        self._run(asyncio.sleep(0))

    @rule(target=jobs, vm=st.sampled_from(VMS), host=st.sampled_from(HOSTS))
    def start(self, vm: str, host: str) -> RecoveryJob:
        job: RecoveryJob = self._run(self.lr.start(spec(vm=vm, esx_host=host)))
        self.started.append(job)
        return job

    @rule(op=st.sampled_from(OPERATIONS))
    def fail_a_backend_call(self, op: str) -> None:
        if self.injected.get(op, 0) < 2:
            self.injected[op] = self.injected.get(op, 0) + 1
            self.world.faults.fail(op)

    @rule(job=jobs)
    def cancel(self, job: RecoveryJob) -> None:
        async def request() -> None:
            job.request_cancel()

        self._run(request())

    @rule(job=jobs)
    def migrate_now(self, job: RecoveryJob) -> None:
        async def request() -> None:
            try:
                await job.migrate_now()
            except JobStateError:
                # Refused only once the job has ended or is rolling back.
                assert job.done or job.state is State.ROLLING_BACK

        self._run(request())

    @rule(steps=st.integers(1, 20))
    def run_loop(self, steps: int) -> None:
        for _ in range(steps):
            self._run(asyncio.sleep(0))

    @precondition(lambda self: bool(self.started))
    @invariant()
    def migrated_vms_are_never_taken_down(self) -> None:
        for job in self.started:
            if job.migrated:
                assert job.vm is not None
                state = self.world.vsphere.vms.get(job.vm.moref)
                assert state is not None and state.powered_on, job.id

    @precondition(lambda self: bool(self.started))
    @invariant()
    def held_resources_stay_live(self) -> None:
        for job in self.started:
            pending = job.pending_compensations
            if "unexport" in pending:
                assert job.export_path in self.world.exporter.exports(), job.id
            if "unmount" in pending:
                mounts = self.world.vsphere.datastores[job.spec.esx_host]
                assert job.datastore in mounts, job.id
            if "unpublish" in pending:
                assert (job.export_path, job.folder) in self.world.exporter.published, job.id
            if "release_cache_reservation" in pending:
                assert job.id in self.world.cache.reservations(), job.id

    def teardown(self) -> None:
        try:
            for job in self.started:
                if not job.done and job.state is State.SERVING:
                    self._run(job.migrate_now())

            async def finish() -> None:
                with anyio.fail_after(10):
                    while not all(j.done for j in self.started):
                        for j in self.started:
                            if j.state is State.SERVING:
                                await j.migrate_now()
                        await anyio.lowlevel.checkpoint()

            self._run(finish())
            for job in self.started:
                assert job.state in TERMINAL_STATES, (job.id, job.state)
                if job.state is State.COMPLETED:
                    assert job.migrated
            # Nothing is left behind except migrated VMs, running on their destination.
            assert self.world.clean(), self.world.leftovers()
            migrated = {j.vm.moref for j in self.started if j.migrated and j.vm}
            assert set(self.world.vsphere.vms) == migrated
        finally:
            self.stop.set()
            self._run(self.host)
            self.loop.close()


JobInterleavings.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestJobInterleavings = JobInterleavings.TestCase
