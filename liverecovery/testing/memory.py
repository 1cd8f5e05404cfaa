"""In-memory implementations of the four backends, with fault injection at every call.

They keep the rules the real systems enforce where a job could get them wrong: a VM cannot be
unregistered while powered on, a datastore cannot be unmounted while a VM lives on it, a cache
reservation cannot exceed the free space. Each exposes its state for assertions (``exports()``,
``datastores``, ``vms``, ``reservations()``), and every call first goes through the shared
``FaultPlan``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import anyio
import attrs

from liverecovery.backends import (
    DEFAULT_NFS_MAX_VOLUMES,
    AllocationRun,
    Backends,
    BlockCache,
    BlockKey,
    CacheSpace,
    DatastoreFacts,
    DiskInfo,
    DiskReader,
    ExportInfo,
    GuestCredentials,
    GuestInfo,
    GuestOperations,
    HostFacts,
    ProgressCallback,
    RestorePoint,
    RunKind,
    Target,
    TargetFacts,
    TargetQuery,
    VmRef,
)
from liverecovery.cache.fills import Fills
from liverecovery.config import GiB, MiB
from liverecovery.datastore.flatdisk import DiskOverlay
from liverecovery.errors import BackendError, CacheSpaceError, CatalogError, VSphereError
from liverecovery.nfs.filesystem import Filesystem, Stability
from liverecovery.sim.guest import GuestBehaviour, tiny_png
from liverecovery.spec import MAX_VM_NAME, vsphere_name_length
from liverecovery.testing.faults import FaultPlan
from liverecovery.testing.samples import sample_vmx_text

__all__ = [
    "MemoryBackup",
    "MemoryBlockCache",
    "MemoryCatalog",
    "MemoryDisk",
    "MemoryExporter",
    "MemoryOverlay",
    "MemoryVSphere",
    "VmState",
    "memory_backends",
    "sample_vmx",
]


# -- exporter ------------------------------------------------------------------------------------


class MemoryExporter:
    """Exports and published folders in dictionaries."""

    def __init__(self, faults: FaultPlan | None = None) -> None:
        self.faults = faults or FaultPlan()
        self._exports: dict[str, ExportInfo] = {}
        self.published: dict[tuple[str, str], Filesystem] = {}

    async def export(self, path: str, clients: Sequence[str]) -> ExportInfo:
        await self.faults.hit("exporter.export")
        if path in self._exports:
            raise BackendError(f"export {path} already exists", operation="exporter.export")
        info = ExportInfo(path, tuple(clients))
        self._exports[path] = info
        return info

    async def unexport(self, path: str) -> None:
        await self.faults.hit("exporter.unexport")
        if self._exports.pop(path, None) is None:
            raise BackendError(f"no export {path}", operation="exporter.unexport")
        for key in [k for k in self.published if k[0] == path]:
            del self.published[key]

    async def publish(self, path: str, folder: str, filesystem: Filesystem) -> None:
        await self.faults.hit("exporter.publish")
        if path not in self._exports:
            raise BackendError(f"no export {path}", operation="exporter.publish")
        if (path, folder) in self.published:
            raise BackendError(f"{path}/{folder} already published", operation="exporter.publish")
        self.published[(path, folder)] = filesystem

    async def unpublish(self, path: str, folder: str) -> None:
        await self.faults.hit("exporter.unpublish")
        if self.published.pop((path, folder), None) is None:
            raise BackendError(f"{path}/{folder} is not published", operation="exporter.unpublish")

    def exports(self) -> Mapping[str, ExportInfo]:
        return dict(self._exports)

    async def aclose(self) -> None:
        self._exports.clear()
        self.published.clear()


# -- catalog -------------------------------------------------------------------------------------


class MemoryDisk:
    """A virtual disk whose allocated bytes are kept in a dict of runs (offset -> bytes)."""

    def __init__(self, size: int, runs: Mapping[int, bytes] | None = None) -> None:
        self._size = size
        self._runs = dict(sorted((runs or {}).items()))
        for off, data in self._runs.items():
            if off < 0 or off + len(data) > size:
                raise ValueError(f"run at {off} of {len(data)} bytes is outside a {size}-byte disk")
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return self._size

    def content(self, offset: int, length: int) -> bytes:
        """The bytes at ``offset`` (synchronous, for assertions)."""
        end = min(self._size, offset + max(0, length))
        out = bytearray(max(0, end - offset))
        for off, data in self._runs.items():
            lo, hi = max(off, offset), min(off + len(data), end)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - off : hi - off]
        return bytes(out)

    async def read(self, offset: int, length: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        data = self.content(offset, length)
        self.bytes_read += len(data)
        return data

    async def allocation(self) -> Sequence[AllocationRun]:
        await anyio.lowlevel.checkpoint()
        out: list[AllocationRun] = []
        pos = 0
        for off, data in self._runs.items():
            if off > pos:
                out.append(AllocationRun(pos, off - pos, RunKind.UNALLOCATED))
            out.append(AllocationRun(off, len(data), RunKind.DATA))
            pos = off + len(data)
        if pos < self._size:
            out.append(AllocationRun(pos, self._size - pos, RunKind.UNALLOCATED))
        return out

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()

    def sha256(self) -> str:
        """Digest of the allocated runs (the backup's identity, for "never modified" checks)."""
        h = hashlib.sha256()
        for off, data in self._runs.items():
            h.update(off.to_bytes(8, "big"))
            h.update(data)
        return h.hexdigest()


@attrs.define
class MemoryBackup:
    """One restore point's files: the point, small files by name, and disks by file name."""

    point: RestorePoint
    files: dict[str, bytes]
    disks: dict[str, MemoryDisk]


def sample_vmx(name: str, disks: Sequence[DiskInfo], memory_mb: int = 2048) -> bytes:
    """A .vmx in the style ESXi writes, with ``disks`` on scsi0 in order."""
    return sample_vmx_text(name, [d.file_name for d in disks], memory_mb=memory_mb).encode()


class MemoryCatalog:
    """Restore points held in memory; ``add_vm`` builds a plausible one."""

    def __init__(self, faults: FaultPlan | None = None) -> None:
        self.faults = faults or FaultPlan()
        self.backups: dict[str, list[MemoryBackup]] = {}

    def add(self, backup: MemoryBackup) -> MemoryBackup:
        self.backups.setdefault(backup.point.vm_name, []).append(backup)
        return backup

    def add_vm(
        self,
        name: str,
        *,
        disk_sizes: Sequence[int] = (1 * GiB,),
        point_id: str = "latest",
        data_per_disk: int = 1 * MiB,
        **point_fields: object,
    ) -> MemoryBackup:
        """Add a restore point of VM ``name`` with disks holding a known pattern."""
        disks = tuple(
            DiskInfo(key=f"scsi0:{i}", file_name=f"{name}_{i}.vmdk", capacity_bytes=size)
            for i, size in enumerate(disk_sizes)
        )
        point = RestorePoint(
            vm_name=name,
            point_id=point_id,
            vmx_name=f"{name}.vmx",
            disks=disks,
            nvram_name=f"{name}.nvram",
            memory_mb=2048,
            num_cpus=2,
            guest_os="otherlinux-64",
            **point_fields,  # type: ignore[arg-type]
        )
        mem_disks = {}
        for i, d in enumerate(disks):
            n = min(data_per_disk, d.capacity_bytes)
            pattern = hashlib.sha256(f"{name}/{i}".encode()).digest()
            body = (pattern * (n // len(pattern) + 1))[:n]
            mem_disks[d.file_name] = MemoryDisk(d.capacity_bytes, {0: body} if n else {})
        files = {point.vmx_name: sample_vmx(name, disks), f"{name}.nvram": b"\0" * 8684}
        return self.add(MemoryBackup(point, files, mem_disks))

    def _backups(self, vm_name: str) -> list[MemoryBackup]:
        if vm_name not in self.backups:
            raise CatalogError(f"no VM named {vm_name!r} in the catalog", path="memory:")
        return self.backups[vm_name]

    def _backup(self, point: RestorePoint) -> MemoryBackup:
        for b in self._backups(point.vm_name):
            if b.point.point_id == point.point_id:
                return b
        raise CatalogError(f"no restore point {point.point_id!r}", path=f"memory:{point.vm_name}")

    async def vm_names(self) -> Sequence[str]:
        await self.faults.hit("catalog.vm_names")
        return sorted(self.backups)

    async def restore_points(self, vm_name: str) -> Sequence[RestorePoint]:
        await self.faults.hit("catalog.restore_points")
        return [b.point for b in self._backups(vm_name)]

    async def restore_point(self, vm_name: str, point_id: str | None = None) -> RestorePoint:
        await self.faults.hit("catalog.restore_point")
        backups = self._backups(vm_name)
        if point_id is None:
            return backups[-1].point
        for b in backups:
            if b.point.point_id == point_id:
                return b.point
        raise CatalogError(f"VM {vm_name!r} has no restore point {point_id!r}", path="memory:")

    async def read_file(self, point: RestorePoint, name: str) -> bytes:
        await self.faults.hit("catalog.read_file")
        files = self._backup(point).files
        if name not in files:
            raise CatalogError(f"no file {name!r}", path=f"memory:{point.vm_name}")
        return files[name]

    async def open_disk(self, point: RestorePoint, disk: DiskInfo) -> DiskReader:
        await self.faults.hit("catalog.open_disk")
        disks = self._backup(point).disks
        if disk.file_name not in disks:
            raise CatalogError(f"no disk {disk.file_name!r}", path=f"memory:{point.vm_name}")
        return disks[disk.file_name]

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


# -- cache ---------------------------------------------------------------------------------------


class MemoryBlockCache(BlockCache):
    """An LRU block cache with a settable capacity standing in for its filesystem."""

    def __init__(
        self,
        faults: FaultPlan | None = None,
        *,
        capacity: int = 1024 * GiB,
        used: int = 0,
        block_size: int = 1 * MiB,
        min_free_percent: float = 5.0,
    ) -> None:
        self.faults = faults or FaultPlan()
        self.capacity = capacity
        self.other_used = used
        self._block_size = block_size
        self._min_free_percent = min_free_percent
        self._blocks: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._reservations: dict[str, int] = {}
        self._fills: Fills[BlockKey] = Fills()
        self.fetches = 0
        """Lookups that missed (each made its caller read the backup)."""

    @property
    def block_size(self) -> int:
        return self._block_size

    def _free(self) -> int:
        used = self.other_used + sum(len(b) for b in self._blocks.values())
        return max(0, self.capacity - used)

    async def space(self) -> CacheSpace:
        await self.faults.hit("cache.space")
        return CacheSpace(self.capacity, self._free(), sum(self._reservations.values()))

    async def reserve(self, job_id: str, nbytes: int) -> None:
        await self.faults.hit("cache.reserve")
        keep = math.ceil(self.capacity * self._min_free_percent / 100)
        others = sum(v for k, v in self._reservations.items() if k != job_id)
        if self._free() - keep - others < nbytes:
            raise CacheSpaceError(
                f"cannot reserve {nbytes} bytes for job {job_id}: {self._free()} free, "
                f"{keep} kept free, {others} reserved by other jobs"
            )
        self._reservations[job_id] = nbytes

    async def release(self, job_id: str) -> None:
        await self.faults.hit("cache.release")
        self._reservations.pop(job_id, None)

    def reservations(self) -> Mapping[str, int]:
        return dict(self._reservations)

    async def lookup(self, key: BlockKey, offset: int, length: int) -> bytes | None:
        await self.faults.hit("cache.lookup")
        block = self._blocks.get(key)
        if block is None:
            block = await self._fills.join(key)
            if block is None:
                self.fetches += 1
                return None
        else:
            self._blocks.move_to_end(key)
        return block if offset == 0 and length >= len(block) else block[offset : offset + length]

    async def fill(self, key: BlockKey, data: bytes) -> None:
        await self.faults.hit("cache.fill")
        self._fills.hand_over(key, data)
        try:
            self._blocks[key] = data
            keep = math.ceil(self.capacity * self._min_free_percent / 100)
            while self._free() < keep and len(self._blocks) > 1:
                self._blocks.popitem(last=False)
        finally:
            self._fills.end(key)

    def abandon(self, key: BlockKey, error: Exception | None = None) -> None:
        self._fills.end(key, error)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


# -- overlay -------------------------------------------------------------------------------------


class MemoryOverlay(DiskOverlay):
    """A block-granular copy-on-write overlay held in memory (a ``DiskOverlay``).

    A partially written new block is first filled from the base bytes its user hands down, as
    the durable overlay does.
    """

    def __init__(self, block_size: int = 64 * 1024) -> None:
        self.block_size = block_size
        self.blocks: dict[int, bytearray] = {}
        self._written = 0

    @property
    def written_bytes(self) -> int:
        return self._written

    def held(self, offset: int, length: int) -> list[tuple[int, int]]:
        bs, end = self.block_size, offset + length
        runs: list[tuple[int, int]] = []
        for i in range(offset // bs, (end - 1) // bs + 1) if length > 0 else ():
            if i in self.blocks:
                lo, hi = max(offset, i * bs), min(end, (i + 1) * bs)
                if runs and runs[-1][0] + runs[-1][1] == lo:
                    runs[-1] = (runs[-1][0], hi - runs[-1][0])
                else:
                    runs.append((lo, hi - lo))
        return runs

    def to_fill(self, offset: int, length: int) -> list[tuple[int, int]]:
        bs, end = self.block_size, offset + length
        return [
            (i * bs, bs)
            for i in {offset // bs, (end - 1) // bs}
            if length > 0 and i not in self.blocks and (offset > i * bs or end < (i + 1) * bs)
        ]

    async def read(self, offset: int, length: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        bs, end = self.block_size, offset + length
        out = bytearray(max(0, length))
        for i in range(offset // bs, (end - 1) // bs + 1) if length > 0 else ():
            block = self.blocks.get(i)
            if block is not None:
                lo, hi = max(offset, i * bs), min(end, (i + 1) * bs)
                out[lo - offset : hi - offset] = block[lo - i * bs : hi - i * bs]
        return bytes(out)

    async def write(
        self,
        offset: int,
        data: bytes,
        stability: Stability,
        base: Mapping[int, bytes] | None = None,
    ) -> Stability:
        await anyio.lowlevel.checkpoint()
        bs, pos = self.block_size, 0
        while pos < len(data):
            i = (offset + pos) // bs
            within = (offset + pos) - i * bs
            n = min(bs - within, len(data) - pos)
            block = self.blocks.get(i)
            if block is None:
                below = b"" if base is None else base.get(i * bs, b"")
                block = self.blocks[i] = bytearray(below.ljust(bs, b"\0"))
            block[within : within + n] = data[pos : pos + n]
            pos += n
        self._written += len(data)
        return Stability.FILE_SYNC

    async def commit(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


# -- vSphere -------------------------------------------------------------------------------------


@attrs.define
class VmState:
    """A registered VM as the in-memory vSphere sees it."""

    ref: VmRef
    host: str
    datastore: str
    powered_on: bool = False
    migrated: bool = False
    folder: str | None = None
    resource_pool: str | None = None
    booted_at: float | None = None
    """When the guest booted (monotonic), while powered on."""


def _datastore_of(vmx_path: str) -> str:
    if not vmx_path.startswith("[") or "]" not in vmx_path:
        raise ValueError(vmx_path)
    return vmx_path[1 : vmx_path.index("]")]


class MemoryVSphere(GuestOperations):
    """Hosts, NFS datastores and VMs in dictionaries, with vSphere's power-state rules.

    Its guests behave as ``guest`` (``sim.guest.GuestBehaviour``) says: heartbeat and IP
    address after a delay, or never; guest commands; a screenshot.

    What ``describe`` reports can be set for tests: ``maintenance`` and ``disconnected`` hosts,
    ``networks`` (port groups every host has), ``folders`` and ``resource_pools`` that exist,
    ``datastore_facts`` (a datastore's facts by name, replacing the defaults: large, writable),
    ``denied`` (privileges the session lacks per target) and ``privileges_known``.
    """

    def __init__(
        self,
        faults: FaultPlan | None = None,
        *,
        hosts: Sequence[str] = ("esx01",),
        local_datastores: Sequence[str] = ("datastore1",),
        max_nfs_volumes: int = DEFAULT_NFS_MAX_VOLUMES,
        networks: Sequence[str] = ("VM Network",),
    ) -> None:
        self.faults = faults or FaultPlan()
        self.hosts = set(hosts)
        self.local_datastores = set(local_datastores)
        self.max_nfs_volumes = max_nfs_volumes
        self.datastores: dict[str, dict[str, tuple[str, str]]] = {h: {} for h in hosts}
        self.vms: dict[str, VmState] = {}
        self.maintenance: set[str] = set()
        self.disconnected: set[str] = set()
        self.networks: set[str] = set(networks)
        self.folders: set[str] = set()
        self.resource_pools: set[str] = set()
        self.datastore_facts: dict[str, DatastoreFacts] = {}
        self.denied: dict[Target, set[str]] = {}
        self.privileges_known = True
        self.guest = GuestBehaviour()
        self.host_free: dict[str, tuple[int | None, int | None]] = {}
        """Free memory (bytes) and CPU (MHz) ``describe`` reports per host (default: none)."""
        self._next = 1

    async def describe(self, query: TargetQuery) -> TargetFacts:
        """The facts a ``TargetQuery`` asks for, from the dictionaries (and the settable ones)."""
        await self.faults.hit("vsphere.describe")
        name = query.host
        if name not in self.hosts:
            return TargetFacts(host=HostFacts(name, found=False))
        host = HostFacts(
            name,
            connection_state="disconnected" if name in self.disconnected else "connected",
            maintenance=name in self.maintenance,
            nfs_datastores=tuple(sorted(self.datastores[name])),
            nfs_max_volumes=self.max_nfs_volumes,
            networks=tuple(sorted(self.networks)),
            memory_free_bytes=self.host_free.get(name, (None, None))[0],
            cpu_free_mhz=self.host_free.get(name, (None, None))[1],
        )
        datastores: dict[str, DatastoreFacts] = {}
        for ds in query.datastores:
            if ds in self.datastore_facts:
                datastores[ds] = self.datastore_facts[ds]
            elif ds in self.local_datastores or ds in self.datastores[name]:
                datastores[ds] = DatastoreFacts(
                    ds, free_bytes=64 * 1024 * GiB, capacity_bytes=100 * 1024 * GiB
                )
            else:
                datastores[ds] = DatastoreFacts(ds, exists=False, mounted=False)
        granted = {
            target: frozenset(p for p in wanted if p not in self.denied.get(target, set()))
            for target, wanted in query.privileges.items()
        }
        return TargetFacts(
            host=host,
            datastores=datastores,
            vm_name_taken=any(v.ref.name == query.vm_name for v in self.vms.values()),
            folder_found=None if query.folder is None else query.folder in self.folders,
            resource_pool_found=(
                None if query.resource_pool is None else query.resource_pool in self.resource_pools
            ),
            granted=granted if self.privileges_known else None,
        )

    def _fault(self, op: str, msg: str, fault: str) -> VSphereError:
        return VSphereError(msg, operation=f"vsphere.{op}", fault=fault)

    def _host(self, host: str, op: str) -> dict[str, tuple[str, str]]:
        if host not in self.hosts:
            raise self._fault(op, f"host {host!r} not found", "NotFound")
        return self.datastores[host]

    async def mount_nfs_datastore(
        self, host: str, remote_host: str, remote_path: str, datastore: str
    ) -> str:
        await self.faults.hit("vsphere.mount_nfs_datastore")
        mounts = self._host(host, "mount_nfs_datastore")
        if datastore in mounts or datastore in self.local_datastores:
            raise self._fault(
                "mount_nfs_datastore", f"datastore {datastore!r} exists", "DuplicateName"
            )
        if len(mounts) >= self.max_nfs_volumes:
            raise self._fault(
                "mount_nfs_datastore",
                f"host {host!r} has {len(mounts)} NFS datastores (NFS.MaxVolumes {self.max_nfs_volumes})",
                "PlatformConfigFault",
            )
        mounts[datastore] = (remote_host, remote_path)
        return datastore

    async def unmount_datastore(self, host: str, datastore: str) -> None:
        await self.faults.hit("vsphere.unmount_datastore")
        mounts = self._host(host, "unmount_datastore")
        if datastore not in mounts:
            raise self._fault("unmount_datastore", f"datastore {datastore!r} not found", "NotFound")
        users = [v.ref.name for v in self.vms.values() if v.datastore == datastore]
        if users:
            raise self._fault(
                "unmount_datastore",
                f"datastore {datastore!r} is in use by VMs {users}",
                "ResourceInUse",
            )
        del mounts[datastore]

    async def register_vm(
        self,
        host: str,
        vmx_path: str,
        name: str,
        *,
        folder: str | None = None,
        resource_pool: str | None = None,
    ) -> VmRef:
        await self.faults.hit("vsphere.register_vm")
        if folder is not None and folder not in self.folders:
            raise self._fault("register_vm", f"folder {folder!r} not found", "NotFound")
        if resource_pool is not None and resource_pool not in self.resource_pools:
            raise self._fault(
                "register_vm", f"resource pool {resource_pool!r} not found", "NotFound"
            )
        mounts = self._host(host, "register_vm")
        ds = _datastore_of(vmx_path)
        if ds not in mounts and ds not in self.local_datastores:
            raise self._fault("register_vm", f"datastore {ds!r} not mounted", "NotFound")
        if vsphere_name_length(name) > MAX_VM_NAME:  # as vCenter: "The name is too long"
            raise self._fault(
                "register_vm", f"the name is too long: {name!r} (at most 80)", "InvalidName"
            )
        if any(v.ref.name == name for v in self.vms.values()):
            raise self._fault("register_vm", f"a VM named {name!r} exists", "DuplicateName")
        ref = VmRef(moref=f"vm-{self._next}", name=name, vmx_path=vmx_path)
        self._next += 1
        self.vms[ref.moref] = VmState(ref, host, ds, folder=folder, resource_pool=resource_pool)
        return ref

    def _vm(self, vm: VmRef, op: str) -> VmState:
        state = self.vms.get(vm.moref)
        if state is None:
            raise self._fault(op, f"VM {vm.moref} not found", "ManagedObjectNotFound")
        return state

    async def unregister_vm(self, vm: VmRef) -> None:
        await self.faults.hit("vsphere.unregister_vm")
        state = self._vm(vm, "unregister_vm")
        if state.powered_on:
            raise self._fault("unregister_vm", f"VM {vm.name} is powered on", "InvalidPowerState")
        del self.vms[vm.moref]

    async def power_on(self, vm: VmRef) -> None:
        await self.faults.hit("vsphere.power_on")
        state = self._vm(vm, "power_on")
        if state.powered_on:
            raise self._fault("power_on", f"VM {vm.name} is already on", "InvalidPowerState")
        state.powered_on = True
        state.booted_at = time.monotonic()

    async def power_off(self, vm: VmRef) -> None:
        await self.faults.hit("vsphere.power_off")
        state = self._vm(vm, "power_off")
        if not state.powered_on:
            raise self._fault("power_off", f"VM {vm.name} is already off", "InvalidPowerState")
        state.powered_on = False
        state.booted_at = None

    async def relocate(
        self, vm: VmRef, datastore: str, progress: ProgressCallback | None = None
    ) -> VmRef:
        await self.faults.hit("vsphere.relocate")
        state = self._vm(vm, "relocate")
        if datastore not in self.local_datastores and datastore not in self.datastores[state.host]:
            raise self._fault("relocate", f"datastore {datastore!r} not found", "NotFound")
        total = 100
        for done in range(0, total + 1, 25):
            if progress is not None:
                progress(done, total)
            await anyio.lowlevel.checkpoint()
        folder = vm.vmx_path.split("] ", 1)[-1]
        ref = VmRef(vm.moref, vm.name, f"[{datastore}] {folder}")
        state.ref, state.datastore, state.migrated = ref, datastore, True
        return ref

    async def power_state(self, vm: VmRef) -> str:
        await self.faults.hit("vsphere.power_state")
        return "poweredOn" if self._vm(vm, "power_state").powered_on else "poweredOff"

    async def nfs_datastores(self, host: str) -> Sequence[str]:
        await self.faults.hit("vsphere.nfs_datastores")
        return sorted(self._host(host, "nfs_datastores"))

    async def find_vm(self, vmx_path: str) -> VmRef | None:
        await self.faults.hit("vsphere.find_vm")
        return next((v.ref for v in self.vms.values() if v.ref.vmx_path == vmx_path), None)

    async def guest_info(self, vm: VmRef) -> GuestInfo:
        await self.faults.hit("vsphere.guest_info")
        state = self._vm(vm, "guest_info")
        return self.guest.info(vm.name, state.booted_at)

    async def run_in_guest(
        self,
        vm: VmRef,
        credentials: GuestCredentials,
        program: str,
        arguments: str,
        wait_s: float,
    ) -> int:
        await self.faults.hit("vsphere.run_in_guest")
        state = self._vm(vm, "run_in_guest")
        code = self.guest.command(vm.name, state.booted_at, credentials, program)
        await anyio.sleep(self.guest.command_delay_s)
        return code

    async def screenshot(self, vm: VmRef) -> bytes | None:
        await self.faults.hit("vsphere.screenshot")
        state = self._vm(vm, "screenshot")
        if not self.guest.screenshots or state.booted_at is None:
            return None
        return tiny_png()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def memory_backends(
    faults: FaultPlan | None = None,
    *,
    cache_capacity: int = 1024 * GiB,
    hosts: Sequence[str] = ("esx01",),
) -> tuple[Backends, FaultPlan]:
    """Four in-memory backends sharing one ``FaultPlan`` (an empty catalog: add VMs to it)."""
    faults = faults or FaultPlan()
    vsphere = MemoryVSphere(faults, hosts=hosts)
    backends = Backends(
        exporter=MemoryExporter(faults),
        catalog=MemoryCatalog(faults),
        cache=MemoryBlockCache(faults, capacity=cache_capacity),
        vsphere=vsphere,
        inventory=vsphere,
    )
    return backends, faults
