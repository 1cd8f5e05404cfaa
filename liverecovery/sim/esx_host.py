"""A simulated ESX host: the embedded default ``VSphereClient``.

It does to the NFS server what ESXi does: mounts the export over TCP (portmap GETPORT, MNT,
FSINFO, FSSTAT, GETATTR), heartbeats with GETATTR and marks the datastore inaccessible after
missed heartbeats, registers a VM by reading its .vmx and descriptors over NFS and checking
them as ESXi does (flat extents only, ``-flat.vmdk`` at least as large as declared), creates and
refreshes ``.lck-<fileid>`` files, appends to ``vmware.log``, creates the swap file, reads a boot
working set at power-on, runs a guest that keeps writing, and performs the storage vMotion by
copying every disk through NFS into a local datastore directory while mirroring the guest's
writes, then switches over and deletes the source files. It remembers every guest write so a
test or the demo can verify the destination disks byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from liverecovery.backends import (
    DEFAULT_NFS_MAX_VOLUMES,
    DatastoreFacts,
    GuestCredentials,
    GuestInfo,
    GuestOperations,
    HostFacts,
    ProgressCallback,
    TargetFacts,
    TargetQuery,
    VmRef,
)
from liverecovery.catalog.vm_config import is_disk_device
from liverecovery.catalog.vmdk.descriptor import ExtentType, parse_descriptor
from liverecovery.catalog.vmx import VmxFile
from liverecovery.config import MiB
from liverecovery.errors import (
    CatalogError,
    LiveRecoveryError,
    NfsClientError,
    NfsError,
    NfsStatus,
    VSphereError,
)
from liverecovery.io.threads import run_sync
from liverecovery.nfs.filesystem import SetAttributes, Stability
from liverecovery.nfs.server import NfsServer
from liverecovery.sim.guest import GuestBehaviour, tiny_png
from liverecovery.sim.hard_mount import HardMount
from liverecovery.spec import MAX_VM_NAME, vsphere_name_length

__all__ = ["GuestWrite", "SimulatedEsxHost", "SimulatedVm"]

_CHUNK = 1 * MiB
"""The storage vMotion copy unit, and the size of the regions it locks against guest writes."""
_ZERO_CHUNK = bytes(_CHUNK)
_DISK_KEY = re.compile(r"^((?:scsi|ide|sata|nvme)\d+:\d+)\.filename$", re.IGNORECASE)


def _vmx_values(data: bytes) -> dict[str, str]:
    """Every key of a .vmx, lower-cased, with its unescaped value."""
    return {key.lower(): value for key, value in VmxFile.parse(data).items()}


def _guest_data(seq: int, length: int) -> bytes:
    seed = hashlib.blake2b(seq.to_bytes(8, "big"), digest_size=32).digest()
    return (seed * (length // 32 + 1))[:length]


@attrs.frozen
class GuestWrite:
    """One write the guest made, in order: disk index, offset, bytes."""

    disk: int
    offset: int
    data: bytes


class _RegionLocks:
    """Per-chunk locks between the storage vMotion copier and guest writes.

    A chunk being copied must not take a guest write between the copier's read of the source
    and its write of the destination (the mirrored write would be overwritten by older bytes),
    and several chunks are copied at once. Locks exist only while held or awaited, so a large
    disk costs memory for the chunks in flight, not for all of them.
    """

    def __init__(self) -> None:
        self._locks: dict[int, anyio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, start: int, end: int) -> AsyncIterator[None]:
        """Hold every chunk that ``[start, end)`` touches, taken in ascending order."""
        chunks = range(start // _CHUNK, max(start + 1, end + _CHUNK - 1) // _CHUNK)
        async with contextlib.AsyncExitStack() as stack:
            for index in chunks:
                lock = self._locks.setdefault(index, anyio.Lock())
                try:
                    await lock.acquire()
                except BaseException:
                    self._discard_if_idle(index, lock)
                    raise
                stack.callback(self._release, index, lock)
            yield

    def _release(self, index: int, lock: anyio.Lock) -> None:
        lock.release()
        self._discard_if_idle(index, lock)

    def _discard_if_idle(self, index: int, lock: anyio.Lock) -> None:
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._locks.pop(index, None)

    def __len__(self) -> int:
        """Chunks held or awaited now."""
        return len(self._locks)


@attrs.define(eq=False)
class _Disk:
    key: str
    descriptor: str
    flat_name: str
    size: int
    fh: bytes = b""
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    """Held by each guest write, and by the switch-over to the local copy."""
    regions: _RegionLocks = attrs.field(factory=_RegionLocks)
    mirror: Path | None = None
    local: Path | None = None


@attrs.define(eq=False)
class _Mount:
    datastore: str
    remote_host: str
    remote_path: str
    client: HardMount
    root: bytes
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    accessible: bool = True
    back: anyio.Event = attrs.field(factory=anyio.Event)
    """Set when an inaccessible datastore answers heartbeats again."""
    missed: int = 0
    heartbeats: int = 0


@attrs.define(eq=False)
class SimulatedVm:
    """A registered VM as the simulated host sees it."""

    ref: VmRef
    datastore: str
    folder: str
    vmx_name: str
    vmx: dict[str, str]
    disks: list[_Disk]
    powered_on: bool = False
    migrated: bool = False
    boot_bytes_read: int = 0
    writes: list[GuestWrite] = attrs.field(factory=list)
    locks: dict[str, bytes] = attrs.field(factory=dict)
    workload: anyio.CancelScope | None = None
    log_fh: bytes = b""
    log_offset: int = 0
    io_error: str = ""
    """Why the guest stopped writing (its datastore stayed unreachable past the APD timeout)."""
    busy: anyio.Lock = attrs.field(factory=anyio.Lock)
    """Held by a power operation, an unregistration or a storage vMotion: one task per VM."""
    lock_files: anyio.Lock = attrs.field(factory=anyio.Lock)
    """Held while the ``.lck-*`` files are refreshed or deleted: a heartbeat's refresh must not
    recreate a lock file the storage vMotion's switch-over has just removed."""
    source_released: bool = False
    """The storage vMotion switched over and deleted the source files: no more lock refreshes."""
    booted_at: float | None = None
    """When the guest finished its boot reads (monotonic), while powered on."""


class SimulatedEsxHost(GuestOperations):
    """An ESX host living in this process; use ``async with`` to run its background tasks.

    Its guests report a VMware Tools heartbeat and an IP address after their boot reads, as
    ``guest`` (``sim.guest.GuestBehaviour``) says: later, never, or with commands that fail.
    """

    def __init__(
        self,
        datastore_root: str | os.PathLike[str],
        *,
        name: str = "esx-sim",
        local_datastores: Sequence[str] = ("datastore1",),
        portmap_port: int = 111,
        max_nfs_volumes: int = DEFAULT_NFS_MAX_VOLUMES,
        networks: Sequence[str] = ("VM Network",),
        local_datastore_bytes: int | None = 64 * 1024**4,
        heartbeat_s: float = 2.0,
        heartbeat_misses: int = 3,
        boot_read_bytes: int = 4 * MiB,
        boot_scatter_reads: int = 32,
        write_interval_s: float = 0.02,
        write_size: int = 4096,
        apd_timeout_s: float = 140.0,
        copy_depth: int = 32,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.root = Path(datastore_root)
        self.local_datastores = tuple(local_datastores)
        for ds in self.local_datastores:
            (self.root / ds).mkdir(parents=True, exist_ok=True)
        self.portmap_port = portmap_port
        self.max_nfs_volumes = max_nfs_volumes
        self.local_datastore_bytes = local_datastore_bytes
        """The capacity the local datastores report (64 TiB, VMFS's largest, by default: their
        files are sparse, so free space is that less the bytes allocated under them); None:
        measure the filesystem under ``datastore_root`` (statvfs)."""
        self.networks: set[str] = set(networks)
        """The port groups the host has (a test may change them)."""
        self.maintenance = False
        """In maintenance mode the host powers on no VM (a test may set it)."""
        self.connection_state = "connected"
        self.folders: set[str] = set()
        self.resource_pools: set[str] = set()
        self.datastore_facts: dict[str, DatastoreFacts] = {}
        """Facts ``describe`` reports for a datastore instead of the measured ones."""
        self.heartbeat_s = heartbeat_s
        self.heartbeat_misses = heartbeat_misses
        self.boot_read_bytes = boot_read_bytes
        self.boot_scatter_reads = boot_scatter_reads
        self.write_interval_s = write_interval_s
        self.write_size = write_size
        self.apd_timeout_s = apd_timeout_s
        """How long NFS I/O is retried while the server is unreachable (ESXi's APD timeout)."""
        if copy_depth < 1:
            raise ValueError(f"copy_depth must be at least 1, not {copy_depth}")
        self.copy_depth = copy_depth
        """READs a storage vMotion keeps in flight on the datastore's one connection.

        ESXi's VMkernel data mover (FS3DM) moves a disk in 32 MB transfers, each issued as 32
        asynchronous 64 KB I/Os at a time, keeping its queue full (VMware vSphere blog, "VAAI
        failures and the role of the VMkernel Data Mover", 2012); since vSphere 5.0 an NFS
        datastore uses one TCP connection per mount (C. Hogan, "NFS TCP connections on vSphere
        revisited", 2018), so those 32 READs share it. The default, 32 READs of 1 MiB
        (``_CHUNK``), keeps as many READs in flight as ESXi and more bytes (32 MiB against
        2 MiB); ESXi's smaller I/O size only adds per-call cost. Every byte is still read:
        NFSv3 cannot tell where the holes are."""
        self._random = random.Random(seed)
        self.guest = GuestBehaviour()
        """How the guests behave (heartbeat delay, failures, guest commands)."""
        self.mounts: dict[str, _Mount] = {}
        self.vms: dict[str, SimulatedVm] = {}
        self._next_vm = 1
        self._registering: dict[str, anyio.Event] = {}
        self._seq = 0
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> SimulatedEsxHost:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    def mounting_from(self, server: NfsServer) -> SimulatedEsxHost:
        """This host, set to find ``server``'s portmapper: a ``VSphereFactory`` for
        ``LiveRecovery.from_settings(settings, vsphere=esx.mounting_from)`` when the server
        listens on an OS-chosen port (a real ESX host asks port 111)."""
        self.portmap_port = server.portmap_port
        return self

    async def aclose(self) -> None:
        """Stop every workload and heartbeat and close the NFS connections."""
        for vm in self.vms.values():
            if vm.workload is not None:
                vm.workload.cancel()
        for mount in list(self.mounts.values()):
            mount.scope.cancel()
            with anyio.CancelScope(shield=True):
                await mount.client.aclose()
        self.mounts.clear()

    # -- helpers ---------------------------------------------------------------------------------

    def _fault(self, op: str, message: str, fault: str) -> VSphereError:
        return VSphereError(message, operation=f"vsphere.{op}", fault=fault)

    def _check_host(self, host: str, op: str) -> None:
        if host != self.name:
            raise self._fault(op, f"host {host!r} not found (this is {self.name!r})", "NotFound")

    async def _mount(self, datastore: str, op: str) -> _Mount:
        """The mount of ``datastore``; while it is inaccessible (missed heartbeats), wait up to
        the APD timeout for it to come back, as ESXi holds operations during all-paths-down."""
        mount = self.mounts.get(datastore)
        if mount is None:
            raise self._fault(op, f"datastore {datastore!r} is not mounted", "NotFound")
        if not mount.accessible:
            with anyio.move_on_after(self.apd_timeout_s):
                await mount.back.wait()
        if not mount.accessible:
            raise self._fault(
                op, f"datastore {datastore!r} is inaccessible", "InaccessibleDatastore"
            )
        return mount

    def _vm(self, vm: VmRef, op: str) -> SimulatedVm:
        state = self.vms.get(vm.moref)
        if state is None:
            raise self._fault(op, f"VM {vm.moref} not found", "ManagedObjectNotFound")
        return state

    @contextlib.asynccontextmanager
    async def _vm_task(self, vm: VmRef, op: str) -> AsyncIterator[SimulatedVm]:
        """The VM, locked for one task at a time (as vCenter serializes tasks on a VM)."""
        state = self._vm(vm, op)
        async with state.busy:
            yield self._vm(vm, op)  # it may have been unregistered while we waited

    def _spawn(self, func: object, *args: object) -> None:
        if self._tg is None:
            raise LiveRecoveryError("use 'async with SimulatedEsxHost(...)' to run it")
        self._tg.start_soon(func, *args)  # type: ignore[arg-type]

    @staticmethod
    async def _read_all(client: HardMount, fh: bytes, limit: int = 16 * MiB) -> bytes:
        out = bytearray()
        while True:
            data, eof = await client.read(fh, len(out), 64 * 1024)
            out += data
            if eof or not data:
                return bytes(out)
            if len(out) > limit:
                raise NfsError(NfsStatus.FBIG, f"file over {limit} bytes")

    async def _read_exact(self, client: HardMount, fh: bytes, offset: int, length: int) -> bytes:
        """A READ loop that insists on the full count, as ESXi does for disk I/O."""
        out = bytearray()
        while len(out) < length:
            data, eof = await client.read(fh, offset + len(out), length - len(out))
            out += data
            if eof and len(out) < length:
                raise self._fault("read", f"short read at {offset}: {len(out)}/{length}", "IOError")
        return bytes(out)

    # -- datastores ------------------------------------------------------------------------------

    async def mount_nfs_datastore(
        self, host: str, remote_host: str, remote_path: str, datastore: str
    ) -> str:
        self._check_host(host, "mount_nfs_datastore")
        if datastore in self.mounts or datastore in self.local_datastores:
            raise self._fault(
                "mount_nfs_datastore", f"datastore {datastore!r} exists", "DuplicateName"
            )
        if len(self.mounts) >= self.max_nfs_volumes:
            raise self._fault(
                "mount_nfs_datastore",
                f"host has {len(self.mounts)} NFS datastores (NFS.MaxVolumes "
                f"{self.max_nfs_volumes})",
                "PlatformConfigFault",
            )
        try:
            client = await HardMount.mount(
                remote_host,
                remote_path,
                portmap_port=self.portmap_port,
                apd_timeout_s=self.apd_timeout_s,
            )
        except NfsError as exc:
            raise self._fault(
                "mount_nfs_datastore",
                f"NFS mount {remote_host}:{remote_path} failed: {exc}",
                "PlatformConfigFault",
            ) from exc
        except LiveRecoveryError as exc:
            raise self._fault(
                "mount_nfs_datastore", f"cannot reach {remote_host}: {exc}", "HostConfigFault"
            ) from exc
        root = client.root
        try:
            await client.fsinfo(root)
            await client.fsstat(root)
            await client.getattr(root)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            if isinstance(exc, NfsError):
                raise self._fault(
                    "mount_nfs_datastore",
                    f"NFS mount {remote_host}:{remote_path} failed: {exc}",
                    "PlatformConfigFault",
                ) from exc
            raise
        mount = _Mount(datastore, remote_host, remote_path, client, root)
        self.mounts[datastore] = mount
        self._spawn(self._heartbeat, mount)
        return datastore

    async def _heartbeat(self, mount: _Mount) -> None:
        with mount.scope:
            while True:
                await anyio.sleep(self.heartbeat_s)
                try:
                    with anyio.fail_after(self.heartbeat_s):
                        await mount.client.getattr(mount.root)
                    mount.missed = 0
                    mount.heartbeats += 1
                    if not mount.accessible:
                        mount.accessible = True
                        mount.back.set()
                except (LiveRecoveryError, TimeoutError, OSError):
                    mount.missed += 1
                    if mount.missed >= self.heartbeat_misses and mount.accessible:
                        mount.accessible = False
                        mount.back = anyio.Event()
                    continue
                for vm in list(self.vms.values()):
                    if vm.powered_on and not vm.migrated and vm.datastore == mount.datastore:
                        # Bounded: the hard mount retries a call to a server that went away
                        # forever, and a heartbeat stuck in a lock refresh would never see it.
                        with anyio.move_on_after(max(self.heartbeat_s, 1.0)):
                            try:
                                await self._refresh_locks(vm, mount)
                            except NfsError:
                                # A storage vMotion may be deleting the source files right now.
                                continue

    async def unmount_datastore(self, host: str, datastore: str) -> None:
        self._check_host(host, "unmount_datastore")
        mount = self.mounts.get(datastore)
        if mount is None:
            raise self._fault("unmount_datastore", f"datastore {datastore!r} not found", "NotFound")
        await self._registrations_done(f"[{datastore}] ")
        users = [v.ref.name for v in self.vms.values() if v.datastore == datastore]
        if users:
            raise self._fault(
                "unmount_datastore",
                f"datastore {datastore!r} is in use by {users}",
                "ResourceInUse",
            )
        mount.scope.cancel()
        del self.mounts[datastore]
        try:
            # The UMNT is a courtesy to the server (it may be gone): the unmount is local.
            with anyio.move_on_after(5), contextlib.suppress(LiveRecoveryError):
                await mount.client.client.umount(mount.remote_path)
        finally:
            await mount.client.aclose()

    async def _registrations_done(self, prefix: str) -> None:
        """Wait for registrations in flight whose .vmx path starts with ``prefix``."""
        while pending := [e for p, e in self._registering.items() if p.startswith(prefix)]:
            await pending[0].wait()

    # -- preflight facts ---------------------------------------------------------------------------

    async def describe(self, query: TargetQuery) -> TargetFacts:
        """What the host knows of a job's targets: itself, its datastores (local ones measured
        with statvfs, NFS ones with FSSTAT), its port groups and its VMs. A standalone host has
        no users to ask about privileges: ``granted`` is None."""
        await anyio.lowlevel.checkpoint()
        if query.host != self.name:
            return TargetFacts(host=HostFacts(query.host, found=False))
        host = HostFacts(
            self.name,
            connection_state=self.connection_state,
            maintenance=self.maintenance,
            nfs_datastores=tuple(sorted(self.mounts)),
            nfs_max_volumes=self.max_nfs_volumes,
            networks=tuple(sorted(self.networks)),
        )
        datastores = {ds: await self._datastore_facts(ds) for ds in query.datastores}
        return TargetFacts(
            host=host,
            datastores=datastores,
            vm_name_taken=any(v.ref.name == query.vm_name for v in self.vms.values()),
            folder_found=None if query.folder is None else query.folder in self.folders,
            resource_pool_found=(
                None if query.resource_pool is None else query.resource_pool in self.resource_pools
            ),
        )

    async def _datastore_facts(self, name: str) -> DatastoreFacts:
        if name in self.datastore_facts:
            return self.datastore_facts[name]
        if name in self.local_datastores:
            if self.local_datastore_bytes is None:
                st = await run_sync(os.statvfs, self.root / name)
                free, capacity = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
            else:
                capacity = self.local_datastore_bytes
                free = max(0, capacity - await run_sync(_allocated_under, self.root / name))
            return DatastoreFacts(name, free_bytes=free, capacity_bytes=capacity, type="VMFS")
        mount = self.mounts.get(name)
        if mount is None:
            return DatastoreFacts(name, exists=False, mounted=False)
        if not mount.accessible:
            return DatastoreFacts(name, accessible=False, type="NFS")
        with anyio.move_on_after(self.heartbeat_s):
            stat = await mount.client.fsstat(mount.root)
            return DatastoreFacts(
                name, free_bytes=stat.abytes, capacity_bytes=stat.tbytes, type="NFS"
            )
        return DatastoreFacts(name, accessible=False, type="NFS")

    # -- registration ----------------------------------------------------------------------------

    async def register_vm(
        self,
        host: str,
        vmx_path: str,
        name: str,
        *,
        folder: str | None = None,
        resource_pool: str | None = None,
    ) -> VmRef:
        self._check_host(host, "register_vm")
        for kind, wanted, known in (
            ("folder", folder, self.folders),
            ("resource pool", resource_pool, self.resource_pools),
        ):
            if wanted is not None and wanted not in known:
                raise self._fault("register_vm", f"{kind} {wanted!r} not found", "NotFound")
        m = re.match(r"^\[([^\]]+)\] (.+)/([^/]+\.vmx)$", vmx_path)
        if not m:
            raise self._fault(
                "register_vm", f"not a datastore path: {vmx_path!r}", "InvalidArgument"
            )
        datastore, folder, vmx_name = m.groups()
        if vsphere_name_length(name) > MAX_VM_NAME:  # as vCenter: "The name is too long"
            raise self._fault(
                "register_vm", f"the name is too long: {name!r} (at most 80)", "InvalidName"
            )
        if any(v.ref.name == name for v in self.vms.values()):
            raise self._fault("register_vm", f"a VM named {name!r} exists", "DuplicateName")
        await self._registrations_done(vmx_path)
        done = self._registering[vmx_path] = anyio.Event()
        try:
            return await self._register(datastore, folder, vmx_name, vmx_path, name)
        finally:
            del self._registering[vmx_path]
            done.set()

    async def _register(
        self, datastore: str, folder: str, vmx_name: str, vmx_path: str, name: str
    ) -> VmRef:
        mount = await self._mount(datastore, "register_vm")
        client = mount.client
        try:
            folder_fh = await client.lookup_path(mount.root, folder)
            vmx_fh, _ = await client.lookup(folder_fh, vmx_name)
            vmx = _vmx_values(await self._read_all(client, vmx_fh))
            disks = await self._check_disks(client, folder_fh, vmx, vmx_path)
        except (NfsError, NfsClientError) as exc:
            raise self._fault("register_vm", f"{vmx_path}: {exc}", "NotFound") from exc
        ref = VmRef(moref=f"vm-{self._next_vm}", name=name, vmx_path=vmx_path)
        self._next_vm += 1
        self.vms[ref.moref] = SimulatedVm(ref, datastore, folder, vmx_name, vmx, disks)
        return ref

    async def _check_disks(
        self, client: HardMount, folder_fh: bytes, vmx: dict[str, str], vmx_path: str
    ) -> list[_Disk]:
        disks: list[_Disk] = []
        for key, value in vmx.items():
            match = _DISK_KEY.match(key)
            if not match:
                continue
            device = match.group(1)
            present, kind = vmx.get(f"{device}.present"), vmx.get(f"{device}.devicetype")
            if not is_disk_device(present, kind, value):
                continue  # CD-ROMs, passthrough devices: not disks on the datastore
            desc_fh, _ = await client.lookup(folder_fh, value)
            text = (await self._read_all(client, desc_fh, 1 * MiB)).decode("utf-8", "replace")
            try:
                found = parse_descriptor(text, path=value).extents
            except CatalogError as exc:
                raise self._fault("register_vm", str(exc), "InvalidDiskFormat") from exc
            flat_kinds = (ExtentType.VMFS, ExtentType.FLAT)
            if not found or any(e.type not in flat_kinds or not e.file_name for e in found):
                kinds = sorted({e.type.value for e in found}) or ["none"]
                raise self._fault(
                    "register_vm",
                    f"{vmx_path}: disk {value} has {'/'.join(kinds)} extents; ESXi needs flat "
                    "(VMFS) extents",
                    "InvalidDiskFormat",
                )
            if len(found) != 1:
                raise self._fault(
                    "register_vm", f"{value}: {len(found)} extents, expected 1", "InvalidDiskFormat"
                )
            sectors, flat_name = found[0].sectors, str(found[0].file_name)
            flat_fh, attrs_ = await client.lookup(folder_fh, flat_name)
            size = (attrs_ or await client.getattr(flat_fh)).size
            if size < sectors * 512:
                raise self._fault(
                    "register_vm",
                    f"{flat_name} is {size} bytes; its descriptor declares {sectors * 512}",
                    "FileTooSmall",
                )
            disks.append(_Disk(match.group(1), value, flat_name, sectors * 512, flat_fh))
        return sorted(disks, key=lambda d: d.key)

    async def unregister_vm(self, vm: VmRef) -> None:
        async with self._vm_task(vm, "unregister_vm") as state:
            if state.powered_on:
                raise self._fault(
                    "unregister_vm", f"VM {vm.name} is powered on", "InvalidPowerState"
                )
            del self.vms[vm.moref]

    # -- power -----------------------------------------------------------------------------------

    async def _log(self, vm: SimulatedVm, message: str) -> None:
        if vm.migrated or not vm.log_fh:
            return
        mount = self.mounts[vm.datastore]
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}| vmx| {message}\n".encode()
        await mount.client.write(vm.log_fh, vm.log_offset, line, Stability.FILE_SYNC)
        vm.log_offset += len(line)

    async def _refresh_locks(self, vm: SimulatedVm, mount: _Mount) -> None:
        async with vm.lock_files:
            if not vm.source_released:
                await self._rewrite_locks(vm, mount)

    async def _rewrite_locks(self, vm: SimulatedVm, mount: _Mount) -> None:
        folder_fh = await mount.client.lookup_path(mount.root, vm.folder)
        targets = [vm.vmx_name] + [d.flat_name for d in vm.disks]
        for target in targets:
            fh, attrs_ = await mount.client.lookup(folder_fh, target)
            fileid = (attrs_ or await mount.client.getattr(fh)).fileid
            lck = f".lck-{fileid & 0xFFFFFFFFFFFFFFFF:016x}"
            if lck not in vm.locks:
                vm.locks[lck], _ = await mount.client.create(
                    folder_fh, lck, SetAttributes(mode=0o600)
                )
            body = f"host={self.name} vm={vm.ref.moref} t={time.time():.3f}\n".encode()
            await mount.client.write(vm.locks[lck], 0, body.ljust(128), Stability.FILE_SYNC)

    async def power_on(self, vm: VmRef) -> None:
        async with self._vm_task(vm, "power_on") as state:
            if state.powered_on:
                raise self._fault("power_on", f"VM {vm.name} is already on", "InvalidPowerState")
            if self.maintenance:
                raise self._fault(
                    "power_on", f"host {self.name} is in maintenance mode", "InvalidState"
                )
            mount = await self._mount(state.datastore, "power_on")
            client = mount.client
            try:
                folder_fh = await client.lookup_path(mount.root, state.folder)
                await self._refresh_locks(state, mount)
                state.log_fh, _ = await client.create(
                    folder_fh, "vmware.log", SetAttributes(mode=0o644)
                )
                state.log_offset = 0
                await self._log(state, f"Powering on {vm.name} on {self.name}")
                if "sched.swap.dir" not in state.vmx and "workingdir" not in state.vmx:
                    memory = int(state.vmx.get("memsize", "0") or 0) * MiB
                    swap = f"{Path(state.vmx_name).stem}.vswp"
                    await client.create(folder_fh, swap, SetAttributes(mode=0o600, size=memory))
                for disk in state.disks:
                    state.boot_bytes_read += await self._boot_reads(client, disk)
            except (NfsError, NfsClientError) as exc:
                raise self._fault("power_on", f"{vm.name}: {exc}", "FileFault") from exc
            state.powered_on = True
            state.booted_at = time.monotonic()
            await self._log(state, f"Guest booted, {state.boot_bytes_read} bytes read")
            state.workload = anyio.CancelScope()
            self._spawn(self._guest, state, state.workload)

    async def _boot_reads(self, client: HardMount, disk: _Disk) -> int:
        chunk = 64 * 1024
        offsets = list(range(0, min(self.boot_read_bytes, disk.size), chunk))
        span = max(1, disk.size // chunk)
        offsets += [self._random.randrange(span) * chunk for _ in range(self.boot_scatter_reads)]
        total = 0
        for off in offsets:
            total += len(await self._read_exact(client, disk.fh, off, min(chunk, disk.size - off)))
        return total

    async def _guest(self, vm: SimulatedVm, scope: anyio.CancelScope) -> None:
        """The guest OS: keeps writing, alternating FILE_SYNC with UNSTABLE + COMMIT."""
        with scope:
            while vm.powered_on:
                await anyio.sleep(self.write_interval_s)
                if not vm.disks:
                    continue
                index = self._random.randrange(len(vm.disks))
                disk = vm.disks[index]
                slots = max(1, disk.size // self.write_size)
                offset = self._random.randrange(slots) * self.write_size
                self._seq += 1
                data = _guest_data(self._seq, min(self.write_size, disk.size - offset))
                try:
                    await self._guest_write(vm, disk, index, offset, data)
                except LiveRecoveryError as exc:
                    # Past the APD timeout ESXi fails the I/O: the guest stops (hung or
                    # crashed); the host and its other VMs carry on.
                    vm.io_error = str(exc)
                    return

    async def _guest_write(
        self, vm: SimulatedVm, disk: _Disk, index: int, offset: int, data: bytes
    ) -> None:
        async with disk.lock, disk.regions.hold(offset, offset + len(data)):
            if disk.local is not None:
                await run_sync(_pwrite, disk.local, offset, data)
            else:
                mount = self.mounts[vm.datastore]  # a hard mount: it retries through outages
                if self._seq % 2:
                    await mount.client.write(disk.fh, offset, data, Stability.FILE_SYNC)
                else:
                    res = await mount.client.write(disk.fh, offset, data, Stability.UNSTABLE)
                    if await mount.client.commit(disk.fh) != res.verifier:
                        # The server restarted between the WRITE and the COMMIT: the
                        # unstable write may be lost, so it is sent again (RFC 1813 3.3.7).
                        await mount.client.write(disk.fh, offset, data, Stability.FILE_SYNC)
                if disk.mirror is not None:
                    await run_sync(_pwrite, disk.mirror, offset, data)
            vm.writes.append(GuestWrite(index, offset, data))

    async def power_off(self, vm: VmRef) -> None:
        async with self._vm_task(vm, "power_off") as state:
            if not state.powered_on:
                raise self._fault("power_off", f"VM {vm.name} is already off", "InvalidPowerState")
            state.powered_on = False
            state.booted_at = None
            if state.workload is not None:
                state.workload.cancel()
            for disk in state.disks:  # let an in-flight guest write finish
                async with disk.lock:
                    pass
            if not state.migrated and state.datastore in self.mounts:
                mount = self.mounts[state.datastore]
                await self._log(state, "Powering off")
                folder_fh = await mount.client.lookup_path(mount.root, state.folder)
                for lck in list(state.locks):
                    with contextlib.suppress(NfsError):
                        await mount.client.remove(folder_fh, lck)
                    del state.locks[lck]

    # -- storage vMotion -------------------------------------------------------------------------

    async def relocate(
        self, vm: VmRef, datastore: str, progress: ProgressCallback | None = None
    ) -> VmRef:
        if datastore not in self.local_datastores:
            raise self._fault("relocate", f"datastore {datastore!r} not found", "NotFound")
        # A second request while a storage vMotion runs (a caller that lost track of it asks
        # again) waits for it, then is answered as for a VM that already lives there.
        async with self._vm_task(vm, "relocate") as state:
            if state.migrated:
                if state.datastore == datastore:
                    return state.ref  # as vSphere: relocating to where the VM lives is a no-op
                raise self._fault("relocate", f"VM {vm.name} was already relocated", "InvalidState")
            return await self._relocate(state, vm, datastore, progress)

    async def _relocate(
        self,
        state: SimulatedVm,
        vm: VmRef,
        datastore: str,
        progress: ProgressCallback | None,
    ) -> VmRef:
        mount = await self._mount(state.datastore, "relocate")
        client = mount.client
        dest = self.root / datastore / vm.name
        dest.mkdir(parents=True, exist_ok=True)
        total = sum(d.size for d in state.disks) or 1
        done = 0
        try:
            folder_fh = await client.lookup_path(mount.root, state.folder)
            for name in [state.vmx_name, *(d.descriptor for d in state.disks)]:
                fh, _ = await client.lookup(folder_fh, name)
                (dest / name).write_bytes(await self._read_all(client, fh))
            for disk in state.disks:
                target = dest / disk.flat_name
                await run_sync(_create_sparse, target, disk.size)
                disk.mirror = target
                done = await self._copy_disk(client, disk, target, done, total, progress)
            # Switch over: the guest's disks are now the local copies.
            for disk in state.disks:
                async with disk.lock:
                    disk.local, disk.mirror = disk.mirror, None
        except (NfsError, NfsClientError) as exc:
            for disk in state.disks:
                disk.mirror = None
            raise self._fault("relocate", f"{vm.name}: {exc}", "FileFault") from exc
        await self._log(state, f"Storage vMotion to {datastore} complete")
        await self._delete_source(state, mount, folder_fh)
        state.migrated = True
        state.datastore = datastore
        state.ref = VmRef(vm.moref, vm.name, f"[{datastore}] {vm.name}/{state.vmx_name}")
        return state.ref

    async def _copy_disk(
        self,
        client: HardMount,
        disk: _Disk,
        target: Path,
        done: int,
        total: int,
        progress: ProgressCallback | None,
    ) -> int:
        """Copy ``disk`` into ``target`` with ``copy_depth`` READs in flight (see
        ``copy_depth``); every byte is read, zero chunks stay holes in the copy. Returns
        ``done`` plus the disk's size, reporting progress as chunks land."""
        offsets = iter(range(0, disk.size, _CHUNK))
        failures: list[Exception] = []
        fd = await run_sync(os.open, target, os.O_WRONLY)

        async def worker(scope: anyio.CancelScope) -> None:
            nonlocal done
            try:
                for offset in offsets:  # shared: each chunk is taken by exactly one worker
                    length = min(_CHUNK, disk.size - offset)
                    async with disk.regions.hold(offset, offset + length):
                        data, _eof = await client.read(disk.fh, offset, length)
                        if len(data) < length:  # a short READ: insist on the rest, as ESXi
                            rest = length - len(data)
                            more = await self._read_exact(client, disk.fh, offset + len(data), rest)
                            data += more
                        if data != _ZERO_CHUNK[: len(data)]:  # zero chunks stay holes
                            await run_sync(os.pwrite, fd, data, offset)
                    done += length
                    if progress is not None:
                        progress(done, total)
            except (LiveRecoveryError, OSError) as exc:
                failures.append(exc)  # the first failure ends the copy, as one error
                scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.copy_depth):
                    tg.start_soon(worker, tg.cancel_scope)
        finally:
            os.close(fd)
        if failures:
            raise failures[0]
        return done

    async def _delete_source(self, vm: SimulatedVm, mount: _Mount, folder_fh: bytes) -> None:
        """ESXi deletes the source files once a storage vMotion has switched over."""
        async with vm.lock_files:
            vm.source_released = True
            names = [
                *vm.locks,
                vm.vmx_name,
                *(d.descriptor for d in vm.disks),
                *(d.flat_name for d in vm.disks),
            ]
            vm.locks.clear()
        for name in names:
            with contextlib.suppress(NfsError):
                await mount.client.remove(folder_fh, name)

    # -- inventory -------------------------------------------------------------------------------

    # -- the guest, as VMware Tools report it -------------------------------------------------

    async def guest_info(self, vm: VmRef) -> GuestInfo:
        await anyio.lowlevel.checkpoint()
        return self.guest.info(vm.name, self._vm(vm, "guest_info").booted_at)

    async def run_in_guest(
        self,
        vm: VmRef,
        credentials: GuestCredentials,
        program: str,
        arguments: str,
        wait_s: float,
    ) -> int:
        state = self._vm(vm, "run_in_guest")
        code = self.guest.command(vm.name, state.booted_at, credentials, program)
        await anyio.sleep(self.guest.command_delay_s)
        await self._log(state, f"Guest operation: {program} {arguments} exited {code}")
        return code

    async def screenshot(self, vm: VmRef) -> bytes | None:
        await anyio.lowlevel.checkpoint()
        state = self._vm(vm, "screenshot")
        if not self.guest.screenshots or state.booted_at is None:
            return None
        return tiny_png()

    async def power_state(self, vm: VmRef) -> str:
        """``poweredOn`` or ``poweredOff``. :raises VSphereError: the VM is not registered."""
        await anyio.lowlevel.checkpoint()
        return "poweredOn" if self._vm(vm, "power_state").powered_on else "poweredOff"

    async def find_vm(self, vmx_path: str) -> VmRef | None:
        """The VM registered from ``vmx_path``, if any (vSphere's FindByDatastorePath), once a
        registration of that path still in flight has finished (as a careful caller waits for
        vCenter's RegisterVM task)."""
        await anyio.lowlevel.checkpoint()
        await self._registrations_done(vmx_path)
        return next((v.ref for v in self.vms.values() if v.ref.vmx_path == vmx_path), None)

    async def nfs_datastores(self, host: str) -> list[str]:
        self._check_host(host, "nfs_datastores")
        await anyio.lowlevel.checkpoint()
        return sorted(self.mounts)

    # -- for verification ------------------------------------------------------------------------

    def disk_path(self, vm: VmRef, index: int) -> Path | None:
        """The local file holding a migrated VM's disk ``index``."""
        return self._vm(vm, "disk_path").disks[index].local

    def guest_writes(self, vm: VmRef) -> list[GuestWrite]:
        """Every write the guest made, in order."""
        return list(self._vm(vm, "guest_writes").writes)


def _allocated_under(root: Path) -> int:
    """Bytes allocated to the files under ``root`` (sparse files count their data only)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _create_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
