"""OVA exports read in place: the tar is never extracted.

A disk is opened as a window of the tar file (the member's data offset and size), so reads
go straight to the OVA. The VM configuration comes from a .vmx member if there is one, else
from the .ovf; then the restore point names a .vmx synthesized from it (``synth_vmx``), which
``read_ova_file`` serves, so the staging step handles an OVA like a VM folder.

Where the tar's bytes are is an ``OvaSource``: a local file (``LocalOva``; a ``Path`` is taken
as one) or an object in a store (``catalog/objects.ObjectOva``), read the same way.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Hashable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from liverecovery.backends import DiskInfo, RestorePoint
from liverecovery.catalog.manifest import OvaSource, verify_member
from liverecovery.catalog.ovf import MAX_OVF_BYTES, parse_ovf
from liverecovery.catalog.point_meta import PointMeta
from liverecovery.catalog.synth_vmx import synthesize_vmx
from liverecovery.catalog.vm_config import VmConfig, config_from_vmx
from liverecovery.catalog.vmdk import FileWindow, VmdkDisk, open_vmdk
from liverecovery.catalog.vmx import VmxFile
from liverecovery.errors import CatalogError

__all__ = [
    "LocalOva",
    "OvaSource",
    "load_ova_point",
    "open_ova_disk",
    "ova_config",
    "read_ova_file",
    "read_ova_member",
    "synthesized_vmx_name",
    "verify_member",
]


class LocalOva:
    """An OVA in the local filesystem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def stream(self) -> BinaryIO:
        try:
            return self.path.open("rb")
        except FileNotFoundError:
            raise CatalogError("OVA file is missing", path=self.name) from None
        except OSError as exc:
            raise CatalogError(f"cannot open the OVA: {exc.strerror}", path=self.name) from None

    def window(self, start: int, size: int) -> FileWindow:
        return FileWindow(self.name, start, size)

    def identity(self) -> Hashable:
        info = os.stat(self.path)
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _source(ova: Path | OvaSource) -> OvaSource:
    return LocalOva(ova) if isinstance(ova, Path) else ova


def _members(ova: OvaSource) -> dict[str, tarfile.TarInfo]:
    try:
        with ova.stream() as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            return {m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, OSError) as exc:
        raise CatalogError(f"not a readable OVA (tar): {exc}", path=ova.name) from None


def _member(ova: OvaSource, name: str) -> tarfile.TarInfo:
    member = _members(ova).get(name)
    if member is None:
        raise CatalogError(f"OVA has no member {name!r}", path=ova.name)
    if not member.isreg() or member.issparse():
        raise CatalogError(f"OVA member {name!r} is not a plain file", path=ova.name)
    return member


def synthesized_vmx_name(ova: Path | OvaSource) -> str:
    """The name under which an OVA without a .vmx offers one built from its OVF."""
    return f"{PurePosixPath(_source(ova).name).stem}.vmx"


def read_ova_file(ova: Path | OvaSource, name: str, *, limit: int) -> bytes:
    """A member's bytes, or the synthesized .vmx when ``name`` is that and no member is.

    :raises CatalogError: no such member, or larger than ``limit``.
    """
    ova = _source(ova)
    members = _members(ova)
    if name not in members and name == synthesized_vmx_name(ova):
        config, _, _ = ova_config(ova)
        return synthesize_vmx(config)
    return read_ova_member(ova, name, limit=limit)


def read_ova_member(ova: Path | OvaSource, name: str, *, limit: int) -> bytes:
    """A small member's bytes. :raises CatalogError: missing or larger than ``limit``."""
    ova = _source(ova)
    member = _member(ova, name)
    if member.size > limit:
        raise CatalogError(f"OVA member {name!r} is larger than {limit} bytes", path=ova.name)
    window = ova.window(member.offset_data, member.size)
    try:
        data = window.pread(0, member.size)
    finally:
        window.close()
    if len(data) != member.size:
        raise CatalogError(f"OVA member {name!r} is truncated", path=ova.name)
    return data


def open_ova_disk(
    ova: Path | OvaSource, name: str, *, grain_cache_bytes: int = 64 << 20, verify: bool = True
) -> VmdkDisk:
    """Open the VMDK member ``name`` in place, verified against the OVA's manifest first.

    ``verify=False`` skips the manifest (for reading a disk's size while listing restore
    points; nothing is served from such a disk).

    :raises CatalogError: missing or malformed member, or a digest that does not match.
    """
    ova = _source(ova)
    member = _member(ova, name)
    if verify:
        verify_member(ova, member)
    window = ova.window(member.offset_data, member.size)
    if window.size != member.size:
        window.close()
        raise CatalogError(f"OVA member {name!r} is truncated", path=ova.name)
    return open_vmdk(f"{ova.name}:{name}", window=window, grain_cache_bytes=grain_cache_bytes)


def ova_config(ova: Path | OvaSource) -> tuple[VmConfig, dict[str, int], str]:
    """(configuration, declared capacity by disk file, config member name) of an OVA."""
    ova = _source(ova)
    names = list(_members(ova))
    vmx = [n for n in names if n.lower().endswith(".vmx")]
    ovf = [n for n in names if n.lower().endswith(".ovf")]
    if not ovf and not vmx:
        raise CatalogError("OVA holds neither an .ovf nor a .vmx", path=ova.name)
    if ovf:
        verify_member(ova, _member(ova, ovf[0]))
        parsed = parse_ovf(
            read_ova_member(ova, ovf[0], limit=MAX_OVF_BYTES), path=f"{ova.name}:{ovf[0]}"
        )
        declared = {d.ref.file_name: d.capacity_bytes for d in parsed.disks}
        config = parsed.config
    else:
        declared = {}
    if vmx:
        verify_member(ova, _member(ova, vmx[0]))
        data = read_ova_member(ova, vmx[0], limit=MAX_OVF_BYTES)
        config = config_from_vmx(VmxFile.parse(data), path=f"{ova.name}:{vmx[0]}")
        return config, declared, vmx[0]
    return config, declared, ovf[0]


def load_ova_point(
    ova: Path | OvaSource, *, vm_name: str, point_id: str, meta: PointMeta
) -> RestorePoint:
    """The restore point an OVA holds; disk sizes come from the VMDKs themselves."""
    ova = _source(ova)
    config, declared, config_name = ova_config(ova)
    disks = []
    for ref in config.disks:
        disk = open_ova_disk(ova, ref.file_name, verify=False)
        try:
            size = disk.size
        finally:
            disk.close()
        if declared.get(ref.file_name, size) > size:
            raise CatalogError(
                f"disk {ref.file_name!r} is smaller than the OVF declares", path=ova.name
            )
        disks.append(DiskInfo(ref.key, ref.file_name, size, ref.adapter))
    if not config_name.lower().endswith(".vmx"):
        config_name = synthesized_vmx_name(ova)
    return RestorePoint(
        vm_name=vm_name,
        point_id=point_id,
        vmx_name=config_name,
        disks=tuple(disks),
        media=meta.media,
        archived=meta.archived,
        passkey_required=meta.passkey_required,
        created=meta.created,
        guest_os=config.guest_os,
        memory_mb=config.memory_mb,
        num_cpus=config.num_cpus,
        nvram_name=None,
        warnings=config.warnings,
    )
