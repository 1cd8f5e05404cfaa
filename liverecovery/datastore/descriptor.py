"""Write the flat VMDK descriptor a virtual datastore presents to ESXi for every disk.

ESXi cannot power on hosted sparse disks, so each backup disk is shown as a ``vmfs`` descriptor
with one VMFS extent naming a ``-flat.vmdk`` of the disk's full size (see DESIGN.md).
"""

from __future__ import annotations

import hashlib
import re
import secrets

import attrs

__all__ = ["FlatDescriptor", "adapter_type_for", "geometry_for"]

SECTOR = 512

_ADAPTER_TYPES = {"ide": "ide", "buslogic": "buslogic", "legacyesx": "legacyESX"}


def adapter_type_for(controller: str) -> str:
    """``ddb.adapterType`` for a controller (``ide``, ``buslogic``; every SCSI, SATA and NVMe
    controller is described as ``lsilogic``)."""
    return _ADAPTER_TYPES.get(controller.lower(), "lsilogic")


def geometry_for(capacity_bytes: int, controller: str) -> tuple[int, int, int]:
    """(cylinders, heads, sectors): IDE 16 heads, 63 sectors, at most 16383 cylinders;
    everything else 255 heads, 63 sectors."""
    sectors = capacity_bytes // SECTOR
    if adapter_type_for(controller) == "ide":
        return min(16383, sectors // 1008), 16, 63
    return sectors // 16065, 255, 63


@attrs.frozen
class FlatDescriptor:
    """A ``createType="vmfs"`` descriptor with one ``VMFS`` extent.

    ``cid`` is 8 hex digits; the long content id ends with it. ``uuid`` is 16 bytes. Both are
    random unless given (give them to get a stable file across restarts).
    """

    flat_name: str
    capacity_bytes: int
    controller: str = "lsilogic"
    cid: str = attrs.field(factory=lambda: secrets.token_hex(4))
    long_content_prefix: str = attrs.field(factory=lambda: secrets.token_hex(12))
    uuid: bytes = attrs.field(factory=lambda: secrets.token_bytes(16))
    hardware_version: int = 13

    def __attrs_post_init__(self) -> None:
        if self.capacity_bytes <= 0 or self.capacity_bytes % SECTOR:
            raise ValueError(f"capacity {self.capacity_bytes} is not a positive multiple of 512")
        if re.fullmatch(r"[0-9a-fA-F]{8}", self.cid) is None:
            raise ValueError(f"CID {self.cid!r} is not 8 hex digits")
        if len(self.uuid) != 16:
            raise ValueError("uuid must be 16 bytes")
        if '"' in self.flat_name or "\n" in self.flat_name:
            raise ValueError(f"flat file name {self.flat_name!r} cannot be quoted")

    @classmethod
    def seeded(
        cls, flat_name: str, capacity_bytes: int, *, controller: str = "lsilogic", seed: str
    ) -> FlatDescriptor:
        """A descriptor whose CID, long content id and uuid derive from ``seed`` (e.g. job id
        and disk key), so the file is identical every time the datastore is rebuilt."""
        digest = hashlib.sha256(seed.encode("utf-8")).digest()
        return cls(
            flat_name,
            capacity_bytes,
            controller=controller,
            cid=digest[:4].hex(),
            long_content_prefix=digest[4:16].hex(),
            uuid=digest[16:32],
        )

    @property
    def sectors(self) -> int:
        return self.capacity_bytes // SECTOR

    @property
    def long_content_id(self) -> str:
        return self.long_content_prefix + self.cid

    def render(self) -> str:
        """The descriptor text (LF line ends, as ESXi writes them)."""
        cylinders, heads, sectors = geometry_for(self.capacity_bytes, self.controller)
        raw = self.uuid.hex()
        uuid = " ".join(raw[i : i + 2] for i in range(0, 16, 2)) + "-"
        uuid += " ".join(raw[i : i + 2] for i in range(16, 32, 2))
        return (
            "# Disk DescriptorFile\n"
            "version=1\n"
            'encoding="UTF-8"\n'
            f"CID={self.cid}\n"
            "parentCID=ffffffff\n"
            'isNativeSnapshot="no"\n'
            'createType="vmfs"\n'
            "\n"
            "# Extent description\n"
            f'RW {self.sectors} VMFS "{self.flat_name}"\n'
            "\n"
            "# The Disk Data Base\n"
            "#DDB\n"
            "\n"
            f'ddb.adapterType = "{adapter_type_for(self.controller)}"\n'
            f'ddb.geometry.cylinders = "{cylinders}"\n'
            f'ddb.geometry.heads = "{heads}"\n'
            f'ddb.geometry.sectors = "{sectors}"\n'
            f'ddb.longContentID = "{self.long_content_id}"\n'
            f'ddb.uuid = "{uuid}"\n'
            f'ddb.virtualHWVersion = "{self.hardware_version}"\n'
        )

    def to_bytes(self) -> bytes:
        return self.render().encode("utf-8")
