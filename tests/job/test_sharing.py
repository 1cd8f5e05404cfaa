"""Exports and mounts are shared per ESX host and outlive the first job's cleanup."""

from __future__ import annotations

import anyio
import pytest

from liverecovery import LiveRecovery, State, StateChanged
from liverecovery.job.job import RecoveryJob
from liverecovery.job.migration import ManualMigration

from .helpers import HOST, World, fast_settings, spec

pytestmark = pytest.mark.anyio


async def _serving(job: RecoveryJob) -> None:
    with anyio.fail_after(5):
        async for event in job.events():
            if isinstance(event, StateChanged) and event.state is State.SERVING:
                return


async def test_two_jobs_share_one_export_until_the_second_finishes() -> None:
    world = World(hosts=(HOST, "esx02"))
    world.catalog.add_vm("a")
    world.catalog.add_vm("b")
    world.catalog.add_vm("c")
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        ja, jb = await lr.start(spec(vm="a")), await lr.start(spec(vm="b"))
        jc = await lr.start(spec(vm="c", esx_host="esx02"))
        for j in (ja, jb, jc):
            await _serving(j)
        assert sorted(world.exporter.exports()) == ["/liverecovery/esx01", "/liverecovery/esx02"]
        assert world.faults.count("exporter.export") == 2
        assert world.faults.count("vsphere.mount_nfs_datastore") == 2
        assert ja.datastore == jb.datastore == "liverecovery-esx01"
        assert {f for _, f in world.exporter.published} == {ja.folder, jb.folder, jc.folder}

        await ja.migrate_now()
        assert (await ja.wait()).state is State.COMPLETED
        # The host's export and mount outlive the first job's cleanup; only its folder left.
        assert "/liverecovery/esx01" in world.exporter.exports()
        assert world.vsphere.datastores[HOST] == {
            "liverecovery-esx01": ("127.0.0.1", "/liverecovery/esx01")
        }
        assert (("/liverecovery/esx01", ja.folder)) not in world.exporter.published
        assert world.faults.count("exporter.unexport") == 0

        await jb.migrate_now()
        await jb.wait()
        assert "/liverecovery/esx01" not in world.exporter.exports()
        assert world.vsphere.datastores[HOST] == {}
        assert "/liverecovery/esx02" in world.exporter.exports()
        await jc.stop(power_off=True)
    assert world.clean(), world.leftovers()


async def test_a_failed_first_export_is_retried_by_the_next_job() -> None:
    world = World()
    world.catalog.add_vm("a")
    world.catalog.add_vm("b")
    world.faults.fail("exporter.export")
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        ja = await lr.start(spec(vm="a"))
        with pytest.raises(Exception, match=r"exporter\.export"):
            await ja.wait()
        jb = await lr.start(spec(vm="b"))
        assert (await jb.wait()).state is State.COMPLETED
    assert world.faults.count("exporter.export") == 2 and world.clean()
