"""Fault injection at every backend call of a live recovery on the real embedded path.

Each call of our NFS server (exporter), the simulated ESX host, the on-disk cache and the
directory catalog is made to fail once, to hang once (past its timeout), or to be slow every
time (within its timeout). Whatever happens, the job ends ``completed``, ``failed`` or
``cancelled``; if it did not complete, nothing is left behind (no export, mount, registration,
reservation or overlay); a slow backend only makes it slower; the backup is byte-identical.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import pytest

from liverecovery import Backends, LiveRecovery, Settings, State, Timeouts
from liverecovery.cache.block_cache import DiskBlockCache
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.datastore.builder import FreBuilder
from liverecovery.job.states import TERMINAL_STATES
from liverecovery.sim.embedded import embedded_environment
from liverecovery.testing import FaultPlan, faulty
from liverecovery.testing.samples import sample_vm, tree_digests

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CALLS = [
    "catalog.restore_point",
    "catalog.read_file",
    "catalog.open_disk",
    "cache.space",
    "cache.reserve",
    "cache.release",
    "exporter.export",
    "exporter.publish",
    "exporter.unpublish",
    "exporter.unexport",
    "vsphere.mount_nfs_datastore",
    "vsphere.register_vm",
    "vsphere.power_on",
    "vsphere.relocate",
    "vsphere.power_off",
    "vsphere.unregister_vm",
    "vsphere.unmount_datastore",
]


@pytest.mark.parametrize("kind", ["fail", "hang", "slow"])
@pytest.mark.parametrize("call", CALLS)
async def test_any_fault_ends_cleanly(tmp_path: Path, call: str, kind: str) -> None:
    sample_vm("vm", disk_sizes=(32 << 20,)).write(tmp_path / "backup")
    before = tree_digests(tmp_path / "backup")
    faults = FaultPlan()
    if kind == "fail":
        faults.fail(call)
    elif kind == "hang":
        faults.hang(call)
    else:
        faults.slow(call, 0.2)
    settings = Settings(
        job_results_dir=tmp_path / "results",
        migration_trigger="delay",
        serve_before_migrate_s=0.1,
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        compensation_retry_delay_s=0,
        migration_backoff_s=0.1,
        timeouts=Timeouts(
            preflight=2,
            export=2,
            mount=2,
            stage=2,
            register=2,
            power_on=2,
            migrate=5,
            cleanup=5,
            compensation=1,
        ),
    )
    catalog = DirectoryCatalog(tmp_path / "backup")
    cache = await DiskBlockCache.from_settings(settings)
    async with embedded_environment(tmp_path, catalog, settings=settings, cache=cache) as env:
        vsphere = faulty(env.esx, faults, "vsphere")
        backends = Backends(
            exporter=faulty(env.backends.exporter, faults, "exporter"),
            catalog=faulty(catalog, faults, "catalog"),
            cache=faulty(cache, faults, "cache"),
            vsphere=vsphere,
            inventory=vsphere,
        )
        builder = FreBuilder(backends.cache)
        async with LiveRecovery(env.settings, backends, builder=builder) as lr:
            job = await lr.start(env.spec("vm"))
            with anyio.fail_after(60):
                with contextlib.suppress(Exception):
                    await job.wait()
        assert job.state in TERMINAL_STATES
        if kind == "slow" or call == "vsphere.relocate":
            # A failed or hung storage vMotion keeps the VM running and is retried (2/8).
            assert job.state is State.COMPLETED, job.errors
        assert faults.count(call) >= 1 or job.state is State.COMPLETED
        if job.state is not State.COMPLETED:
            assert not env.server.exports(), job.errors
            assert not env.esx.mounts and not env.esx.vms, job.errors
            assert not cache.reservations()
            assert not (tmp_path / "results" / "jobs" / job.id).exists()
        else:
            assert not env.server.exports() and not env.esx.mounts
            (vm,) = env.esx.vms.values()
            assert vm.migrated and vm.powered_on
    await cache.aclose()
    await catalog.aclose()
    assert tree_digests(tmp_path / "backup") == before
