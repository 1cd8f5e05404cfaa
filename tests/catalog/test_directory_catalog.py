"""DirectoryCatalog over a backup root holding a VM folder, dated restore points and an OVA."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from liverecovery.backends import CatalogReader, DiskInfo, MediaKind
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.ova import ova_config
from liverecovery.catalog.vm_config import VmConfig, config_from_vmx
from liverecovery.catalog.vmx import VmxFile
from liverecovery.errors import CatalogError

DATA = Path(__file__).parent / "data"
MiB = 1 << 20

pytestmark = pytest.mark.anyio


def raw_of(vmdk: Path) -> bytes:
    out = vmdk.with_suffix(".raw")
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", vmdk.name, out.name],
        cwd=vmdk.parent,
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


async def test_vm_names(backup_root: Path) -> None:
    catalog: CatalogReader = DirectoryCatalog(backup_root)
    assert list(await catalog.vm_names()) == ["appliance", "db", "web01"]


async def test_vm_folder_point(backup_root: Path) -> None:
    catalog = DirectoryCatalog(backup_root)
    (point,) = await catalog.restore_points("web01")
    assert point.point_id == "web01"
    assert point.vmx_name == "web01.vmx"
    assert (point.guest_os, point.memory_mb, point.num_cpus) == ("debian11-64", 4096, 2)
    assert point.nvram_name == "web01.nvram"
    assert point.media is MediaKind.DISK and not point.archived
    assert point.disks == (
        DiskInfo("scsi0:0", "web01.vmdk", 10 * MiB, "pvscsi"),
        DiskInfo("scsi0:1", "web01_1.vmdk", 6 * MiB, "pvscsi"),
    )
    assert point.total_disk_bytes == 16 * MiB
    assert await catalog.read_file(point, "web01.vmx") == (DATA / "esxi7-linux.vmx").read_bytes()
    assert await catalog.read_file(point, "web01.nvram") == b"NVRAM" * 100


async def test_disks_read_like_qemu(backup_root: Path) -> None:
    catalog = DirectoryCatalog(backup_root)
    point = await catalog.restore_point("web01")
    for disk in point.disks:
        reader = await catalog.open_disk(point, disk)
        try:
            assert reader.size == disk.capacity_bytes
            assert await reader.read(0, reader.size) == raw_of(
                backup_root / "web01" / disk.file_name
            )
        finally:
            await reader.aclose()


async def test_dated_points_oldest_first_with_catalog_json(backup_root: Path) -> None:
    catalog = DirectoryCatalog(backup_root)
    old, new = await catalog.restore_points("db")
    assert old.point_id == "db-2024-05-01_22-00-00"
    assert old.created == datetime(2024, 5, 1, 22, tzinfo=UTC)
    assert (old.media, old.archived, old.passkey_required) == (MediaKind.DISK, False, False)
    assert (new.media, new.archived, new.passkey_required) == (MediaKind.TAPE, True, True)
    assert (await catalog.restore_point("db")).point_id == new.point_id
    assert (await catalog.restore_point("db", old.point_id)) == old
    assert [(d.key, d.file_name, d.adapter) for d in new.disks] == [
        ("ide0:0", "legacy app.vmdk", "ide"),
        ("sata0:1", "data.vmdk", "sata"),
        ("nvme0:0", "fast.vmdk", "nvme"),
    ]
    assert new.memory_mb == 3072  # the last memsize assignment wins
    # the two points hold different data in their first disk
    a = await catalog.open_disk(old, old.disks[0])
    b = await catalog.open_disk(new, new.disks[0])
    try:
        assert await a.read(65000, 10) == bytes([4]) * 10
        assert await b.read(65000, 10) == bytes([3]) * 10
    finally:
        await a.aclose()
        await b.aclose()


async def test_ova_point_reads_in_place(backup_root: Path) -> None:
    catalog = DirectoryCatalog(backup_root)
    (point,) = await catalog.restore_points("appliance")
    assert point.point_id == "appliance"
    assert point.vmx_name == "appliance.vmx"  # synthesized from the OVF
    assert (point.guest_os, point.memory_mb, point.num_cpus) == ("debian10_64Guest", 3072, 2)
    assert point.disks == (
        DiskInfo("scsi0:0", "appliance-disk1.vmdk", 24 * MiB, "pvscsi"),
        DiskInfo("sata0:1", "appliance-disk2.vmdk", 8 * MiB, "sata"),
    )
    for disk in point.disks:
        reader = await catalog.open_disk(point, disk)
        try:
            assert await reader.read(0, reader.size) == raw_of(backup_root / disk.file_name)
            assert (
                await reader.read(reader.size - 5, 100)
                == (backup_root / disk.file_name).with_suffix(".raw").read_bytes()[-5:]
            )
        finally:
            await reader.aclose()
    assert b"VirtualSystem" in await catalog.read_file(point, "appliance.ovf")
    vmx = VmxFile.parse(await catalog.read_file(point, point.vmx_name))
    back, ovf = config_from_vmx(vmx), ova_config_of(backup_root)
    assert set(back.disks) == set(ovf.disks)  # the .vmx lists them by bus: ide, sata, scsi
    assert back == attrs.evolve(ovf, guest_os="debian10-64", disks=back.disks)
    assert vmx.get("scsi0.virtualDev") == "pvscsi"
    config, declared, name = ova_config(backup_root / "appliance" / "appliance.ova")
    assert declared == {"appliance-disk1.vmdk": 24 * MiB, "appliance-disk2.vmdk": 8 * MiB}
    assert config.display_name == "appliance" and name == "appliance.ovf"


async def test_single_vm_folder_as_root(backup_root: Path) -> None:
    catalog = DirectoryCatalog(backup_root / "web01")
    assert list(await catalog.vm_names()) == ["web01"]
    assert len((await catalog.restore_point("web01")).disks) == 2


@pytest.mark.parametrize(
    ("name", "problem"),
    [("../web01/web01.vmx", "invalid file name"), ("nope.txt", "file is missing"), ("", "invalid")],
)
async def test_read_file_refuses_bad_names(backup_root: Path, name: str, problem: str) -> None:
    catalog = DirectoryCatalog(backup_root)
    point = await catalog.restore_point("web01")
    with pytest.raises(CatalogError, match=problem):
        await catalog.read_file(point, name)


async def test_unknown_vm_and_point(backup_root: Path) -> None:
    catalog = DirectoryCatalog(backup_root)
    with pytest.raises(CatalogError, match="no VM 'ghost'"):
        await catalog.restore_points("ghost")
    with pytest.raises(CatalogError, match="has no restore points"):
        await catalog.restore_points("empty")
    with pytest.raises(CatalogError, match="no restore point 'x'"):
        await catalog.restore_point("db", "x")
    with pytest.raises(CatalogError, match="invalid VM name"):
        await catalog.restore_points("..")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"media": "floppy"}', "media must be one of disk, cloud, tape"),
        ('{"archived": "yes"}', "archived must be true or false"),
        ('{"created": "yesterday"}', "created is not ISO 8601"),
        ('{"archive": true}', "unknown key(s) archive"),
    ],
)
async def test_bad_catalog_json(
    tmp_path: Path, backup_root: Path, content: str, problem: str
) -> None:
    vm = tmp_path / "web01"
    shutil.copytree(backup_root / "web01", vm)
    (vm / "catalog.json").write_text(content)
    with pytest.raises(CatalogError) as info:
        await DirectoryCatalog(tmp_path).restore_points("web01")
    assert problem in info.value.problem
    assert info.value.path.endswith("catalog.json")


async def test_missing_disk_is_named(tmp_path: Path, backup_root: Path) -> None:
    vm = tmp_path / "web01"
    shutil.copytree(backup_root / "web01", vm)
    (vm / "web01_1-flat.vmdk").unlink()
    with pytest.raises(CatalogError, match="extent file is missing") as info:
        await DirectoryCatalog(tmp_path).restore_points("web01")
    assert info.value.path.endswith("web01_1-flat.vmdk")


async def test_two_vmx_files_are_refused(tmp_path: Path, backup_root: Path) -> None:
    vm = tmp_path / "web01"
    shutil.copytree(backup_root / "web01", vm)
    shutil.copy(vm / "web01.vmx", vm / "other.vmx")
    with pytest.raises(CatalogError, match=r"expected one \.vmx, found 2"):
        await DirectoryCatalog(tmp_path).restore_points("web01")


def ova_config_of(backup_root: Path) -> VmConfig:
    config, _, _ = ova_config(backup_root / "appliance" / "appliance.ova")
    return config


async def test_a_thin_disk_is_reported_thin(tmp_path: Path) -> None:
    """A descriptor ESXi wrote for a thin disk (``ddb.thinProvisioned = "1"``) makes a thin
    ``DiskInfo``, so preflight counts its allocated bytes; any other disk is not thin."""
    from liverecovery.testing.vmdk_writer import write_monolithic_flat

    vm = tmp_path / "thin01"
    vm.mkdir()
    for name in ("thin", "thick"):
        write_monolithic_flat(vm, name, 1 << 20, {})
    thin = vm / "thin.vmdk"
    thin.write_text(thin.read_text() + 'ddb.thinProvisioned = "1"\n')
    (vm / "thin01.vmx").write_text(
        'displayName = "thin01"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "thin.vmdk"\n'
        'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "thick.vmdk"\n'
    )
    async with DirectoryCatalog(tmp_path) as catalog:
        point = await catalog.restore_point("thin01")
    assert {d.file_name: d.thin for d in point.disks} == {"thin.vmdk": True, "thick.vmdk": False}
