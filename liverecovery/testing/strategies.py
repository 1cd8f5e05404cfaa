"""Hypothesis strategies for VM backups, disk layouts and NFS I/O workloads.

For our own property tests and for products that embed liverecovery and want to check their backends
against the same inputs. Needs ``hypothesis`` (the ``test`` extra); sizes stay small by default so that
many examples run quickly.

    from hypothesis import given
    from liverecovery.testing.strategies import vm_backups

    @given(vm_backups())
    def test_backup_opens(tmp_path_factory, vm):
        folder = vm.write(tmp_path_factory.mktemp("backup"))
        ...
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias

import attrs
from hypothesis import strategies as st

from liverecovery.nfs.filesystem import Stability
from liverecovery.testing.samples import (
    DISK_FORMATS,
    SamplePoint,
    SampleVm,
    ScsiController,
    expected_read,
    known_pattern,
)
from liverecovery.testing.vmdk_writer import GRAIN_SIZE, SECTOR

__all__ = [
    "PATTERNS",
    "DiskLayout",
    "IoOp",
    "Pattern",
    "apply_workload",
    "disk_layouts",
    "io_workloads",
    "must_survive_crash",
    "restore_points",
    "vm_backups",
]

Pattern: TypeAlias = Literal["zeros", "random", "repeating", "known"]
PATTERNS: Final[tuple[Pattern, ...]] = ("zeros", "random", "repeating", "known")
_MAX_RUN: Final = 3 * GRAIN_SIZE


@attrs.frozen
class DiskLayout:
    """A disk of ``size`` bytes whose content is ``runs`` (later runs win) and zeros elsewhere."""

    size: int
    runs: tuple[tuple[int, bytes], ...]

    def read(self, offset: int, length: int) -> bytes:
        """The bytes a correct reader returns at ``offset``."""
        return expected_read(self.size, self.runs, offset, length)

    def raw(self) -> bytes:
        """The whole disk (keep layouts small when calling this)."""
        return self.read(0, self.size)

    def as_disk(self) -> tuple[int, tuple[tuple[int, bytes], ...]]:
        """``(size, runs)`` as :func:`~liverecovery.testing.samples.make_vm_folder` takes a disk."""
        return self.size, self.runs


def _fill(draw: st.DrawFn, pattern: Pattern, offset: int, length: int) -> bytes:
    if pattern == "zeros":
        return bytes(length)
    if pattern == "random":
        return random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(length)
    if pattern == "repeating":
        unit = draw(st.binary(min_size=1, max_size=16))
        return (unit * (length // len(unit) + 1))[:length]
    return known_pattern(draw(st.integers(0, 2**16)), offset, length)


@st.composite
def _runs_for(draw: st.DrawFn, size: int, max_runs: int) -> tuple[tuple[int, bytes], ...]:
    runs: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(0, max_runs))):
        pattern = draw(st.sampled_from(PATTERNS))
        place = draw(st.sampled_from(("anywhere", "straddle", "grain", "tail")))
        if place == "straddle" and size > GRAIN_SIZE:
            boundary = draw(st.integers(1, (size - 1) // GRAIN_SIZE)) * GRAIN_SIZE
            offset = boundary - draw(st.integers(1, min(boundary, 2 * SECTOR)))
            end = boundary + draw(st.integers(1, min(size - boundary, 2 * SECTOR)))
        elif place == "grain":
            offset = draw(st.integers(0, (size - 1) // GRAIN_SIZE)) * GRAIN_SIZE
            end = min(offset + GRAIN_SIZE, size)
        elif place == "tail":
            end = size
            offset = size - draw(st.integers(1, min(size, 4096)))
        else:
            offset = draw(st.integers(0, size - 1))
            end = offset + draw(st.integers(1, min(size - offset, _MAX_RUN)))
        runs.append((offset, _fill(draw, pattern, offset, end - offset)))
    return tuple(runs)


@st.composite
def disk_layouts(
    draw: st.DrawFn, *, max_size: int = 1024 * 1024, max_runs: int = 6, min_size: int = SECTOR
) -> DiskLayout:
    """Disks of whole sectors up to ``max_size`` with up to ``max_runs`` runs of data.

    Runs hold zeros (which must not allocate grains), random bytes, a short repeating unit or the
    :func:`~liverecovery.testing.samples.known_pattern`; they land anywhere, on whole 64 KiB grains,
    at the disk's tail, or straddling a grain boundary, and may overlap.
    """
    if min_size < SECTOR or min_size > max_size:
        raise ValueError(f"need {SECTOR} <= min_size ({min_size}) <= max_size ({max_size})")
    sectors = draw(st.integers(-(-min_size // SECTOR), max_size // SECTOR))
    size = sectors * SECTOR
    return DiskLayout(size, draw(_runs_for(size, max_runs)))


@st.composite
def restore_points(draw: st.DrawFn) -> SamplePoint:
    """A restore point with random media, archive and passkey flags, taken in 2020 to 2030 (UTC)."""
    created = draw(
        st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31))
    ).replace(microsecond=0, tzinfo=UTC)
    return SamplePoint(
        created=created,
        media=draw(st.sampled_from(("disk", "cloud", "tape"))),
        archived=draw(st.booleans()),
        passkey_required=draw(st.booleans()),
        write_catalog=draw(st.booleans()),
    )


_CONTROLLERS: Final[tuple[ScsiController, ...]] = ("lsilogic", "pvscsi", "lsisas1068")


@st.composite
def vm_backups(
    draw: st.DrawFn, *, max_disk_size: int = 512 * 1024, max_disks: int = 3, max_points: int = 2
) -> SampleVm:
    """VMs with 1..``max_disks`` small disks in one of the three formats and 1..``max_points`` points.

    Write one with ``vm.write(root)`` (a VM folder) or
    :func:`~liverecovery.testing.samples.make_backup_root` (dated restore points).
    """
    name = draw(st.from_regex(r"[a-z][a-z0-9-]{0,14}[a-z0-9]", fullmatch=True))
    layouts = draw(
        st.lists(disk_layouts(max_size=max_disk_size, max_runs=4), min_size=1, max_size=max_disks)
    )
    points = draw(
        st.lists(
            restore_points(),
            min_size=1,
            max_size=max_points,
            unique_by=lambda p: p.created.replace(tzinfo=None).isoformat(timespec="seconds"),
        )
    )
    return SampleVm(
        name=name,
        disks=tuple(layout.as_disk() for layout in layouts),
        format=draw(st.sampled_from(DISK_FORMATS)),
        memory_mb=draw(st.sampled_from((512, 1024, 2048, 4096))),
        numvcpus=draw(st.integers(1, 4)),
        scsi_controller=draw(st.sampled_from(_CONTROLLERS)),
        nvram=draw(st.booleans()),
        points=tuple(points),
    )


@attrs.frozen
class IoOp:
    """One NFS operation on a file: a READ, a WRITE with its stability, or a COMMIT of a range.

    ``length`` 0 in a COMMIT means "to the end of the file", as in NFSv3. ``data`` is set for writes.
    """

    kind: Literal["read", "write", "commit"]
    offset: int
    length: int
    data: bytes = b""
    stability: Stability | None = None


@st.composite
def _io_op(draw: st.DrawFn, size: int, max_io: int) -> IoOp:
    kind = draw(st.sampled_from(("read", "write", "write", "commit")))
    aligned = draw(st.booleans())
    if aligned:
        offset = draw(st.integers(0, (size - 1) // 4096)) * 4096
    else:
        offset = draw(st.integers(0, size - 1))
    length = draw(st.integers(1, min(max_io, size - offset)))
    if kind == "read":
        return IoOp("read", offset, length)
    if kind == "commit":
        if draw(st.booleans()):
            return IoOp("commit", 0, 0)
        return IoOp("commit", offset, length)
    data = random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(length)
    stability = draw(
        st.sampled_from((Stability.FILE_SYNC, Stability.UNSTABLE, Stability.DATA_SYNC))
    )
    return IoOp("write", offset, length, data, stability)


def io_workloads(
    size: int, *, max_ops: int = 20, max_io: int = 128 * 1024
) -> st.SearchStrategy[list[IoOp]]:
    """Lists of reads, writes (FILE_SYNC, DATA_SYNC or UNSTABLE) and COMMITs within a file of ``size``.

    Offsets are 4 KiB-aligned half of the time (as a guest issues them) and arbitrary otherwise.
    """
    if size <= 0:
        raise ValueError(f"workload file size {size} must be positive")
    return st.lists(_io_op(size, max_io), max_size=max_ops)


def apply_workload(base: bytes, ops: Sequence[IoOp]) -> bytes:
    """The file content after ``ops`` on ``base`` when nothing crashes (writes never grow the file)."""
    content = bytearray(base)
    for op in ops:
        if op.kind == "write":
            end = min(op.offset + len(op.data), len(content))
            content[op.offset : end] = op.data[: end - op.offset]
    return bytes(content)


def _subtract(spans: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    """``spans`` (half-open ``(start, end)``) with ``cut`` removed."""
    lo, hi = cut
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if hi <= start or end <= lo:
            out.append((start, end))
            continue
        if start < lo:
            out.append((start, lo))
        if hi < end:
            out.append((hi, end))
    return out


def must_survive_crash(ops: Sequence[IoOp]) -> list[tuple[int, bytes]]:
    """The ``(offset, bytes)`` a server must still return after a crash at the end of ``ops``.

    A written byte is durable once its WRITE was FILE_SYNC/DATA_SYNC or a later COMMIT covered it
    (count 0 commits the whole file); it must read back unless a later WRITE, durable or not, covered
    it (an UNSTABLE write after it may or may not have reached the disk).
    """
    survivors: list[tuple[int, bytes]] = []
    for i, op in enumerate(ops):
        if op.kind != "write":
            continue
        end = op.offset + len(op.data)
        if op.stability in (Stability.FILE_SYNC, Stability.DATA_SYNC):
            durable = [(op.offset, end)]
        else:
            durable = []
            for later in ops[i + 1 :]:
                if later.kind != "commit":
                    continue
                lo = op.offset if later.length == 0 else max(op.offset, later.offset)
                hi = end if later.length == 0 else min(end, later.offset + later.length)
                if lo < hi:
                    durable = [*_subtract(durable, (lo, hi)), (lo, hi)]
        for later in ops[i + 1 :]:
            if later.kind == "write":
                durable = _subtract(durable, (later.offset, later.offset + len(later.data)))
        survivors += [(lo, op.data[lo - op.offset : hi - op.offset]) for lo, hi in sorted(durable)]
    return sorted(survivors)
