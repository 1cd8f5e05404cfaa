"""What a recovery needs from a VM's configuration (.vmx), as a value object.

Pure: a parsed .vmx in, a ``VmConfig`` out. The OVF reader produces the same value.
"""

from __future__ import annotations

import re

import attrs

from liverecovery.catalog.vmx import VmxFile
from liverecovery.errors import CatalogError

__all__ = ["DiskRef", "VmConfig", "config_from_vmx", "is_disk_device"]

_DISK_KEY = re.compile(r"^(?P<bus>scsi|ide|sata|nvme)(?P<ctrl>\d+):(?P<unit>\d+)\.filename$")
_BUS_ORDER = {"ide": 0, "sata": 1, "scsi": 2, "nvme": 3}


@attrs.frozen
class DiskRef:
    """A disk the configuration attaches: device key (``scsi0:1``), file name, adapter type."""

    key: str
    file_name: str
    adapter: str


@attrs.frozen
class VmConfig:
    """Display name, guest, memory, CPUs and disks of one VM."""

    display_name: str
    guest_os: str
    memory_mb: int
    num_cpus: int
    disks: tuple[DiskRef, ...]
    nvram_name: str | None = None
    warnings: tuple[str, ...] = ()
    """What reading the configuration ignored: garbage lines, disks that are no .vmdk."""


def _int(vmx: VmxFile, key: str, default: int, path: str) -> int:
    value = vmx.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise CatalogError(f"{key} is not a number: {value!r}", path=path) from None


def _other_device(present: str | None, device_type: str | None, file_name: str) -> bool:
    """A device entry that is not a virtual disk on the datastore, whatever its file name:
    CD-ROMs and floppies (``cdrom-image``, ``atapi-cdrom``, ``cdrom-raw``), SCSI passthrough
    devices (``scsi-passthru``), anything naming a host device (``/vmfs/devices/...``,
    ``/dev/...``) and a device that is not present."""
    if (present or "TRUE").strip().upper() == "FALSE":
        return True
    kind = (device_type or "").lower()
    if "cdrom" in kind or "floppy" in kind or kind.endswith("passthru"):
        return True
    name = file_name.replace("\\", "/")
    return name.startswith(("/vmfs/devices/", "/dev/", "//./"))


def is_disk_device(present: str | None, device_type: str | None, file_name: str) -> bool:
    """Whether a device entry of a .vmx is a virtual disk on the datastore, as ESXi decides."""
    return not _other_device(present, device_type, file_name) and file_name.lower().endswith(
        ".vmdk"
    )


def _is_disk(vmx: VmxFile, device: str, file_name: str) -> bool | None:
    """True for a disk, False for another device, None for a disk whose file is no .vmdk."""
    if _other_device(vmx.get(f"{device}.present"), vmx.get(f"{device}.deviceType"), file_name):
        return False
    return True if file_name.lower().endswith(".vmdk") else None


def _adapter(vmx: VmxFile, bus: str, ctrl: str) -> str:
    if bus == "scsi":
        return (vmx.get(f"scsi{ctrl}.virtualDev") or "lsilogic").lower()
    return bus


def config_from_vmx(vmx: VmxFile, *, path: str = "") -> VmConfig:
    """Read the configuration out of a parsed .vmx (``path`` names it in errors).

    Disk file names are reduced to their base name: a backup folder holds them side by side
    even when the .vmx recorded an absolute ``/vmfs/volumes/...`` path.

    :raises CatalogError: a numeric key holds something else.
    """
    disks: list[tuple[tuple[int, int, int], DiskRef]] = []
    warnings = [str(w) for w in vmx.warnings]
    for key, value in vmx.items():
        match = _DISK_KEY.match(key.lower())
        if match is None:
            continue
        bus, ctrl, unit = match["bus"], match["ctrl"], match["unit"]
        device = f"{bus}{ctrl}:{unit}"
        disk = _is_disk(vmx, device, value)
        if disk is None:
            warnings.append(f"{device}: disk file {value!r} is not a .vmdk, skipped")
        if not disk:
            continue
        name = value.replace("\\", "/").rsplit("/", 1)[-1]
        order = (_BUS_ORDER[bus], int(ctrl), int(unit))
        disks.append((order, DiskRef(device, name, _adapter(vmx, bus, ctrl))))
    disks.sort(key=lambda item: item[0])
    return VmConfig(
        display_name=vmx.get("displayName") or "",
        guest_os=vmx.get("guestOS") or "",
        memory_mb=_int(vmx, "memSize", 0, path),
        num_cpus=_int(vmx, "numvcpus", 1, path),
        disks=tuple(d for _, d in disks),
        nvram_name=vmx.get("nvram") or None,
        warnings=tuple(warnings),
    )
