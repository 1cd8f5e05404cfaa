"""OVA exports stored as objects are read in place, as the folder catalog reads them on disk:
the tar's headers through a small buffer, the members with ranged GETs, the manifest checked
before a disk is served, and nothing written to the store."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import attrs
import pytest

from liverecovery.backends import CatalogReader
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.config import MiB
from liverecovery.errors import CatalogError
from liverecovery.testing.objstore import RadosGateway, object_digests, upload_tree
from liverecovery.testing.vmdk_writer import write_stream_optimized

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

OVF = Path(__file__).parent.parent / "catalog" / "data" / "appliance.ovf"
DISKS = ("appliance-disk1.vmdk", "appliance-disk2.vmdk")


def make_ova(folder: Path, work: Path, *, wrong_digest_of: str | None = None) -> Path:
    """``folder/appliance.ova``: the OVF, two streamOptimized disks and a SHA-256 manifest."""
    work.mkdir(parents=True)
    shutil.copy(OVF, work / "appliance.ovf")
    write_stream_optimized(work / DISKS[0], 24 * MiB, {0: b"one" * 1000, 9 * MiB: b"x" * 70000})
    write_stream_optimized(work / DISKS[1], 8 * MiB, {MiB: b"two" * 1000})
    names = ["appliance.ovf", *DISKS]
    lines = []
    for name in names:
        digest = hashlib.sha256((work / name).read_bytes()).hexdigest()
        lines.append(f"SHA256({name})= {'0' * 64 if name == wrong_digest_of else digest}\n")
    (work / "appliance.mf").write_text("".join(lines))
    folder.mkdir(parents=True, exist_ok=True)
    ova = folder / "appliance.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in [*names, "appliance.mf"]:
            tar.add(work / name, arcname=name)
    return ova


async def everything(catalog: CatalogReader) -> dict[str, object]:
    out: dict[str, object] = {}
    for vm in await catalog.vm_names():
        for point in await catalog.restore_points(vm):
            out[f"{vm}/{point.point_id}"] = attrs.evolve(point, created=None)
            for disk in point.disks:
                reader = await catalog.open_disk(point, disk)
                try:
                    out[f"{vm}/{point.point_id}/{disk.file_name}"] = (
                        await reader.read(0, disk.capacity_bytes),
                        list(await reader.allocation()),
                    )
                finally:
                    await reader.aclose()
            for name in (point.vmx_name, "appliance.ovf", "appliance.mf"):
                out[f"{vm}/{point.point_id}/{name}"] = await catalog.read_file(point, name)
    return out


async def test_an_ova_in_the_store_reads_as_on_disk(rgw: RadosGateway, tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_ova(root / "appliance", tmp_path / "a")
    make_ova(root / "appliance" / "appliance-2025-03-01_22-00-00", tmp_path / "b")
    upload_tree(rgw.store(), root, "ova-root")
    before = object_digests(rgw.store(), "ova-root")
    local = await everything(DirectoryCatalog(root))
    async with ObjectCatalog(rgw.url("ova-root"), environ=rgw.environ()) as catalog:
        remote = await everything(catalog)
        points = await catalog.restore_points("appliance")
    assert sorted(remote) == sorted(local) and remote == local
    assert [p.point_id for p in points] == ["appliance-2025-03-01_22-00-00", "appliance"]
    assert {p.vmx_name for p in points} == {"appliance.vmx"}  # synthesized from the OVF
    data, _ = remote["appliance/appliance/appliance-disk1.vmdk"]  # type: ignore[misc]
    assert data[:3000] == b"one" * 1000 and data[9 * MiB : 9 * MiB + 70000] == b"x" * 70000
    assert object_digests(rgw.store(), "ova-root") == before  # nothing written


async def test_a_member_failing_the_manifest_is_refused_by_url(
    rgw: RadosGateway, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    make_ova(root / "bad", tmp_path / "a", wrong_digest_of=DISKS[1])
    upload_tree(rgw.store(), root, "ova-bad")
    async with ObjectCatalog(rgw.url("ova-bad"), environ=rgw.environ()) as catalog:
        point = await catalog.restore_point("bad")
        reader = await catalog.open_disk(point, point.disks[0])  # its digest matches
        await reader.aclose()
        with pytest.raises(CatalogError) as info:
            await catalog.open_disk(point, point.disks[1])
    message = str(info.value)
    assert rgw.url("ova-bad/bad/appliance.ova") in message
    assert DISKS[1] in message and "0" * 64 in message


async def test_an_ova_that_is_no_tar_is_a_clear_error(rgw: RadosGateway, tmp_path: Path) -> None:
    folder = tmp_path / "root" / "junk"
    folder.mkdir(parents=True)
    (folder / "junk.ova").write_bytes(b"not a tar at all" * 100)
    upload_tree(rgw.store(), tmp_path / "root", "ova-junk")
    async with ObjectCatalog(rgw.url("ova-junk"), environ=rgw.environ()) as catalog:
        with pytest.raises(CatalogError) as info:
            await catalog.restore_points("junk")
    assert rgw.url("ova-junk/junk/junk.ova") in str(info.value)
    assert "tar" in str(info.value)
