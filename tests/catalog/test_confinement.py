"""A backup's files can name anything; the reader opens only files inside the backup folder."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.catalog.vmdk.confine import device_path
from liverecovery.errors import CatalogError
from liverecovery.testing.samples import make_vm_folder
from liverecovery.testing.vmdk_writer import write_monolithic_flat, write_raw

MiB = 1 << 20
SECRET = b"SECRET-OUTSIDE-THE-BACKUP" * 100


def desc(extent: str, *, create_type: str = "vmfs", parent: str | None = None) -> str:
    lines = ["# Disk DescriptorFile", "version=1", "CID=fffffffe"]
    lines.append("parentCID=ffffffff")
    lines.append(f'createType="{create_type}"')
    if parent is not None:
        lines.append(f'parentFileNameHint="{parent}"')
    lines += ["", extent, "", 'ddb.adapterType = "lsilogic"', ""]
    return "\n".join(lines)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(VM folder, a secret file beside it, outside the folder)."""
    folder = tmp_path / "backups" / "vm"
    folder.mkdir(parents=True)
    secret = tmp_path / "backups" / "secret.img"
    secret.write_bytes(SECRET.ljust(MiB, b"\0"))
    write_raw(folder / "ok-flat.vmdk", MiB, {0: b"inside"})
    return folder, secret


@contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every path ``os.open`` is asked to open (what FileWindow uses), in order."""
    opened: list[str] = []
    real_open = os.open

    def spy(path: str | bytes | os.PathLike[str], *args: int, **kwargs: int) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    os.open = spy  # type: ignore[assignment]
    try:
        yield opened
    finally:
        os.open = real_open


def refused(path: Path, *words: str) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        open_vmdk(path).close()
    message = str(info.value)
    assert str(path) in message  # names the descriptor
    for word in words:
        assert word in message
    return info.value


@pytest.mark.parametrize(
    "name",
    [
        "/dev/sda",
        "/dev/../dev/zero",
        "\\\\.\\PhysicalDrive3",
        "//./PhysicalDrive0",
        "C:\\VMs\\disk-flat.vmdk",
        "\\\\server\\share\\disk-flat.vmdk",
        "/vmfs/devices/disks/naa.600508b1001c",
    ],
)
def test_device_extents_are_refused(layout: tuple[Path, Path], name: str) -> None:
    folder, _ = layout
    vmdk = folder / "d.vmdk"
    vmdk.write_text(desc(f'RW 2048 VMFS "{name}"'))
    with recording_opens() as opened:
        refused(vmdk, repr(name), "not a file of the backup")
    assert opened == [str(vmdk)]  # only the descriptor was opened


def test_escaping_extents_are_refused(layout: tuple[Path, Path]) -> None:
    folder, secret = layout
    vmdk = folder / "d.vmdk"
    for name in ("../secret.img", str(secret), "sub/../../secret.img"):
        vmdk.write_text(desc(f'RW 2048 VMFS "{name}"'))
        refused(vmdk, repr(name), "outside the backup folder")
    (folder / "link-flat.vmdk").symlink_to(secret)
    vmdk.write_text(desc('RW 2048 VMFS "link-flat.vmdk"'))
    refused(vmdk, "'link-flat.vmdk'", "outside the backup folder")


def test_symlink_inside_the_folder_is_followed(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "alias-flat.vmdk").symlink_to("ok-flat.vmdk")
    vmdk = folder / "d.vmdk"
    vmdk.write_text(desc('RW 2048 VMFS "alias-flat.vmdk"'))
    disk = open_vmdk(vmdk)
    try:
        assert disk.read_sync(0, 6) == b"inside"
    finally:
        disk.close()


def test_a_descriptor_symlinked_out_of_the_confinement_is_refused(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, _ = layout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_monolithic_flat(elsewhere, "x", MiB, {0: b"x"})
    (folder / "x.vmdk").symlink_to(elsewhere / "x.vmdk")
    with pytest.raises(CatalogError, match="outside the backup folder"):
        open_vmdk(folder / "x.vmdk", confine=folder)


def test_fifo_and_device_nodes_in_the_folder_are_not_read(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    os.mkfifo(folder / "pipe-flat.vmdk")
    vmdk = folder / "d.vmdk"
    vmdk.write_text(desc('RW 2048 VMFS "pipe-flat.vmdk"'))
    refused(vmdk, "not a regular file")  # and did not hang on the FIFO


@pytest.mark.parametrize(
    "create_type, extent",
    [
        ("fullDevice", 'RW 2048 FLAT "/dev/sdb" 0'),
        ("partitionedDevice", 'RW 2048 FLAT "/dev/sdb1" 0'),
        ("vmfsRawDeviceMap", 'RW 2048 VMFSRDM "vm-rdm.vmdk"'),
        ("vmfsPassthroughRawDeviceMap", 'RW 2048 VMFSRDM "vm-rdmp.vmdk"'),
        ("vmfs", 'RW 2048 VMFSRAW "/vmfs/devices/disks/naa.1"'),
    ],
)
def test_host_device_disks_are_refused_as_such(
    layout: tuple[Path, Path], create_type: str, extent: str
) -> None:
    folder, _ = layout
    vmdk = folder / "d.vmdk"
    vmdk.write_text(desc(extent, create_type=create_type))
    err = refused(vmdk, "host device disk", "not in the backup")
    assert "missing" not in str(err)


def test_parent_hint_escapes_are_refused(layout: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = layout
    write_monolithic_flat(tmp_path / "backups", "base", MiB, {0: b"base"})  # outside vm/
    child = folder / "child.vmdk"
    extent = 'RW 2048 VMFS "ok-flat.vmdk"'
    for hint in ("../base.vmdk", "/dev/sda", "\\\\.\\PhysicalDrive0"):
        child.write_text(desc(extent, create_type="vmfsSparse", parent=hint))
        refused(child, repr(hint))


def test_esxi_absolute_parent_hint_is_found_beside_the_child(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    write_monolithic_flat(folder, "base", MiB, {0: b"base"})
    child = folder / "child.vmdk"
    hint = "/vmfs/volumes/5f1e-datastore1/vm/base.vmdk"
    child.write_text(desc("RW 2048 ZERO", create_type="vmfsSparse", parent=hint))
    disk = open_vmdk(child)
    try:
        assert disk.parent is not None
        assert disk.parent.path.endswith("base.vmdk")
    finally:
        disk.close()


def test_device_path_decisions() -> None:
    for name in ("/dev/sda", "/dev", "\\\\.\\PhysicalDrive3", "\\\\?\\Volume{x}", "/proc/1/mem"):
        assert device_path(name), name
    for name in ("disk-flat.vmdk", "/vmfs/volumes/ds/vm/x.vmdk", "dev/sda", "/devices"):
        assert not device_path(name), name


# -- hostile descriptors, generated -----------------------------------------------------------

_HOSTILE = st.one_of(
    st.sampled_from(
        [
            "ok-flat.vmdk",
            "../secret.img",
            "../../etc/passwd",
            "/etc/passwd",
            "/dev/zero",
            "\\\\.\\PhysicalDrive1",
            "trap-flat.vmdk",  # a symlink to the secret
            "dirlink/secret.img",  # a symlinked folder leading out
            "./../vm/../secret.img",
            "missing-flat.vmdk",
            ".",
            "..",
        ]
    ),
    st.lists(
        st.sampled_from(["..", ".", "vm", "dirlink", "secret.img", "ok-flat.vmdk"]),
        min_size=1,
        max_size=5,
    ).map("/".join),
    st.text(
        alphabet=st.characters(blacklist_characters='"\n\r\x00', blacklist_categories=("Cs",)),
        min_size=1,
        max_size=30,
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(_HOSTILE, min_size=1, max_size=4), parent=st.none() | _HOSTILE)
def test_hostile_descriptors_never_open_outside(
    layout: tuple[Path, Path], names: list[str], parent: str | None
) -> None:
    folder, secret = layout
    if not (folder / "trap-flat.vmdk").is_symlink():
        (folder / "trap-flat.vmdk").symlink_to(secret)
        (folder / "dirlink").symlink_to(secret.parent)
    vmdk = folder / "hostile.vmdk"
    extents = "\n".join(f'RW 2048 VMFS "{name}"' for name in names)
    vmdk.write_text(desc(extents, parent=parent))
    with recording_opens() as opened:
        try:
            disk = open_vmdk(vmdk)
        except CatalogError as exc:
            assert str(vmdk) in str(exc)
        else:
            try:
                assert SECRET[:16] not in disk.read_sync(0, disk.size)
            finally:
                disk.close()
    root = os.path.realpath(folder)
    for path in opened:
        real = os.path.realpath(path)
        assert os.path.commonpath([root, real]) == root, f"opened {path!r} -> {real!r}"


# -- the catalog ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_catalog_refuses_files_symlinked_out_of_the_vm_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = make_vm_folder(root, "vm", disks=[(MiB, {0: b"a"})], format="monolithicFlat")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    nvram = folder / "vm.nvram"
    nvram.unlink()
    nvram.symlink_to(secret)
    catalog = DirectoryCatalog(root)
    point = await catalog.restore_point("vm")
    with pytest.raises(CatalogError, match="outside the backup folder"):
        await catalog.read_file(point, "vm.nvram")
    disk = point.disks[0]
    flat = folder / disk.file_name.replace(".vmdk", "-flat.vmdk")
    flat.rename(tmp_path / flat.name)
    flat.symlink_to(tmp_path / flat.name)
    with pytest.raises(CatalogError, match="outside the backup folder"):
        await catalog.restore_point("vm")


@pytest.mark.anyio
async def test_an_ova_descriptor_member_cannot_name_files_beside_the_ova(tmp_path: Path) -> None:
    from liverecovery.catalog.ova import open_ova_disk

    secret = tmp_path / "secret-flat.vmdk"
    secret.write_bytes(SECRET.ljust(MiB, b"\0"))
    member = tmp_path / "disk.vmdk"
    member.write_text(desc('RW 2048 VMFS "secret-flat.vmdk"'))
    ova = tmp_path / "x.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(member, "disk.vmdk")
    with pytest.raises(CatalogError, match="inside an archive names extent file"):
        open_ova_disk(ova, "disk.vmdk")


def test_a_path_swapped_for_a_symlink_after_the_check_is_refused_on_the_open_file(
    layout: tuple[Path, Path],
) -> None:
    from liverecovery.catalog.vmdk.extents import FileWindow

    folder, secret = layout
    swapped = folder / "swapped-flat.vmdk"
    swapped.symlink_to(secret)  # as if swapped in after the caller resolved the name
    with pytest.raises(CatalogError, match="outside the backup folder"):
        FileWindow(str(swapped), root=os.path.realpath(folder))
    window = FileWindow(str(folder / "ok-flat.vmdk"), root=os.path.realpath(folder))
    window.close()
