"""VMFSSPARSE (COWD) redo logs, hand-built as ESX writes them, against qemu-img as reference."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

from liverecovery.backends import RunKind
from liverecovery.catalog.vmdk import open_vmdk

MiB = 1 << 20
SECTORS = 16384  # 8 MiB
GTES = 4096


def build_cowd(path: Path, grains: dict[int, bytes], *, grain_sectors: int = 1) -> None:
    """A COWD file: header, grain directory at sector 4, grain tables, then the grains."""
    span = grain_sectors * GTES
    gd_entries = -(-SECTORS // span)
    gd_sector = 4
    gt_sectors = GTES * 4 // 512
    first_gt = gd_sector + 1
    tables: dict[int, list[int]] = {}
    next_sector = first_gt + gd_entries * gt_sectors
    body = bytearray()
    for grain in sorted(grains):
        table = tables.setdefault(grain // GTES, [0] * GTES)
        table[grain % GTES] = next_sector + len(body) // 512
        body += grains[grain].ljust(grain_sectors * 512, b"\0")
    out = bytearray(first_gt * 512 + gd_entries * gt_sectors * 512)
    struct.pack_into("<4sIIIIIII", out, 0, b"COWD", 1, 3, SECTORS, grain_sectors, gd_sector,
                     gd_entries, next_sector + len(body) // 512)  # fmt: skip
    for index, table in tables.items():
        gt_sector = first_gt + index * gt_sectors
        struct.pack_into("<I", out, gd_sector * 512 + index * 4, gt_sector)
        struct.pack_into(f"<{GTES}I", out, gt_sector * 512, *table)
    path.write_bytes(bytes(out) + bytes(body))


def test_cowd_delta_on_flat_parent_matches_qemu(tmp_path: Path) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
         "base.vmdk", "8M"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    subprocess.run(
        ["qemu-io", "-f", "vmdk", "-c", "write -P 0x61 0 8M", "base.vmdk"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    rng = random.Random(3)
    grains = {g: rng.randbytes(512) for g in (0, 1, 2, 700, 4095, 4096, 9000, SECTORS - 1)}
    build_cowd(tmp_path / "vm-delta.vmdk", grains)
    cid = next(
        line.split("=")[1]
        for line in (tmp_path / "base.vmdk").read_text().splitlines()
        if line.startswith("CID=")
    )
    (tmp_path / "vm.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=fffffffe\n'
        f'parentCID={cid}\nisNativeSnapshot="no"\ncreateType="vmfsSparse"\n'
        'parentFileNameHint="base.vmdk"\n\n# Extent description\n'
        f'RW {SECTORS} VMFSSPARSE "vm-delta.vmdk"\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.longContentID = "0123456789abcdef01234567fffffffe"\n'
    )
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "vm.vmdk", "vm.raw"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    reference = (tmp_path / "vm.raw").read_bytes()
    assert reference[:512] == grains[0]  # qemu read the redo log, not just the parent
    disk = open_vmdk(tmp_path / "vm.vmdk")
    try:
        assert disk.size == SECTORS * 512
        assert disk.read_sync(0, disk.size) == reference
        assert disk.read_sync(700 * 512 - 3, 10) == reference[700 * 512 - 3 : 700 * 512 + 7]
        runs = disk.allocation_sync()
        # everything is data: grains from the redo log, the rest from the flat parent
        assert [(r.offset, r.length, r.kind) for r in runs] == [(0, disk.size, RunKind.DATA)]
        assert disk.parent is not None
        own = list(disk._extents[0].runs())
        assert sum(n for _, n, k in own if k is RunKind.DATA) == len(grains) * 512
    finally:
        disk.close()
