"""OVF parsing: configuration from the hardware section, clear errors for malformed envelopes."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from liverecovery.catalog.ova import open_ova_disk, read_ova_member
from liverecovery.catalog.ovf import parse_ovf
from liverecovery.errors import CatalogError

DATA = Path(__file__).parent / "data"
OVF = (DATA / "appliance.ovf").read_bytes()


def test_hardware_section() -> None:
    vm = parse_ovf(OVF)
    assert (vm.config.display_name, vm.config.memory_mb, vm.config.num_cpus) == (
        "appliance",
        3072,
        2,
    )
    assert [(d.ref.key, d.ref.adapter, d.capacity_bytes) for d in vm.disks] == [
        ("scsi0:0", "pvscsi", 24 << 20),
        ("sata0:1", "sata", 8 << 20),
    ]


def test_memory_in_gigabytes() -> None:
    text = OVF.replace(b"<rasd:VirtualQuantity>3072<", b"<rasd:VirtualQuantity>4<").replace(
        b"<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n        <rasd:Description>Memory",
        b"<rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits>\n        <rasd:Description>Memory",
    )
    assert parse_ovf(text).config.memory_mb == 4096


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda b: b[:-40], "not well-formed XML"),
        (lambda b: b.replace(b"VirtualSystem", b"VirtualThing"), "no VirtualSystem"),
        (lambda b: b.replace(b"ovf:/disk/vmdisk2", b"ovf:/disk/vmdisk9"), "unknown disk"),
        (lambda b: b.replace(b'ovf:fileRef="file2"', b'ovf:fileRef="file7"'), "refers to no file"),
        (lambda b: b.replace(b'ovf:capacity="24"', b'ovf:capacity="lots"'), "not a number"),
        (lambda b: b.replace(b'byte * 2^20"', b'parsecs"'), "unsupported allocation units"),
    ],
)
def test_malformed(mutate: object, problem: str) -> None:
    with pytest.raises(CatalogError, match=problem) as info:
        parse_ovf(mutate(OVF), path="x.ovf")  # type: ignore[operator]
    assert info.value.path == "x.ovf"


def test_ova_errors(tmp_path: Path) -> None:
    ova = tmp_path / "a.ova"
    ova.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(CatalogError, match="not a readable OVA"):
        read_ova_member(ova, "a.ovf", limit=1000)
    with tarfile.open(ova, "w") as tar:
        (tmp_path / "a.ovf").write_bytes(OVF)
        tar.add(tmp_path / "a.ovf", arcname="a.ovf")
    with pytest.raises(CatalogError, match=r"no member 'disk\.vmdk'"):
        open_ova_disk(ova, "disk.vmdk")
    with pytest.raises(CatalogError, match="larger than 10 bytes"):
        read_ova_member(ova, "a.ovf", limit=10)
    with pytest.raises(CatalogError, match="OVA file is missing"):
        read_ova_member(tmp_path / "none.ova", "a.ovf", limit=10)
