"""The simplest ``DatastoreBuilder``: the VM folder's small files, copied into memory.

The seed's step 4 for a backend that serves no disks itself (the in-memory path): retrieve the
.vmx and .nvram, rewrite the .vmx so writes land on the NFS datastore or an alternate one. The
File Recovery Enabler's builder (``datastore.builder``) serves the disks too.
"""

from __future__ import annotations

from liverecovery.backends import StagedVm, StagingContext
from liverecovery.datastore.memfs import MemoryFilesystem
from liverecovery.datastore.vmx_rewrite import VmxOptions, rewrite_vmx

__all__ = ["CopyingBuilder"]


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
            network_map=ctx.spec.network_map,
            drop_vc_uuid=ctx.spec.verification,
        )
        vmx = rewrite_vmx(await ctx.catalog.read_file(point, point.vmx_name), {}, options)
        fs = MemoryFilesystem()
        fs.add_file(point.vmx_name, vmx)
        if point.nvram_name:
            fs.add_file(point.nvram_name, await ctx.catalog.read_file(point, point.nvram_name))
        return StagedVm(fs, point.vmx_name)

    async def discard(self, ctx: StagingContext) -> None:
        """Nothing is kept outside memory."""
