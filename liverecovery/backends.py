"""The four backends a recovery job drives, as typed Protocols, and the values they exchange.

A backup product plugs in its own implementations; ``liverecovery.testing`` has in-memory ones
with fault injection, and the real ones live in ``nfs/``, ``catalog/``, ``cache/`` and ``vsphere/``.
Every method is async and every backend has ``aclose()``. Backends raise ``BackendError`` (or a
subclass) for failures of the outside system; the job layer adds timeouts around every call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from liverecovery.config import Settings
from liverecovery.errors import NotOfferedError
from liverecovery.io.ranges import FileRange
from liverecovery.nfs.exports import ExportInfo
from liverecovery.nfs.filesystem import Filesystem
from liverecovery.spec import RecoverySpec

__all__ = [
    "Backends",
    "BlockCache",
    "BlockKey",
    "CacheSpace",
    "CatalogReader",
    "DEFAULT_MAX_CONN_PER_IP",
    "DEFAULT_NFS_MAX_VOLUMES",
    "MAX_NFS_MAX_VOLUMES",
    "DatastoreBuilder",
    "DatastoreFacts",
    "DiskInfo",
    "DiskReader",
    "DiskStats",
    "ExportInfo",
    "GuestCredentials",
    "GuestHeartbeat",
    "GuestInfo",
    "GuestOperations",
    "HostFacts",
    "AllocationRun",
    "RunKind",
    "MediaKind",
    "NfsExporter",
    "ProgressCallback",
    "RestorePoint",
    "ServedDisk",
    "SharedState",
    "StateObject",
    "StagedVm",
    "StagingContext",
    "Target",
    "TargetFacts",
    "TargetQuery",
    "ToolsStatus",
    "VSphereClient",
    "VSphereInventory",
    "VmRef",
    "guest_heartbeat",
]

ProgressCallback = Callable[[int, int], None]
"""Called with (done, total) as a long operation advances."""


# -- catalog -------------------------------------------------------------------------------------


class MediaKind(enum.StrEnum):
    """Where a restore point is stored; live recovery refuses ``TAPE``."""

    DISK = "disk"
    CLOUD = "cloud"
    TAPE = "tape"

    def __repr__(self) -> str:
        """The plain value: a ``RestorePoint`` prints ``media='disk'``."""
        return repr(self.value)


@attrs.frozen
class DiskInfo:
    """One virtual disk of a VM as the backup describes it.

    ``key`` is the .vmx device key (``scsi0:0``), ``file_name`` the descriptor's name in the VM
    folder, ``adapter`` the controller type (``lsilogic``, ``pvscsi``, ``ide``, ``sata``, ``nvme``...).
    """

    key: str
    file_name: str
    capacity_bytes: int
    adapter: str = "lsilogic"
    thin: bool = False
    """Thin-provisioned in the backup: on the destination datastore it takes only its allocated
    bytes, not its capacity (preflight's space rule)."""


@attrs.frozen
class RestorePoint:
    """One backup of one VM: what the preflight rules and the staging step need to know."""

    vm_name: str
    point_id: str
    vmx_name: str
    disks: tuple[DiskInfo, ...]
    media: MediaKind = MediaKind.DISK
    archived: bool = False
    passkey_required: bool = False
    created: datetime | None = None
    guest_os: str = ""
    memory_mb: int = 0
    num_cpus: int = 0
    nvram_name: str | None = None
    warnings: tuple[str, ...] = ()
    """What reading the backup ignored (garbage .vmx lines, disks that are no .vmdk)."""

    @property
    def total_disk_bytes(self) -> int:
        """The seed's "total VM size": the sum of the sizes of all VMDKs."""
        return sum(d.capacity_bytes for d in self.disks)


class RunKind(enum.StrEnum):
    """What a run of a disk holds: ``DATA`` must be read, ``ZERO`` and ``UNALLOCATED`` read as zeros."""

    DATA = "data"
    ZERO = "zero"
    UNALLOCATED = "unallocated"

    def __repr__(self) -> str:
        """The plain value: an allocation run prints ``kind='data'``."""
        return repr(self.value)


@attrs.frozen
class AllocationRun:
    """A run of ``length`` bytes at ``offset`` of one kind."""

    offset: int
    length: int
    kind: RunKind


@runtime_checkable
class DiskReader(Protocol):
    """**Protocol:** random access to one virtual disk's bytes, safe for concurrent readers."""

    @property
    def size(self) -> int:
        """The disk's virtual size in bytes."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes (zeros for holes), shorter only at the end of the disk."""
        ...

    async def allocation(self) -> Sequence[AllocationRun]:
        """Data/zero/unallocated runs covering the disk, from metadata only (no data reads)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class CatalogReader(Protocol):
    """**Protocol:** the backups a job can recover from."""

    async def vm_names(self) -> Sequence[str]:
        """Names of the VMs with at least one restore point."""
        ...

    async def restore_points(self, vm_name: str) -> Sequence[RestorePoint]:
        """Restore points of ``vm_name``, oldest first. :raises CatalogError: unknown VM."""
        ...

    async def restore_point(self, vm_name: str, point_id: str | None = None) -> RestorePoint:
        """One restore point; the newest when ``point_id`` is None. :raises CatalogError:"""
        ...

    async def read_file(self, point: RestorePoint, name: str) -> bytes:
        """A small file of the VM folder (.vmx, .nvram). :raises CatalogError:"""
        ...

    async def open_disk(self, point: RestorePoint, disk: DiskInfo) -> DiskReader:
        """Open one disk for reading; the backup is never modified. :raises CatalogError:"""
        ...

    async def aclose(self) -> None: ...


# -- cache ---------------------------------------------------------------------------------------


@attrs.frozen
class BlockKey:
    """Identifies one cache block: ``source`` names the disk (stable across restarts)."""

    source: str
    index: int


@attrs.frozen
class CacheSpace:
    """Space on the cache's filesystem, in bytes, and what running jobs have reserved."""

    total_bytes: int
    free_bytes: int
    reserved_bytes: int


@runtime_checkable
class BlockCache(Protocol):
    """**Protocol:** the circular block cache (the seed's 3DFS cache).

    It never reads the backup itself: a ``lookup`` that misses makes its caller the block's
    filler, who reads the block from the backup and hands it over with ``fill`` (or gives up
    with ``abandon``). Meanwhile every other ``lookup`` of that block waits for those bytes, so
    concurrent misses of one block read the backup once. ``file_range`` is optional: the default
    cannot give ranges of files. Subclass explicitly to inherit it.
    """

    @property
    def block_size(self) -> int: ...

    async def space(self) -> CacheSpace:
        """Current free space and outstanding reservations."""
        ...

    async def reserve(self, job_id: str, nbytes: int) -> None:
        """Reserve space for a job (idempotent per job id). :raises CacheSpaceError:"""
        ...

    async def release(self, job_id: str) -> None:
        """Release a job's reservation; releasing an unknown job is a no-op."""
        ...

    def reservations(self) -> Mapping[str, int]:
        """Job id to reserved bytes, for every job holding a reservation."""
        ...

    async def lookup(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset + length)`` of the block (shorter where the block ends), or
        None: a miss, and the caller must now ``fill`` or ``abandon`` the block.

        :raises Exception: the error the filler of this block abandoned it with.
        """
        ...

    async def fill(self, key: BlockKey, data: bytes) -> None:
        """Store the block's bytes (the whole block) and hand them to the lookups waiting.

        :raises CacheError: more than ``block_size`` bytes (the waiters get it too).
        """
        ...

    async def fill_cold(self, key: BlockKey, data: bytes) -> None:
        """``fill``, but the block is kept as the least recently used, the first to be evicted:
        a block a sequential reader (a storage vMotion) streamed past must not push the VM's
        working set out. This default fills as ``fill`` does."""
        await self.fill(key, data)

    def abandon(self, key: BlockKey, error: Exception | None = None) -> None:
        """Give up filling the block: waiting lookups raise ``error``, or (None, e.g. the
        filler was cancelled) look up again, one of them becoming the filler."""
        ...

    async def file_range(
        self, key: BlockKey, offset: int, length: int, *, eof: bool = False
    ) -> FileRange | None:
        """Bytes of a block as a range of a file to splice, or None (a miss, or a cache that
        cannot: this default). Never makes the caller a filler."""
        return None

    async def aclose(self) -> None: ...


# -- NFS export ----------------------------------------------------------------------------------


@runtime_checkable
class NfsExporter(Protocol):
    """**Protocol:** exposes folders to ESX hosts over NFSv3.

    One export per destination ESX host (an empty root directory); each job publishes its VM
    folder in it under a folder name of its own, so several jobs share one datastore mount.
    """

    async def export(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """Create an export at ``path`` that only ``clients`` may mount. :raises BackendError:"""
        ...

    async def unexport(self, path: str) -> None:
        """Remove an export; its file handles become stale."""
        ...

    async def publish(self, path: str, folder: str, filesystem: Filesystem) -> None:
        """Make ``filesystem`` visible as ``folder`` in the export's root."""
        ...

    async def unpublish(self, path: str, folder: str) -> None:
        """Remove a published folder from the export."""
        ...

    def exports(self) -> Mapping[str, ExportInfo]:
        """The live exports by path."""
        ...

    async def aclose(self) -> None: ...


# -- staging -------------------------------------------------------------------------------------


@attrs.define
class DiskStats:
    """What one disk's reads cost: the per-job statistics are sums of these."""

    bytes_served: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_fetched: int = 0
    bytes_restored: int = 0
    holes_skipped: int = 0


@runtime_checkable
class ServedDisk(Protocol):
    """**Protocol:** one disk a staged VM serves through the cache: what the job reports and
    what its background restore copies, foreground reads first."""

    @property
    def size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    @property
    def stats(self) -> DiskStats: ...

    @property
    def overlay_bytes(self) -> int:
        """Bytes the VM has written to this disk's overlay."""
        ...

    @property
    def data_runs(self) -> Sequence[tuple[int, int]]:
        """``(start, end)`` byte runs that hold data, ascending."""
        ...

    async def wait_quiet(self, grace_s: float) -> bool:
        """Wait until no foreground read has been in flight for ``grace_s``; whether it waited."""
        ...

    async def restore_block(self, index: int) -> None:
        """Bring block ``index`` into the cache (a no-op when it is there)."""
        ...


@attrs.frozen
class StagingContext:
    """What a builder may use: the job, its restore point and the backends it reads through."""

    job_id: str
    spec: RecoverySpec
    point: RestorePoint
    settings: Settings
    catalog: CatalogReader
    datastore: str
    folder: str


@attrs.frozen
class StagedVm:
    """The built VM folder, the name of its .vmx inside it, and its served disks (if any)."""

    filesystem: Filesystem
    vmx_name: str
    disks: Mapping[str, ServedDisk] = attrs.field(factory=dict)


@runtime_checkable
class DatastoreBuilder(Protocol):
    """**Protocol:** builds the VM folder one job publishes (the seed's staging step)."""

    async def build(self, ctx: StagingContext) -> StagedVm: ...

    async def discard(self, ctx: StagingContext) -> None:
        """Remove what ``build`` left on disk (the overlay), after the folder is unpublished."""
        ...


# -- vSphere -------------------------------------------------------------------------------------


@attrs.frozen
class VmRef:
    """A registered VM: its managed object id and the datastore path of its .vmx."""

    moref: str
    name: str
    vmx_path: str


DEFAULT_NFS_MAX_VOLUMES = 32
"""ESXi's default for the ``NFS.MaxVolumes`` advanced option (NFSv3 mounts per host) on ESXi
6.0 to 8.0 (VMware KB 2239; 8 on 5.x and earlier). Used when a host does not report the option:
the govmomi simulator, for one, has no ``NFS.*`` options."""

MAX_NFS_MAX_VOLUMES = 256
"""The largest ``NFS.MaxVolumes`` ESXi 5.0 to 8.0 accept."""

DEFAULT_MAX_CONN_PER_IP = 128
"""ESXi's ``SunRPC.MaxConnPerIP`` limit: TCP connections from one host to one server address.
Used when a host does not report the option."""


@attrs.frozen(order=True)
class Target:
    """A vSphere object a job uses, named for messages: ``datastore 'ssd-01'``."""

    kind: str
    """``host``, ``datastore``, ``folder``, ``resource pool`` or ``network``."""
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else f"the host's default {self.kind}"


@attrs.frozen
class TargetQuery:
    """What preflight asks the ``VSphereClient`` about, all in one round: the host, the
    datastores (destination, redirect), the port groups the VM's NICs use, the name the VM will
    be registered under, the folder and pool when named, and the privileges needed per target."""

    host: str
    datastores: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    vm_name: str = ""
    folder: str | None = None
    resource_pool: str | None = None
    privileges: Mapping[Target, tuple[str, ...]] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class HostFacts:
    """The ESX host as vSphere reports it. ``found`` False: no host by that name (the rest
    is then meaningless). ``connection_state`` is vSphere's ``connected``, ``disconnected``
    or ``notResponding``."""

    name: str
    found: bool = True
    connection_state: str = "connected"
    maintenance: bool = False
    nfs_datastores: tuple[str, ...] = ()
    """Names of the NFSv3 datastores the host mounts now."""
    nfs_max_volumes: int = DEFAULT_NFS_MAX_VOLUMES
    max_conn_per_ip: int = DEFAULT_MAX_CONN_PER_IP
    """The host's ``SunRPC.MaxConnPerIP``: its TCP connections to one NFS server address."""
    networks: tuple[str, ...] = ()
    """Names of the networks (standard and distributed port groups) the host has."""
    memory_free_bytes: int | None = None
    """Memory not used on the host (None: not reported); a plan's least-loaded placement."""
    cpu_free_mhz: int | None = None
    """CPU not used on the host, in MHz (None: not reported)."""


@attrs.frozen
class DatastoreFacts:
    """One datastore as the host sees it. ``exists``: somewhere in the inventory; ``mounted``:
    on the job's host. Space in bytes; ``maintenance`` is vSphere's datastore maintenance
    mode (``normal`` when not in one)."""

    name: str
    exists: bool = True
    mounted: bool = True
    accessible: bool = True
    writable: bool = True
    maintenance: str = "normal"
    free_bytes: int = 0
    capacity_bytes: int = 0
    type: str = ""


@attrs.frozen
class TargetFacts:
    """The answer to a ``TargetQuery``: plain facts, no decisions (``job/preflight.py``
    decides). ``folder_found`` / ``resource_pool_found`` are None when the query named none;
    ``granted`` holds, per target, the privileges of the query the session has, or is None when
    the server cannot tell."""

    host: HostFacts
    datastores: Mapping[str, DatastoreFacts] = attrs.field(factory=dict, hash=False)
    vm_name_taken: bool = False
    folder_found: bool | None = None
    resource_pool_found: bool | None = None
    granted: Mapping[Target, frozenset[str]] | None = attrs.field(default=None, hash=False)


@runtime_checkable
class VSphereClient(Protocol):
    """**Protocol:** the calls a job makes to vCenter or an ESX host."""

    async def mount_nfs_datastore(
        self, host: str, remote_host: str, remote_path: str, datastore: str
    ) -> str:
        """Mount an NFSv3 export on ``host`` as ``datastore``; returns the datastore name."""
        ...

    async def unmount_datastore(self, host: str, datastore: str) -> None: ...

    async def register_vm(
        self,
        host: str,
        vmx_path: str,
        name: str,
        *,
        folder: str | None = None,
        resource_pool: str | None = None,
    ) -> VmRef:
        """Register the VM whose .vmx is at ``vmx_path`` (``[datastore] folder/vm.vmx``) into
        the VM ``folder`` and ``resource_pool`` named (None: the client's defaults)."""
        ...

    async def unregister_vm(self, vm: VmRef) -> None: ...

    async def power_on(self, vm: VmRef) -> None: ...

    async def power_off(self, vm: VmRef) -> None: ...

    async def relocate(
        self, vm: VmRef, datastore: str, progress: ProgressCallback | None = None
    ) -> VmRef:
        """Storage vMotion every file of the running VM to ``datastore``."""
        ...

    async def describe(self, query: TargetQuery) -> TargetFacts:
        """Facts about every target of a job, read before anything is touched (one round
        trip where the API allows). Missing objects are facts (``found``/``exists`` False),
        not errors. :raises VSphereError: the server could not be asked."""
        ...

    async def aclose(self) -> None: ...


@attrs.frozen
class GuestInfo:
    """What VMware Tools in a running guest reports through vSphere (``vm.guest``)."""

    tools_running: bool = False
    heartbeat: str = "gray"
    """``green`` (Tools answer), ``yellow``, ``red`` or ``gray`` (no Tools, or not yet)."""
    ip_address: str | None = None
    """The guest's primary IP address, once Tools report one."""


@attrs.frozen
class GuestCredentials:
    """A guest OS account for guest operations; the password is never part of ``repr``."""

    username: str
    password: str = attrs.field(repr=False)


@runtime_checkable
class GuestOperations(Protocol):
    """**Protocol:** what a ``VSphereClient`` can see of and do in a running guest, for backup
    verification. ``guest_info`` is the contract; ``run_in_guest`` and ``screenshot`` are
    optional capabilities whose defaults say "not offered". Subclass explicitly to inherit them.
    """

    async def guest_info(self, vm: VmRef) -> GuestInfo:
        """What VMware Tools report now. :raises VSphereError:"""
        ...

    async def run_in_guest(
        self,
        vm: VmRef,
        credentials: GuestCredentials,
        program: str,
        arguments: str,
        wait_s: float,
    ) -> int:
        """Run ``program arguments`` in the guest (vSphere guest operations) and return its exit
        code once it ends; ``wait_s``: how long the program may run.

        :raises NotOfferedError: this backend has no guest operations (this default).
        :raises VSphereError: the guest refused (bad credentials, no such program).
        """
        raise NotOfferedError(
            f"{type(self).__name__} offers no guest operations", operation="vsphere.run_in_guest"
        )

    async def screenshot(self, vm: VmRef) -> bytes | None:
        """A PNG of the VM's console, or None: not offered (this default)."""
        return None


@runtime_checkable
class VSphereInventory(Protocol):
    """**Protocol:** what a ``VSphereClient`` can also report; resume uses it to reconcile a
    journal with reality. Optional (``Backends.inventory``): without it, the journal is taken as
    the truth."""

    async def power_state(self, vm: VmRef) -> str:
        """``poweredOn``, ``poweredOff`` or ``suspended``.

        :raises VSphereError: fault ``ManagedObjectNotFound`` when the VM is not registered.
        """
        ...

    async def nfs_datastores(self, host: str) -> Sequence[str]:
        """Names of the NFS datastores ``host`` mounts."""
        ...

    async def find_vm(self, vmx_path: str) -> VmRef | None:
        """The VM registered from ``vmx_path`` (``[datastore] folder/vm.vmx``), or None: finds
        a VM whose registration finished after the process that asked for it died."""
        ...


class ToolsStatus(Protocol):
    """**Protocol:** what VMware Tools report of a guest; only the heartbeat matters here."""

    @property
    def heartbeat(self) -> str:
        """``green`` (Tools answer), ``yellow``, ``red`` or ``gray`` (no Tools, or not yet)."""
        ...


@runtime_checkable
class GuestHeartbeat(Protocol):
    """**Protocol:** a ``VSphereClient`` that can also report what a guest's VMware Tools say
    (``guest_info``, as vSphere's ``vm.guest``). Optional: ask through ``guest_heartbeat``,
    which answers None for a client without it."""

    async def guest_info(self, vm: VmRef) -> ToolsStatus: ...


async def guest_heartbeat(client: VSphereClient, vm: VmRef) -> bool | None:
    """Whether ``vm``'s guest reports a heartbeat (green or yellow); None when ``client``
    cannot tell."""
    if isinstance(client, GuestHeartbeat):
        return (await client.guest_info(vm)).heartbeat in ("green", "yellow")
    return None


@attrs.frozen
class Backends:
    """The four backends one ``LiveRecovery`` drives, and the optional ``inventory`` (usually
    the ``vsphere`` client itself) that resume asks what vSphere really holds; without it the
    journal is taken as the truth."""

    exporter: NfsExporter
    catalog: CatalogReader
    cache: BlockCache
    vsphere: VSphereClient
    inventory: VSphereInventory | None = None

    async def aclose(self) -> None:
        """Close every backend, even when one of them fails to close."""
        errors: list[BaseException] = []
        for backend in (self.vsphere, self.exporter, self.cache, self.catalog):
            try:
                await backend.aclose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@attrs.frozen
class StateObject:
    """One object of the shared state: its bytes and the version tag a compare-and-swap names."""

    data: bytes
    etag: str


@runtime_checkable
class SharedState(Protocol):
    """**Protocol:** the small state several serving nodes share (``docs/scale-out.md``): the
    NFS handle key, the leases of the service addresses, the export registries.

    Keys are relative (``handle-key``, ``leases/127.0.0.2``). Writes are conditional, so two
    nodes never both win: ``create`` succeeds only where nothing is, ``replace`` only while the
    object still has the tag its caller read. A lost race returns None, never raises; a store
    that does not answer raises ``BackendError`` (or ``BackupUnavailableError``).
    """

    async def get(self, key: str) -> StateObject | None:
        """The object, or None if there is none."""
        ...

    async def create(self, key: str, data: bytes) -> str | None:
        """Write ``key`` if absent: its tag, or None when it already exists."""
        ...

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        """Write ``key`` if its tag is still ``etag``: the new tag, or None when it changed.
        ``data`` must differ from the current bytes (a tag may be a digest of them)."""
        ...

    async def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix/`` (relative to the state, sorted)."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` (a key already gone is no error): a job's state once it ended."""
        ...

    async def aclose(self) -> None: ...
