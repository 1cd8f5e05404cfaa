"""Owners of growing lease epochs over one shared state, with fenced owners whose PUTs land
late: every owner restores exactly what the owner before it served (a late PUT into an older
epoch is never seen), for overlays and for VM folders (``datastore/store_epochs.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.catalog.shared_state import DirectorySharedState
from liverecovery.datastore.flatdisk import DiskOverlay
from liverecovery.datastore.folder_store import StoreBackedFolder
from liverecovery.datastore.overlay_store import store_backed_overlays
from liverecovery.datastore.store_epochs import complete_epoch
from liverecovery.nfs.filesystem import SetAttributes, Stability

pytestmark = pytest.mark.timeout(300)

BS = 64 * 1024
SIZE = 6 * BS
JOB = "job1"

# a step: ("write", block, byte) by the owner; ("late", block, byte): the owner before the
# current one (fenced) writes, its PUT landing now; ("takeover", 0, 0): a new owner opens
_steps = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "late", "takeover"]),
        st.integers(0, SIZE // BS - 1),
        st.integers(1, 255),
    ),
    max_size=14,
)


async def _image(overlay: DiskOverlay) -> bytes:
    image = bytearray(SIZE)
    for start, n in overlay.held(0, SIZE):
        image[start : start + n] = await overlay.read(start, n)
    return bytes(image)


def _base(overlay: DiskOverlay, offset: int, n: int) -> dict[int, bytes]:
    return {o: bytes(length) for o, length in overlay.to_fill(offset, n)}


async def _overlay_run(root: Path, steps: list[tuple[str, int, int]]) -> None:
    state = DirectorySharedState(root / "state")
    model = bytearray(SIZE)  # what the current owner serves
    owners: list[DiskOverlay] = []

    async def take_over() -> DiskOverlay:
        epoch = len(owners) + 1
        directory = root / f"node{epoch}" / "jobs" / JOB / "overlays" / "scsi0_0"
        overlay = await store_backed_overlays(state, epoch)(directory, SIZE)
        assert await _image(overlay) == bytes(model), f"owner {epoch} restored other bytes"
        owners.append(overlay)
        return overlay

    try:
        await take_over()
        for kind, block, byte in steps:
            if kind == "takeover":
                await take_over()
                continue
            writer = owners[-1] if kind == "write" else (owners[-2] if len(owners) > 1 else None)
            if writer is None:
                continue
            offset = block * BS + 100
            data = bytes([byte]) * 3000
            await writer.write(offset, data, Stability.FILE_SYNC, _base(writer, offset, 3000))
            if kind == "write":
                model[offset : offset + len(data)] = data
        await take_over()
        assert await complete_epoch(state, JOB, "overlay-scsi0_0") == len(owners)
    finally:
        for overlay in owners:
            await overlay.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_steps)
def test_overlay_owners_never_see_a_fenced_owners_late_put(
    steps: list[tuple[str, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(_overlay_run, Path(tmp), steps)


def test_a_late_put_for_a_block_the_next_owner_did_not_write_is_not_restored(
    tmp_path: Path,
) -> None:
    """The case docs/scale-out.md once left open: owner 1 (fenced) PUTs block 2 late, after
    owner 2 restored; owner 2 never writes block 2; owner 3 must serve what owner 2 served
    (with the highest epoch of each block winning, it served owner 1's late block)."""
    anyio.run(
        _overlay_run,
        tmp_path,
        [("write", 0, 1), ("takeover", 0, 0), ("late", 2, 2), ("write", 1, 3)],
    )


async def _folder_run(root: Path, steps: list[tuple[str, int, int]]) -> None:
    state = DirectorySharedState(root / "state")
    model = bytearray(SIZE)
    owners: list[StoreBackedFolder] = []
    ids: dict[str, int] = {}

    async def take_over() -> StoreBackedFolder:
        epoch = len(owners) + 1
        folder = root / f"node{epoch}" / "folder"
        folder.mkdir(parents=True)
        fs = await StoreBackedFolder.open(folder, state, job_id=JOB, epoch=epoch)
        if not ids:
            fid = await fs.create(fs.root_id, "vm.vswp", SetAttributes(size=SIZE))
            ids["vm.vswp"] = fid
        fid = await fs.lookup(fs.root_id, "vm.vswp")
        assert fid == ids["vm.vswp"], "the file id changed across owners"
        got, _ = await fs.read(fid, 0, SIZE)
        assert got == bytes(model), f"owner {epoch} restored other bytes"
        owners.append(fs)
        return fs

    try:
        await take_over()
        for kind, block, byte in steps:
            if kind == "takeover":
                await take_over()
                continue
            writer = owners[-1] if kind == "write" else (owners[-2] if len(owners) > 1 else None)
            if writer is None:
                continue
            offset = block * BS + 100
            data = bytes([byte]) * 3000
            await writer.write(ids["vm.vswp"], offset, data, Stability.FILE_SYNC)
            if kind == "write":
                model[offset : offset + len(data)] = data
        await take_over()
    finally:
        for fs in owners:
            await fs.aclose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_steps)
def test_folder_owners_never_see_a_fenced_owners_late_put(
    steps: list[tuple[str, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(_folder_run, Path(tmp), steps)
