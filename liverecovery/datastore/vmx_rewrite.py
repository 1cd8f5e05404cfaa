"""The .vmx rewrite and the flat descriptor a live-recovered VM is registered with.

The .vmx keeps every line it had (``VmxFile`` round-trips byte for byte) except the keys the
recovery changes: each disk's ``fileName`` points at its flat descriptor; in the seed's second
mode ``workingDir`` and ``sched.swap.dir`` send snapshot deltas and the swap file to an alternate
datastore; optionally a display-name suffix, a new BIOS UUID, NICs that start disconnected.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import attrs

from liverecovery.backends import DiskInfo
from liverecovery.catalog.vmx import VmxFile
from liverecovery.datastore.descriptor import FlatDescriptor

__all__ = ["VmxOptions", "flat_descriptor", "rewrite_vmx"]


@attrs.frozen
class VmxOptions:
    """How the .vmx is rewritten."""

    name_suffix: str = ""
    redirect_to: str | None = None
    folder: str = ""
    regenerate_bios_uuid: bool = False
    disconnect_nics: bool = False


def rewrite_vmx(vmx: bytes, disk_files: Mapping[str, str], options: VmxOptions) -> bytes:
    """The rewritten .vmx: ``disk_files`` maps device keys (``scsi0:0``) to descriptor names."""
    doc = VmxFile.parse(vmx)
    for key, name in disk_files.items():
        doc.set(f"{key}.fileName", name)
    if options.name_suffix:
        doc.set("displayName", (doc.get("displayName") or "") + options.name_suffix)
    if options.redirect_to:
        target = f"[{options.redirect_to}] {options.folder}/"
        doc.set("workingDir", target)
        doc.set("sched.swap.dir", target)
    if options.regenerate_bios_uuid:
        pairs = " ".join(f"{b:02x}" for b in uuid.uuid4().bytes)
        doc.set("uuid.bios", pairs[:23] + "-" + pairs[24:])
        doc.remove("uuid.location")
    if options.disconnect_nics:
        nics = sorted({k.split(".", 1)[0] for k in doc.with_prefix("ethernet") if "." in k})
        for nic in nics:
            doc.set(f"{nic}.startConnected", "FALSE")
    return doc.to_bytes()


def flat_descriptor(disk: DiskInfo, flat_name: str, *, seed: str) -> bytes:
    """A ``createType "vmfs"`` descriptor with one VMFS extent of the disk's size, identical
    each time the same job's datastore is rebuilt (``seed``)."""
    return FlatDescriptor.seeded(
        flat_name, disk.capacity_bytes, controller=disk.adapter, seed=seed
    ).to_bytes()
