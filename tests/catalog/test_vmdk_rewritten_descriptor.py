"""A descriptor qemu rewrote shorter in place: its text ends at a NUL followed by the old text's
tail. qemu reads it (the text is a C string), and so must we.

qemu's first write to a disk gives it a new random CID and writes the descriptor back over the
old one: text, NUL, then whatever the old text had further on. With a CID two hex digits shorter
than the old one (about 1 write in 256) a tail is left, and the catalog fixtures failed about
once in a few full test runs ("neither a sparse extent nor a text descriptor (a NUL byte at
offset 344 ...)"). The rewrite is made here directly, so the test does not depend on the CID.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from liverecovery.catalog.vmdk import open_vmdk
from liverecovery.errors import CatalogError

pytestmark = pytest.mark.timeout(60)


def rewrite_shorter(vmdk: Path) -> None:
    """What qemu does with a new CID two digits shorter: new text, NUL, the old tail."""
    raw = vmdk.read_bytes()
    old = raw.split(b"\x00", 1)[0]
    new = re.sub(rb"CID=[0-9a-f]+", b"CID=1b16", old, count=1)
    assert len(new) < len(old) - 1
    data = new + b"\x00" + old[len(new) + 1 :]
    vmdk.write_bytes(data + raw[len(data) :])


@pytest.mark.parametrize("sub", ["twoGbMaxExtentSparse", "monolithicFlat"])
def test_a_descriptor_rewritten_shorter_in_place_still_opens(tmp_path: Path, sub: str) -> None:
    vmdk = tmp_path / "data.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={sub}", str(vmdk), "2M"],
        check=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 65000 1000", str(vmdk)],
        check=True,
        capture_output=True,
    )
    rewrite_shorter(vmdk)
    raw = vmdk.read_bytes()
    end = len(raw.rstrip(b"\x00"))
    assert 0 <= raw.find(b"\x00", 0, end) < end - 1  # text, NUL, the old tail

    disk = open_vmdk(str(vmdk))
    try:
        assert disk.size == 2 << 20
        assert disk.read_sync(65000, 1000) == b"\x5a" * 1000
    finally:
        disk.close()


@pytest.mark.parametrize("data", [b"\x00# Disk DescriptorFile\n", b"# Disk\x01Descriptor\n"])
def test_binary_before_the_first_nul_is_no_descriptor(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.vmdk"
    path.write_bytes(data)
    with pytest.raises(CatalogError, match="neither a sparse extent"):
        open_vmdk(str(path))
