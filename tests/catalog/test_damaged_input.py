"""Damaged backups: truncated sparse files, NUL-padded descriptors, OVA manifests, CD-ROMs,
``inspect .``: each a clear error (or read as qemu reads it), never a traceback."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.ova import open_ova_disk
from liverecovery.catalog.vm_config import config_from_vmx, is_disk_device
from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.catalog.vmx import VmxFile
from liverecovery.cli import main
from liverecovery.datastore.flatdisk import FlatDisk
from liverecovery.errors import CatalogError, NfsError, NfsStatus
from liverecovery.testing import MemoryBlockCache
from liverecovery.testing.samples import make_vm_folder
from liverecovery.testing.vmdk_writer import (
    write_monolithic_flat,
    write_monolithic_sparse,
    write_stream_optimized,
)

MiB = 1 << 20
DATA = Path(__file__).parent / "data"
RUNS = {0: os.urandom(200_000), 3 * MiB: os.urandom(300_000), 7 * MiB: b"tail" * 1000}


# -- truncated and inconsistent sparse files -----------------------------------------------------


def truncated_sparse(tmp_path: Path) -> Path:
    path = write_monolithic_sparse(tmp_path / "t.vmdk", 8 * MiB, RUNS)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 200_000)  # the last grains are gone, the tables stay
    return path


def test_a_truncated_sparse_file_is_refused_by_its_allocation_map(tmp_path: Path) -> None:
    disk = open_vmdk(truncated_sparse(tmp_path))
    try:
        with pytest.raises(CatalogError, match=r"grain \d+ .* past the end of the file") as info:
            disk.allocation_sync()
        assert "t.vmdk" in str(info.value) and "truncated or damaged" in str(info.value)
        with pytest.raises(CatalogError, match="past the end of the file"):
            disk.read_sync(7 * MiB, 4096)
    finally:
        disk.close()


def test_qemu_img_check_agrees_that_it_is_damaged(tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    path = truncated_sparse(tmp_path)
    check = subprocess.run(["qemu-img", "check", "-f", "vmdk", str(path)], capture_output=True)
    assert check.returncode != 0


def test_inspect_reports_a_truncated_disk_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_vm_folder(tmp_path, "vm", disks=[(8 * MiB, RUNS)])
    (disk_file,) = [p for p in folder.glob("*.vmdk")]
    with disk_file.open("r+b") as f:
        f.truncate(disk_file.stat().st_size - 200_000)
    code = main(["inspect", str(folder)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    assert disk_file.name in err and "past the end of the file" in err


@pytest.mark.anyio
async def test_a_read_hitting_damage_is_an_nfs_io_error_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_stream_optimized(tmp_path / "s.vmdk", 8 * MiB, RUNS)
    disk = open_vmdk(path)
    (entry,) = [r for r in disk.allocation_sync() if r.offset == 3 * MiB]  # a data run
    raw = bytearray(path.read_bytes())
    # damage the compressed grain at 3 MiB: find its marker (LBA = sector of 3 MiB)
    lba = (3 * MiB // 512).to_bytes(8, "little")
    at = raw.find(lba)
    assert at > 0 and entry
    raw[at + 12 : at + 40] = b"\xff" * 28
    disk.close()
    path.write_bytes(bytes(raw))
    flat = await FlatDisk.open(source="vm/0", reader=open_vmdk(path), cache=MemoryBlockCache())
    caplog.set_level(logging.WARNING)
    with pytest.raises(NfsError) as info:
        await flat.read(3 * MiB, 65536)
    assert info.value.status is NfsStatus.IO
    lines = [r for r in caplog.records if r.name == "liverecovery.datastore.flatdisk"]
    assert len(lines) == 1 and lines[0].exc_info is None
    message = lines[0].getMessage()
    assert "s.vmdk" in message and str(3 * MiB) in message
    data, _ = await flat.read(0, 4096)
    assert data == RUNS[0][:4096]  # the rest still serves


# -- descriptors qemu-img padded with NULs -------------------------------------------------------


@pytest.mark.parametrize("padding", [b"\0\n", b"\0" * 300, b"\0" * 511 + b"\n", b"\n\0\0\r\n"])
def test_nul_padded_descriptors_read_as_qemu_reads_them(tmp_path: Path, padding: bytes) -> None:
    desc = write_monolithic_flat(tmp_path, "p", MiB, {0: b"padded"}, create_type="monolithicFlat")
    desc.write_bytes(desc.read_bytes() + padding)
    disk = open_vmdk(desc)
    try:
        assert disk.read_sync(0, 6) == b"padded"
    finally:
        disk.close()
    if shutil.which("qemu-img"):
        info = subprocess.run(["qemu-img", "info", str(desc)], capture_output=True, text=True)
        assert info.returncode == 0, info.stderr


def test_a_descriptor_is_read_to_its_first_nul_as_qemu_reads_it(tmp_path: Path) -> None:
    """qemu reads a descriptor as a C string: what follows the first NUL is not read (qemu-img
    leaves an old text's tail there). Cut before its extents, the descriptor is refused."""
    desc = write_monolithic_flat(tmp_path, "p", MiB, {}, create_type="monolithicFlat")
    text = desc.read_bytes()
    desc.write_bytes(text[:40] + b"\0" + text[40:])
    with pytest.raises(CatalogError):
        open_vmdk(desc)


# -- OVA manifests -------------------------------------------------------------------------------


def make_ova(tmp_path: Path, manifest: str | None) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "appliance.ovf", src / "appliance.ovf")
    write_stream_optimized(src / "appliance-disk1.vmdk", 24 * MiB, {0: b"one" * 1000})
    write_stream_optimized(src / "appliance-disk2.vmdk", 8 * MiB, {MiB: b"two" * 1000})
    names = ["appliance.ovf", "appliance-disk1.vmdk", "appliance-disk2.vmdk"]
    digests = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in names}
    if manifest is not None:
        (src / "appliance.mf").write_text(
            manifest.format(**{n.split(".")[0]: d for n, d in digests.items()})
        )
        names.append("appliance.mf")
    folder = tmp_path / "appliance"
    folder.mkdir()
    ova = folder / "appliance.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            tar.add(src / name, arcname=name)
    return ova, digests


GOOD = (
    "SHA256(appliance.ovf)= {appliance}\n"
    "SHA256(appliance-disk1.vmdk)= {appliance-disk1}\n"
    "SHA256(appliance-disk2.vmdk)= {appliance-disk2}\n"
)


def test_an_ova_matching_its_manifest_opens(tmp_path: Path) -> None:
    ova, _ = make_ova(tmp_path, GOOD)
    disk = open_ova_disk(ova, "appliance-disk1.vmdk")
    try:
        assert disk.read_sync(0, 3) == b"one"
    finally:
        disk.close()


def test_a_wrong_disk_digest_refuses_the_ova(tmp_path: Path) -> None:
    wrong = "0" * 64
    ova, digests = make_ova(tmp_path, GOOD.replace("{appliance-disk2}", wrong))
    with pytest.raises(CatalogError) as info:
        open_ova_disk(ova, "appliance-disk2.vmdk")
    message = str(info.value)
    assert "appliance-disk2.vmdk" in message
    assert wrong in message and digests["appliance-disk2.vmdk"] in message


@pytest.mark.anyio
async def test_the_catalog_refuses_to_serve_a_disk_failing_its_sha1(tmp_path: Path) -> None:
    ova, _ = make_ova(tmp_path, "SHA1(appliance-disk1.vmdk)= " + "ab" * 20 + "\n")
    catalog = DirectoryCatalog(ova.parent.parent)
    point = await catalog.restore_point("appliance")
    with pytest.raises(CatalogError, match=r"SHA1 [0-9a-f]{40}, the manifest says (ab){20}"):
        await catalog.open_disk(point, point.disks[0])
    reader = await catalog.open_disk(point, point.disks[1])  # not listed: nothing to verify
    await reader.aclose()


def test_a_malformed_manifest_is_refused(tmp_path: Path) -> None:
    ova, _ = make_ova(tmp_path, "SHA256(appliance-disk1.vmdk)= 1234\n")
    with pytest.raises(CatalogError, match="64 hex digits"):
        open_ova_disk(ova, "appliance-disk1.vmdk")


# -- devices that are not disks; inspect . ------------------------------------------------------


def test_cdroms_and_passthrough_devices_are_not_disks() -> None:
    vmx = VmxFile.parse(
        b'scsi0:0.fileName = "vm.vmdk"\n'
        b'scsi0:1.deviceType = "scsi-passthru"\n'
        b'scsi0:1.fileName = "/vmfs/devices/cdrom/mpx.vmhba32:C0:T0:L0"\n'
        b'ide1:0.deviceType = "atapi-cdrom"\n'
        b'ide1:0.fileName = "/vmfs/devices/cdrom/mpx.vmhba0:C0:T0:L0"\n'
        b'sata0:0.deviceType = "cdrom-raw"\n'
        b'sata0:0.fileName = "/vmfs/devices/cdrom/x.vmdk"\n'
    )
    assert [d.key for d in config_from_vmx(vmx).disks] == ["scsi0:0"]
    assert not is_disk_device(None, None, "/vmfs/devices/disks/naa.1.vmdk")
    assert is_disk_device("TRUE", "scsi-hardDisk", "vm_1.vmdk")


def test_inspect_dot_inside_a_vm_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_vm_folder(tmp_path, "web07", disks=[(MiB, {0: b"x"})])
    monkeypatch.chdir(folder)
    code = main(["inspect", "."])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0] == "web07"
    monkeypatch.chdir(folder / "..")
    assert main(["inspect", "web07/."]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "web07"


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_damaged_read_over_nfs_is_an_io_status_and_the_server_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from liverecovery.datastore.virtual import VirtualDatastore
    from liverecovery.nfs.client import NfsClient
    from liverecovery.nfs.localfs import LocalFilesystem
    from liverecovery.nfs.server import NfsServer

    path = write_stream_optimized(tmp_path / "s.vmdk", 8 * MiB, RUNS)
    raw = bytearray(path.read_bytes())
    at = raw.find((3 * MiB // 512).to_bytes(8, "little"))
    raw[at + 12 : at + 40] = b"\xff" * 28  # the grain at 3 MiB no longer inflates
    path.write_bytes(bytes(raw))
    folder = tmp_path / "folder"
    folder.mkdir()
    flat = await FlatDisk.open(source="vm/0", reader=open_vmdk(path), cache=MemoryBlockCache())
    fs = VirtualDatastore(LocalFilesystem(folder), {"disk-flat.vmdk": flat})
    caplog.set_level(logging.INFO)
    async with NfsServer(tmp_path / "state") as server:
        await server.export("/lr/h", ["127.0.0.1"])
        await server.publish("/lr/h", "job", fs)
        async with await NfsClient.connect("127.0.0.1", server.port, call_timeout=60) as client:
            root = await client.mount("/lr/h")
            job = await client.lookup_path(root, "job")
            fh, _ = await client.lookup(job, "disk-flat.vmdk")
            with pytest.raises(NfsError) as info:
                await client.read(fh, 3 * MiB, 65536)
            assert info.value.status is NfsStatus.IO
            data, _ = await client.read(fh, 0, 4096)  # the server serves on
            assert data == RUNS[0][:4096]
        await fs.aclose()
    assert not [r for r in caplog.records if r.exc_info is not None]  # no traceback anywhere
    damage = [r for r in caplog.records if "does not inflate" in r.getMessage()]
    assert len(damage) == 1 and "s.vmdk" in damage[0].getMessage()


@pytest.mark.anyio
async def test_a_catalog_of_dot_names_the_vm_after_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_vm_folder(tmp_path, "db07", disks=[(MiB, {0: b"x"})])
    monkeypatch.chdir(folder)
    catalog = DirectoryCatalog(".")  # what `browse .` builds
    assert list(await catalog.vm_names()) == ["db07"]
    point = await catalog.restore_point("db07")
    reader = await catalog.open_disk(point, point.disks[0])
    try:
        assert (await reader.read(0, 1)) == b"x"
    finally:
        await reader.aclose()
