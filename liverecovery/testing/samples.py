"""Sample backups on disk: ESXi-style VM folders with VMDKs holding known data, in dated restore points.

Written in pure Python (see :mod:`liverecovery.testing.vmdk_writer`), so ``liverecovery demo`` and the
tests need no qemu-img. Disk data comes from :func:`known_pattern`, a deterministic function of
``(seed, offset)``: any read at any offset can be checked without keeping the data around.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, TypeAlias

import attrs

from liverecovery.testing.vmdk_writer import (
    GRAIN_SIZE,
    SECTOR,
    Runs,
    normalize_runs,
    write_monolithic_flat,
    write_monolithic_sparse,
    write_stream_optimized,
)

__all__ = [
    "DISK_FORMATS",
    "DiskFormat",
    "Media",
    "NVRAM_SIZE",
    "PatternData",
    "SamplePoint",
    "SampleVm",
    "ScsiController",
    "disk_file_names",
    "expected_read",
    "known_pattern",
    "make_backup_root",
    "make_vm_folder",
    "pattern_runs",
    "point_folder_name",
    "sample_runs",
    "sample_spans",
    "sample_vm",
    "sample_vmx_text",
    "tree_digests",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB

DiskFormat: TypeAlias = Literal["monolithicSparse", "streamOptimized", "monolithicFlat"]
DISK_FORMATS: Final[tuple[DiskFormat, ...]] = (
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
)
Media: TypeAlias = Literal["disk", "cloud", "tape"]
ScsiController: TypeAlias = Literal["lsilogic", "pvscsi", "lsisas1068"]

NVRAM_SIZE: Final = 8684
PATTERN_BLOCK: Final = 4096


def known_pattern(seed: int, offset: int, length: int) -> bytes:
    """``length`` bytes of the pattern for ``seed`` starting at ``offset``.

    Each 4 KiB block is SHAKE-128 of ``(seed, block index)``, so the byte at a position depends only on
    the seed and the position: ``known_pattern(s, a, n)[k] == known_pattern(s, a + k, 1)[0]``.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"pattern offset {offset} and length {length} must not be negative")
    if length == 0:
        return b""
    first = offset // PATTERN_BLOCK
    last = (offset + length - 1) // PATTERN_BLOCK
    blocks = b"".join(
        hashlib.shake_128(struct.pack("<qQ", seed, index)).digest(PATTERN_BLOCK)
        for index in range(first, last + 1)
    )
    start = offset - first * PATTERN_BLOCK
    return blocks[start : start + length]


@attrs.frozen
class PatternData:
    """``length`` bytes of :func:`known_pattern` at disk ``offset``, made only when sliced.

    A run value for the VMDK writer that costs no memory: GiBs of known data stream grain by grain.
    """

    seed: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise ValueError("pattern data slices must be contiguous")
        return known_pattern(self.seed, self.offset + start, max(0, stop - start))


def sample_spans(size: int, seed: int, *, head: int = 2 * MiB) -> list[tuple[int, int]]:
    """``(offset, length)`` of a boot-like layout for a disk of ``size`` bytes, sorted.

    The first ``head`` bytes (boot sector, partition table, kernel), a few scattered spans of which
    some straddle a 64 KiB grain boundary, and the last 4 KiB (a backup GPT).
    """
    if size < PATTERN_BLOCK or size % SECTOR:
        raise ValueError(f"disk size {size} must be a multiple of {SECTOR} and at least 4 KiB")
    if head < 0:
        raise ValueError(f"head of {head} bytes must not be negative")
    rng = random.Random(seed)
    head = min(size, head)
    spans: list[tuple[int, int]] = [(size - PATTERN_BLOCK, PATTERN_BLOCK)]
    if head:
        spans.append((0, head))
    grains = size // GRAIN_SIZE
    for i in range(6):
        length = min(rng.choice((512, 4 * KiB, 16 * KiB, 64 * KiB, 200 * KiB)), size)
        if i % 2 == 0 and grains > 1:
            first = head // GRAIN_SIZE + 1 if grains > head // GRAIN_SIZE + 1 else 1
            boundary = rng.randrange(first, grains) * GRAIN_SIZE  # past the head when there is room
            offset = boundary - min(rng.randrange(1, length), boundary)  # straddles the boundary
        else:
            offset = rng.randrange(0, size - length + 1)
            offset -= offset % SECTOR
        spans.append((min(offset, size - length), length))
    return sorted(spans)


def sample_runs(size: int, seed: int, *, head: int = 2 * MiB) -> dict[int, bytes]:
    """:func:`known_pattern` data (as bytes) over the :func:`sample_spans` of a disk.

    All runs come from the same pattern, so where they overlap they agree.
    """
    return {o: known_pattern(seed, o, n) for o, n in sample_spans(size, seed, head=head)}


def pattern_runs(spans: Iterable[tuple[int, int]], seed: int) -> dict[int, PatternData]:
    """Lazy runs (:class:`PatternData`) over ``spans``: for disks with more data than memory."""
    return {o: PatternData(seed, o, n) for o, n in spans}


def expected_read(size: int, runs: Runs, offset: int, length: int) -> bytes:
    """What a disk written from ``runs`` returns for a read at ``offset`` (later runs win, zeros else)."""
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(
            f"read of {length} bytes at {offset} lies outside the disk of {size} bytes"
        )
    buf = bytearray(length)
    for run_offset, data in normalize_runs(size, runs):
        lo = max(offset, run_offset)
        hi = min(offset + length, run_offset + len(data))
        if lo < hi:
            buf[lo - offset : hi - offset] = data[lo - run_offset : hi - run_offset]
    return bytes(buf)


def _uuid_bytes(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).digest()


def _vmx_uuid(raw: bytes) -> str:
    """VMware's ``uuid.bios`` spelling: ``"42 1c 5e 0a 9f 11 6b 2d-8c 3e 77 01 a4 b5 c6 d7"``."""
    hexes = [f"{b:02x}" for b in raw]
    return " ".join(hexes[:8]) + "-" + " ".join(hexes[8:])


def disk_file_names(name: str, count: int) -> list[str]:
    """The descriptor names ESXi gives a VM's disks: ``name.vmdk``, ``name_1.vmdk``, ..."""
    return [f"{name}.vmdk" if i == 0 else f"{name}_{i}.vmdk" for i in range(count)]


def _scsi_units(count: int) -> list[int]:
    units = [u for u in range(16) if u != 7]  # unit 7 is the controller itself
    if count > len(units):
        raise ValueError(f"{count} disks do not fit on one SCSI controller (at most {len(units)})")
    return units[:count]


def sample_vmx_text(
    name: str,
    disk_files: Sequence[str],
    *,
    memory_mb: int = 2048,
    numvcpus: int = 2,
    guest_os: str = "otherlinux-64",
    scsi_controller: ScsiController = "lsilogic",
    nvram: bool = True,
) -> str:
    """A .vmx as ESXi writes it for a VM named ``name`` with the given disk descriptors on scsi0."""
    bios = _uuid_bytes("bios", name)
    mac = "00:50:56:" + ":".join(f"{b:02x}" for b in _uuid_bytes("mac", name)[:3])
    entries: list[tuple[str, str]] = [
        (".encoding", "UTF-8"),
        ("config.version", "8"),
        ("virtualHW.version", "14"),
        ("vmci0.present", "TRUE"),
        ("floppy0.present", "FALSE"),
        ("displayName", name),
        ("guestOS", guest_os),
        ("memSize", str(memory_mb)),
        ("numvcpus", str(numvcpus)),
        ("cpuid.coresPerSocket", "1"),
        ("pciBridge0.present", "TRUE"),
        ("svga.present", "TRUE"),
        ("tools.syncTime", "FALSE"),
        ("scsi0.present", "TRUE"),
        ("scsi0.virtualDev", scsi_controller),
        ("scsi0.pciSlotNumber", "160"),
    ]
    for unit, file_name in zip(_scsi_units(len(disk_files)), disk_files, strict=True):
        entries += [
            (f"scsi0:{unit}.present", "TRUE"),
            (f"scsi0:{unit}.fileName", file_name),
            (f"scsi0:{unit}.deviceType", "scsi-hardDisk"),
        ]
    if nvram:
        entries.append(("nvram", f"{name}.nvram"))
    entries += [
        ("ethernet0.present", "TRUE"),
        ("ethernet0.virtualDev", "vmxnet3"),
        ("ethernet0.networkName", "VM Network"),
        ("ethernet0.addressType", "generated"),
        ("ethernet0.generatedAddress", mac),
        ("ethernet0.pciSlotNumber", "192"),
        ("uuid.bios", _vmx_uuid(bios)),
        ("uuid.location", _vmx_uuid(_uuid_bytes("location", name))),
        ("vc.uuid", _vmx_uuid(_uuid_bytes("vc", name))),
        ("sched.cpu.min", "0"),
        ("sched.cpu.shares", "normal"),
        ("sched.mem.min", "0"),
        ("sched.mem.shares", "normal"),
        (
            "sched.swap.derivedName",
            f"/vmfs/volumes/5f1e2d3c-datastore1/{name}/{name}-{bios.hex()[:8]}.vswp",
        ),
        ("migrate.hostLog", f"./{name}-{bios.hex()[:8]}.hlog"),
        ("toolsInstallManager.updateCounter", "1"),
    ]
    return "".join(f'{key} = "{value}"\n' for key, value in entries)


def _nvram_bytes(name: str) -> bytes:
    """8684 bytes of deterministic content starting with the ``MRVN`` magic of VMware NVRAM files."""
    body = hashlib.shake_128(f"nvram:{name}".encode()).digest(NVRAM_SIZE - 4)
    return b"MRVN" + body


def _vmxf_text(name: str) -> str:
    vmx_id = _uuid_bytes("vmxf", name).hex()
    return (
        '<?xml version="1.0"?>\n'
        f'<Foundry><VM><VMId type="string">{vmx_id}</VMId>'
        f"<ClientMetaData><clientMetaDataAttributes/><HistoryEventList/></ClientMetaData>"
        f'<vmxPathName type="string">{name}.vmx</vmxPathName></VM></Foundry>\n'
    )


def _write_disk(folder: Path, file_name: str, size: int, runs: Runs, fmt: DiskFormat) -> None:
    if fmt == "monolithicSparse":
        write_monolithic_sparse(folder / file_name, size, runs)
    elif fmt == "streamOptimized":
        write_stream_optimized(folder / file_name, size, runs)
    elif fmt == "monolithicFlat":
        write_monolithic_flat(folder, file_name.removesuffix(".vmdk"), size, runs)
    else:
        raise ValueError(f"unknown disk format {fmt!r}; expected one of {', '.join(DISK_FORMATS)}")


def _write_vm_files(
    folder: Path,
    name: str,
    *,
    disks: Sequence[tuple[int, Runs]],
    format: DiskFormat,
    memory_mb: int,
    numvcpus: int,
    scsi_controller: ScsiController,
    nvram: bool,
) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"VM name {name!r} is not usable as a file name")
    if not disks:
        raise ValueError(f"VM {name!r} needs at least one disk")
    files = disk_file_names(name, len(disks))
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, (size, runs) in zip(files, disks, strict=True):
        _write_disk(folder, file_name, size, runs, format)
    vmx = sample_vmx_text(
        name,
        files,
        memory_mb=memory_mb,
        numvcpus=numvcpus,
        scsi_controller=scsi_controller,
        nvram=nvram,
    )
    (folder / f"{name}.vmx").write_text(vmx, encoding="utf-8")
    (folder / f"{name}.vmxf").write_text(_vmxf_text(name), encoding="utf-8")
    (folder / f"{name}.vmsd").write_bytes(b"")
    if nvram:
        (folder / f"{name}.nvram").write_bytes(_nvram_bytes(name))


def make_vm_folder(
    root: str | Path,
    name: str,
    *,
    disks: Sequence[tuple[int, Runs]],
    format: DiskFormat = "monolithicSparse",
    memory_mb: int = 2048,
    numvcpus: int = 2,
    scsi_controller: ScsiController = "lsilogic",
    nvram: bool = True,
) -> Path:
    """Write ``root/name/`` as ESXi keeps a VM: .vmx, .vmxf, .vmsd, .nvram and one VMDK per disk.

    ``disks`` is a sequence of ``(size in bytes, runs)``; see :mod:`liverecovery.testing.vmdk_writer`
    for runs. Returns the folder.
    """
    folder = Path(root) / name
    _write_vm_files(
        folder,
        name,
        disks=disks,
        format=format,
        memory_mb=memory_mb,
        numvcpus=numvcpus,
        scsi_controller=scsi_controller,
        nvram=nvram,
    )
    return folder


@attrs.frozen
class SamplePoint:
    """One restore point of a sample VM: when it was taken and what its ``catalog.json`` says."""

    created: datetime
    media: Media = "disk"
    archived: bool = False
    passkey_required: bool = False
    write_catalog: bool = True

    def catalog(self) -> dict[str, object]:
        """The ``catalog.json`` object for this point."""
        return {
            "media": self.media,
            "archived": self.archived,
            "created": self.created.isoformat(),
            "passkey_required": self.passkey_required,
        }


def _default_points() -> tuple[SamplePoint, ...]:
    return (SamplePoint(created=datetime(2026, 1, 1, 2, 0, 0, tzinfo=UTC)),)


@attrs.frozen
class SampleVm:
    """A VM to put in a sample backup: its disks as ``(size, runs)`` and its restore points."""

    name: str
    disks: tuple[tuple[int, Runs], ...]
    format: DiskFormat = "monolithicSparse"
    memory_mb: int = 2048
    numvcpus: int = 2
    scsi_controller: ScsiController = "lsilogic"
    nvram: bool = True
    points: tuple[SamplePoint, ...] = attrs.field(factory=_default_points)

    def write(self, root: str | Path) -> Path:
        """Write this VM as ``root/name/`` with :func:`make_vm_folder`."""
        return make_vm_folder(
            root,
            self.name,
            disks=self.disks,
            format=self.format,
            memory_mb=self.memory_mb,
            numvcpus=self.numvcpus,
            scsi_controller=self.scsi_controller,
            nvram=self.nvram,
        )


def sample_vm(
    name: str,
    *,
    disk_sizes: Sequence[int] = (1024 * MiB,),
    seed: int = 0,
    format: DiskFormat = "monolithicSparse",
    head: int = 2 * MiB,
    points: Sequence[SamplePoint] | None = None,
) -> SampleVm:
    """A VM whose disks hold boot-like :func:`known_pattern` data (disk ``i`` uses ``seed + i``).

    The runs are lazy (:class:`PatternData`), so a VM with TiB disks costs nothing until written;
    the demo and the benchmarks start from this.
    """
    disks = tuple(
        (size, pattern_runs(sample_spans(size, seed + i, head=head), seed + i))
        for i, size in enumerate(disk_sizes)
    )
    if points is None:
        return SampleVm(name, disks=disks, format=format)
    return SampleVm(name, disks=disks, format=format, points=tuple(points))


def point_folder_name(vm_name: str, created: datetime) -> str:
    """``<vm>-YYYY-MM-DD_HH-MM-SS``, the folder name of a restore point."""
    return f"{vm_name}-{created:%Y-%m-%d_%H-%M-%S}"


def make_backup_root(root: str | Path, vms: Iterable[SampleVm]) -> list[Path]:
    """Write a backup repository: for each VM and each of its points a folder ``<vm>-<date>/``.

    Each point folder holds the VM's files and, unless ``write_catalog`` is false, a ``catalog.json``
    with ``media``, ``archived``, ``created`` (ISO 8601) and ``passkey_required``. Returns the point
    folders in the order written.
    """
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for vm in vms:
        for point in vm.points:
            folder = base / point_folder_name(vm.name, point.created)
            if folder.exists():
                raise ValueError(f"restore point folder {folder} already exists")
            _write_vm_files(
                folder,
                vm.name,
                disks=vm.disks,
                format=vm.format,
                memory_mb=vm.memory_mb,
                numvcpus=vm.numvcpus,
                scsi_controller=vm.scsi_controller,
                nvram=vm.nvram,
            )
            if point.write_catalog:
                text = json.dumps(point.catalog(), indent=2) + "\n"
                (folder / "catalog.json").write_text(text, encoding="utf-8")
            written.append(folder)
    return written


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path: compare before and after a job to
    prove a backup was never modified."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[str(path.relative_to(root))] = h.hexdigest()
    return out
