"""A real S3 store for the object-storage tests: Ceph's RADOS Gateway from the Debian packages
(scripts/ceph-rgw.sh), started once per session and stopped at its end by the PIDs it recorded,
and a backup folder holding every extent form the folder catalog reads."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liverecovery.testing.objstore import RadosGateway, rgw_available, upload_tree
from liverecovery.testing.samples import sample_vmx_text
from liverecovery.testing.vmdk_writer import write_monolithic_flat, write_se_sparse

MiB = 1 << 20


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadosGateway]:
    if not rgw_available():
        pytest.fail(
            "Ceph's radosgw, ceph-mon and ceph-osd are missing: run scripts/install-peers.sh"
        )
    gateway = RadosGateway.start(tmp_path_factory.mktemp("rgw"))
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _qemu(*args: str, cwd: Path) -> None:
    subprocess.run(list(args), check=True, cwd=cwd, capture_output=True)


def _disk(folder: Path, name: str, size: str, sub: str, pattern: int, at: int) -> None:
    # written as raw, then converted: a streamOptimized file can only be written in one pass
    raw = f"{name}.raw"
    _qemu("qemu-img", "create", "-f", "raw", raw, size, cwd=folder)
    _qemu("qemu-io", "-f", "raw", "-c", f"write -P {pattern} {at} 300000", raw, cwd=folder)
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={sub}", raw, name,
          cwd=folder)  # fmt: skip
    (folder / raw).unlink()


FORMS = (
    ("sparse.vmdk", "monolithicSparse"),
    ("flat.vmdk", "monolithicFlat"),
    ("split.vmdk", "twoGbMaxExtentSparse"),
    ("splitflat.vmdk", "twoGbMaxExtentFlat"),
    ("stream.vmdk", "streamOptimized"),
)


@pytest.fixture(scope="session")
def every_form(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup root: VM ``forms`` (one disk of each qemu-img subformat and a seSparse delta
    on a flat parent) in two dated restore points, with a catalog.json and an nvram."""
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is missing: run scripts/install-peers.sh")
    root = tmp_path_factory.mktemp("forms-root")
    for i, stamp in enumerate(("2025-03-01_22-00-00", "2025-03-02_22-00-00")):
        point = root / "forms" / f"forms-{stamp}"
        point.mkdir(parents=True)
        for n, (name, sub) in enumerate(FORMS):
            _disk(point, name, "6M", sub, 10 * i + n + 1, 65000 + 4096 * n)
        rng = random.Random(i)
        write_monolithic_flat(
            point, "base", 4 * MiB, {0: b"\x61" * (4 * MiB)}, create_type="monolithicFlat"
        )
        write_se_sparse(
            point, "delta", 4 * MiB, {4096: rng.randbytes(50_000), 3 * MiB: rng.randbytes(9000)},
            parent="base.vmdk", parent_cid=_cid(point / "base.vmdk"),
        )  # fmt: skip
        disks = [name for name, _ in FORMS] + ["delta.vmdk"]
        (point / "forms.vmx").write_text(sample_vmx_text("forms", disks))
        (point / "forms.nvram").write_bytes(b"NVRAM" * 100)
    (root / "forms" / "forms-2025-03-02_22-00-00" / "catalog.json").write_text(
        '{"media": "disk", "archived": false}'
    )
    return root


def _cid(descriptor: Path) -> str:
    for line in descriptor.read_text().splitlines():
        if line.startswith("CID="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"no CID in {descriptor}")


@pytest.fixture(scope="session")
def forms_url(rgw: RadosGateway, every_form: Path) -> str:
    """``every_form`` uploaded under ``s3://backups/forms-root``."""
    upload_tree(rgw.store(), every_form, "forms-root")
    return rgw.url("forms-root")
