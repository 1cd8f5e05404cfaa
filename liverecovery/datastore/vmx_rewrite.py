"""The .vmx rewrite and the flat descriptor a live-recovered VM is registered with.

The .vmx keeps every line it had except the keys the recovery changes: each disk's ``fileName``
points at its flat descriptor; in the seed's second mode ``workingDir`` and ``sched.swap.dir``
send snapshot deltas and the swap file to an alternate datastore; optionally a display-name
suffix, a new BIOS UUID, NICs that start disconnected.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping

import attrs

from liverecovery.backends import DiskInfo

__all__ = ["VmxOptions", "flat_descriptor", "geometry", "rewrite_vmx"]


@attrs.frozen
class VmxOptions:
    """How the .vmx is rewritten."""

    name_suffix: str = ""
    redirect_to: str | None = None
    folder: str = ""
    regenerate_bios_uuid: bool = False
    disconnect_nics: bool = False


def _key_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip().lower()


def _value_of(line: str) -> str:
    return line.split("=", 1)[1].strip().strip('"')


def _set(lines: list[str], key: str, value: str, newline: str) -> None:
    want = key.lower()
    text = f'{key} = "{value}"{newline}'
    for i, line in enumerate(lines):
        if _key_of(line) == want:
            original_key = line.split("=", 1)[0].strip()
            lines[i] = f'{original_key} = "{value}"{newline}'
            return
    lines.append(text)


def rewrite_vmx(vmx: bytes, disk_files: Mapping[str, str], options: VmxOptions) -> bytes:
    """The rewritten .vmx: ``disk_files`` maps device keys (``scsi0:0``) to descriptor names."""
    text = vmx.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    values = {k: _value_of(ln) for ln in lines if (k := _key_of(ln))}
    for key, name in disk_files.items():
        _set(lines, f"{key}.fileName", name, newline)
    if options.name_suffix:
        _set(lines, "displayName", values.get("displayname", "") + options.name_suffix, newline)
    if options.redirect_to:
        target = f"[{options.redirect_to}] {options.folder}/"
        _set(lines, "workingDir", target, newline)
        _set(lines, "sched.swap.dir", target, newline)
    if options.regenerate_bios_uuid:
        raw = uuid.uuid4().bytes
        pairs = " ".join(f"{b:02x}" for b in raw)
        _set(lines, "uuid.bios", pairs[:23] + "-" + pairs[24:], newline)
        lines = [ln for ln in lines if _key_of(ln) != "uuid.location"]
    if options.disconnect_nics:
        nics = sorted({k.split(".", 1)[0] for k in values if k.startswith("ethernet") and "." in k})
        for nic in nics:
            _set(lines, f"{nic}.startConnected", "FALSE", newline)
    return "".join(lines).encode("utf-8", "surrogateescape")


def geometry(sectors: int, adapter: str) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) as ESXi writes them for the adapter type."""
    if adapter == "ide":
        return min(16383, sectors // 1008), 16, 63
    return sectors // 16065, 255, 63


def flat_descriptor(disk: DiskInfo, flat_name: str, *, seed: str) -> bytes:
    """A ``createType "vmfs"`` descriptor with one VMFS extent of the disk's size."""
    sectors = disk.capacity_bytes // 512
    digest = hashlib.sha256(seed.encode()).hexdigest()
    cid = digest[:8]
    long_cid = digest[8:32] + cid
    cyl, heads, spt = geometry(sectors, disk.adapter)
    u = digest[32:48]
    ddb_uuid = (
        " ".join(u[i : i + 2] for i in range(0, 16, 2))
        + "-"
        + " ".join(digest[48 + i : 50 + i] for i in range(0, 16, 2))
    )
    adapter = {"pvscsi": "lsilogic", "sata": "lsilogic", "nvme": "lsilogic"}.get(
        disk.adapter, disk.adapter
    )
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid}\n"
        "parentCID=ffffffff\n"
        'isNativeSnapshot="no"\n'
        'createType="vmfs"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} VMFS "{flat_name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.adapterType = "{adapter}"\n'
        f'ddb.geometry.cylinders = "{cyl}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{spt}"\n'
        f'ddb.longContentID = "{long_cid}"\n'
        f'ddb.uuid = "{ddb_uuid}"\n'
        'ddb.virtualHWVersion = "13"\n'
    ).encode()
