"""Every qemu-made disk, served as a ``-flat.vmdk`` through the virtual datastore and our NFS
server, reads back as ``qemu-img convert -O raw``; writes through NFS land in the overlay, read
back over the backup's bytes, survive a server restart, and never touch the backup."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.config import MiB
from liverecovery.datastore.flatdisk import DiskOverlay, FlatDisk
from liverecovery.datastore.overlay import WriteOverlay
from liverecovery.datastore.virtual import VirtualDatastore
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import Stability
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer
from liverecovery.testing import MemoryBlockCache

from .conftest import Image

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

SMALL_IMAGES = ("monolithicSparse", "monolithicFlat", "streamOptimized", "zeroed", "delta2")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@asynccontextmanager
async def served(image: Image, work: Path) -> AsyncIterator[tuple[NfsClient, bytes]]:
    """Serve ``image`` as disk-flat.vmdk; yield a client and the flat file's handle."""
    folder, overlay_dir = work / "folder", work / "overlay"
    folder.mkdir(exist_ok=True)

    async def overlay() -> DiskOverlay:
        return await WriteOverlay.open(overlay_dir, size=image.size)

    reader = open_vmdk(image.vmdk)
    flat = await FlatDisk.open(
        source=image.name, reader=reader, cache=MemoryBlockCache(), overlay=overlay
    )
    fs = VirtualDatastore(LocalFilesystem(folder), {"disk-flat.vmdk": flat})
    async with NfsServer(work / "state") as server:
        await server.export("/lr/h", ["127.0.0.1"])
        await server.publish("/lr/h", "job", fs)
        async with await NfsClient.connect("127.0.0.1", server.port, call_timeout=60) as client:
            root = await client.mount("/lr/h")
            job = await client.lookup_path(root, "job")
            fh, _ = await client.lookup(job, "disk-flat.vmdk")
            yield client, fh
        await fs.aclose()


@pytest.mark.parametrize("name", SMALL_IMAGES)
async def test_served_flat_disk_equals_qemu_convert(
    images: dict[str, Image], tmp_path: Path, name: str
) -> None:
    image = images[name]
    before = sha256(image.vmdk)
    async with served(image, tmp_path) as (client, fh):
        attrs = await client.getattr(fh)
        assert attrs.size == image.size
        h = hashlib.sha256()
        offset = 0
        while offset < image.size:
            data, eof = await client.read(fh, offset, MiB)
            assert len(data) == min(MiB, image.size - offset)  # full count unless at EOF
            h.update(data)
            offset += len(data)
        assert eof
    assert h.hexdigest() == sha256(image.raw)
    assert sha256(image.vmdk) == before


@pytest.mark.parametrize("name", ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
async def test_five_gib_disk_across_extent_boundaries(
    images: dict[str, Image], tmp_path: Path, name: str
) -> None:
    image = images[name]
    async with served(image, tmp_path) as (client, fh):
        with open(image.raw, "rb") as raw:
            for mark in image.boundaries:
                start = max(0, mark - 70_000)
                data, _ = await client.read(fh, start, 140_000)
                raw.seek(start)
                assert data == raw.read(140_000), mark


writes = st.lists(
    st.tuples(
        st.integers(0, 48 * MiB - 1),
        st.binary(min_size=1, max_size=200_000),
        st.sampled_from([Stability.FILE_SYNC, Stability.DATA_SYNC, Stability.UNSTABLE]),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=writes)
async def test_random_writes_through_nfs_read_back_over_the_backup(
    images: dict[str, Image],
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[int, bytes, Stability]],
) -> None:
    image = images["monolithicSparse"]
    before = sha256(image.vmdk)
    model = bytearray(image.raw.read_bytes())
    async with served(image, tmp_path_factory.mktemp("w")) as (client, fh):
        for offset, data, stable in ops:
            data = data[: image.size - offset]
            await client.write(fh, offset, data, stable)
            model[offset : offset + len(data)] = data
        await client.commit(fh)
        for offset, data, _ in ops:
            window = max(0, offset - 1000)
            got, _ = await client.read(fh, window, len(data) + 2000)
            assert got == bytes(model[window : window + len(data) + 2000])
    assert sha256(image.vmdk) == before


async def test_stable_and_committed_writes_survive_a_server_restart(
    images: dict[str, Image], tmp_path: Path
) -> None:
    image = images["streamOptimized"]
    async with served(image, tmp_path) as (client, fh):
        r1 = await client.write(fh, 5 * MiB + 3, b"A" * 70_000, Stability.FILE_SYNC)
        await client.write(fh, 9 * MiB, b"B" * 4096, Stability.UNSTABLE)
        verifier = await client.commit(fh)
        assert r1.verifier == verifier
    async with served(image, tmp_path) as (client, fh2):
        assert fh2 == fh  # the same handle after the restart
        assert (await client.read(fh, 5 * MiB + 3, 70_000))[0] == b"A" * 70_000
        assert (await client.read(fh, 9 * MiB, 4096))[0] == b"B" * 4096
        raw = image.raw.read_bytes()
        assert (await client.read(fh, 0, 65_536))[0] == raw[:65_536]
        assert await client.commit(fh) != verifier  # a new write verifier after a restart
    await anyio.lowlevel.checkpoint()
