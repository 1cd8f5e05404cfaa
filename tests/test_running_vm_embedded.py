"""On the embedded path (our NFS server, the simulated ESX host): a storage vMotion that fails
once keeps the VM running from the backup, and the retry brings it home intact."""

from __future__ import annotations

from pathlib import Path

import anyio
import attrs
import pytest

from liverecovery import JobWarning, LiveRecovery, Settings, State
from liverecovery.config import MiB
from liverecovery.sim.embedded import embedded_environment, verify_disk
from liverecovery.testing import FaultPlan, MemoryCatalog
from liverecovery.testing.faulty import faulty

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_a_relocate_failing_once_keeps_the_vm_running_then_migrates(
    tmp_path: Path,
) -> None:
    catalog = MemoryCatalog()
    backup = catalog.add_vm("vm", disk_sizes=(64 * MiB,))
    settings = Settings(
        job_results_dir=tmp_path / "results",
        compensation_retry_delay_s=0,
        migration_trigger="delay",
        serve_before_migrate_s=0.2,
        migration_backoff_s=0.2,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
    )
    faults = FaultPlan()
    faults.fail("vsphere.relocate")
    async with embedded_environment(tmp_path, catalog, settings=settings) as env:
        esx = env.esx
        backends = attrs.evolve(env.backends, vsphere=faulty(esx, faults, "vsphere"))
        async with LiveRecovery(env.settings, backends, builder=env.builder) as lr:
            job = await lr.start(env.spec("vm"))
            running_after_failure: list[bool] = []
            with anyio.fail_after(60):
                async for event in job.events():
                    if isinstance(event, JobWarning) and "storage vMotion failed" in event.message:
                        assert job.vm is not None
                        running_after_failure.append(await esx.power_state(job.vm) == "poweredOn")
                summary = await job.wait()
        assert running_after_failure == [True]
        assert summary.state is State.COMPLETED
        assert State.ROLLING_BACK not in job.states_visited
        assert faults.count("vsphere.relocate") == 2
        assert "vsphere.power_off" not in faults.calls
        assert summary.vm_ref is not None
        assert await esx.power_state(summary.vm_ref) == "poweredOn"
        await esx.power_off(summary.vm_ref)
        writes = esx.guest_writes(summary.vm_ref)
        disk = backup.disks[backup.point.disks[0].file_name]
        assert await verify_disk(esx, summary.vm_ref, 0, disk, writes)
