"""The staging step: build the job's VM folder as a ``Filesystem`` the export publishes.

The seed's step 4: retrieve the .vmx and catalog, rewrite the .vmx so writes land on the NFS
datastore or an alternate one. The builder is pluggable; ``CopyingBuilder`` copies the small files
into memory (the in-memory path), the File Recovery Enabler's builder serves the disks too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

from liverecovery.backends import CatalogReader, RestorePoint
from liverecovery.config import Settings
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.datastore.vmx_rewrite import VmxOptions, rewrite_vmx
from liverecovery.job.spec import RecoverySpec
from liverecovery.nfs.filesystem import Filesystem

__all__ = ["CopyingBuilder", "DatastoreBuilder", "StagedVm", "StagingContext"]


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
    disks: Mapping[str, FlatDisk] = attrs.field(factory=dict)


@runtime_checkable
class DatastoreBuilder(Protocol):
    """**Protocol:** builds the VM folder one job publishes."""

    async def build(self, ctx: StagingContext) -> StagedVm: ...

    async def discard(self, ctx: StagingContext) -> None:
        """Remove what ``build`` left on disk (the overlay), after the folder is unpublished."""
        ...


class CopyingBuilder:
    """Copies the .vmx (display name suffixed, writes redirected if asked) and .nvram to memory."""

    async def build(self, ctx: StagingContext) -> StagedVm:
        point = ctx.point
        options = VmxOptions(
            name_suffix=ctx.spec.name_suffix,
            redirect_to=ctx.spec.redirect_writes_to,
            folder=ctx.folder,
            regenerate_bios_uuid=ctx.spec.new_bios_uuid,
            disconnect_nics=ctx.spec.disconnect_nics,
        )
        vmx = rewrite_vmx(await ctx.catalog.read_file(point, point.vmx_name), {}, options)
        fs = MemoryFilesystem()
        fs.add_file(point.vmx_name, vmx)
        if point.nvram_name:
            fs.add_file(point.nvram_name, await ctx.catalog.read_file(point, point.nvram_name))
        return StagedVm(fs, point.vmx_name)

    async def discard(self, ctx: StagingContext) -> None:
        """Nothing is kept outside memory."""
