"""Real files from public repositories (see SOURCES.md) through our parsers, and disks built
from them read byte for byte as qemu reads them."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from liverecovery.backends import RunKind
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.ovf import parse_ovf
from liverecovery.catalog.vm_config import config_from_vmx
from liverecovery.catalog.vmdk import open_vmdk, parse_descriptor
from liverecovery.catalog.vmx import VmxFile
from liverecovery.errors import CatalogError
from liverecovery.testing.vmdk_writer import write_stream_optimized

FILES = Path(__file__).parent / "files"
MiB = 1 << 20
needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def test_every_corpus_file_is_recorded_in_sources() -> None:
    sources = (Path(__file__).parent / "SOURCES.md").read_text()
    for path in FILES.rglob("*"):
        if path.is_file():
            assert f"`{path.relative_to(FILES.parent)}`" in sources, path.name


# -- descriptors ---------------------------------------------------------------------------------


def test_libvmdk_descriptor_parses() -> None:
    desc = parse_descriptor((FILES / "libvmdk-descriptor_file.1.vmdk").read_text("latin-1"))
    assert desc.create_type == "monolithicSparse"
    assert desc.cid == "fffffffe" and desc.parent_file_name is None
    (extent,) = desc.extents
    assert (extent.sectors, extent.type.value, extent.file_name) == (
        16777216,
        "SPARSE",
        "test1.vmdk",
    )
    assert desc.ddb["ddb.adaptertype"] == "ide"
    assert desc.capacity_bytes == 8 << 30


def qemu_map(path: Path) -> list[tuple[int, int, bool]]:
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "vmdk", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [(e["start"], e["length"], bool(e["data"])) for e in json.loads(out)]


@needs_qemu
def test_a_disk_built_from_the_libvmdk_descriptor_reads_as_qemu_reads_it(tmp_path: Path) -> None:
    # The real descriptor, beside a sparse extent of the size it declares. qemu refuses a
    # separate descriptor whose createType is monolithicSparse (it expects that descriptor
    # inside the sparse file) and reads it as twoGbMaxExtentSparse, the hosted type whose
    # descriptor is a file of its own; we read both.
    real = (FILES / "libvmdk-descriptor_file.1.vmdk").read_bytes()
    (tmp_path / "disk.vmdk").write_bytes(real)
    (tmp_path / "qemu.vmdk").write_bytes(
        real.replace(b'createType="monolithicSparse"', b'createType="twoGbMaxExtentSparse"')
    )
    run = {"cwd": tmp_path, "check": True, "capture_output": True}
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse",
                    "test1.vmdk", str(16777216 * 512)], **run)  # type: ignore[call-overload]  # fmt: skip
    spots = [(0, 4096, 0x11), (65536 - 512, 1024, 0x22), (3 << 30, 1 << 20, 0x33),
             ((8 << 30) - 65536, 65536, 0x44)]  # fmt: skip
    for offset, length, pattern in spots:
        subprocess.run(["qemu-io", "-f", "vmdk", "-c", f"write -P {pattern} {offset} {length}",
                        "test1.vmdk"], **run)  # type: ignore[call-overload]  # fmt: skip
    disk = open_vmdk(tmp_path / "disk.vmdk")
    try:
        assert disk.size == 8 << 30
        for offset, length, pattern in spots:
            lo, hi = max(0, offset - 700), min(disk.size, offset + length + 700)
            expected = bytearray(hi - lo)
            expected[offset - lo : offset - lo + length] = bytes([pattern]) * length
            assert disk.read_sync(lo, hi - lo) == bytes(expected)
        ours = [(r.offset, r.length, r.kind is RunKind.DATA) for r in disk.allocation_sync()]
    finally:
        disk.close()
    assert merge(ours) == merge(qemu_map(tmp_path / "qemu.vmdk"))
    refused = subprocess.run(["qemu-img", "info", "disk.vmdk"], **run | {"check": False})  # type: ignore[call-overload]  # fmt: skip
    assert b"Unsupported image type 'monolithicSparse'" in refused.stderr
    with_qemu = qemu_raw_range(tmp_path / "qemu.vmdk", 3 << 30, 1 << 20)
    disk = open_vmdk(tmp_path / "disk.vmdk")
    try:
        assert disk.read_sync(3 << 30, 1 << 20) == with_qemu
    finally:
        disk.close()


def qemu_raw_range(disk: Path, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` as qemu reads them (qemu-io's dump, hex-decoded)."""
    out = subprocess.run(
        ["qemu-io", "-r", "-f", "vmdk", "-c", f"read -v {offset} {length}", str(disk)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    data = bytearray()
    for line in out.splitlines():
        head, sep, _ = line.partition(":  ")
        if sep and all(c in "0123456789abcdef" for c in head):
            data += bytes.fromhex(line[len(head) + 3 :].split("  ")[0].replace(" ", ""))
    return bytes(data)


def qemu_raw(disk: Path, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(disk), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return out.read_bytes()


def merge(runs: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    out: list[tuple[int, int, bool]] = []
    for start, length, data in runs:
        if out and out[-1][2] == data and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, data)
        else:
            out.append((start, length, data))
    return out


@needs_qemu
@pytest.mark.parametrize("name", ["vmdk-monolith", "vmdk-streamoptimized"])
def test_go_vmdk_parser_images_read_as_qemu_reads_them(tmp_path: Path, name: str) -> None:
    image = FILES / f"go-vmdk-parser-{name}.img"
    reference = qemu_raw(image, tmp_path / "ref.raw")
    disk = open_vmdk(image)
    try:
        assert disk.read_sync(0, disk.size) == reference
        ours = [(r.offset, r.length, r.kind is RunKind.DATA) for r in disk.allocation_sync()]
    finally:
        disk.close()
    assert merge(ours) == merge(qemu_map(image))


@needs_qemu
def test_the_invalid_go_vmdk_parser_image_is_refused_by_both(tmp_path: Path) -> None:
    image = FILES / "go-vmdk-parser-vmdk-invalid.img"
    qemu = subprocess.run(["qemu-img", "info", "-f", "vmdk", str(image)], capture_output=True)
    assert qemu.returncode != 0
    with pytest.raises(CatalogError) as info:
        open_vmdk(image).close()
    assert image.name in str(info.value)


# -- .vmx ------------------------------------------------------------------------------------------


def test_osv_vmx() -> None:
    config = config_from_vmx(VmxFile.parse((FILES / "osv-gen-vmx.vmx").read_bytes()))
    assert (config.display_name, config.guest_os, config.memory_mb) == ("osv", "ubuntu-64", 1024)
    assert [(d.key, d.file_name, d.adapter) for d in config.disks] == [
        ("scsi0:0", "osv.vmdk", "pvscsi")
    ]


def test_docker_machine_vmx_template() -> None:
    raw = (FILES / "docker-machine-fusion.vmx").read_bytes()
    vmx = VmxFile.parse(raw)  # an unquoted value (tools.syncTime.period = 1) included
    assert vmx.get("tools.syncTime.period") == "1"
    with pytest.raises(CatalogError, match=r"mem[sS]ize is not a number"):
        config_from_vmx(vmx, path="fusion.vmx")  # "{{.Memory}}": a clear error, no traceback
    filled = raw.replace(b"{{.Memory}}", b"2048").replace(b"{{.CPU}}", b"2")
    config = config_from_vmx(VmxFile.parse(filled))
    assert (config.memory_mb, config.num_cpus) == (2048, 2)
    # the CD-ROM on sata0:1 is not a disk
    assert [(d.key, d.file_name) for d in config.disks] == [("scsi0:0", "{{.MachineName}}.vmdk")]


# -- OVF envelopes -----------------------------------------------------------------------------------


def fill(template: bytes, name: str, capacity: int, file_size: int) -> bytes:
    values = {
        b"@@NAME@@": name.encode(),
        b"@@NUM_CPUS@@": b"2",
        b"@@MEM_SIZE@@": b"1024",
        b"@@VMDK_CAPACITY@@": str(capacity).encode(),
        b"@@VMDK_FILE_SIZE@@": str(file_size).encode(),
        b"@@FIRMWARE@@": b"bios",
    }
    for key, value in values.items():
        template = template.replace(key, value)
    return template


@pytest.mark.parametrize("hw", ["hw7", "hw14", "hw21"])
def test_open_vmdk_ovf_templates_parse(hw: str) -> None:
    template = (FILES / f"open-vmdk-template-{hw}.ovf").read_bytes()
    vm = parse_ovf(fill(template, "corpus", 8 * MiB, 12345), path=hw)
    assert (vm.config.num_cpus, vm.config.memory_mb) == (2, 1024)
    (disk,) = vm.disks
    assert disk.ref.file_name == "corpus-disk1.vmdk"
    assert disk.capacity_bytes == 8 * MiB


@needs_qemu
@pytest.mark.anyio
@pytest.mark.parametrize("hw", ["hw7", "hw14", "hw21"])
async def test_an_ova_made_from_the_open_vmdk_template_serves_qemus_bytes(
    tmp_path: Path, hw: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(hw)
    disk = write_stream_optimized(
        src / "corpus-disk1.vmdk", 8 * MiB, {0: rng.randbytes(300_000), 5 * MiB: b"z" * 70_000}
    )
    ovf = fill((FILES / f"open-vmdk-template-{hw}.ovf").read_bytes(), "corpus", 8 * MiB,
               disk.stat().st_size)  # fmt: skip
    (src / "corpus.ovf").write_bytes(ovf)
    digests = {n: hashlib.sha256((src / n).read_bytes()).hexdigest()
               for n in ("corpus.ovf", "corpus-disk1.vmdk")}  # fmt: skip
    (src / "corpus.mf").write_text("".join(f"SHA256({n})= {d}\n" for n, d in digests.items()))
    vm_folder = tmp_path / "root" / "corpus"
    vm_folder.mkdir(parents=True)
    with tarfile.open(vm_folder / "corpus.ova", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("corpus.ovf", "corpus.mf", "corpus-disk1.vmdk"):
            tar.add(src / name, arcname=name)
    reference = qemu_raw(disk, tmp_path / "ref.raw")
    catalog = DirectoryCatalog(tmp_path / "root")
    point = await catalog.restore_point("corpus")
    assert [d.file_name for d in point.disks] == ["corpus-disk1.vmdk"]
    reader = await catalog.open_disk(point, point.disks[0])
    try:
        assert await reader.read(0, 8 * MiB) == reference
    finally:
        await reader.aclose()


# -- govmomi's OVF fixtures and content-library OVA ---------------------------------------------

GOVMOMI = FILES / "govmomi"
# file -> (CPUs, memory MiB, disk files) for some; the others only must parse or be refused
EXPECTED = {
    "ttylinux.ovf": (1, 32, ["ttylinux-pc_i486-16.1-disk1.vmdk"]),
    # OVF 0.9 (Content xsi:type="ovf:VirtualSystem_Type", InstanceId), memory in MegaBytes
    "external__smallxp-vapp__smallxp-vapp.ovf": (2, 512, ["smallxp-vapp.vmdk"]),
    "external__OVFCerts__Valid_Cert__Nostalgia.ovf": (1, 16, ["Nostalgia-disk1.vmdk"]),
}


@pytest.mark.parametrize("name", sorted(p.name for p in GOVMOMI.glob("*.ovf")))
def test_govmomi_ovf_fixtures_parse_or_are_refused_clearly(name: str) -> None:
    data = (GOVMOMI / name).read_bytes()
    try:
        vm = parse_ovf(data, path=name)
    except CatalogError as exc:
        assert name in str(exc)  # a clear error naming the file, never another exception
        return
    for disk in vm.disks:
        assert disk.capacity_bytes >= 0 and disk.ref.file_name
    expected = EXPECTED.get(name)
    if expected is not None:
        cpus, memory, files = expected
        assert (vm.config.num_cpus, vm.config.memory_mb) == (cpus, memory)
        assert [d.ref.file_name for d in vm.disks] == files


def test_megabytes_memory_units_as_virtualbox_writes_them() -> None:
    vm = parse_ovf((GOVMOMI / "external__smallxp-vapp__smallxp-vapp.ovf").read_bytes())
    assert vm.config.memory_mb == 512


def test_a_404_page_saved_as_an_ovf_is_refused() -> None:
    name = "external__DeleteHDTestdata__PvScsis_old__descriptor.ovf"
    with pytest.raises(CatalogError, match=r"no VirtualSystem|not well-formed"):
        parse_ovf((GOVMOMI / name).read_bytes(), path=name)


def test_the_content_library_ova_manifest_is_checked_and_its_zero_disk_refused(
    tmp_path: Path,
) -> None:
    from liverecovery.catalog.ova import open_ova_disk

    ova = tmp_path / "ttylinux.ova"
    shutil.copy(GOVMOMI / "ttylinux-pc_i486-16.1.ova", ova)
    member = "ttylinux-pc_i486-16.1-disk1.vmdk"
    # its sha1sum --tag manifest matches; the disk (the first MiB of a streamOptimized disk)
    # is then refused as what it is: truncated
    with pytest.raises(CatalogError, match="footer") as info:
        open_ova_disk(ova, member)
    assert member in str(info.value)
    # one byte of the disk changed: the manifest refuses it first, naming both digests
    with tarfile.open(ova) as tar:
        offset = tar.getmember(member).offset_data
    with ova.open("r+b") as f:
        f.seek(offset + 4096)
        f.write(b"\1")
    with pytest.raises(CatalogError, match="648e20a1e1625b1bb963b08c926bc18e62f15dfc") as info:
        open_ova_disk(ova, member)
    assert "does not match the manifest" in str(info.value)
