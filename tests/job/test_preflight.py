"""Every preflight rule refuses with its own error whose message names the reason and numbers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liverecovery import LiveRecovery, Passkey, PreflightError, RecoverySpec, Settings, State
from liverecovery.backends import (
    DatastoreFacts,
    DiskInfo,
    HostFacts,
    MediaKind,
    RestorePoint,
    Target,
    TargetFacts,
)
from liverecovery.config import GiB, MiB
from liverecovery.errors import (
    ArchivedVmError,
    CacheSpaceError,
    ConcurrentSessionError,
    DatastoreSpaceError,
    DatastoreUnavailableError,
    FolderNotFoundError,
    HostUnavailableError,
    MultipleVmsError,
    NetworkNotFoundError,
    NfsVolumeLimitError,
    PasskeyError,
    PrivilegeError,
    TapeBackupError,
    TargetError,
    VmNameTakenError,
    VmNameTooLongError,
)
from liverecovery.job.migration import ManualMigration
from liverecovery.job.preflight import (
    REQUIRED_PRIVILEGES,
    space_needs,
    target_query,
    target_refusals,
)
from liverecovery.testing.memory import MemoryVSphere

from .helpers import HOST, World, fast_settings, spec

pytestmark = pytest.mark.anyio


async def _refused(world: World, job_spec: RecoverySpec, **settings: object) -> PreflightError:
    async with LiveRecovery(fast_settings(**settings), world.backends) as lr:
        job = await lr.start(job_spec)
        with pytest.raises(PreflightError) as caught:
            await job.wait()
    assert job.state is State.FAILED
    assert world.clean(), world.leftovers()
    assert "exporter.export" not in world.faults.calls
    return caught.value


async def test_tape_backup_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01", media=MediaKind.TAPE, point_id="p7")
    err = await _refused(world, spec())
    assert isinstance(err, TapeBackupError)
    assert "tape" in str(err) and "'p7'" in str(err) and "'web01'" in str(err)


async def test_archived_vm_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01", archived=True)
    err = await _refused(world, spec())
    assert isinstance(err, ArchivedVmError) and "archived" in str(err)


async def test_several_vms_in_one_job_are_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    err = await _refused(world, spec(vm=["web01", "db01", "app01"]))
    assert isinstance(err, MultipleVmsError)
    assert "names 3" in str(err) and "db01" in str(err)


@pytest.mark.parametrize(("given", "reason"), [(None, "gave none"), ("wrong-key", "wrong")])
async def test_missing_or_wrong_passkey_is_refused(
    given: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = World()
    world.catalog.add_vm("web01")
    secret = "correct horse battery staple"
    job_spec = spec(passkey=given)
    err = await _refused(world, job_spec, restore_passkey=Passkey.from_secret(secret))
    assert isinstance(err, PasskeyError) and reason in str(err)
    for text in (str(err), repr(err), repr(job_spec), caplog.text):
        assert secret not in text
        if given:
            assert given not in text


async def test_right_passkey_is_accepted() -> None:
    world = World()
    world.catalog.add_vm("web01", passkey_required=True)
    key = Passkey.from_secret("s3cret")
    async with LiveRecovery(fast_settings(restore_passkey=key), world.backends) as lr:
        summary = await (await lr.start(spec(passkey="s3cret"))).wait()
    assert summary.state is State.COMPLETED


async def test_point_requiring_a_passkey_without_one_configured_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01", passkey_required=True)
    err = await _refused(world, spec(passkey="anything"))
    assert isinstance(err, PasskeyError) and "none is configured" in str(err)


def test_passkey_hash_round_trips_and_hides_itself() -> None:
    key = Passkey.from_secret("hunter2")
    again = Passkey.from_string(key.encode())
    assert again.matches("hunter2") and not again.matches("hunter3") and not again.matches(None)
    assert "hunter2" not in repr(key) and key.digest.hex() not in repr(key)
    assert key.encode().startswith("scrypt$16384$8$1$")


async def test_cache_space_below_floor_names_the_numbers() -> None:
    # 100 GiB cache, 5 % kept free, 90 GiB used elsewhere: 10 GiB free, 5 GiB usable < 20 GiB.
    world = World(cache_capacity=100 * GiB)
    world.cache.other_used = 90 * GiB
    world.catalog.add_vm("web01", disk_sizes=(40 * GiB,))
    err = await _refused(world, spec())
    assert isinstance(err, CacheSpaceError)
    msg = str(err)
    assert "10.00 GiB free of 100.00 GiB" in msg
    assert "needs 20.00 GiB" in msg and "5.00 GiB kept free (5 %)" in msg


async def test_cache_space_uses_fifteen_percent_of_a_large_vm() -> None:
    world = World(cache_capacity=400 * GiB)
    world.cache.other_used = 200 * GiB
    world.catalog.add_vm("big", disk_sizes=(1000 * GiB, 400 * GiB))
    err = await _refused(world, spec(vm="big"))
    # 15 % of 1400 GiB = 210 GiB > 20 GiB floor; 200 - 20 kept = 180 available.
    assert "needs 210.00 GiB" in str(err) and "1400.00 GiB" in str(err)


async def test_cache_space_counts_other_jobs_reservations() -> None:
    # 60 GiB, 3 GiB kept free, two jobs hold 20 GiB each: 17 GiB left < 20 GiB.
    world = World(cache_capacity=60 * GiB)
    world.catalog.add_vm("a")
    world.catalog.add_vm("b")
    world.catalog.add_vm("c")
    settings = fast_settings()
    async with LiveRecovery(settings, world.backends, migration_policy=ManualMigration()) as lr:
        ja = await lr.start(spec(vm="a"))
        jb = await lr.start(spec(vm="b"))
        with anyio.fail_after(5):
            while len(world.cache.reservations()) < 2:
                await anyio.sleep(0.001)
        jc = await lr.start(spec(vm="c"))
        with anyio.fail_after(5), pytest.raises(CacheSpaceError, match=r"40\.00 GiB reserved by"):
            await jc.wait()
        await ja.stop(power_off=True)
        await jb.stop(power_off=True)
    assert world.clean()


async def test_thresholds_are_settings() -> None:
    world = World(cache_capacity=100 * GiB)
    world.cache.other_used = 90 * GiB
    world.catalog.add_vm("web01", disk_sizes=(10 * GiB,))
    async with LiveRecovery(
        fast_settings(job_space_floor_bytes=1 * GiB, cache_min_free_percent=1.0), world.backends
    ) as lr:
        summary = await (await lr.start(spec())).wait()
    assert summary.state is State.COMPLETED


async def test_live_browse_blocks_live_recovery_and_the_reverse() -> None:
    world = World()
    world.catalog.add_vm("web01")
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        async with lr.browse_session("web01", owner="browse-1"):
            job = await lr.start(spec())
            with pytest.raises(ConcurrentSessionError, match="live browse of it is running"):
                await job.wait()
        job2 = await lr.start(spec())
        for _ in range(50):
            if job2.state is State.SERVING:
                break
            await anyio.sleep(0.01)
        with pytest.raises(ConcurrentSessionError, match="live recovery of it is running"):
            async with lr.browse_session("web01", owner="browse-2"):
                pass
        # A second live recovery of the same VM is refused too.
        job3 = await lr.start(spec())
        with pytest.raises(ConcurrentSessionError):
            await job3.wait()
        await job2.stop(power_off=True)
        async with lr.browse_session("web01", owner="browse-3"):
            pass
    assert world.clean()


# -- the vSphere targets (issue 2/8): checked before anything is exported -------------------------


def _backup_digests(world: World) -> dict[str, object]:
    return {
        name: (
            [b.point for b in backups],
            [dict(b.files) for b in backups],
            [{k: d.sha256() for k, d in b.disks.items()} for b in backups],
        )
        for name, backups in world.catalog.backups.items()
    }


async def _target_refused(world: World, job_spec: RecoverySpec) -> TargetError:
    before = _backup_digests(world)
    err = await _refused(world, job_spec)
    for call in ("exporter.export", "vsphere.mount_nfs_datastore", "vsphere.register_vm"):
        assert call not in world.faults.calls, call
    assert not world.exporter.published and not world.vsphere.vms
    assert _backup_digests(world) == before
    assert isinstance(err, (TargetError, NfsVolumeLimitError)), err
    return err  # type: ignore[return-value]


async def test_a_datastore_the_host_does_not_have_is_refused_before_export() -> None:
    # The reported bug: `recover ... --datastore NODS` exported, mounted, registered and powered
    # the VM on, and only failed at migrating.
    world = World()
    world.catalog.add_vm("web01")
    err = await _target_refused(world, spec(datastore="NODS"))
    assert isinstance(err, DatastoreUnavailableError)
    assert "destination datastore 'NODS' does not exist" in str(err)
    assert err.target == "datastore 'NODS'"


async def test_a_missing_host_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    err = await _target_refused(world, spec(esx_host="esx99"))
    assert isinstance(err, HostUnavailableError)
    assert "host 'esx99' is not in the vSphere inventory" in str(err)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda v: v.maintenance.add(HOST), "is in maintenance mode"),
        (lambda v: v.disconnected.add(HOST), "is disconnected, not connected"),
    ],
)
async def test_a_host_in_maintenance_or_disconnected_is_refused(
    setup: Callable[[MemoryVSphere], None], expected: str
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    setup(world.vsphere)
    err = await _target_refused(world, spec())
    assert isinstance(err, HostUnavailableError)
    assert f"host '{HOST}' {expected}" in str(err)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (DatastoreFacts("datastore1", mounted=False), "is not mounted on host 'esx01'"),
        (DatastoreFacts("datastore1", accessible=False), "is not accessible from host"),
        (
            DatastoreFacts("datastore1", writable=False, free_bytes=1 << 50),
            "is mounted read-only on host",
        ),
        (
            DatastoreFacts("datastore1", maintenance="inMaintenance", free_bytes=1 << 50),
            "is in maintenance mode (inMaintenance)",
        ),
    ],
)
async def test_an_unusable_destination_datastore_is_refused(
    facts: DatastoreFacts, expected: str
) -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.datastore_facts["datastore1"] = facts
    err = await _target_refused(world, spec())
    assert isinstance(err, DatastoreUnavailableError)
    assert f"destination datastore 'datastore1' {expected}" in str(err)


async def test_a_full_destination_datastore_is_refused_with_the_rule() -> None:
    world = World()
    world.catalog.add_vm("web01", disk_sizes=(40 * GiB, 10 * GiB))
    world.vsphere.datastore_facts["datastore1"] = DatastoreFacts(
        "datastore1", free_bytes=50 * GiB, capacity_bytes=500 * GiB
    )
    err = await _target_refused(world, spec())
    assert isinstance(err, DatastoreSpaceError)
    msg = str(err)
    # 50 GiB of disks + 2 GiB of swap (the VM's memory) > 50 GiB free.
    assert "has 50.00 GiB free of 500.00 GiB" in msg and "needs 52.00 GiB" in msg
    assert "provisioned size" in msg and "swap file" in msg


def _thin_world(free: int) -> World:
    world = World()
    backup = world.catalog.add_vm("web01", disk_sizes=(400 * GiB,), data_per_disk=8 * MiB)
    backup.point = attrs.evolve(
        backup.point, disks=tuple(attrs.evolve(d, thin=True) for d in backup.point.disks)
    )
    world.vsphere.datastore_facts["datastore1"] = DatastoreFacts(
        "datastore1", free_bytes=free, capacity_bytes=500 * GiB
    )
    return world


async def test_thin_disks_need_only_their_allocated_bytes() -> None:
    world = _thin_world(3 * GiB)  # 8 MiB allocated + 2 GiB swap fit; 400 GiB would not
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        summary = await (await lr.start(spec())).wait()
    assert summary.state is State.COMPLETED
    err = await _target_refused(_thin_world(2 * GiB), spec())
    assert isinstance(err, DatastoreSpaceError) and "thin disks scsi0:0" in str(err)
    assert "needs 2.01 GiB" in str(err)


async def test_a_missing_redirect_datastore_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    err = await _target_refused(world, spec(redirect_writes_to="scratch"))
    assert isinstance(err, DatastoreUnavailableError)
    assert "redirect datastore 'scratch' does not exist" in str(err)


async def test_a_missing_folder_and_pool_are_refused_and_named() -> None:
    world = World()
    world.catalog.add_vm("web01")
    err = await _target_refused(world, spec(folder="Recovered", resource_pool="Gold"))
    assert isinstance(err, FolderNotFoundError) and err.target == "folder 'Recovered'"
    assert "resource pool 'Gold' does not exist" in str(err)  # listed after the first


async def test_named_folder_and_pool_are_used_for_registration() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.folders.add("Recovered")
    world.vsphere.resource_pools.add("Gold")
    async with LiveRecovery(
        fast_settings(), world.backends, migration_policy=ManualMigration()
    ) as lr:
        job = await lr.start(spec(folder="Recovered", resource_pool="Gold"))
        with anyio.fail_after(10):
            while job.state is not State.SERVING:
                await anyio.sleep(0.005)
        (vm,) = world.vsphere.vms.values()
        assert (vm.folder, vm.resource_pool) == ("Recovered", "Gold")
        await job.migrate_now()
        await job.wait()


async def test_a_vm_name_already_registered_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    await world.vsphere.register_vm(HOST, "[datastore1] web01/web01.vmx", "web01")
    vms = dict(world.vsphere.vms)
    before = _backup_digests(world)
    err = await _refused_keeping(world, spec(), vms)
    assert isinstance(err, VmNameTakenError)
    assert "a VM named 'web01' is already registered" in str(err) and "name_suffix" in str(err)
    assert _backup_digests(world) == before
    # With a suffix the name is free.
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        summary = await (await lr.start(spec(name_suffix="-recovered"))).wait()
    assert summary.state is State.COMPLETED


async def _refused_keeping(world: World, job_spec: RecoverySpec, vms: object) -> PreflightError:
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(job_spec)
        with pytest.raises(PreflightError) as caught:
            await job.wait()
    assert job.state is State.FAILED
    for call in ("exporter.export", "vsphere.mount_nfs_datastore"):
        assert call not in world.faults.calls
    assert world.vsphere.vms == vms
    return caught.value


async def test_a_port_group_the_host_lacks_is_refused_unless_mapped() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.networks = {"DR-Net"}
    err = await _target_refused(world, spec())
    assert isinstance(err, NetworkNotFoundError)
    assert "ethernet0 connects to port group 'VM Network'" in str(err)
    assert "its networks are DR-Net" in str(err)
    err = await _target_refused(world, spec(network_map={"VM Network": "Nope"}))
    assert "'Nope' (mapped from 'VM Network')" in str(err)
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec(network_map={"VM Network": "DR-Net"}))
        summary = await job.wait()
    assert summary.state is State.COMPLETED


async def test_a_recovered_vm_name_over_vsphere_s_80_characters_is_refused() -> None:
    """Refused before anything is exported, not by RegisterVM after the export and mount."""
    world = World()
    world.catalog.add_vm("web01")
    err = await _refused_keeping(world, spec(name_suffix="-" + "r" * 75), {})  # 81
    assert isinstance(err, VmNameTooLongError) and "counts 81 characters" in str(err)
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec(name_suffix="%" * 25))  # 5 + 25 x 3 = 80: at the limit
        assert (await job.wait()).state is State.COMPLETED


async def test_nics_that_start_disconnected_need_no_port_group() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.networks = {"DR-Net"}
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        job = await lr.start(spec(disconnect_nics=True))
        summary = await job.wait()
    assert summary.state is State.COMPLETED


async def test_no_free_nfs_volume_slot_is_refused() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.max_nfs_volumes = 2
    world.vsphere.datastores[HOST] = {"nfs-a": ("nas", "/a"), "nfs-b": ("nas", "/b")}
    err = await _refused_keeping(world, spec(), {})
    assert isinstance(err, NfsVolumeLimitError)
    assert "already mounts 2 NFS datastores and its NFS.MaxVolumes is 2" in str(err)
    assert "nfs-a, nfs-b" in str(err) and "at most 256" in str(err)
    assert (err.mounted, err.limit) == (2, 2)


async def test_a_missing_privilege_is_refused_naming_it_and_the_target() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.denied[Target("datastore", "datastore1")] = {"Datastore.AllocateSpace"}
    err = await _target_refused(world, spec())
    assert isinstance(err, PrivilegeError)
    assert str(err) == "the vSphere user lacks Datastore.AllocateSpace on datastore 'datastore1'"
    world.vsphere.privileges_known = False  # a server that cannot tell: not refused
    async with LiveRecovery(fast_settings(), world.backends) as lr:
        summary = await (await lr.start(spec())).wait()
    assert summary.state is State.COMPLETED


async def test_every_problem_is_listed_in_one_refusal() -> None:
    world = World()
    world.catalog.add_vm("web01")
    world.vsphere.maintenance.add(HOST)
    world.vsphere.networks = set()
    err = await _target_refused(world, spec(datastore="NODS"))
    msg = str(err)
    assert isinstance(err, HostUnavailableError)
    assert "maintenance mode" in msg and "'NODS' does not exist" in msg and "'VM Network'" in msg


# -- the decisions, pure --------------------------------------------------------------------------


def _point(*sizes: int, memory_mb: int = 1024, thin: bool = False) -> RestorePoint:
    disks = tuple(
        DiskInfo(f"scsi0:{i}", f"d{i}.vmdk", size, thin=thin) for i, size in enumerate(sizes)
    )
    return RestorePoint("web01", "p1", "web01.vmx", disks, memory_mb=memory_mb)


def _facts(**datastores: int) -> TargetFacts:
    return TargetFacts(
        host=HostFacts(HOST, networks=("VM Network",)),
        datastores={
            name: DatastoreFacts(name, free_bytes=free, capacity_bytes=1 << 50)
            for name, free in datastores.items()
        },
    )


def _decide(job_spec: RecoverySpec, point: RestorePoint, facts: TargetFacts) -> list[str]:
    found = target_refusals(
        job_spec,
        point,
        facts,
        Settings(),
        networks={"ethernet0": "VM Network"},
        nfs_datastore="liverecovery-esx01",
    )
    return [type(e).__name__ for e in found]


def test_a_fit_job_is_not_refused() -> None:
    assert _decide(spec(), _point(10 * GiB), _facts(datastore1=11 * GiB)) == []


def test_redirect_takes_the_swap_file_off_the_destination() -> None:
    point = _point(10 * GiB, memory_mb=4096)
    job = spec(redirect_writes_to="scratch")
    assert _decide(job, point, _facts(datastore1=10 * GiB, scratch=4 * GiB)) == []
    assert _decide(job, point, _facts(datastore1=10 * GiB, scratch=4 * GiB - 1)) == [
        "DatastoreSpaceError"
    ]
    # Redirecting to the destination itself: both on one datastore.
    same = spec(redirect_writes_to="datastore1")
    assert _decide(same, point, _facts(datastore1=14 * GiB - 1)) == ["DatastoreSpaceError"]


def test_an_existing_mount_of_our_export_needs_no_new_nfs_slot() -> None:
    host = HostFacts(HOST, nfs_datastores=("a", "liverecovery-esx01"), nfs_max_volumes=2)
    facts = attrs.evolve(_facts(datastore1=1 << 40), host=host)
    assert "NfsVolumeLimitError" not in _decide(spec(), _point(GiB), facts)
    host = HostFacts(HOST, nfs_datastores=("a", "b"), nfs_max_volumes=2)
    facts = attrs.evolve(_facts(datastore1=1 << 40), host=host)
    assert "NfsVolumeLimitError" in _decide(spec(), _point(GiB), facts)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1 << 42), max_size=4),
    memory_mb=st.integers(0, 1 << 20),
    free=st.integers(0, 1 << 45),
    thin=st.booleans(),
    redirect=st.sampled_from([None, "scratch", "datastore1"]),
)
def test_space_is_refused_exactly_when_the_rule_says(
    sizes: list[int], memory_mb: int, free: int, thin: bool, redirect: str | None
) -> None:
    point = _point(*sizes, memory_mb=memory_mb, thin=thin)
    job = spec(redirect_writes_to=redirect)
    allocated = {d.key: d.capacity_bytes // 3 for d in point.disks}
    needs = space_needs(job, point, allocated)
    disks = sum(d.capacity_bytes // 3 if thin else d.capacity_bytes for d in point.disks)
    swap = memory_mb * MiB
    assert needs.destination + needs.redirect == disks + swap
    found = target_refusals(
        job,
        point,
        _facts(datastore1=free, scratch=1 << 62),
        Settings(),
        networks={},
        nfs_datastore="x",
        space=needs,
    )
    on_destination = disks + (0 if redirect == "scratch" else swap)
    assert bool(found) == (free < on_destination)
    assert all(isinstance(e, DatastoreSpaceError) and "'datastore1'" in str(e) for e in found)


@settings(max_examples=100, deadline=None)
@given(
    names=st.lists(st.text("abcdefgh- ", min_size=1, max_size=8), min_size=1, max_size=4),
    have=st.sets(st.text("abcdefgh- ", min_size=1, max_size=8), max_size=4),
)
def test_every_missing_port_group_is_named(names: list[str], have: set[str]) -> None:
    networks = {f"ethernet{i}": n for i, n in enumerate(names)}
    facts = attrs.evolve(
        _facts(datastore1=1 << 50), host=HostFacts(HOST, networks=tuple(sorted(have)))
    )
    found = target_refusals(
        spec(), _point(), facts, Settings(), networks=networks, nfs_datastore="x"
    )
    missing = {nic for nic, n in networks.items() if n not in have}
    assert {str(e).split(" ", 1)[0] for e in found} == missing
    assert all(isinstance(e, NetworkNotFoundError) for e in found)


def test_the_query_names_every_target_and_its_privileges() -> None:
    query = target_query(
        spec(redirect_writes_to="scratch", folder="F", resource_pool="P", name_suffix="-r"),
        {"ethernet0": "A", "ethernet1": "B", "ethernet2": "A"},
    )
    assert query.datastores == ("datastore1", "scratch") and query.networks == ("A", "B")
    assert query.vm_name == "web01-r" and (query.folder, query.resource_pool) == ("F", "P")
    assert query.privileges[Target("host", HOST)] == REQUIRED_PRIVILEGES["host"]
    assert "VirtualMachine.Inventory.Register" in query.privileges[Target("folder", "F")]
    assert set(query.privileges) >= {Target("network", "A"), Target("datastore", "scratch")}
