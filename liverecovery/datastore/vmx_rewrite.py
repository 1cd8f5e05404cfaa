"""The .vmx rewrite and the flat descriptor a live-recovered VM is registered with.

The .vmx keeps every line it had (``VmxFile`` round-trips byte for byte) except the keys the
recovery changes: each disk's ``fileName`` points at its flat descriptor; in the seed's second
mode ``workingDir`` and ``sched.swap.dir`` send snapshot deltas and the swap file to an alternate
datastore; optionally a display-name suffix, a new BIOS UUID, NICs that start disconnected, and
the port groups of the NICs renamed by the spec's network map (the recovery site's networks);
for a backup verification's copy, no ``vc.uuid``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

import attrs

from liverecovery.backends import DiskInfo
from liverecovery.catalog.vmx import VmxFile
from liverecovery.datastore.descriptor import FlatDescriptor

__all__ = ["VmxOptions", "flat_descriptor", "nic_networks", "rewrite_vmx"]

_NIC_NETWORK = re.compile(r"^(ethernet\d+)\.networkname$")


@attrs.frozen
class VmxOptions:
    """How the .vmx is rewritten."""

    name_suffix: str = ""
    redirect_to: str | None = None
    folder: str = ""
    regenerate_bios_uuid: bool = False
    disconnect_nics: bool = False
    network_map: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    """Old port group name to new: each NIC's ``networkName`` found here is replaced."""
    drop_vc_uuid: bool = False
    """Remove ``vc.uuid`` (vCenter gives the VM a new instance UUID): a verification's copy
    must not be taken for the production VM."""


def _present_nics(doc: VmxFile) -> dict[str, str]:
    """``ethernetN`` to its ``networkName``, for the NICs present (``present`` not FALSE)."""
    found: dict[str, str] = {}
    for key, value in doc.with_prefix("ethernet").items():
        match = _NIC_NETWORK.match(key)
        if match is None:
            continue
        nic = match.group(1)
        if (doc.get(f"{nic}.present") or "TRUE").strip().upper() == "FALSE":
            continue
        found[nic] = value
    return dict(sorted(found.items()))


def nic_networks(vmx: bytes, network_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """The port group each present NIC (``ethernetN``) connects to, after ``network_map``: the
    networks the ESX host must have for the VM to power on connected."""
    mapping = network_map or {}
    return {nic: mapping.get(name, name) for nic, name in _present_nics(VmxFile.parse(vmx)).items()}


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
    if options.drop_vc_uuid:
        doc.remove("vc.uuid")
    if options.network_map:
        for nic, name in _present_nics(doc).items():
            if name in options.network_map:
                doc.set(f"{nic}.networkName", options.network_map[name])
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
