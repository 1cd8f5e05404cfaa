"""Once powered on from the backup the VM is production: a failed storage vMotion keeps it
running and is retried, a cancel is refused, only ``stop(power_off=True)`` takes it down, and
leaving ``LiveRecovery`` leaves it running for ``resume``."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from liverecovery import JobWarning, LiveRecovery, Settings, StateChanged, Timeouts
from liverecovery.errors import (
    BackendError,
    BackendTimeoutError,
    JobCancelledError,
    JobLeftRunningError,
    JobStateError,
    SettingsError,
    VSphereError,
)
from liverecovery.job.job import RecoveryJob, retry_delay
from liverecovery.job.journal import unfinished_journals
from liverecovery.job.migration import ManualMigration
from liverecovery.job.states import RUNNING_STATES, TRANSITIONS, State
from liverecovery.recovery.control import ControlServer, request, socket_path

from .helpers import HOST, World, fast_settings, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def _until(job: RecoveryJob, state: State) -> None:
    with anyio.fail_after(10):
        async for event in job.events():
            if isinstance(event, StateChanged) and event.state is state:
                return
    raise AssertionError(f"job ended {job.state} without reaching {state}")


def _warnings(job: RecoveryJob) -> list[str]:
    return [e.message for e in job._events.events if isinstance(e, JobWarning)]


def _running(world: World) -> list[str]:
    return [v.ref.name for v in world.vsphere.vms.values() if v.powered_on]


def test_the_table_has_no_failure_or_cancel_out_of_a_running_state() -> None:
    for t in TRANSITIONS:
        if t.source in RUNNING_STATES and t.dest is State.ROLLING_BACK:
            assert t.trigger in ("stop", "vm_lost"), t
    assert any(
        t.trigger == "migration_failed" and (t.source, t.dest) == (State.MIGRATING, State.SERVING)
        for t in TRANSITIONS
    )


def test_retry_delay_doubles_then_runs_out() -> None:
    s = Settings(migration_retries=3, migration_backoff_s=2.0)
    assert [retry_delay(s, n) for n in range(5)] == [None, 2.0, 4.0, 8.0, None]
    assert retry_delay(Settings(migration_retries=0), 1) is None


@pytest.mark.parametrize(
    "kw", [{"migration_retries": -1}, {"migration_retries": 1.5}, {"migration_backoff_s": -1}]
)
def test_migration_settings_are_validated(kw: dict[str, object]) -> None:
    with pytest.raises(SettingsError, match=next(iter(kw))):
        Settings(**kw)  # type: ignore[arg-type]


def test_migration_settings_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[settings]\nmigration_retries = 2\nmigration_backoff_s = 0.5\n")
    s = Settings.from_toml(path, table="settings")
    assert (s.migration_retries, s.migration_backoff_s) == (2, 0.5)


async def test_a_failed_migration_keeps_the_vm_running_and_succeeds_on_retry() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.relocate")
    settings = fast_settings(migration_backoff_s=0.01)
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            summary = await job.wait()
    assert summary.state is State.COMPLETED
    visited = job.states_visited
    i = visited.index(State.MIGRATING)
    assert visited[i : i + 4] == (
        State.MIGRATING,
        State.SERVING,
        State.MIGRATING,
        State.CLEANING_UP,
    )
    assert State.ROLLING_BACK not in visited
    assert "vsphere.power_off" not in world.faults.calls
    assert "vsphere.unregister_vm" not in world.faults.calls
    assert world.faults.count("vsphere.relocate") == 2
    (warning,) = [w for w in _warnings(job) if "storage vMotion failed" in w]
    assert "injected failure" in warning and "keeps running" in warning
    (vm,) = world.vsphere.vms.values()
    assert vm.powered_on and vm.migrated
    assert world.clean(), world.leftovers()


async def test_a_hung_migration_times_out_and_keeps_serving() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.hang("vsphere.relocate")
    settings = fast_settings(migration_backoff_s=0, timeouts=Timeouts(migrate=0.1))
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            await job.wait()
    assert job.state is State.COMPLETED
    assert any("migrating did not finish within timeouts.migrate" in w for w in _warnings(job))
    assert "vsphere.power_off" not in world.faults.calls


async def test_exhausted_retries_keep_serving_until_migrate_now() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.relocate", times=3)
    settings = fast_settings(migration_retries=2, migration_backoff_s=0.01)
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            while not any("used up" in w for w in _warnings(job)):
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # no further attempt by itself
        assert world.faults.count("vsphere.relocate") == 3
        assert job.state is State.SERVING and not job.done
        status = job.status()
        assert status.running_from_backup and status.migration_failures == 3
        assert status.next_migration_retry_s is None and "used up" in status.last_warning
        assert _running(world) == ["web01"]
        await job.migrate_now()  # the operator's retry
        with anyio.fail_after(10):
            summary = await job.wait()
    assert summary.state is State.COMPLETED
    assert "vsphere.power_off" not in world.faults.calls


async def test_cancel_after_power_on_is_refused_and_the_vm_keeps_running() -> None:
    world = World()
    world.catalog.add_vm("web01")
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
        with pytest.raises(JobStateError, match=r"running from the backup.*--power-off"):
            await job.cancel()
        with pytest.raises(JobStateError, match="power_off=True"):
            await job.stop()
        await anyio.sleep(0.05)
        assert job.state is State.SERVING and _running(world) == ["web01"]
        assert await job.stop(power_off=True) is State.CANCELLED
        with pytest.raises(JobCancelledError, match="stopped"):
            await job.wait()
    assert job.compensations_run == (
        "power_off",
        "unregister",
        "unpublish",
        "unmount",
        "unexport",
        "release_cache_reservation",
    )
    assert world.clean(), world.leftovers()
    assert not world.vsphere.vms


async def test_stop_during_migration_powers_off_and_cleans_up() -> None:
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause("vsphere.relocate")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            await pause.reached.wait()
        assert job.state is State.MIGRATING
        with anyio.fail_after(10):
            assert await job.stop(power_off=True) is State.CANCELLED
    assert job.states_visited[-3:] == (State.MIGRATING, State.ROLLING_BACK, State.CANCELLED)
    assert world.clean() and not world.vsphere.vms


async def test_stop_before_power_on_is_a_cancel() -> None:
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause("vsphere.register_vm")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            await pause.reached.wait()
        assert await job.stop() is State.CANCELLED
    assert world.clean()


async def test_leaving_live_recovery_leaves_the_vm_running_and_resume_continues(
    tmp_path: Path,
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
    assert job.left_running and lr.left_running == [job]
    assert job.state is State.SERVING
    with pytest.raises(JobLeftRunningError, match="resume"):
        await job.wait()
    # Nothing was undone in vSphere: the VM runs, the datastore stays mounted.
    assert _running(world) == ["web01"]
    undos = {"vsphere.power_off", "vsphere.unregister_vm", "vsphere.unmount_datastore"}
    assert not undos & set(world.faults.calls)
    assert "exporter.unexport" not in world.faults.calls
    assert world.vsphere.datastores.get("esx01")

    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with anyio.fail_after(10):
            summary = await resumed.wait()
    assert summary.state is State.COMPLETED
    assert "vsphere.power_off" not in world.faults.calls
    (vm,) = world.vsphere.vms.values()
    assert vm.powered_on and vm.migrated
    assert world.clean(), world.leftovers()


async def test_outer_cancellation_leaves_a_running_vm_running() -> None:
    world = World()
    world.catalog.add_vm("web01")
    with anyio.move_on_after(2):
        async with LiveRecovery(
            fast_settings(), world.backends, migration_policy=ManualMigration()
        ) as lr:
            job = await lr.start(spec())
            await _until(job, State.SERVING)
            await anyio.sleep_forever()
    assert job.left_running and job.state is State.SERVING
    assert _running(world) == ["web01"]


async def test_a_resumed_running_job_never_powers_its_vm_off(tmp_path: Path) -> None:
    """Resumed, and then its migration keeps failing: still serving, never powered off."""
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path, migration_retries=1, migration_backoff_s=0)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
    world.faults.fail("vsphere.relocate", times=2)
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with anyio.fail_after(10):
            while resumed.state is not State.SERVING or "used up" not in resumed.last_warning:
                await anyio.sleep(0.01)
        assert resumed.state is State.SERVING
        with pytest.raises(JobStateError, match="running from the backup"):
            resumed.request_cancel()
    assert resumed.left_running
    assert "vsphere.power_off" not in world.faults.calls
    assert _running(world) == ["web01"]


async def test_serve_timeout_starts_the_migration_instead_of_rolling_back() -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(timeouts=Timeouts(serve=0.05))
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            summary = await job.wait()
    assert summary.state is State.COMPLETED
    assert any(
        "timeouts.serve" in w and "starting the storage vMotion" in w for w in _warnings(job)
    )


async def test_hung_vcenter_call_fails_within_its_timeout_naming_it() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.hang("vsphere.mount_nfs_datastore")
    settings = fast_settings(timeouts=Timeouts(mount=0.1))
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5), pytest.raises(BackendTimeoutError, match="mounting"):
            await job.wait()


async def test_operator_verbs_over_the_control_socket(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.relocate")
    path = socket_path(tmp_path)
    settings = fast_settings(migration_retries=0)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
        async with anyio.create_task_group() as tg:
            await tg.start(ControlServer(lr, path).serve)
            with anyio.fail_after(10):
                (st,) = (await request(path, {"op": "status", "job": job.id}))["jobs"]
                assert st["state"] == "serving" and st["running_from_backup"] is True
                assert st["seconds_in_state"] >= 0 and "bytes_served" in st
                refused = await request(path, {"op": "cancel", "job": job.id})
                assert "running from the backup" in refused["error"]
                refused = await request(path, {"op": "stop", "job": job.id})
                assert "--power-off" in refused["error"]
                # The first migration fails (no automatic retry): status shows it.
                await request(path, {"op": "migrate_now", "job": job.id})
                while job.state is not State.SERVING or "vMotion failed" not in job.last_warning:
                    await anyio.sleep(0.01)
                (st,) = (await request(path, {"op": "status"}))["jobs"]
                assert st["state"] == "serving" and "injected failure" in st["last_warning"]
                reply = await request(path, {"op": "stop", "job": job.id, "power_off": True})
                assert reply == {"job_id": job.id, "state": "cancelled"}
                gone = await request(path, {"op": "migrate_now", "job": job.id})
                assert "cancelled" in gone["error"]
            tg.cancel_scope.cancel()
    assert world.clean() and not world.vsphere.vms


async def test_a_stop_that_cannot_power_off_keeps_serving_the_vm() -> None:
    """If the VM cannot be powered off it still runs from the backup: its folder, datastore
    and export stay, the job serves it on, and a later stop can succeed."""
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.power_off", times=3)
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
        with anyio.fail_after(10):
            assert await job.stop(power_off=True) is State.SERVING
        assert job.compensations_run == ("power_off",)
        assert "powering the VM off failed" in job.last_warning
        assert _running(world) == ["web01"] and world.exporter.published
        with anyio.fail_after(10):
            assert await job.stop(power_off=True) is State.FAILED  # the first error is kept
    assert job.states_visited[-4:] == (
        State.ROLLING_BACK,
        State.SERVING,
        State.ROLLING_BACK,
        State.FAILED,
    )
    assert world.clean() and not world.vsphere.vms


async def _left_serving(world: World, settings: Settings) -> RecoveryJob:
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
    assert job.left_running
    return job


async def test_a_hung_resume_fails_within_its_bound_and_leaves_the_vm_running(
    tmp_path: Path,
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path, timeouts=Timeouts(resume=0.2))
    await _left_serving(world, settings)
    world.faults.hang("vsphere.nfs_datastores", times=99)
    async with LiveRecovery(settings, world.backends) as lr:
        (resumed,) = await lr.resume()
        with anyio.fail_after(5), pytest.raises(JobLeftRunningError, match=r"timeouts\.resume"):
            await resumed.wait()
    assert _running(world) == ["web01"]
    assert "vsphere.power_off" not in world.faults.calls
    assert len(unfinished_journals(tmp_path)) == 1  # a later resume tries again


async def test_a_power_state_vsphere_cannot_tell_never_takes_the_vm_down(tmp_path: Path) -> None:
    """Resume asks vSphere whether the VM runs; an error that is not "not found" is no answer:
    the job serves on (the journal says the VM runs) rather than undo a running VM."""
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    await _left_serving(world, settings)
    world.faults.fail("vsphere.power_state", VSphereError("busy", fault="SystemError"))
    async with LiveRecovery(settings, world.backends) as lr:
        (resumed,) = await lr.resume()
        with anyio.fail_after(10):
            summary = await resumed.wait()
    assert summary.state is State.COMPLETED
    assert "vsphere.power_off" not in world.faults.calls
    assert "vsphere.unregister_vm" not in world.faults.calls


async def test_a_vm_powered_off_outside_the_job_keeps_its_writes(tmp_path: Path) -> None:
    """Found powered off on resume, the rest is undone, but the overlay holding the writes the
    VM made while it ran from the backup is kept (they may be all there is of them)."""
    from liverecovery.backends import StagingContext
    from liverecovery.datastore.copying import CopyingBuilder

    discarded: list[str] = []

    class Spy(CopyingBuilder):
        async def discard(self, ctx: StagingContext) -> None:
            discarded.append(ctx.job_id)
            await super().discard(ctx)

    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    await _left_serving(world, settings)
    for vm in world.vsphere.vms.values():
        vm.powered_on = False  # an operator powered it off while no process served it
    async with LiveRecovery(settings, world.backends, builder=Spy()) as lr:
        (resumed,) = await lr.resume()
        with anyio.fail_after(10), pytest.raises(Exception, match="no longer powered on"):
            await resumed.wait()
    assert "write overlay" in " ".join(_warnings(resumed))
    assert discarded == []
    assert world.clean(), world.leftovers()


async def test_a_cancel_inside_a_power_on_that_took_effect_leaves_the_vm_running() -> None:
    """vCenter powered the VM on but had not answered when the cancel came: the VM is
    production, so its datastore stays exported and mounted and it keeps running."""
    world = World()
    world.catalog.add_vm("web01")
    original = world.vsphere.power_on

    async def slow_answer(vm: object) -> None:
        await original(vm)  # type: ignore[arg-type]
        await anyio.sleep(5)

    world.vsphere.power_on = slow_answer  # type: ignore[method-assign]
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            while not _running(world):
                await anyio.sleep(0.001)
        with anyio.fail_after(15), pytest.raises(JobStateError, match="running from the backup"):
            await job.cancel()
        assert job.state is State.SERVING
        assert _running(world) == ["web01"] and world.exporter.exports()
        assert any("powered on before a cancel" in w for w in _warnings(job))
        assert await job.stop(power_off=True) is State.CANCELLED
    assert world.clean(), world.leftovers()


async def test_a_power_on_that_failed_but_took_effect_keeps_serving() -> None:
    """The power-on answered with an error (a lost reply) although the VM runs: vSphere's
    power state decides, and the VM is served, not rolled back under it."""
    world = World()
    world.catalog.add_vm("web01")
    original = world.vsphere.power_on

    async def lost_reply(vm: object) -> None:
        await original(vm)  # type: ignore[arg-type]
        raise VSphereError("connection reset while waiting for the task")

    world.vsphere.power_on = lost_reply  # type: ignore[method-assign]
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        await _until(job, State.SERVING)
        assert _running(world) == ["web01"] and world.exporter.exports()
        assert await job.stop(power_off=True) is State.CANCELLED
    assert world.clean(), world.leftovers()


async def test_a_power_on_that_failed_without_effect_is_rolled_back() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.faults.fail("vsphere.power_on")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10), pytest.raises(BackendError, match="injected failure"):
            await job.wait()
    assert job.state is State.FAILED and world.clean(), world.leftovers()


async def test_a_registration_that_failed_but_took_effect_is_undone() -> None:
    """RegisterVM answered with an error (a lost reply) although vCenter registered the VM:
    found by its path, it is unregistered with the rest of the rollback, not left behind on a
    datastore that is unmounted (its name taken for the next attempt)."""
    world = World()
    world.catalog.add_vm("web01")
    original = world.vsphere.register_vm

    async def lost_reply(*args: object, **kwargs: object) -> object:
        await original(*args, **kwargs)  # type: ignore[arg-type]
        raise VSphereError("connection reset while waiting for the task")

    world.vsphere.register_vm = lost_reply  # type: ignore[method-assign,assignment]
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10), pytest.raises(VSphereError, match="connection reset"):
            await job.wait()
    assert job.state is State.FAILED
    assert not world.vsphere.vms and world.clean(), world.leftovers()


async def test_a_registration_cut_short_that_took_effect_is_undone() -> None:
    """A cancel arrived while vCenter was registering the VM: it is found and unregistered."""
    world = World()
    world.catalog.add_vm("web01")
    original = world.vsphere.register_vm
    registered = anyio.Event()

    async def slow_answer(*args: object, **kwargs: object) -> object:
        ref = await original(*args, **kwargs)  # type: ignore[arg-type]
        registered.set()
        await anyio.sleep(30)
        return ref

    world.vsphere.register_vm = slow_answer  # type: ignore[method-assign,assignment]
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            await registered.wait()
            assert await job.cancel() is State.CANCELLED
    assert not world.vsphere.vms and world.clean(), world.leftovers()


async def test_a_mount_that_failed_but_took_effect_is_undone() -> None:
    """CreateNasDatastore answered with an error (a lost reply) although the host mounted the
    export: no job holds the mount, so it is unmounted, not left pointing at a removed export."""
    world = World()
    world.catalog.add_vm("web01")
    original = world.vsphere.mount_nfs_datastore

    async def lost_reply(*args: object) -> str:
        await original(*args)  # type: ignore[arg-type]
        raise VSphereError("connection reset while waiting for the task")

    world.vsphere.mount_nfs_datastore = lost_reply  # type: ignore[method-assign,assignment]
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10), pytest.raises(VSphereError, match="connection reset"):
            await job.wait()
    assert job.state is State.FAILED and world.clean(), world.leftovers()


async def test_a_mount_refused_as_a_duplicate_name_is_never_unmounted() -> None:
    """The datastore name was taken before the call: whatever it is, it is not ours to undo."""
    world = World()
    world.catalog.add_vm("web01")
    await world.vsphere.mount_nfs_datastore(HOST, "nas", "/other", "liverecovery-" + HOST)
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10), pytest.raises(VSphereError):
            await job.wait()
    assert world.vsphere.datastores[HOST]["liverecovery-" + HOST] == ("nas", "/other")


@pytest.mark.parametrize("stall_s", [0.3, 0.0])
async def test_a_stalled_storage_vmotion_gives_its_slot_to_the_next_vm(stall_s: float) -> None:
    """One slot in all: the first VM's storage vMotion hangs (no progress). After
    ``migration_stall_s`` its slot goes to the next VM, whose copy completes while the first
    one still hangs; with 0 (never) the second waits."""
    world = World()
    world.catalog.add_vm("web01")
    world.catalog.add_vm("web02")
    world.faults.hang("vsphere.relocate")  # the first call only
    settings = fast_settings(max_migrations=1, migration_stall_s=stall_s)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        first = await lr.start(spec("web01"))
        second = await lr.start(spec("web02"))
        await _until(first, State.SERVING)
        await _until(second, State.SERVING)
        await first.migrate_now()
        with anyio.fail_after(10):
            while not world.faults.count("vsphere.relocate"):  # the first copy, hung
                await anyio.sleep(0.01)
        await second.migrate_now()
        if stall_s:
            with anyio.fail_after(20):
                assert (await second.wait()).state is State.COMPLETED
            assert first.state is State.MIGRATING  # still hung, still served
            assert any("made no progress" in w for w in _warnings(first))
        else:
            await anyio.sleep(1.0)
            assert second.state is State.MIGRATING  # waiting for the slot, still served
            assert world.faults.count("vsphere.relocate") == 1
        for job in (first, second):
            if not job.done:
                await job.stop(power_off=True)


@pytest.mark.parametrize("where", ["registering", "powering_on", "serving"])
async def test_an_abandoned_job_touches_nothing_outside_the_process(where: str) -> None:
    """A fenced serving node abandons its jobs: whatever their state, no vSphere call, no
    unexport, no undo after the abandon (the node that took the address over owns them)."""
    world = World()
    world.catalog.add_vm("web01")
    operation = {"registering": "vsphere.register_vm", "powering_on": "vsphere.power_on"}
    pause = world.faults.pause(operation[where]) if where in operation else None
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(10):
            if pause is not None:
                await pause.reached.wait()
            else:
                await _until(job, State.SERVING)
        calls = len(world.faults.calls)
        lr.abandon("fenced: another node took the lease")
        with anyio.fail_after(10):
            await job._done.wait()
    after = world.faults.calls[calls:]  # not even at the LiveRecovery's exit
    assert after == ["exporter.unpublish"], after  # the local folder closed, nothing else
    assert job.left_running and "abandoned (fenced" in job.last_warning
    assert world.exporter.exports() and world.vsphere.datastores[HOST]
    if where == "serving":
        assert _running(world) == ["web01"]
