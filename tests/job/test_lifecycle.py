"""The job lifecycle: every transition, rollback and cancel from every state, failing compensations."""

from __future__ import annotations

import itertools

import anyio
import pytest

from liverecovery import (
    BackendError,
    CompensationRan,
    LiveRecovery,
    Progress,
    StateChanged,
    Timeouts,
)
from liverecovery.errors import BackendTimeoutError, JobCancelledError, RollbackError
from liverecovery.job.diagram import mermaid
from liverecovery.job.job import RecoveryJob
from liverecovery.job.migration import ManualMigration
from liverecovery.job.states import (
    HAPPY_PATH,
    ROLLBACK_STATES,
    RUNNING_STATES,
    STEP_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    State,
)

from .helpers import STEP_CALL, World, expected_rollback, fast_settings, spec

pytestmark = pytest.mark.anyio


def test_table_is_closed_and_reaches_every_state() -> None:
    states = {t.source for t in TRANSITIONS} | {t.dest for t in TRANSITIONS}
    assert states == set(State)
    # Terminal states have no way out; every active state before power-on (and cleanup) can
    # fail and be cancelled; a running VM's states only by the operator's explicit stop.
    assert not any(t.source in TERMINAL_STATES for t in TRANSITIONS)
    for s in ROLLBACK_STATES:
        triggers = {t.trigger for t in TRANSITIONS if t.source == s}
        assert {"fail", "cancel"} <= triggers
    for s in RUNNING_STATES:
        triggers = {t.trigger for t in TRANSITIONS if t.source == s}
        assert "stop" in triggers and not {"fail", "cancel"} & triggers
    assert "stateDiagram-v2" in mermaid()
    assert all(f"{t.source} --> {t.dest}" in mermaid() for t in TRANSITIONS)


async def test_happy_path_visits_every_state_in_order() -> None:
    world = World()
    world.catalog.add_vm("web01")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        seen = [e async for e in job.events()]
        summary = await job.wait()
    assert summary.state is State.COMPLETED
    assert summary.states_visited == HAPPY_PATH
    changes = [(e.previous, e.state) for e in seen if isinstance(e, StateChanged)]
    assert changes == list(itertools.pairwise(HAPPY_PATH))
    progress = [e for e in seen if isinstance(e, Progress)]
    assert progress and progress[-1].bytes_restored == progress[-1].bytes_total > 0
    # Cleanup undid everything except the migrated VM, which is on its destination and running.
    assert world.clean(), world.leftovers()
    (vm,) = world.vsphere.vms.values()
    assert vm.powered_on and vm.migrated and vm.datastore == "datastore1"
    assert set(summary.timings) == {s.value for s in HAPPY_PATH[:-1]}


@pytest.mark.parametrize(
    "failed_in", [s for s in STEP_STATES if s in STEP_CALL and s not in RUNNING_STATES]
)
async def test_rollback_from_every_step_undoes_exactly_what_completed(failed_in: State) -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail(STEP_CALL[failed_in], times=1 if failed_in is not State.CLEANING_UP else 99)
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with pytest.raises(BackendError, match="injected failure"):
            await job.wait()
    assert job.state is State.FAILED
    assert job.states_visited[-3:] == (failed_in, State.ROLLING_BACK, State.FAILED)
    if failed_in is State.CLEANING_UP:
        # The failing unpublish is recorded; the rollback continues with the rest, and the
        # migrated VM is neither powered off nor unregistered.
        assert job.compensations_run == (
            "unpublish",
            "unmount",
            "unexport",
            "release_cache_reservation",
        )
        (vm,) = world.vsphere.vms.values()
        assert vm.powered_on and vm.migrated
        assert "vsphere.power_off" not in world.faults.calls
    else:
        assert list(job.compensations_run) == expected_rollback(failed_in)
        assert world.clean(), world.leftovers()
        assert not world.vsphere.vms


async def test_serving_timeout_migrates_rather_than_rolling_back() -> None:
    # Was: a serve timeout rolled back (powering the VM off). Issue 2/8: after power-on the
    # job never takes the VM down by itself; the bound on serving starts the migration.
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(timeouts=Timeouts(serve=0.05))
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        summary = await job.wait()
    assert summary.state is State.COMPLETED
    assert "vsphere.power_off" not in world.faults.calls
    assert world.clean()


async def test_hung_backend_call_fails_after_its_timeout() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.hang("vsphere.register_vm")
    settings = fast_settings(timeouts=Timeouts(register=0.05))
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with pytest.raises(BackendTimeoutError, match="registering did not finish"):
            await job.wait()
    assert list(job.compensations_run) == expected_rollback(State.REGISTERING)
    assert world.clean()


async def _wait_for_state(job: RecoveryJob, state: State) -> None:
    with anyio.fail_after(5):
        async for event in job.events():
            if isinstance(event, StateChanged) and event.state is state:
                return
    raise AssertionError(f"job ended in {job.state} without reaching {state}")


@pytest.mark.parametrize("cancel_in", [s for s in STEP_STATES if s not in RUNNING_STATES])
async def test_cancel_from_every_state(cancel_in: State) -> None:
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause(STEP_CALL[cancel_in]) if cancel_in in STEP_CALL else None
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        if cancel_in in (State.MIGRATING, State.CLEANING_UP):
            await _wait_for_state(job, State.SERVING)
            await job.migrate_now()
        if pause is not None:
            with anyio.fail_after(5):
                await pause.reached.wait()
        else:
            await _wait_for_state(job, cancel_in)
        assert job.state is cancel_in
        if cancel_in is State.CLEANING_UP and pause is not None:
            # A compensation in flight runs to its end (bounded by its timeout); the cancel
            # takes effect right after it.
            job.request_cancel()
            pause.release()
        with anyio.fail_after(5):
            assert await job.cancel() is State.CANCELLED
        with pytest.raises(JobCancelledError):
            await job.wait()
    assert job.states_visited[-3:] == (cancel_in, State.ROLLING_BACK, State.CANCELLED)
    if cancel_in is State.CLEANING_UP:
        assert job.compensations_run == (
            "unpublish",
            "unmount",
            "unexport",
            "release_cache_reservation",
        )
        assert world.vsphere.vms and all(v.powered_on for v in world.vsphere.vms.values())
    else:
        assert list(job.compensations_run) == expected_rollback(cancel_in)
        assert not world.vsphere.vms
    assert world.clean(), world.leftovers()


async def test_cancel_before_start_goes_straight_to_cancelled() -> None:
    world = World()
    world.catalog.add_vm("web01")
    lr = LiveRecovery(fast_settings(), world.backends)
    job = RecoveryJob(spec(), lr._ctx)
    job.request_cancel()
    await job.run()
    assert job.states_visited == (State.CREATED, State.ROLLING_BACK, State.CANCELLED)
    assert world.faults.calls == []


async def test_failing_compensation_is_recorded_and_rollback_continues() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.power_on")
    world.faults.fail("exporter.unexport", times=99)
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with pytest.raises(BackendError, match="power_on") as caught:
            await job.wait()
    assert job.state is State.FAILED
    assert list(job.compensations_run) == expected_rollback(State.POWERING_ON)
    assert len(job.errors) == 2 and "unexport" in str(job.errors[1])
    assert any("rollback: unexport failed" in n for n in caught.value.__notes__)
    # Three attempts were made; everything after the failing step was still undone.
    assert world.faults.count("exporter.unexport") == 3
    assert world.cache.reservations() == {}
    assert list(world.exporter.exports()) == ["/liverecovery/esx01"]
    events = [e async for e in job.events() if isinstance(e, CompensationRan)]
    assert [e.name for e in events if e.error] == ["unexport"]


async def test_transient_compensation_failure_is_retried() -> None:
    # Was driven by a failed relocate; after power-on only an explicit stop powers off.
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.power_off", times=2)
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        await _wait_for_state(job, State.SERVING)
        assert await job.stop(power_off=True) is State.CANCELLED
    assert job.errors == ()
    assert world.faults.count("vsphere.power_off") == 3
    assert world.clean() and not world.vsphere.vms


async def test_cancel_during_rollback_of_a_failure_still_ends_failed() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.power_on")
    pause = world.faults.pause("vsphere.unregister_vm")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5):
            await pause.reached.wait()
        job.request_cancel()  # ignored: already rolling back
        pause.release()
        with pytest.raises(BackendError):
            await job.wait()
    assert job.state is State.FAILED and world.clean()


async def test_cancel_with_failing_compensation_raises_rollback_error() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.unmount_datastore", times=99)
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        await _wait_for_state(job, State.SERVING)
        await job.stop(power_off=True)  # was cancel(): refused once the VM runs (issue 2/8)
        with pytest.raises(RollbackError, match="compensation") as caught:
            await job.wait()
    assert job.state is State.FAILED
    assert len(caught.value.errors) == 1


async def test_leaving_the_context_rolls_back_jobs_not_yet_powered_on() -> None:
    # Was: a serving job was rolled back on exit. Now only jobs before power-on are (a running
    # VM is left running: tests/job/test_running_vm.py).
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause("vsphere.register_vm")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5):
            await pause.reached.wait()
    assert job.state is State.CANCELLED
    assert world.clean() and not world.vsphere.vms


async def test_outer_cancellation_still_rolls_back() -> None:
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause("vsphere.register_vm")
    with anyio.move_on_after(0.5):
        async with LiveRecovery(fast_settings(), world.backends) as lr:
            job = await lr.start(spec())
            await pause.reached.wait()  # cancelled from outside while registering
            await anyio.sleep_forever()
    assert job.state is State.CANCELLED
    assert world.clean() and not world.vsphere.vms


async def test_migrate_now_after_the_end_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        await job.wait()
        from liverecovery import JobStateError

        with pytest.raises(JobStateError, match="completed"):
            await job.migrate_now()
        assert lr.jobs() == [job] and lr.job(job.id) is job


async def test_hung_compensation_is_bounded_and_the_rollback_continues() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.power_on")
    world.faults.hang("vsphere.unregister_vm", times=99)
    settings = fast_settings(timeouts=Timeouts(compensation=0.05))
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5), pytest.raises(BackendError, match="power_on"):
            await job.wait()
    assert list(job.compensations_run) == expected_rollback(State.POWERING_ON)
    assert isinstance(job.errors[1], BackendTimeoutError)
    assert "timeouts.compensation = 0.05 s" in str(job.errors[1])
    # Everything but the hung unregister was undone.
    assert world.exporter.exports() == {} and world.cache.reservations() == {}
