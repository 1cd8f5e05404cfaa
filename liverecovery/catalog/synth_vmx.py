"""A .vmx for a VM that came without one (an OVA): built from its ``VmConfig``.

The staging step rewrites a .vmx for every recovery; an OVA export carries an OVF instead, so
the catalog offers this synthesized file under the name the restore point gives. Reading it
back with ``config_from_vmx`` returns the same configuration. No NICs: a recovered appliance
starts without network until someone attaches one.
"""

from __future__ import annotations

import re

from liverecovery.catalog.vm_config import VmConfig
from liverecovery.catalog.vmx import vmx_escape

__all__ = ["guest_id_to_vmx", "synthesize_vmx"]

_DEVICE = re.compile(r"^(?P<ctrl>[a-z]+\d+):(?P<unit>\d+)$")


def guest_id_to_vmx(guest: str) -> str:
    """vSphere guest ids (``debian10_64Guest``) to .vmx ``guestOS`` values (``debian10-64``)."""
    if not guest.endswith("Guest"):
        return guest
    name = guest[: -len("Guest")]
    name = re.sub(r"_?64$", "-64", name)
    return name[:1].lower() + name[1:]


def synthesize_vmx(config: VmConfig, *, hardware_version: int = 13) -> bytes:
    """The .vmx text (LF, UTF-8) of ``config``."""
    lines = [
        (".encoding", "UTF-8"),
        ("config.version", "8"),
        ("virtualHW.version", str(hardware_version)),
        ("displayName", config.display_name),
        ("guestOS", guest_id_to_vmx(config.guest_os)),
        ("memSize", str(config.memory_mb)),
        ("numvcpus", str(max(1, config.num_cpus))),
    ]
    controllers: dict[str, str] = {}
    for disk in config.disks:
        match = _DEVICE.match(disk.key)
        if match is None:
            continue
        controllers.setdefault(match["ctrl"], disk.adapter)
    for ctrl, adapter in controllers.items():
        lines.append((f"{ctrl}.present", "TRUE"))
        if ctrl.startswith("scsi"):
            lines.append((f"{ctrl}.virtualDev", adapter))
    for disk in config.disks:
        lines.append((f"{disk.key}.present", "TRUE"))
        lines.append((f"{disk.key}.fileName", disk.file_name))
        if disk.key.startswith("scsi"):
            lines.append((f"{disk.key}.deviceType", "scsi-hardDisk"))
    if config.nvram_name:
        lines.append(("nvram", config.nvram_name))
    text = "".join(f'{key} = "{vmx_escape(value)}"\n' for key, value in lines)
    return text.encode("utf-8")
