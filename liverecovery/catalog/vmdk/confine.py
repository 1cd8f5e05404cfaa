"""Keep a backup's file references inside the backup: pure decisions on names and real paths.

A descriptor names its extent files and its parent; a .vmx names its disks. Anyone who can shape
a backup's files can write any name there: ``/dev/sda``, ``\\\\.\\PhysicalDrive3``,
``../../etc/shadow`` or a symlink leading out of the folder. The reader follows a name only when
its real path (symlinks resolved) lies inside the confinement folder, so serving a backup can
never read a host device or a file outside it. Host-device disks (a ``fullDevice`` or RDM
descriptor) name a disk of the host that made the backup, never one in the backup: refused as
such.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from liverecovery.errors import CatalogError

__all__ = [
    "HOST_DEVICE_CREATE_TYPES",
    "confined",
    "device_path",
    "inside",
    "refuse_host_device",
    "windows_absolute",
]

HOST_DEVICE_CREATE_TYPES = frozenset(
    {
        "fulldevice",
        "partitioneddevice",
        "vmfsrawdevicemap",
        "vmfspassthroughrawdevicemap",
        "vmfsraw",
        "vmfsrdm",
        "vmfsrdmp",
    }
)
"""createType values (lower-cased) of disks that are a device of the host, not a file."""

_WINDOWS_DEVICE = re.compile(r"^(\\\\|//)[.?][\\/]", re.IGNORECASE)
_WINDOWS_ABSOLUTE = re.compile(r"^([A-Za-z]:|\\\\|//)")
_UNIX_DEVICE = ("/dev/", "/proc/", "/sys/", "/vmfs/devices/")


def device_path(name: str) -> bool:
    """Whether ``name`` names a device (``/dev/sda``, ``\\\\.\\PhysicalDrive3``), whatever
    the host OS."""
    if _WINDOWS_DEVICE.match(name):
        return True
    if not name.startswith("/"):
        return False
    normal = os.path.normpath(name)
    return any(normal.startswith(p) or normal + "/" == p for p in _UNIX_DEVICE)


def windows_absolute(name: str) -> bool:
    """Whether ``name`` is a Windows absolute path (``C:\\VMs\\x.vmdk``, a UNC path)."""
    return bool(_WINDOWS_ABSOLUTE.match(name))


def inside(root: str, real: str) -> bool:
    """Whether the real path ``real`` lies in (or is) the real folder ``root``."""
    try:
        return os.path.commonpath([root, real]) == root
    except ValueError:  # one relative, one absolute, or different drives
        return False


def confined(
    root: str,
    base: str,
    name: str,
    *,
    what: str,
    descriptor: str,
    realpath: Callable[[str], str] = os.path.realpath,
) -> str:
    """The real path of ``name`` (relative to folder ``base``), checked to lie in ``root``.

    ``root`` must already be a real path. ``what`` ("extent", "parent disk") and
    ``descriptor`` name the reference in the error; ``realpath`` resolves a path in the
    namespace the files live in (the OS's by default, an object store's keys otherwise).

    :raises CatalogError: a device path, or a real path outside ``root``.
    """
    if "\x00" in name:
        raise CatalogError(f"{what} {name!r} holds a NUL byte", path=descriptor)
    if device_path(name) or windows_absolute(name):
        raise CatalogError(
            f"{what} {name!r} is a device or an absolute host path, not a file of the backup",
            path=descriptor,
        )
    real = realpath(os.path.join(base, name))
    if not inside(root, real):
        raise CatalogError(
            f"{what} {name!r} resolves to {real!r}, outside the backup folder {root!r}",
            path=descriptor,
        )
    return real


def refuse_host_device(create_type: str, extent_types: set[str], *, descriptor: str) -> None:
    """Refuse a descriptor of a host-device disk (``fullDevice``, ``partitionedDevice``, RDM).

    :raises CatalogError: naming the createType or the raw extent type.
    """
    kind = create_type.lower()
    raw = sorted(t for t in extent_types if t in ("VMFSRDM", "VMFSRAW"))
    if kind in HOST_DEVICE_CREATE_TYPES or raw:
        shown = create_type if kind in HOST_DEVICE_CREATE_TYPES else f"{raw[0]} extent"
        raise CatalogError(
            f"host device disk ({shown}), not in the backup: the disk lived on a device of "
            "the host that was backed up, so the backup holds no data of it",
            path=descriptor,
        )
