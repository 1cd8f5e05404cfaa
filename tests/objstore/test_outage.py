"""A store outage while a VM runs from a backup in it: the gateway (radosgw) is stopped, mon
and OSD keep running. The VM's reads of blocks not cached wait (NFS3ERR_JUKEBOX, retried by the
simulated host's hard mount as ESXi does) and continue when the gateway is back; the guest sees
no I/O error, its storage vMotion started during the outage completes, the migrated disk equals
the backup plus every acknowledged write, and the backup's objects are unchanged."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from liverecovery import LiveRecovery, Settings, State
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.catalog.objects import StoreOptions
from liverecovery.job.events import StateChanged
from liverecovery.sim.embedded import embedded_environment, verify_disk
from liverecovery.testing.objstore import RadosGateway, upload_tree
from liverecovery.testing.samples import sample_vm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

MiB = 1 << 20
OUTAGE_S = 8.0


async def test_reads_wait_out_a_gateway_outage(rgw: RadosGateway, tmp_path: Path) -> None:
    root = tmp_path / "backup"
    sample_vm("outage", disk_sizes=(256 * MiB,), seed=5, head=256 * MiB).write(root)
    upload_tree(rgw.store(), root, "outage")
    local = DirectoryCatalog(root)
    settings = Settings(
        job_results_dir=tmp_path / "results",
        migration_trigger="manual",
        restore_bandwidth_bps=256 * 1024,  # the background restore must not cache it all first
        job_space_floor_bytes=0,
        job_space_fraction=0.0,
        cache_min_free_percent=0.0,  # the shared test machine's disk may be nearly full
        s3_retries=1,
        s3_retry_timeout_s=1.0,
        s3_request_timeout_s=2.0,
    )
    catalog = ObjectCatalog(
        rgw.url("outage"), options=StoreOptions.from_settings(settings), environ=rgw.environ()
    )
    before = await catalog.object_tags()
    point = await local.restore_point("outage")
    expected = await local.open_disk(point, point.disks[0])
    async with embedded_environment(tmp_path, catalog, settings=settings) as env:
        async with LiveRecovery(env.settings, env.backends, builder=env.builder) as lr:
            job = await lr.start(env.spec("outage"))
            with anyio.fail_after(60):
                async for event in job.events():
                    if isinstance(event, StateChanged) and event.state is State.SERVING:
                        break
            (vm,) = env.esx.vms.values()
            mount = env.esx.mounts[vm.datastore].client
            disk = vm.disks[0]
            results: dict[int, tuple[bytes, float]] = {}

            async def read(offset: int) -> None:
                data, _ = await mount.read(disk.fh, offset, 65536)
                results[offset] = (data, time.monotonic())

            await anyio.to_thread.run_sync(rgw.stop_gateway)
            down_at = time.monotonic()
            try:
                async with anyio.create_task_group() as tg:
                    # blocks far from the boot reads and their read-ahead: most not cached yet
                    for offset in range(96 * MiB, 256 * MiB, 10 * MiB):
                        tg.start_soon(read, offset + 4096)
                    await job.migrate_now()  # the storage vMotion starts during the outage
                    await anyio.sleep(OUTAGE_S)
                    waiting = 16 - len(results)
                    back_at = time.monotonic()
                    await anyio.to_thread.run_sync(rgw.start_gateway)
            finally:
                if not (rgw.dir / "run").exists() or time.monotonic() - down_at < OUTAGE_S:
                    await anyio.to_thread.run_sync(rgw.start_gateway)
            assert waiting > 0  # reads of blocks not cached waited for the store
            assert any(at > back_at for _, at in results.values())
            for offset, (data, _) in results.items():
                assert data == await expected.read(offset, 65536), offset
            with anyio.fail_after(120):
                summary = await job.wait()
        assert summary.state is State.COMPLETED
        assert vm.io_error == ""
        assert summary.vm_ref is not None
        await env.esx.power_off(summary.vm_ref)
        writes = env.esx.guest_writes(summary.vm_ref)
        assert writes
        assert await verify_disk(env.esx, summary.vm_ref, 0, expected, writes)
    await expected.aclose()
    assert await catalog.object_tags() == before
