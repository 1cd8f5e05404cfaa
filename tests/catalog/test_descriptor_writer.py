"""The flat descriptor presented to ESXi: qemu-img accepts it and reads the flat file through it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.catalog.vmdk import ExtentType, open_vmdk, parse_descriptor
from liverecovery.datastore.descriptor import FlatDescriptor, adapter_type_for, geometry_for

MiB = 1 << 20


@pytest.mark.parametrize("controller", ["lsilogic", "pvscsi", "ide", "sata", "nvme", "buslogic"])
def test_qemu_reads_the_flat_file_through_it(tmp_path: Path, controller: str) -> None:
    size = 3 * MiB + 512 * 7
    payload = os.urandom(size)
    (tmp_path / "vm 2-flat.vmdk").write_bytes(payload)
    desc = FlatDescriptor("vm 2-flat.vmdk", size, controller=controller)
    (tmp_path / "vm 2.vmdk").write_bytes(desc.to_bytes())
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "vmdk", "vm 2.vmdk"],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["virtual-size"] == size
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "vm 2.vmdk", "out.raw"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "out.raw").read_bytes() == payload
    disk = open_vmdk(tmp_path / "vm 2.vmdk")
    try:
        assert disk.read_sync(0, size) == payload
    finally:
        disk.close()


def test_fields_follow_the_rules() -> None:
    desc = FlatDescriptor("vm2-flat.vmdk", 1 << 30, cid="5c3d9a1e", uuid=bytes(range(16)))
    parsed = parse_descriptor(desc.render())
    assert parsed.create_type == "vmfs"
    assert parsed.cid == "5c3d9a1e"
    assert parsed.parent_cid == "ffffffff"
    (extent,) = parsed.extents
    assert (extent.type, extent.sectors, extent.file_name) == (
        ExtentType.VMFS,
        2097152,
        "vm2-flat.vmdk",
    )
    assert parsed.ddb["ddb.geometry.cylinders"] == "130"
    assert parsed.ddb["ddb.geometry.heads"] == "255"
    assert parsed.ddb["ddb.longcontentid"].endswith("5c3d9a1e")
    assert len(parsed.ddb["ddb.longcontentid"]) == 32
    assert parsed.ddb["ddb.uuid"] == "00 01 02 03 04 05 06 07-08 09 0a 0b 0c 0d 0e 0f"
    assert parsed.ddb["ddb.adaptertype"] == "lsilogic"


@given(st.integers(1, 1 << 33).map(lambda s: s * 512), st.sampled_from(["ide", "pvscsi", "sata"]))
def test_geometry(capacity: int, controller: str) -> None:
    cylinders, heads, sectors = geometry_for(capacity, controller)
    total = capacity // 512
    if controller == "ide":
        assert (heads, sectors, cylinders) == (16, 63, min(16383, total // 1008))
    else:
        assert (heads, sectors, cylinders) == (255, 63, total // 16065)


def test_adapter_types() -> None:
    assert adapter_type_for("IDE") == "ide"
    assert adapter_type_for("buslogic") == "buslogic"
    for scsi in ("lsilogic", "lsisas1068", "pvscsi", "sata", "nvme"):
        assert adapter_type_for(scsi) == "lsilogic"


def test_random_ids_differ_and_validation() -> None:
    a, b = FlatDescriptor("a-flat.vmdk", MiB), FlatDescriptor("a-flat.vmdk", MiB)
    assert a.cid != b.cid or a.uuid != b.uuid
    assert a.long_content_id.endswith(a.cid)
    with pytest.raises(ValueError, match="multiple of 512"):
        FlatDescriptor("a-flat.vmdk", 1000)
    with pytest.raises(ValueError, match="CID"):
        FlatDescriptor("a-flat.vmdk", MiB, cid="zzzzzzzz")
    with pytest.raises(ValueError, match="quoted"):
        FlatDescriptor('a"-flat.vmdk', MiB)


def test_seeded_is_stable_and_distinct() -> None:
    a = FlatDescriptor.seeded("d-flat.vmdk", MiB, controller="ide", seed="job1/scsi0:0")
    b = FlatDescriptor.seeded("d-flat.vmdk", MiB, controller="ide", seed="job1/scsi0:0")
    c = FlatDescriptor.seeded("d-flat.vmdk", MiB, controller="ide", seed="job1/scsi0:1")
    assert a.to_bytes() == b.to_bytes()
    assert a.cid != c.cid and a.uuid != c.uuid
    assert parse_descriptor(a.render()).ddb["ddb.adaptertype"] == "ide"
