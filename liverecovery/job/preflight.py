"""The preflight rules: refuse what live recovery does not support, before touching anything.

Each rule raises its own ``PreflightError`` subclass with a message that names the reason and
the numbers. The checks that need no I/O run first. The vSphere targets are checked from plain
facts (``VSphereClient.describe``) by pure functions: ``target_query`` says what to ask,
``target_refusals`` decides, one refusal per target and problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from liverecovery.backends import (
    BlockCache,
    CatalogReader,
    DatastoreFacts,
    MediaKind,
    RestorePoint,
    RunKind,
    Target,
    TargetFacts,
    TargetQuery,
    VSphereClient,
)
from liverecovery.config import GiB, MiB, Settings
from liverecovery.datastore.vmx_rewrite import nic_networks
from liverecovery.errors import (
    ArchivedVmError,
    CacheSpaceError,
    DatastoreSpaceError,
    DatastoreUnavailableError,
    FolderNotFoundError,
    HostUnavailableError,
    MultipleVmsError,
    NetworkNotFoundError,
    NfsVolumeLimitError,
    PasskeyError,
    PreflightError,
    PrivilegeError,
    ResourcePoolNotFoundError,
    TapeBackupError,
    VmNameTakenError,
    VmNameTooLongError,
)
from liverecovery.spec import MAX_VM_NAME, RecoverySpec, vsphere_name_length

__all__ = [
    "REQUIRED_PRIVILEGES",
    "SpaceNeeds",
    "allocated_bytes",
    "check_cache_space",
    "check_media",
    "check_passkey",
    "check_single_vm",
    "check_targets",
    "format_bytes",
    "raise_first",
    "required_cache_bytes",
    "space_needs",
    "target_query",
    "target_refusals",
]

REQUIRED_PRIVILEGES: Mapping[str, tuple[str, ...]] = {
    # Mount and unmount the job's NFS datastore (HostDatastoreSystem.CreateNasDatastore).
    "host": ("Host.Config.Storage",),
    # Storage vMotion onto it; snapshot deltas and swap on the redirect datastore.
    "datastore": ("Datastore.AllocateSpace",),
    # Register and unregister the VM; the VM does not exist yet, so its own privileges (power
    # on/off, migrate while powered on) are checked where it will inherit them from.
    "folder": (
        "VirtualMachine.Inventory.Register",
        "VirtualMachine.Inventory.Unregister",
        "VirtualMachine.Interact.PowerOn",
        "VirtualMachine.Interact.PowerOff",
        "Resource.HotMigrate",
    ),
    "resource pool": ("Resource.AssignVMToPool",),
    "network": ("Network.Assign",),
}
"""The vSphere privileges a live recovery needs, per kind of target."""


def format_bytes(n: int) -> str:
    """``n`` bytes in GiB with two decimals (the unit the thresholds are set in)."""
    return f"{n / GiB:.2f} GiB"


def check_single_vm(spec: RecoverySpec) -> None:
    """:raises MultipleVmsError: the job names more than one VM."""
    if len(spec.vms) > 1:
        raise MultipleVmsError(
            f"a live recovery job recovers one VM; this job names {len(spec.vms)}: "
            + ", ".join(spec.vms)
        )


def check_media(point: RestorePoint) -> None:
    """:raises TapeBackupError, ArchivedVmError: the restore point cannot be served live."""
    if point.media is MediaKind.TAPE:
        raise TapeBackupError(
            f"restore point {point.point_id!r} of VM {point.vm_name!r} is on a tape library; "
            "live recovery needs disk or cloud storage"
        )
    if point.archived:
        raise ArchivedVmError(
            f"VM {point.vm_name!r} (restore point {point.point_id!r}) is archived; "
            "restore it fully instead"
        )


def check_passkey(settings: Settings, point: RestorePoint, passkey: str | None) -> None:
    """:raises PasskeyError: a passkey is configured (or required) and missing or wrong.

    The message never contains the passkey.
    """
    configured = settings.restore_passkey
    if configured is None:
        if point.passkey_required:
            raise PasskeyError(
                f"restore point {point.point_id!r} of VM {point.vm_name!r} requires a restore "
                "passkey, but none is configured in the settings (restore_passkey)"
            )
        return
    if not passkey:
        raise PasskeyError("a restore passkey is configured and the job gave none")
    if not configured.matches(passkey):
        raise PasskeyError("the job's restore passkey is wrong")


def required_cache_bytes(settings: Settings, point: RestorePoint) -> int:
    """Free cache space the job needs: max(floor, fraction x the VM's total disk size)."""
    return settings.job_space_bytes(point.total_disk_bytes)


async def allocated_bytes(catalog: CatalogReader, point: RestorePoint) -> dict[str, int]:
    """Allocated bytes of each thin disk of ``point``, from allocation metadata only."""
    found: dict[str, int] = {}
    for disk in point.disks:
        if not disk.thin:
            continue
        reader = await catalog.open_disk(point, disk)
        try:
            runs = await reader.allocation()
        finally:
            await reader.aclose()
        found[disk.key] = sum(r.length for r in runs if r.kind is RunKind.DATA)
    return found


async def check_targets(
    spec: RecoverySpec,
    point: RestorePoint,
    settings: Settings,
    catalog: CatalogReader,
    vsphere: VSphereClient,
    nfs_datastore: str,
) -> None:
    """Ask vSphere about every target of the job in one round and refuse on any problem.

    :raises PreflightError: a ``TargetError`` subclass (or ``NfsVolumeLimitError``) naming the
        first target refused; its message lists the others.
    """
    networks = nic_networks(await catalog.read_file(point, point.vmx_name), spec.network_map)
    space = space_needs(spec, point, await allocated_bytes(catalog, point))
    facts = await vsphere.describe(target_query(spec, networks))
    raise_first(
        target_refusals(
            spec,
            point,
            facts,
            settings,
            networks=networks,
            nfs_datastore=nfs_datastore,
            space=space,
        )
    )


async def check_cache_space(
    settings: Settings, cache: BlockCache, point: RestorePoint, job_id: str
) -> int:
    """Check the cache has room for the job on top of its minimum free share; reserve it.

    Returns the bytes reserved. :raises CacheSpaceError: not enough free space.
    """
    need = required_cache_bytes(settings, point)
    space = await cache.space()
    keep = math.ceil(space.total_bytes * settings.cache_min_free_percent / 100)
    others = sum(v for k, v in cache.reservations().items() if k != job_id)
    available = space.free_bytes - keep - others
    if available < need:
        raise CacheSpaceError(
            f"cache at {settings.effective_cache_root} has {format_bytes(space.free_bytes)} free "
            f"of {format_bytes(space.total_bytes)}; the job needs {format_bytes(need)} "
            f"(max({format_bytes(settings.job_space_floor_bytes)}, "
            f"{settings.job_space_fraction:.0%} of the VM's {format_bytes(point.total_disk_bytes)})) "
            f"on top of {format_bytes(keep)} kept free ({settings.cache_min_free_percent:g} %) "
            f"and {format_bytes(others)} reserved by other jobs"
        )
    await cache.reserve(job_id, need)
    return need


# -- vSphere targets -----------------------------------------------------------------------------


@attrs.frozen
class SpaceNeeds:
    """Bytes the recovered VM needs on its destination and redirect datastores, and the rule
    they come from (quoted in a refusal)."""

    destination: int
    redirect: int
    rule: str


def space_needs(
    spec: RecoverySpec, point: RestorePoint, allocated: Mapping[str, int] | None = None
) -> SpaceNeeds:
    """The space rule. The destination datastore receives every disk (thick disks take their
    provisioned size, thin ones their allocated bytes, from ``allocated`` by disk key, else
    their size) and the swap file (the VM's memory); with ``redirect_writes_to`` the swap file
    goes to the redirect datastore instead. Both on one datastore: the sum."""
    allocated = allocated or {}
    disks = sum(
        allocated.get(d.key, d.capacity_bytes) if d.thin else d.capacity_bytes for d in point.disks
    )
    swap = point.memory_mb * MiB
    thin = [d.key for d in point.disks if d.thin]
    disk_rule = "each disk's provisioned size" + (
        f" (allocated size for the thin disks {', '.join(thin)})" if thin else ""
    )
    if spec.redirect_writes_to:
        return SpaceNeeds(
            destination=disks,
            redirect=swap,
            rule=f"destination: {disk_rule}; redirect datastore: the swap file (memory size)",
        )
    return SpaceNeeds(
        destination=disks + swap,
        redirect=0,
        rule=f"{disk_rule} plus the swap file (memory size)",
    )


def target_query(spec: RecoverySpec, networks: Mapping[str, str]) -> TargetQuery:
    """What to ask vSphere about for ``spec``; ``networks`` maps each NIC to its port group
    (after the spec's network map, ``datastore.vmx_rewrite.nic_networks``). A verification's
    copy is never migrated: its destination datastore is not asked about."""
    destination = None if spec.verification else spec.datastore
    datastores = tuple(dict.fromkeys(d for d in (destination, spec.redirect_writes_to) if d))
    port_groups = tuple(sorted(set(networks.values())))
    privileges: dict[Target, tuple[str, ...]] = {
        Target("host", spec.esx_host): REQUIRED_PRIVILEGES["host"],
        Target("folder", spec.folder or ""): REQUIRED_PRIVILEGES["folder"],
        Target("resource pool", spec.resource_pool or ""): REQUIRED_PRIVILEGES["resource pool"],
    }
    for name in datastores:
        privileges[Target("datastore", name)] = REQUIRED_PRIVILEGES["datastore"]
    for name in port_groups:
        privileges[Target("network", name)] = REQUIRED_PRIVILEGES["network"]
    return TargetQuery(
        host=spec.esx_host,
        datastores=datastores,
        networks=port_groups,
        vm_name=spec.vm_name,
        folder=spec.folder,
        resource_pool=spec.resource_pool,
        privileges=privileges,
    )


def _datastore_refusals(
    host: str, role: str, facts: DatastoreFacts | None, name: str, need: int, rule: str
) -> list[PreflightError]:
    target = str(Target("datastore", name))
    where = f"{role} datastore {name!r}"
    if facts is None or not facts.exists:
        return [
            DatastoreUnavailableError(
                f"{where} does not exist (host {host!r} mounts no datastore of that name)",
                target=target,
            )
        ]
    if not facts.mounted:
        return [
            DatastoreUnavailableError(f"{where} is not mounted on host {host!r}", target=target)
        ]
    if not facts.accessible:
        return [
            DatastoreUnavailableError(
                f"{where} is not accessible from host {host!r}", target=target
            )
        ]
    found: list[PreflightError] = []
    if facts.maintenance not in ("", "normal"):
        found.append(
            DatastoreUnavailableError(
                f"{where} is in maintenance mode ({facts.maintenance})", target=target
            )
        )
    if not facts.writable:
        found.append(
            DatastoreUnavailableError(
                f"{where} is mounted read-only on host {host!r}", target=target
            )
        )
    if facts.free_bytes < need:
        found.append(
            DatastoreSpaceError(
                f"{where} has {format_bytes(facts.free_bytes)} free of "
                f"{format_bytes(facts.capacity_bytes)}; the recovered VM needs "
                f"{format_bytes(need)} there ({rule})",
                target=target,
            )
        )
    return found


def target_refusals(
    spec: RecoverySpec,
    point: RestorePoint,
    facts: TargetFacts,
    settings: Settings,
    *,
    networks: Mapping[str, str],
    nfs_datastore: str,
    space: SpaceNeeds | None = None,
) -> list[PreflightError]:
    """Every reason to refuse the job's vSphere targets, in the order the job would meet them
    (host, NFS slots, datastores, placement, name, networks, privileges); empty: go on.

    ``networks`` maps each NIC to its port group (after the network map); ``nfs_datastore`` is
    the name the job's export is mounted as (already mounted: no new NFS slot is needed).
    ``settings`` is taken for rules that become settings.
    """
    del settings  # no target rule is a setting yet
    host = facts.host
    host_target = str(Target("host", spec.esx_host))
    if not host.found:
        return [
            HostUnavailableError(
                f"host {spec.esx_host!r} is not in the vSphere inventory", target=host_target
            )
        ]
    found: list[PreflightError] = []
    if host.connection_state != "connected":
        found.append(
            HostUnavailableError(
                f"host {spec.esx_host!r} is {host.connection_state}, not connected",
                target=host_target,
            )
        )
    if host.maintenance:
        found.append(
            HostUnavailableError(
                f"host {spec.esx_host!r} is in maintenance mode: it powers on no VM",
                target=host_target,
            )
        )
    if (
        nfs_datastore not in host.nfs_datastores
        and len(host.nfs_datastores) >= host.nfs_max_volumes
    ):
        found.append(
            NfsVolumeLimitError(
                f"host {spec.esx_host!r} already mounts {len(host.nfs_datastores)} NFS datastores "
                f"and its NFS.MaxVolumes is {host.nfs_max_volumes}: unmount one "
                f"({', '.join(sorted(host.nfs_datastores))}) or raise NFS.MaxVolumes (at most "
                f"256) before datastore {nfs_datastore!r} can be mounted",
                host=spec.esx_host,
                mounted=len(host.nfs_datastores),
                limit=host.nfs_max_volumes,
            )
        )
    space = space or space_needs(spec, point)
    same = spec.redirect_writes_to == spec.datastore and not spec.verification
    destination_need = space.destination + (space.redirect if same else 0)
    if not spec.verification:  # a verification's copy is never migrated
        found += _datastore_refusals(
            spec.esx_host,
            "destination",
            facts.datastores.get(spec.datastore),
            spec.datastore,
            destination_need,
            space.rule,
        )
    if spec.redirect_writes_to and not same:
        found += _datastore_refusals(
            spec.esx_host,
            "redirect",
            facts.datastores.get(spec.redirect_writes_to),
            spec.redirect_writes_to,
            space.redirect,
            space.rule,
        )
    if spec.folder is not None and facts.folder_found is False:
        found.append(
            FolderNotFoundError(
                f"VM folder {spec.folder!r} does not exist",
                target=str(Target("folder", spec.folder)),
            )
        )
    if spec.resource_pool is not None and facts.resource_pool_found is False:
        found.append(
            ResourcePoolNotFoundError(
                f"resource pool {spec.resource_pool!r} does not exist",
                target=str(Target("resource pool", spec.resource_pool)),
            )
        )
    if (length := vsphere_name_length(spec.vm_name)) > MAX_VM_NAME:
        found.append(
            VmNameTooLongError(
                f"the recovered VM's name {spec.vm_name!r} counts {length} characters (%, / and "
                f"\\ count 3), over vSphere's {MAX_VM_NAME}; choose a shorter name_suffix",
                target=f"VM {spec.vm_name!r}",
            )
        )
    if facts.vm_name_taken:
        found.append(
            VmNameTakenError(
                f"a VM named {spec.vm_name!r} is already registered; unregister it or give the "
                "recovered VM another name (name_suffix)",
                target=f"VM {spec.vm_name!r}",
            )
        )
    have = set(host.networks)
    for nic, network in sorted(networks.items()):
        # A NIC that starts disconnected needs no port group to power on (a verification
        # copy's, or the operator's choice): it is connected once mapped, after the recovery.
        if network not in have and not spec.disconnect_nics:
            mapped = [old for old, new in spec.network_map.items() if new == network]
            origin = f" (mapped from {mapped[0]!r})" if mapped else ""
            found.append(
                NetworkNotFoundError(
                    f"{nic} connects to port group {network!r}{origin}, which host "
                    f"{spec.esx_host!r} does not have; its networks are "
                    f"{', '.join(sorted(have)) or 'none'} (map it with network_map)",
                    target=str(Target("network", network)),
                )
            )
    if facts.granted is not None:
        for target, wanted in sorted(target_query(spec, networks).privileges.items()):
            granted = facts.granted.get(target)
            if granted is None:
                continue  # the object is missing: refused above
            missing = [p for p in wanted if p not in granted]
            if missing:
                found.append(
                    PrivilegeError(
                        f"the vSphere user lacks {', '.join(missing)} on {target}",
                        target=str(target),
                    )
                )
    return found


def raise_first(refusals: list[PreflightError]) -> None:
    """Raise the first refusal; its message lists the others too (one run shows every
    problem)."""
    if not refusals:
        return
    first = refusals[0]
    if len(refusals) > 1:
        first.args = (
            f"{first}; also: " + "; ".join(str(r) for r in refusals[1:]),
            *first.args[1:],
        )
    raise first
