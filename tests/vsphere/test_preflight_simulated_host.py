"""Preflight against the simulated ESX host (in this process and over its socket): the facts it
reports, and each refusal stops the job before the host mounts or registers anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from liverecovery import LiveRecovery, PreflightError, RecoverySpec, Settings, State
from liverecovery.backends import DatastoreFacts, TargetQuery
from liverecovery.config import GiB, MiB
from liverecovery.errors import (
    DatastoreSpaceError,
    DatastoreUnavailableError,
    HostUnavailableError,
    NetworkNotFoundError,
    NfsVolumeLimitError,
)
from liverecovery.job.preflight import target_query
from liverecovery.sim.embedded import Embedded, embedded_environment
from liverecovery.sim.esx_host import SimulatedEsxHost
from liverecovery.sim.remote import RemoteSimulatedHost, SimulatedHostServer
from liverecovery.testing import MemoryCatalog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_the_host_reports_its_facts(tmp_path: Path) -> None:
    async with SimulatedEsxHost(tmp_path / "esx", networks=("VM Network", "Backup")) as esx:
        spec = RecoverySpec(vm="vm", esx_host="esx-sim", datastore="datastore1")
        query = target_query(spec, {"ethernet0": "VM Network"})
        facts = await esx.describe(query)
        assert facts.host.found and not facts.host.maintenance
        assert facts.host.networks == ("Backup", "VM Network")
        assert facts.host.nfs_datastores == () and facts.host.nfs_max_volumes == 32
        local = facts.datastores["datastore1"]
        assert local.capacity_bytes == 64 * 1024**4 and local.free_bytes == local.capacity_bytes
        (tmp_path / "esx" / "datastore1" / "f").write_bytes(b"x" * MiB)
        facts = await esx.describe(query)
        assert facts.datastores["datastore1"].free_bytes <= 64 * 1024**4 - MiB
        assert facts.granted is None  # a standalone host has no users to ask
        esx.maintenance = True
        missing = await esx.describe(TargetQuery(host="esx-sim", datastores=("NODS",)))
        assert missing.host.maintenance and not missing.datastores["NODS"].exists
        assert not (await esx.describe(TargetQuery(host="elsewhere"))).host.found


def _settings(tmp: Path) -> Settings:
    return Settings(
        job_results_dir=tmp / "results",
        migration_trigger="delay",
        compensation_retry_delay_s=0,
        job_space_floor_bytes=0,
    )


async def _refused(tmp: Path, setup: Callable[[Embedded], None], **spec: object) -> PreflightError:
    catalog = MemoryCatalog()
    backup = catalog.add_vm("vm", disk_sizes=(16 * MiB,))
    digests = {k: d.sha256() for k, d in backup.disks.items()}
    async with (
        embedded_environment(tmp, catalog, settings=_settings(tmp)) as env,
        LiveRecovery(env.settings, env.backends, builder=env.builder) as lr,
    ):
        setup(env)
        job = await lr.start(env.spec("vm", **spec))
        with pytest.raises(PreflightError) as caught:
            await job.wait()
        assert job.state is State.FAILED
        assert not env.backends.exporter.exports()
        assert not env.esx.mounts and not env.esx.vms
        assert not (tmp / "results" / "jobs" / job.id).exists()  # nothing was staged
    assert {k: d.sha256() for k, d in backup.disks.items()} == digests
    return caught.value


async def test_a_datastore_the_host_lacks_is_refused(tmp_path: Path) -> None:
    err = await _refused(tmp_path, lambda env: None, datastore="NODS")
    assert isinstance(err, DatastoreUnavailableError)
    assert "destination datastore 'NODS' does not exist (host 'esx-sim'" in str(err)


async def test_a_host_in_maintenance_mode_is_refused(tmp_path: Path) -> None:
    def setup(env: Embedded) -> None:
        env.esx.maintenance = True

    err = await _refused(tmp_path, setup)
    assert isinstance(err, HostUnavailableError) and "maintenance mode" in str(err)


async def test_a_full_destination_is_refused(tmp_path: Path) -> None:
    def setup(env: Embedded) -> None:
        env.esx.local_datastore_bytes = 1 * GiB  # the VM has 2 GiB of memory: its swap file

    err = await _refused(tmp_path, setup)
    assert isinstance(err, DatastoreSpaceError)
    assert "destination datastore 'datastore1' has" in str(err) and "needs 2.02 GiB" in str(err)


async def test_a_read_only_redirect_datastore_is_refused(tmp_path: Path) -> None:
    def setup(env: Embedded) -> None:
        env.esx.local_datastores = (*env.esx.local_datastores, "scratch")
        env.esx.datastore_facts["scratch"] = DatastoreFacts(
            "scratch", writable=False, free_bytes=1 << 40, capacity_bytes=1 << 40
        )

    err = await _refused(tmp_path, setup, redirect_writes_to="scratch")
    assert isinstance(err, DatastoreUnavailableError)
    assert "redirect datastore 'scratch' is mounted read-only on host 'esx-sim'" in str(err)


async def test_a_missing_port_group_is_refused(tmp_path: Path) -> None:
    def setup(env: Embedded) -> None:
        env.esx.networks = {"Isolated"}

    err = await _refused(tmp_path, setup)
    assert isinstance(err, NetworkNotFoundError)
    assert "port group 'VM Network'" in str(err) and "its networks are Isolated" in str(err)


async def test_no_nfs_volume_slot_left_is_refused(tmp_path: Path) -> None:
    def setup(env: Embedded) -> None:
        env.esx.max_nfs_volumes = 0

    err = await _refused(tmp_path, setup)
    assert isinstance(err, NfsVolumeLimitError) and "NFS.MaxVolumes is 0" in str(err)


async def test_the_remote_host_reports_the_same_facts(tmp_path: Path) -> None:
    async with (
        SimulatedEsxHost(tmp_path / "esx", networks=("VM Network",)) as esx,
        anyio.create_task_group() as tg,
    ):
        await tg.start(SimulatedHostServer(esx, tmp_path / "esx.sock").serve)
        remote = RemoteSimulatedHost(tmp_path / "esx.sock", call_timeout=20)
        esx.maintenance = True
        esx.folders.add("F")
        query = target_query(
            RecoverySpec(
                vm="vm", esx_host="esx-sim", datastore="datastore1", folder="F", resource_pool="P"
            ),
            {"ethernet0": "VM Network"},
        )
        assert await remote.describe(query) == await esx.describe(query)
        tg.cancel_scope.cancel()
