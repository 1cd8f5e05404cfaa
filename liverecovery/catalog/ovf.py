"""Read a VM's configuration out of an OVF descriptor (the XML inside an OVA).

Pure: bytes in, a ``VmConfig`` plus each disk's file and declared capacity out. Matching is by
local element and attribute names, so OVF 1.x and 2.x namespaces both work.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import attrs

from liverecovery.catalog.vm_config import DiskRef, VmConfig
from liverecovery.errors import CatalogError

__all__ = ["MAX_OVF_BYTES", "OvfDisk", "OvfVm", "parse_ovf"]

MAX_OVF_BYTES = 16 << 20

# CIM ResourceType values (DMTF CIM_ResourceAllocationSettingData)
_CPU, _MEMORY, _IDE, _SCSI, _DISK, _OTHER_STORAGE = 3, 4, 5, 6, 17, 20
_SCSI_SUBTYPES = {
    "lsilogic": "lsilogic",
    "lsilogicsas": "lsisas1068",
    "virtualscsi": "pvscsi",
    "buslogic": "buslogic",
}
_UNITS = re.compile(r"^bytes?((?:\*\d{1,7}(?:\^\d{1,2})?)*)$")
_FACTOR = re.compile(r"\*(\d+)(?:\^(\d+))?")
# Names other writers use (VirtualBox and older VMware tools write "MegaBytes")
_NAMED_UNITS = {
    "kilobytes": 10,
    "kb": 10,
    "megabytes": 20,
    "mb": 20,
    "gigabytes": 30,
    "gb": 30,
    "terabytes": 40,
    "tb": 40,
}
_MAX_SCALE = 1 << 60


@attrs.frozen
class OvfDisk:
    """A disk of the OVF: its device, the file (``href``) and the declared capacity."""

    ref: DiskRef
    capacity_bytes: int


@attrs.frozen
class OvfVm:
    config: VmConfig
    disks: tuple[OvfDisk, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(element: ET.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _child_text(element: ET.Element, name: str) -> str | None:
    """The text of the child ``name`` (case-insensitive: OVF 0.9 writes ``InstanceId``)."""
    wanted = name.lower()
    for child in element:
        if _local(child.tag).lower() == wanted:
            return (child.text or "").strip()
    return None


def _virtual_systems(root: ET.Element) -> list[ET.Element]:
    """``VirtualSystem`` elements, or OVF 0.9's ``Content xsi:type="ovf:VirtualSystem_Type"``
    (what ESX 3.5 and Workstation 6.5 exported)."""
    found = _find_all(root, "VirtualSystem")
    if found:
        return found
    return [
        e
        for e in _find_all(root, "Content")
        if (_attr(e, "type") or "").endswith("VirtualSystem_Type")
    ]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if _local(e.tag) == name]


def _scale(units: str | None, path: str, what: str) -> int:
    """Bytes per unit of DMTF programmatic units (``byte * 2^20``, ``byte*1024*1024``) or of a
    unit name (``MegaBytes``). :raises CatalogError: anything else, or an absurd scale."""
    if not units:
        return 1
    compact = re.sub(r"\s+", "", units).lower()
    if compact in _NAMED_UNITS:
        return 1 << _NAMED_UNITS[compact]
    match = _UNITS.match(compact)
    if match is None:
        raise CatalogError(f"unsupported allocation units {units!r} for {what}", path=path)
    scale = 1
    for base, power in _FACTOR.findall(match[1]):
        scale *= int(base) ** int(power or 1)
        if scale > _MAX_SCALE:
            raise CatalogError(f"allocation units {units!r} for {what} are too large", path=path)
    return scale


def _number(text: str | None, path: str, what: str) -> int:
    try:
        return int(text or "0")
    except ValueError:
        raise CatalogError(f"{what} is not a number: {text!r}", path=path) from None


def parse_ovf(data: bytes, *, path: str = "") -> OvfVm:
    """Parse an OVF envelope. :raises CatalogError: not XML, no VirtualSystem, bad numbers."""
    if len(data) > MAX_OVF_BYTES:
        raise CatalogError(f"OVF larger than {MAX_OVF_BYTES} bytes", path=path)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CatalogError(f"OVF is not well-formed XML: {exc}", path=path) from None
    files = {_attr(f, "id"): _attr(f, "href") for f in _find_all(root, "File")}
    disks_by_id: dict[str, tuple[str, int]] = {}
    for disk in _find_all(root, "Disk"):
        disk_id = _attr(disk, "diskId") or ""
        href = files.get(_attr(disk, "fileRef"))
        if href is None:
            raise CatalogError(f"disk {disk_id!r} refers to no file", path=path)
        capacity = _number(_attr(disk, "capacity"), path, f"disk {disk_id!r} capacity")
        scale = _scale(_attr(disk, "capacityAllocationUnits"), path, f"disk {disk_id!r}")
        disks_by_id[disk_id] = (href, capacity * scale)
    systems = _virtual_systems(root)
    if not systems:
        raise CatalogError("OVF has no VirtualSystem", path=path)
    system = systems[0]
    name = _child_text(system, "Name") or _attr(system, "id") or ""
    guest = ""
    for section in _find_all(system, "OperatingSystemSection"):
        guest = _attr(section, "osType") or _child_text(section, "Description") or ""
    memory_mb = cpus = 0
    controllers: dict[str, tuple[str, str]] = {}  # InstanceID -> (bus, number)
    counts: dict[str, int] = {}
    items = _find_all(system, "Item") + _find_all(system, "StorageItem")
    for item in items:
        kind = _number(_child_text(item, "ResourceType"), path, "ResourceType")
        instance = _child_text(item, "InstanceID") or ""
        subtype = (_child_text(item, "ResourceSubType") or "").lower()
        if kind == _CPU:
            cpus = _number(_child_text(item, "VirtualQuantity"), path, "CPU count")
        elif kind == _MEMORY:
            units = _child_text(item, "AllocationUnits") or "byte * 2^20"
            amount = _number(_child_text(item, "VirtualQuantity"), path, "memory")
            memory_mb = amount * _scale(units, path, "memory") >> 20
        elif kind in (_IDE, _SCSI, _OTHER_STORAGE):
            if kind == _IDE:
                bus = "ide"
            elif kind == _SCSI:
                bus = "scsi"
            elif "nvme" in subtype:
                bus = "nvme"
            elif "sata" in subtype or "ahci" in subtype:
                bus = "sata"
            else:
                continue
            number = _child_text(item, "Address") or str(counts.get(bus, 0))
            counts[bus] = counts.get(bus, 0) + 1
            adapter = _SCSI_SUBTYPES.get(subtype, "lsilogic") if bus == "scsi" else bus
            controllers[instance] = (f"{bus}{number}", adapter)
    refs: list[OvfDisk] = []
    for item in items:
        if _number(_child_text(item, "ResourceType"), path, "ResourceType") != _DISK:
            continue
        host = _child_text(item, "HostResource") or ""
        disk_id = host.rsplit("/", 1)[-1]
        if disk_id not in disks_by_id:
            raise CatalogError(f"disk item refers to unknown disk {host!r}", path=path)
        href, capacity = disks_by_id[disk_id]
        parent = controllers.get(_child_text(item, "Parent") or "", ("scsi0", "lsilogic"))
        unit = _child_text(item, "AddressOnParent") or str(len(refs))
        ref = DiskRef(f"{parent[0]}:{unit}", href, parent[1])
        refs.append(OvfDisk(ref, capacity))
    config = VmConfig(
        display_name=name,
        guest_os=guest,
        memory_mb=memory_mb,
        num_cpus=cpus,
        disks=tuple(d.ref for d in refs),
    )
    return OvfVm(config, tuple(refs))
