"""The object-storage catalog reads a backup put in a real S3 store (Ceph RGW) exactly as the
folder catalog reads the same folder: VMs, restore points, every extent form, byte for byte."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from liverecovery.backends import AllocationRun, CatalogReader, RunKind
from liverecovery.catalog.directory import DirectoryCatalog
from liverecovery.catalog.object_catalog import ObjectCatalog
from liverecovery.testing.objstore import RadosGateway, object_digests

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


def _catalog(rgw: RadosGateway, url: str) -> ObjectCatalog:
    return ObjectCatalog(url, environ=rgw.environ())


async def _everything(catalog: CatalogReader) -> dict[str, object]:
    out: dict[str, object] = {}
    for vm in await catalog.vm_names():
        for point in await catalog.restore_points(vm):
            # the creation time of a point without a date comes from the file's or object's
            # modification time: compare the rest
            out[f"{vm}/{point.point_id}"] = attrs.evolve(point, created=None)
            for disk in point.disks:
                reader = await catalog.open_disk(point, disk)
                try:
                    data = await reader.read(0, disk.capacity_bytes)
                    runs = await reader.allocation()
                finally:
                    await reader.aclose()
                out[f"{vm}/{point.point_id}/{disk.file_name}"] = (data, list(runs))
            out[f"{vm}/{point.point_id}/nvram"] = await catalog.read_file(point, "forms.nvram")
    return out


async def test_every_extent_form_reads_as_from_the_folder(
    rgw: RadosGateway, every_form: Path, forms_url: str
) -> None:
    local = await _everything(DirectoryCatalog(every_form))
    async with _catalog(rgw, forms_url) as catalog:
        remote = await _everything(catalog)
        assert catalog.bytes_read > 0
    assert sorted(remote) == sorted(local)
    assert len([k for k in local if k.endswith(".vmdk")]) == 12
    for key, value in local.items():
        if "flat.vmdk" in key:
            # An object has no holes to find (no SEEK_DATA): a flat extent is data end to end;
            # its bytes are the same.
            data, _runs = value  # type: ignore[misc]
            assert remote[key] == (data, [AllocationRun(0, len(data), RunKind.DATA)]), key
        else:
            assert remote[key] == value, key


@pytest.mark.parametrize("sub", ["forms", "forms/forms-2025-03-02_22-00-00"])
async def test_a_prefix_inside_the_root_lists_as_the_folder_does(
    rgw: RadosGateway, every_form: Path, forms_url: str, sub: str
) -> None:
    local = DirectoryCatalog(every_form / sub)
    async with _catalog(rgw, f"{forms_url}/{sub}") as catalog:
        names = await catalog.vm_names()
        assert names == await local.vm_names()
        for name in names:
            ours = [attrs.evolve(p, created=None) for p in await catalog.restore_points(name)]
            theirs = [attrs.evolve(p, created=None) for p in await local.restore_points(name)]
            assert ours == theirs


async def test_dated_points_oldest_first(rgw: RadosGateway, forms_url: str) -> None:
    async with _catalog(rgw, forms_url) as catalog:
        assert await catalog.vm_names() == ["forms"]
        points = await catalog.restore_points("forms")
        assert [p.point_id for p in points] == [
            "forms-2025-03-01_22-00-00",
            "forms-2025-03-02_22-00-00",
        ]
        newest = await catalog.restore_point("forms")
        assert newest.point_id == "forms-2025-03-02_22-00-00"
        assert newest.nvram_name == "forms.nvram"


async def test_reading_never_writes_the_backup(rgw: RadosGateway, forms_url: str) -> None:
    before = object_digests(rgw.store(), "forms-root")
    async with _catalog(rgw, forms_url) as catalog:
        point = await catalog.restore_point("forms")
        for disk in point.disks:
            reader = await catalog.open_disk(point, disk)
            await reader.read(0, disk.capacity_bytes)
            await reader.aclose()
    assert object_digests(rgw.store(), "forms-root") == before
