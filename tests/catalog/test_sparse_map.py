"""Mapping a hosted sparse extent in bulk gives the same runs as reading every grain table entry.

The reference below parses the grain directory and tables with ``struct`` and classifies every
grain on its own; the reader classifies empty tables in bulk (holes in the file are not read,
read batches are compared with zeros 32 tables at a time) and must agree with it exactly,
whatever the tables hold and however they are laid out.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverecovery.backends import RunKind
from liverecovery.catalog.vmdk import extents, open_vmdk
from liverecovery.config import MiB
from liverecovery.testing.vmdk_writer import GRAIN_SECTORS, GTES_PER_GT, write_monolithic_sparse

SECTOR = 512
GRAIN = GRAIN_SECTORS * SECTOR
TABLES = 80  # more than two 32-table comparison chunks
SIZE = TABLES * GTES_PER_GT * GRAIN  # 2.5 GiB, a sparse file of a few hundred KiB
GD_OFFSET_AT = 56

Run = tuple[int, int, RunKind]


def reference_map(path: Path) -> list[Run]:
    """Every grain classified from its own entry, then merged."""
    raw = path.read_bytes()
    capacity = struct.unpack_from("<Q", raw, 12)[0] * SECTOR
    gd_entries = -(-capacity // (GTES_PER_GT * GRAIN))
    gd_sector = struct.unpack_from("<Q", raw, GD_OFFSET_AT)[0]
    gd = struct.unpack_from(f"<{gd_entries}I", raw, gd_sector * SECTOR)
    runs: list[Run] = []
    for grain in range(capacity // GRAIN):
        table = gd[grain // GTES_PER_GT]
        entry = (
            struct.unpack_from("<I", raw, table * SECTOR + (grain % GTES_PER_GT) * 4)[0]
            if table
            else 0
        )
        kind = RunKind.UNALLOCATED if entry == 0 else RunKind.ZERO if entry == 1 else RunKind.DATA
        if runs and runs[-1][2] is kind:
            runs[-1] = (runs[-1][0], runs[-1][1] + GRAIN, kind)
        else:
            runs.append((grain * GRAIN, GRAIN, kind))
    return runs


def reader_map(path: Path) -> list[Run]:
    disk = open_vmdk(path)
    try:
        return [(e.offset, e.length, e.kind) for e in disk.allocation_sync()]
    finally:
        disk.close()


def gd_of(path: Path) -> tuple[int, list[int]]:
    raw = path.read_bytes()
    gd_sector = struct.unpack_from("<Q", raw, GD_OFFSET_AT)[0]
    return gd_sector, list(struct.unpack_from(f"<{TABLES}I", raw, gd_sector * SECTOR))


entry_kinds = st.sampled_from([0, 1, "data"])  # unallocated, zero grain, a grain's sector
table_contents = st.tuples(
    # (from entry, kind) changes applied in order over an unallocated table
    st.lists(st.tuples(st.integers(0, GTES_PER_GT - 1), entry_kinds), max_size=4),
    # write only from the first non-zero entry on, so a table can be half hole, half data
    st.booleans(),
)


def entries_for(changes: list[tuple[int, object]], data_sector: int) -> list[int]:
    entries = [0] * GTES_PER_GT
    for at, kind in changes:
        value = data_sector if kind == "data" else kind
        assert isinstance(value, int)
        entries[at:] = [value] * (GTES_PER_GT - at)
    return entries


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables=st.dictionaries(st.integers(0, TABLES - 1), table_contents, max_size=12),
    absent=st.sets(st.integers(0, TABLES - 1), max_size=6),
    swaps=st.lists(st.tuples(st.integers(0, TABLES - 1), st.integers(0, TABLES - 1)), max_size=3),
)
def test_bulk_map_equals_per_entry_map(
    tables: dict[int, tuple[list[tuple[int, object]], bool]],
    absent: set[int],
    swaps: list[tuple[int, int]],
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sparse-map-"))
    try:
        path = write_monolithic_sparse(tmp / "d.vmdk", SIZE, {0: b"\x01" * GRAIN})
        gd_sector, gd = gd_of(path)
        for a, b in swaps:  # tables out of file order: no longer one contiguous batch
            gd[a], gd[b] = gd[b], gd[a]
        for index in absent:
            gd[index] = 0
        data_sector = struct.unpack_from("<I", path.read_bytes(), gd[0] * SECTOR)[0] if gd[0] else 2
        with path.open("r+b") as f:
            f.seek(gd_sector * SECTOR)
            f.write(struct.pack(f"<{TABLES}I", *gd))
            for index, (changes, partial) in tables.items():
                if not gd[index]:
                    continue
                entries = entries_for(changes, data_sector)
                skip = next((i for i, e in enumerate(entries) if e), GTES_PER_GT) if partial else 0
                f.seek(gd[index] * SECTOR + skip * 4)
                f.write(struct.pack(f"<{GTES_PER_GT - skip}I", *entries[skip:]))
        expected = reference_map(path)
        assert reader_map(path) == expected
        # The same file with every table really read (as if no table were a hole) ...
        real = extents.SparseExtent._data_span
        extents.SparseExtent._data_span = lambda self, o, n: (o, o + n)  # type: ignore[method-assign]
        try:
            assert reader_map(path) == expected
        finally:
            extents.SparseExtent._data_span = real  # type: ignore[method-assign]
        # ... and a copy with no holes at all.
        dense = tmp / "dense.vmdk"
        dense.write_bytes(path.read_bytes())
        assert reader_map(dense) == expected
    finally:
        shutil.rmtree(tmp)


def test_unused_grain_tables_that_are_holes_are_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 TiB disk keeps 64 MiB of grain tables; those mapping nothing are never read."""
    if getattr(os, "SEEK_DATA", None) is None:
        pytest.skip("no SEEK_DATA here")
    path = write_monolithic_sparse(
        tmp_path / "big.vmdk", 1 << 40, {0: b"\x01" * MiB, 700 << 30: b"\x02" * GRAIN}
    )
    read: list[int] = []
    real = extents.FileWindow._pread

    def counting(self: extents.FileWindow, offset: int, length: int) -> bytes:
        read.append(length)
        return real(self, offset, length)

    monkeypatch.setattr(extents.FileWindow, "_pread", counting)
    runs = reader_map(path)
    assert [r for r in runs if r[2] is RunKind.DATA] == [
        (0, MiB, RunKind.DATA),
        (700 << 30, GRAIN, RunKind.DATA),
    ]
    assert sum(runs[i][1] for i in range(len(runs))) == 1 << 40
    assert sum(read) < 2 * MiB, f"read {sum(read)} bytes to map the disk"
