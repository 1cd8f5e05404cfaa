"""Disk images made by qemu-img/qemu-io at test time (once per session), with their raw
references and ``qemu-img map`` output."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import attrs
import pytest

MiB = 1 << 20
GiB = 1 << 30
SMALL = 48 * MiB


@attrs.frozen
class Image:
    name: str
    vmdk: Path
    raw: Path
    size: int
    boundaries: tuple[int, ...]

    def qemu_map(self) -> list[dict[str, object]]:
        out = subprocess.run(
            ["qemu-img", "map", "--output=json", "-f", "vmdk", str(self.vmdk)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result: list[dict[str, object]] = json.loads(out)
        return result


def run(*args: str, cwd: Path) -> None:
    subprocess.run(list(args), check=True, cwd=cwd, capture_output=True)


def _source(path: Path) -> list[int]:
    """A raw image with random and compressible data scattered over it; returns boundaries."""
    rng = random.Random(1234)
    spots = [
        (0, 4096),
        (65536 - 700, 1400),  # straddles the first grain boundary
        (MiB + 333, 200_000),
        (5 * MiB, 3 * MiB),  # compressible run below
        (20 * MiB - 1, 2),
        (30 * MiB - 10, 65536 + 20),
        (SMALL - 777, 777),  # the last bytes
    ]
    with path.open("wb") as f:
        f.truncate(SMALL)
        for offset, length in spots:
            f.seek(offset)
            if length == 3 * MiB:
                line = b"".join(
                    b"row %08d of a compressible block\n" % i for i in range(length // 34 + 1)
                )
                f.write(line[:length])
            else:
                f.write(rng.randbytes(length))
    return sorted({o for o, _ in spots} | {o + n for o, n in spots})


def _writes(vmdk: str, cwd: Path, commands: list[str]) -> None:
    args = ["qemu-io", "-f", "vmdk"]
    for command in commands:
        args += ["-c", command]
    run(*args, vmdk, cwd=cwd)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        pytest.fail("qemu-img/qemu-io missing: install qemu-utils (scripts/apt-packages.txt)")
    d = tmp_path_factory.mktemp("vmdk")
    cuts = _source(d / "source.raw")
    made: dict[str, tuple[str, int, tuple[int, ...]]] = {}
    for sub in ("monolithicSparse", "monolithicFlat", "streamOptimized"):
        run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={sub}",
            "source.raw", f"{sub}.vmdk", cwd=d)  # fmt: skip
        made[sub] = (f"{sub}.vmdk", SMALL, tuple(cuts))
    # partial-grain writes on top of a converted sparse disk, and zero grains
    _writes("monolithicSparse.vmdk", d, ["write -P 0x5a 130560 1024", "write -P 0x33 2097152 512"])
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
        "subformat=monolithicSparse,zeroed_grain=on", "source.raw", "zeroed.vmdk", cwd=d)  # fmt: skip
    _writes("zeroed.vmdk", d, ["write -z 5M 1M", "write -z 0 64k", "write -P 0x44 40M 512"])
    made["zeroed"] = ("zeroed.vmdk", SMALL, tuple(cuts))
    # a delta chain two deep on the sparse disk
    run("qemu-img", "create", "-f", "vmdk", "-b", "monolithicSparse.vmdk", "-F", "vmdk",
        "delta1.vmdk", cwd=d)  # fmt: skip
    _writes("delta1.vmdk", d, ["write -P 0x11 60000 10000", "write -P 0x22 5243000 1048576"])
    run("qemu-img", "create", "-f", "vmdk", "-b", "delta1.vmdk", "-F", "vmdk", "delta2.vmdk",
        cwd=d)  # fmt: skip
    _writes("delta2.vmdk", d, ["write -P 0x77 65024 1024", "write -z 30M 64k"])
    made["delta2"] = ("delta2.vmdk", SMALL, (*cuts, 60000, 70000, 5243000, 65024))
    # 5 GiB, sparse so cheap, with data across the 2 GiB extent boundaries
    big_cuts = (0, 65436, 2 * GiB - 1000, 2 * GiB, 4 * GiB - 512, 4 * GiB, 5 * GiB - 512)
    for sub in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat"):
        run("qemu-img", "create", "-f", "vmdk", "-o", f"subformat={sub}", f"{sub}.vmdk", "5G",
            cwd=d)  # fmt: skip
        _writes(
            f"{sub}.vmdk",
            d,
            [
                "write -P 0x01 0 4096",
                "write -P 0x02 65436 200",
                f"write -P 0x03 {2 * GiB - 1000} 3000",
                f"write -P 0x04 {4 * GiB - 512} 1024",
                f"write -P 0x05 {5 * GiB - 512} 512",
            ],
        )
        made[sub] = (f"{sub}.vmdk", 5 * GiB, big_cuts)
    result: dict[str, Image] = {}
    for name, (vmdk, size, marks) in made.items():
        run("qemu-img", "convert", "-f", "vmdk", "-O", "raw", vmdk, f"{name}.raw", cwd=d)
        result[name] = Image(name, d / vmdk, d / f"{name}.raw", size, tuple(sorted(set(marks))))
    # Flush before any test compares allocation maps: the holes SEEK_DATA/SEEK_HOLE report for
    # freshly written files can change while writeback runs, so our map and a later `qemu-img
    # map` could see different states (a suspected cause of rare allocation-test failures).
    os.sync()
    return result


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


DATA = Path(__file__).parent / "data"


def qemu(*args: str, cwd: Path) -> None:
    subprocess.run(list(args), check=True, cwd=cwd, capture_output=True)


def make_disk(folder: Path, name: str, size: str, sub: str, pattern: int) -> None:
    qemu("qemu-img", "create", "-f", "vmdk", "-o", f"subformat={sub}", name, size, cwd=folder)
    qemu("qemu-io", "-f", "vmdk", "-c", f"write -P {pattern} 65000 100000", name, cwd=folder)


@pytest.fixture(scope="session")
def backup_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("backups")
    web = root / "web01"
    web.mkdir()
    shutil.copy(DATA / "esxi7-linux.vmx", web / "web01.vmx")
    make_disk(web, "web01.vmdk", "10M", "monolithicSparse", 1)
    make_disk(web, "web01_1.vmdk", "6M", "monolithicFlat", 2)
    (web / "web01.nvram").write_bytes(b"NVRAM" * 100)
    for i, stamp in enumerate(("2024-05-02_22-00-00", "2024-05-01_22-00-00")):
        point = root / "db" / f"db-{stamp}"
        point.mkdir(parents=True)
        shutil.copy(DATA / "hand-edited.vmx", point / "db.vmx")
        make_disk(point, "legacy app.vmdk", "4M", "monolithicSparse", 3 + i)
        make_disk(point, "data.vmdk", "2M", "twoGbMaxExtentSparse", 5)
        make_disk(point, "fast.vmdk", "3M", "monolithicFlat", 6)
    (root / "db" / "db-2024-05-02_22-00-00" / "catalog.json").write_text(
        json.dumps({"media": "tape", "archived": True, "passkey_required": True})
    )
    app = root / "appliance"
    app.mkdir()
    raw1 = app / "one.raw"
    text = b"".join(b"line %06d of the appliance disk\n" % i for i in range(24 * MiB // 34 + 1))
    raw1.write_bytes(text[: 24 * MiB])
    qemu("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "one.raw",
         "appliance-disk1.vmdk", cwd=app)  # fmt: skip
    raw2 = bytearray(8 * MiB)
    raw2[65000:165000] = bytes(range(256)) * 390 + bytes(160)
    (app / "two.raw").write_bytes(raw2)
    qemu("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "two.raw",
         "appliance-disk2.vmdk", cwd=app)  # fmt: skip
    shutil.copy(DATA / "appliance.ovf", app / "appliance.ovf")
    with tarfile.open(app / "appliance.ova", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("appliance.ovf", "appliance-disk1.vmdk", "appliance-disk2.vmdk"):
            tar.add(app / name, arcname=name)
    for name in ("appliance-disk1.vmdk", "appliance-disk2.vmdk"):
        (app / name).rename(root / name)  # keep them for reference, outside the VM folder
    for name in ("appliance.ovf", "one.raw", "two.raw"):
        (app / name).unlink()
    (root / "empty").mkdir()
    return root
