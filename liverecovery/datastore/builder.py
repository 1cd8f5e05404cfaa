"""The File Recovery Enabler's staging: build a job's VM folder as a virtual datastore.

The job's overlay directory (``<job_results_dir>/jobs/<job id>/``) holds the rewritten .vmx, one
flat descriptor per disk, the .nvram, every file the ESX host creates, and each disk's write
overlay. The ``-flat.vmdk`` files are virtual: backup ▶ cache ▶ overlay through ``FlatDisk``.
Whatever the backup's disk format, the ESX host sees flat disks (it cannot power on hosted
sparse disks).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

import anyio
import attrs

from liverecovery.backends import BlockCache, DiskInfo, StagedVm, StagingContext
from liverecovery.datastore.flatdisk import DiskOverlay, FlatDisk, ForegroundGate, OverlayOpener
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.datastore.vmx_rewrite import VmxOptions, flat_descriptor, rewrite_vmx
from liverecovery.io.private_dirs import make_private_dirs, write_private_file
from liverecovery.io.threads import run_sync
from liverecovery.nfs.filesystem import Filesystem
from liverecovery.nfs.localfs import LocalFilesystem

__all__ = ["FolderFactory", "FreBuilder", "OverlayFactory", "flat_names"]

OverlayFactory = Callable[[Path, int], Awaitable[DiskOverlay]]
"""Opens (or reopens after a restart) the overlay of one disk: (directory, disk size) -> overlay."""

FolderFactory = Callable[[Path, str], Awaitable[Filesystem]]
"""Opens the VM folder of one job as served (the ESX host's own files): (folder, job id) -> fs.
None: a ``LocalFilesystem`` of the folder (file ids are its inode numbers)."""


async def durable_overlay(directory: Path, size: int) -> DiskOverlay:
    """The on-disk write overlay: stable writes survive a crash of the process."""
    return await WriteOverlay.open(directory, size=size)


def flat_names(disk: DiskInfo) -> tuple[str, str]:
    """The presented descriptor and flat file names of a disk (``x.vmdk``, ``x-flat.vmdk``)."""
    name = PurePosixPath(disk.file_name).name
    stem = name[:-5] if name.lower().endswith(".vmdk") else name
    return f"{stem}.vmdk", f"{stem}-flat.vmdk"


@attrs.define
class FreBuilder:
    """Builds the virtual datastore of one job; every part it opens is closed by ``aclose``."""

    cache: BlockCache
    overlay_factory: OverlayFactory | None = durable_overlay
    options: VmxOptions = attrs.field(factory=VmxOptions)
    read_only: bool = False
    """A browse presentation: no overlays, every change refused (NFS3ERR_ROFS)."""
    folder_factory: FolderFactory | None = None
    """Several serving nodes: the folder written through to the shared state
    (``datastore.folder_store.store_backed_folders``); not used for a read-only presentation."""

    def job_dir(self, ctx: StagingContext) -> Path:
        return Path(ctx.settings.job_results_dir) / "jobs" / ctx.job_id

    async def build(self, ctx: StagingContext) -> StagedVm:
        point, catalog = ctx.point, ctx.catalog
        root = self.job_dir(ctx)
        folder = root / "folder"
        overlays = root / "overlays"
        await run_sync(_make_private_dirs, folder, overlays)
        vmx_text = await catalog.read_file(point, point.vmx_name)
        names = {d.key: flat_names(d) for d in point.disks}
        options = attrs.evolve(
            self.options,
            name_suffix=ctx.spec.name_suffix,
            redirect_to=ctx.spec.redirect_writes_to,
            folder=ctx.folder,
            regenerate_bios_uuid=self.options.regenerate_bios_uuid or ctx.spec.new_bios_uuid,
            disconnect_nics=self.options.disconnect_nics or ctx.spec.disconnect_nics,
            network_map={**self.options.network_map, **ctx.spec.network_map},
            drop_vc_uuid=self.options.drop_vc_uuid or ctx.spec.verification,
        )
        vmx = rewrite_vmx(vmx_text, {k: v[0] for k, v in names.items()}, options)
        files: dict[str, bytes] = {point.vmx_name: vmx}
        for disk in point.disks:
            descriptor, flat = names[disk.key]
            files[descriptor] = flat_descriptor(disk, flat, seed=f"{ctx.job_id}/{disk.key}")
        if point.nvram_name:
            files[point.nvram_name] = await catalog.read_file(point, point.nvram_name)
        for name, data in files.items():
            if not (folder / name).exists():  # a restart keeps what the ESX host changed
                await run_sync(write_private_file, folder / name, data)
        gate = ForegroundGate()
        disks: dict[str, FlatDisk] = {}
        try:
            for disk in point.disks:
                reader = await catalog.open_disk(point, disk)
                disks[names[disk.key][1]] = await FlatDisk.open(
                    source=f"{point.vm_name}/{point.point_id}/{disk.file_name}",
                    reader=reader,
                    cache=self.cache,
                    overlay=None
                    if self.read_only
                    else self._opener(overlays / disk.key.replace(":", "_"), reader.size),
                    gate=gate,
                )
            inner: Filesystem
            if self.folder_factory is None or self.read_only:
                inner = LocalFilesystem(folder, read_only=self.read_only)
            else:
                inner = await self.folder_factory(folder, ctx.job_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for fd in disks.values():
                    await fd.aclose()
            raise
        return StagedVm(VirtualDatastore(inner, disks), point.vmx_name, disks)

    def _opener(self, directory: Path, size: int) -> OverlayOpener | None:
        factory = self.overlay_factory
        if factory is None:
            return None

        async def open_overlay() -> DiskOverlay:
            return await factory(directory, size)

        return open_overlay

    async def discard(self, ctx: StagingContext) -> None:
        """Remove the job's overlay directory (after the job, unless ``keep_overlay``)."""
        await run_sync(shutil.rmtree, self.job_dir(ctx), True)


def _make_private_dirs(*dirs: Path) -> None:
    for d in dirs:
        make_private_dirs(d)
        os.chmod(d, 0o700)
