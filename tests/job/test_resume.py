"""After a restart, ``LiveRecovery.resume()`` continues or rolls back each unfinished job.

A crash is simulated in-process: the job's memory (its undo list, its open journal) is dropped,
so the backends keep every side effect it made and the journal ends where the process died.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, State
from liverecovery.config import Settings
from liverecovery.datastore.builder import FreBuilder
from liverecovery.errors import JobInterruptedError
from liverecovery.job.job import RecoveryJob
from liverecovery.job.journal import JournalContents, JournalRecord, unfinished_journals
from liverecovery.job.migration import ManualMigration
from liverecovery.job.resume import plan_resume
from liverecovery.job.sharing import datastore_name_for
from liverecovery.testing import Pause

from .helpers import World, fast_settings, reach, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def crash(job: RecoveryJob, paused: Pause | None = None) -> None:
    """The process dies: nothing it knew in memory is undone, its journal just stops.

    A call it had in flight (``paused``) still completes, unjournaled.
    """
    job._compensations.clear()
    journal, job._journal = job._journal, None
    assert journal is not None
    await journal.aclose()
    job.request_exit()  # a running VM is left as it is; a job before power-on stops
    if paused is not None:
        paused.release()
    with anyio.fail_after(5):
        await job._done.wait()


async def test_a_served_vm_is_served_again_and_completes(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await reach(job, State.SERVING)
        await crash(job)
    # The world still has everything: export, mount, folder, a running VM.
    assert world.exporter.exports() and world.vsphere.vms
    (vm,) = world.vsphere.vms.values()
    assert vm.powered_on
    (unfinished,) = unfinished_journals(tmp_path)
    # The crash may land between entering a state and journaling it; the effects decide.
    assert unfinished.last_state in ("powering_on", "serving")
    assert "powered_on" in [r.data["effect"] for r in unfinished.effects()]

    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr2:
        (resumed,) = await lr2.resume()
        assert resumed.id == job.id and resumed.spec.vm == "web01"
        if resumed.state is not State.SERVING:
            await reach(resumed, State.SERVING)
        # Nothing was created twice: the export, the mount and the VM were adopted.
        assert world.faults.count("exporter.export") == 1
        assert world.faults.count("vsphere.mount_nfs_datastore") == 1
        assert world.faults.count("vsphere.register_vm") == 1
        await resumed.migrate_now()
        summary = await resumed.wait()
    assert summary.state is State.COMPLETED
    assert world.clean(), world.leftovers()
    assert vm.migrated and vm.powered_on
    assert unfinished_journals(tmp_path) == []


async def test_a_job_that_never_powered_on_is_rolled_back(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause("vsphere.power_on")
    settings = fast_settings(job_results_dir=tmp_path)
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5):
            await pause.reached.wait()
        await crash(job)
    assert world.vsphere.vms and world.exporter.exports()
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with pytest.raises(JobInterruptedError, match="before its VM was powered on"):
            await resumed.wait()
    assert resumed.state is State.FAILED
    assert list(resumed.compensations_run) == [
        "unregister",
        "unpublish",
        "unmount",
        "unexport",
        "release_cache_reservation",
    ]
    assert world.clean(), world.leftovers()
    assert unfinished_journals(tmp_path) == []


async def test_a_vm_found_powered_off_is_rolled_back(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        await reach(job, State.SERVING)
        await crash(job)
    for vm in world.vsphere.vms.values():
        vm.powered_on = False  # an operator powered it off while we were down
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with pytest.raises(JobInterruptedError, match="no longer powered on"):
            await resumed.wait()
    assert world.clean(), world.leftovers()
    assert "vsphere.power_off" not in world.faults.calls


async def test_a_migrated_vm_only_needs_cleanup(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    pause = world.faults.pause("exporter.unpublish")
    settings = fast_settings(job_results_dir=tmp_path)
    async with LiveRecovery(settings, world.backends) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5):
            await pause.reached.wait()
        await crash(job, pause)
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        summary = await resumed.wait()
    assert summary.state is State.COMPLETED and resumed.migrated
    assert world.clean(), world.leftovers()
    (vm,) = world.vsphere.vms.values()
    assert vm.powered_on and vm.migrated


async def test_unreadable_journals_are_skipped_and_reported(tmp_path: Path) -> None:
    world = World()
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "bad.journal").write_bytes(b"garbage\n")
    async with LiveRecovery(fast_settings(job_results_dir=tmp_path), world.backends) as lr:
        assert await lr.resume() == []
    assert len(lr.resume_errors) == 1 and "bad.journal" in lr.resume_errors[0]


def _journal(*records: tuple[str, dict[str, object]]) -> JournalContents:
    return JournalContents(
        Path("j.journal"),
        tuple(JournalRecord(i + 1, k, d, 0.0) for i, (k, d) in enumerate(records)),
    )


@pytest.mark.parametrize(
    ("records", "running", "target"),
    [
        ([("state", {"state": "exporting"})], None, State.ROLLING_BACK),
        (
            [("state", {"state": "serving"}), ("effect", {"effect": "powered_on"})],
            None,
            State.SERVING,
        ),
        (
            [("state", {"state": "serving"}), ("effect", {"effect": "powered_on"})],
            False,
            State.ROLLING_BACK,
        ),
        (
            [("state", {"state": "migrating"}), ("effect", {"effect": "powered_on"})],
            True,
            State.MIGRATING,
        ),
        (
            [("state", {"state": "migrating"}), ("migrated", {"moref": "vm-1"})],
            None,
            State.CLEANING_UP,
        ),
        (
            [("state", {"state": "rolling_back"}), ("effect", {"effect": "powered_on"})],
            True,
            State.ROLLING_BACK,
        ),
        ([("state", {"state": "completed"})], None, State.COMPLETED),
    ],
)
def test_resume_decisions(
    records: list[tuple[str, dict[str, object]]], running: bool | None, target: State
) -> None:
    plan = plan_resume(_journal(("job", {}), *records), vm_running=running)
    assert plan.target is target


# -- calls in flight at the crash: they took effect, the journal never heard of it ----------------


async def _crash_during(world: World, settings: Settings, call: str) -> RecoveryJob:
    pause = world.faults.pause(call)
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        job = await lr.start(spec())
        with anyio.fail_after(5):
            await pause.reached.wait()
        await crash(job)  # cancelled while paused: the call has not happened yet...
    return job


async def test_a_registration_that_finished_after_the_crash_is_found_and_undone(
    tmp_path: Path,
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    await _crash_during(world, settings, "vsphere.register_vm")
    (unfinished,) = unfinished_journals(tmp_path)
    assert unfinished.last_state == "registering"
    (intent,) = [r.data for r in unfinished.records if r.kind == "registering"]
    # ...and now it completes on vCenter, with nobody left to journal it.
    await world.vsphere.register_vm(spec().esx_host, str(intent["vmx_path"]), "web01")
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with pytest.raises(JobInterruptedError):
            await resumed.wait()
    assert resumed.compensations_run[0] == "unregister"
    assert world.clean(), world.leftovers()


async def test_a_power_on_that_finished_after_the_crash_keeps_the_vm_running(
    tmp_path: Path,
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    await _crash_during(world, settings, "vsphere.power_on")
    (vm,) = world.vsphere.vms.values()
    await world.vsphere.power_on(vm.ref)  # a production VM is now running from the backup
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr2:
        (resumed,) = await lr2.resume()
        await reach(resumed, State.SERVING)
        await resumed.migrate_now()
        summary = await resumed.wait()
    assert summary.state is State.COMPLETED
    assert vm.migrated and vm.powered_on
    assert world.clean(), world.leftovers()


async def test_a_power_on_still_running_during_the_rollback_is_powered_off_first(
    tmp_path: Path,
) -> None:
    """The VM looks off when resume asks, then the late power-on lands: the undo of the
    registration powers it off before unregistering it (on its retry)."""
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    await _crash_during(world, settings, "vsphere.power_on")
    (vm,) = world.vsphere.vms.values()
    late = world.faults.pause("vsphere.unregister_vm")
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with anyio.fail_after(5):
            await late.reached.wait()
        await world.vsphere.power_on(vm.ref)
        late.release()
        with pytest.raises(JobInterruptedError):
            await resumed.wait()
    assert world.clean(), world.leftovers()


async def test_a_mount_that_finished_after_the_crash_is_found_and_undone(tmp_path: Path) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    await _crash_during(world, settings, "vsphere.mount_nfs_datastore")
    (unfinished,) = unfinished_journals(tmp_path)
    (exported,) = [r.data for r in unfinished.effects() if r.data["effect"] == "exported"]
    host = spec().esx_host
    await world.vsphere.mount_nfs_datastore(
        host, "127.0.0.1", str(exported["path"]), datastore_name_for(host)
    )
    async with LiveRecovery(settings, world.backends) as lr2:
        (resumed,) = await lr2.resume()
        with pytest.raises(JobInterruptedError):
            await resumed.wait()
    assert "unmount" in resumed.compensations_run
    assert world.clean(), world.leftovers()


async def test_a_half_built_overlay_is_removed_when_staging_was_interrupted(
    tmp_path: Path,
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    settings = fast_settings(job_results_dir=tmp_path)
    job = await _crash_during(world, settings, "exporter.publish")
    overlay = FreBuilder(world.cache).job_dir(job.staging_context())
    (overlay / "folder").mkdir(parents=True)  # what a builder had written when it died
    (overlay / "folder" / "web01.vmx").write_text("half")
    async with LiveRecovery(settings, world.backends, builder=FreBuilder(world.cache)) as lr2:
        (resumed,) = await lr2.resume()
        with pytest.raises(JobInterruptedError):
            await resumed.wait()
    assert not overlay.exists()
    assert world.clean(), world.leftovers()
