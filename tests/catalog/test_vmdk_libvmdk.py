"""Cross-check with libvmdk (pyvmdk, a test-only dependency) on the same qemu-made files.

libvmdk is a C library: a read that loops inside it cannot be interrupted by pytest's timeout
(a CI run once spent the whole 120 s budget in one read and pytest then failed to render the
traceback). So the peer reads in a child process with its own time limit, and a hang becomes a
plain test failure that names the image.

The "zeroed" image (qemu's zeroed_grain=on) is not compared: libvmdk reads a zero grain
(grain table entry 1) as sector 1, i.e. the descriptor, where qemu-img and our reader return
zeros. test_vmdk_reader checks that image against qemu-img convert instead.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from liverecovery.catalog.vmdk import open_vmdk

from .conftest import Image

pytest.importorskip("pyvmdk")

PEER_TIMEOUT_S = 60.0
STEP = 1 << 20

_PEER_SCRIPT = """
import hashlib, json, sys
import pyvmdk
path, step, spots = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
handle = pyvmdk.handle()
handle.open(path)
handle.open_extent_data_files()
try:
    digests = [hashlib.sha256(handle.read_buffer_at_offset(step, s)).hexdigest() for s in spots]
    print(json.dumps({"size": handle.get_media_size(), "digests": digests}))
finally:
    handle.close()
"""


def _libvmdk_read(image: Image, spots: list[int]) -> dict[str, object]:
    """Size and per-spot SHA-256 as libvmdk sees them, read in a child process."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PEER_SCRIPT, str(image.vmdk), str(STEP), json.dumps(spots)],
            capture_output=True,
            text=True,
            timeout=PEER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"libvmdk did not finish reading {image.vmdk.name} in {PEER_TIMEOUT_S:.0f} s")
    assert done.returncode == 0, f"libvmdk failed on {image.vmdk.name}: {done.stderr[-2000:]}"
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    "name", ["monolithicSparse", "monolithicFlat", "streamOptimized", "twoGbMaxExtentSparse"]
)
def test_same_bytes_as_libvmdk(images: dict[str, Image], name: str) -> None:
    image = images[name]
    disk = open_vmdk(image.vmdk)
    try:
        spots = sorted({max(0, min(disk.size - STEP, b - STEP // 2)) for b in image.boundaries})
        ours = [hashlib.sha256(disk.read_sync(offset, STEP)).hexdigest() for offset in spots]
        size = disk.size
    finally:
        disk.close()
    peer = _libvmdk_read(image, spots)
    assert peer["size"] == size
    assert peer["digests"] == ours, f"first differing spot: {_first_difference(peer, ours, spots)}"


def _first_difference(peer: dict[str, object], ours: list[str], spots: list[int]) -> int | None:
    digests = peer["digests"]
    assert isinstance(digests, list)
    return next((s for s, a, b in zip(spots, digests, ours, strict=True) if a != b), None)
