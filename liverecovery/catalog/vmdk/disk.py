"""A VMDK opened for reading: descriptor, extents stitched end to end, and the parent chain.

``VmdkDisk`` implements the ``DiskReader`` protocol. Its async methods run the synchronous
ones (``read_sync``, ``allocation_sync``) in a worker thread (reads on the data path's lean
hand-off, ``io.threads.run_read``); those are public too, for callers
that already run in a thread (benchmarks, converters). Every method is safe for concurrent use.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence

from liverecovery.backends import AllocationRun, RunKind
from liverecovery.catalog.vmdk.confine import (
    confined,
    device_path,
    inside,
    refuse_host_device,
    windows_absolute,
)
from liverecovery.catalog.vmdk.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    SECTOR,
    Descriptor,
    ExtentLine,
    ExtentType,
    parse_descriptor,
)
from liverecovery.catalog.vmdk.extents import (
    ExtentReader,
    Fallback,
    FlatExtent,
    Piece,
    SparseExtent,
    ZeroExtent,
    zeros,
)
from liverecovery.catalog.vmdk.files import LOCAL_FILES, ByteSource, Files
from liverecovery.catalog.vmdk.sesparse import SeSparseExtent
from liverecovery.catalog.vmdk.sparse_header import SPARSE_MAGIC
from liverecovery.errors import CatalogError
from liverecovery.io.threads import run_read, run_sync

__all__ = ["MAX_CHAIN_DEPTH", "VmdkDisk", "open_vmdk"]

MAX_CHAIN_DEPTH = 64


class VmdkDisk:
    """One virtual disk (with its parents, for a delta) opened read-only.

    :ivar path: the descriptor (or monolithic sparse file) that was opened.
    :ivar descriptor: its parsed descriptor.
    :ivar parent: the parent disk of a delta, else None.
    """

    def __init__(
        self,
        path: str,
        descriptor: Descriptor,
        extents: Sequence[ExtentReader],
        parent: VmdkDisk | None = None,
    ) -> None:
        self.path = path
        self.descriptor = descriptor
        self.parent = parent
        self._extents = tuple(extents)
        starts: list[int] = []
        pos = 0
        for extent in self._extents:
            starts.append(pos)
            pos += extent.size
        self._starts = starts
        self._size = pos
        self._closed = False
        self._fallbacks: list[Fallback | None] = [
            self._parent_fallback(start) if parent is not None else None for start in starts
        ]

    @property
    def size(self) -> int:
        """The virtual size in bytes."""
        return self._size

    @property
    def create_type(self) -> str:
        """The descriptor's ``createType`` (``monolithicSparse``, ``streamOptimized``...)."""
        return self.descriptor.create_type

    @property
    def chain_depth(self) -> int:
        """0 for a base disk, n for a delta with n ancestors."""
        return 0 if self.parent is None else 1 + self.parent.chain_depth

    def _parent_fallback(self, start: int) -> Fallback:
        parent = self.parent
        assert parent is not None

        def beneath(offset: int, length: int) -> list[Piece]:
            at = start + offset
            room = max(0, min(length, parent.size - at))
            pieces = parent.read_pieces(at, room) if room else []
            if room < length:
                pieces.extend(zeros(length - room))
            return pieces

        return beneath

    # -- reads -----------------------------------------------------------------------------

    def read_pieces(self, offset: int, length: int) -> list[Piece]:
        """The bytes of [offset, offset+length) (clipped to the disk) as buffers to join."""
        if self._closed:
            raise CatalogError("read from a closed disk", path=self.path)
        end = min(offset + length, self._size)
        index = bisect.bisect_right(self._starts, offset) - 1
        pieces: list[Piece] = []
        pos = offset
        while pos < end:
            start = self._starts[index]
            extent = self._extents[index]
            stop = min(end, start + extent.size)
            if stop > pos:
                pieces.extend(extent.read(pos - start, stop - pos, self._fallbacks[index]))
            pos = stop
            index += 1
        return pieces

    def read_sync(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; shorter only at the end of the disk.

        :raises CatalogError: the disk's files are malformed where the read lands.
        """
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if offset >= self._size or not length:
            return b""
        pieces = self.read_pieces(offset, length)
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        return b"".join(pieces)

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (zeros for holes), shorter only at the end of the disk.

        :raises CatalogError: the disk's files are malformed where the read lands.
        """
        return await run_read(self.read_sync, offset, length)

    # -- allocation ------------------------------------------------------------------------

    def allocation_sync(self) -> list[AllocationRun]:
        """Data/zero/unallocated runs covering the disk, merged, from metadata alone.

        Ranges a delta does not hold take the parent's kind, as ``qemu-img map`` reports them.
        """
        runs: list[tuple[int, int, RunKind]] = []
        parent_runs = self.parent.allocation_sync() if self.parent is not None else None
        parent_starts = [r.offset for r in parent_runs] if parent_runs else []
        for start, extent in zip(self._starts, self._extents, strict=True):
            for off, length, kind in extent.runs():
                at = start + off
                if kind is RunKind.UNALLOCATED and parent_runs:
                    runs.extend(_slice(parent_runs, parent_starts, at, at + length))
                else:
                    runs.append((at, length, kind))
        return _merge(runs)

    async def allocation(self) -> Sequence[AllocationRun]:
        """Data/zero/unallocated runs covering the disk (no data reads)."""
        return await run_sync(self.allocation_sync)

    def allocated_bytes(self) -> int:
        """Bytes in DATA runs: what a full copy would have to read."""
        return sum(r.length for r in self.allocation_sync() if r.kind is RunKind.DATA)

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every file of the chain; reads in flight finish, later ones are refused."""
        self._closed = True
        for extent in self._extents:
            extent.close()
        if self.parent is not None:
            self.parent.close()

    async def aclose(self) -> None:
        self.close()


def _slice(
    runs: list[AllocationRun], starts: list[int], begin: int, end: int
) -> list[tuple[int, int, RunKind]]:
    out: list[tuple[int, int, RunKind]] = []
    index = max(0, bisect.bisect_right(starts, begin) - 1)
    pos = begin
    while pos < end and index < len(runs):
        run = runs[index]
        stop = min(end, run.offset + run.length)
        if stop > pos:
            out.append((pos, stop - pos, run.kind))
            pos = stop
        index += 1
    if pos < end:
        out.append((pos, end - pos, RunKind.UNALLOCATED))
    return out


def _merge(runs: list[tuple[int, int, RunKind]]) -> list[AllocationRun]:
    merged: list[AllocationRun] = []
    cur_off = cur_len = 0
    cur_kind: RunKind | None = None
    for off, length, kind in runs:
        if length <= 0:
            continue
        if kind is cur_kind and cur_off + cur_len == off:
            cur_len += length
            continue
        if cur_kind is not None:
            merged.append(AllocationRun(cur_off, cur_len, cur_kind))
        cur_off, cur_len, cur_kind = off, length, kind
    if cur_kind is not None:
        merged.append(AllocationRun(cur_off, cur_len, cur_kind))
    return merged


# -- opening ---------------------------------------------------------------------------------


def open_vmdk(
    path: str | os.PathLike[str],
    *,
    window: ByteSource | None = None,
    grain_cache_bytes: int = 64 << 20,
    confine: str | os.PathLike[str] | None = None,
    files: Files = LOCAL_FILES,
) -> VmdkDisk:
    """Open the VMDK at ``path`` (a descriptor or a monolithic sparse/streamOptimized file).

    Every file the disk reads (the descriptor, its extents, its parents' files) must resolve,
    symlinks followed, inside the folder ``confine`` (default: the descriptor's own folder);
    device paths are never followed.

    ``window`` reads the main file from inside a larger one (an OVA member) instead of ``path``;
    such a disk must be self-contained (no extent files, no parent). ``files`` is the namespace
    the paths live in: the local filesystem, or an object store's keys (``catalog/objects.py``).

    :raises CatalogError: a file is missing, truncated, malformed or outside the folder, a
        host-device disk, or the chain is too deep or loops.
    """
    name = os.fspath(path)
    if window is not None:
        return _open(name, window, grain_cache_bytes, files, root=None, depth=0, seen=frozenset())
    root = files.real(os.fspath(confine) if confine is not None else os.path.dirname(name))
    real = confined(
        root, "", os.path.abspath(name), what="disk", descriptor=name, realpath=files.real
    )
    return _open(
        name, None, grain_cache_bytes, files, root=root, real=real, depth=0, seen=frozenset()
    )


def _open(
    path: str,
    window: ByteSource | None,
    cache: int,
    files: Files,
    *,
    root: str | None,
    real: str = "",
    depth: int,
    seen: frozenset[str],
) -> VmdkDisk:
    if depth > MAX_CHAIN_DEPTH:
        raise CatalogError(f"delta chain deeper than {MAX_CHAIN_DEPTH}", path=path)
    key = real if window is None else f"{path}@{window.start}"
    if key in seen:
        raise CatalogError("delta chain loops back to this disk", path=path)
    main: ByteSource = window if window is not None else files.open(real, root)
    main.path = path
    extents: list[ExtentReader] = []
    try:
        magic = main.pread(0, 4)
        if magic == SPARSE_MAGIC:
            sparse = SparseExtent(main, grain_cache_bytes=cache)
            extents.append(sparse)
            text = sparse.embedded_descriptor()
            if text is None:
                descriptor = Descriptor(
                    header={"createtype": "monolithicSparse"},
                    extents=(ExtentLine("RW", sparse.size // SECTOR, ExtentType.SPARSE, path),),
                    ddb={},
                )
            else:
                descriptor = parse_descriptor(text, path=path)
                _refuse_device_disk(descriptor, path)
                declared = descriptor.capacity_bytes
                if declared and declared != sparse.size:
                    sparse.size = declared
        else:
            descriptor = _read_descriptor(main, path)
            main.close()
            _refuse_device_disk(descriptor, path)
            for line in descriptor.extents:
                try:
                    extents.append(
                        _open_extent(line, root, os.path.dirname(real), path, cache, files)
                    )
                except CatalogError as exc:
                    raise _named_by(exc, path, f"extent {line.file_name!r}") from None
        parent = None
        hint = descriptor.parent_file_name
        if hint is not None:
            if root is None:
                raise CatalogError(
                    f"a disk inside an archive names a parent disk {hint!r}: not supported",
                    path=path,
                )
            parent_path = _resolve_parent(hint, root, os.path.dirname(real), path, files)
            try:
                parent = _open(
                    os.path.join(os.path.dirname(path), os.path.basename(parent_path)),
                    None,
                    cache,
                    files,
                    root=root,
                    real=parent_path,
                    depth=depth + 1,
                    seen=seen | {key},
                )
            except CatalogError as exc:
                raise _named_by(exc, path, f"parent disk {hint!r}") from None
            _check_parent_cid(descriptor, parent, path)
    except BaseException:
        main.close()
        for extent in extents:
            extent.close()
        raise
    return VmdkDisk(path, descriptor, extents, parent)


_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _named_by(exc: CatalogError, path: str, what: str) -> CatalogError:
    """``exc`` (about a file ``path`` names), saying so when it does not name ``path`` yet:
    the user must learn which descriptor led to the damaged file."""
    if path in str(exc):
        return exc
    return CatalogError(f"{exc.problem} ({what} of {path})", path=exc.path)


def _refuse_device_disk(descriptor: Descriptor, path: str) -> None:
    types = {e.type.value for e in descriptor.extents}
    refuse_host_device(descriptor.create_type, types, descriptor=path)


def _read_descriptor(main: ByteSource, path: str) -> Descriptor:
    if main.size > MAX_DESCRIPTOR_BYTES:
        raise CatalogError(
            "neither a sparse extent (no KDMV magic) nor a descriptor (too large)", path=path
        )
    # The text ends at the first NUL, as qemu and VMware read it: qemu rewrites a descriptor in
    # place when it changes the CID and, when the new text is shorter, leaves the old text's
    # tail after the new NUL (a CID two hex digits shorter: 1 write in 256).
    whole = main.pread(0, main.size)
    raw = whole.split(b"\x00", 1)[0]
    if not raw.strip() or _CONTROL.search(raw):
        raise CatalogError(
            "neither a sparse extent (no KDMV magic) nor a text descriptor "
            f"(starts {whole[:16]!r})",
            path=path,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_descriptor(text, path=path)


def _open_extent(
    line: ExtentLine, root: str | None, base: str, path: str, cache: int, files: Files
) -> ExtentReader:
    size = line.sectors * SECTOR
    if line.type is ExtentType.ZERO:
        return ZeroExtent(size)
    assert line.file_name is not None
    if root is None:
        raise CatalogError(
            f"a descriptor inside an archive names extent file {line.file_name!r}: not supported",
            path=path,
        )
    file_path = confined(
        root, base, line.file_name, what="extent", descriptor=path, realpath=files.real
    )
    if line.type not in _READERS:
        raise CatalogError(f"{line.type} extents are not supported", path=path)
    file = files.open(file_path, root)
    if line.type in (ExtentType.FLAT, ExtentType.VMFS):
        return FlatExtent(file, size, line.offset_sectors * SECTOR)
    if line.type is ExtentType.SESPARSE:
        return SeSparseExtent(file, size)
    return SparseExtent(file, size, grain_cache_bytes=cache)


_READERS = frozenset(
    {
        ExtentType.FLAT,
        ExtentType.VMFS,
        ExtentType.SPARSE,
        ExtentType.VMFSSPARSE,
        ExtentType.SESPARSE,
    }
)


def _check_parent_cid(child: Descriptor, parent: VmdkDisk, path: str) -> None:
    """A delta records its parent's CID; a different CID means the parent changed after the
    delta was taken, and reading through it would mix two states of the disk."""
    try:
        expected = int(child.parent_cid, 16)
        actual = int(parent.descriptor.cid, 16)
    except ValueError:
        return  # a CID is missing or not hex: nothing to compare
    if expected != 0xFFFFFFFF and expected != actual:
        parent.close()
        raise CatalogError(
            f"parentCID {child.parent_cid} does not match the CID {parent.descriptor.cid} of "
            f"parent {os.path.basename(parent.path)!r}",
            path=path,
        )


def _resolve_parent(hint: str, root: str, base: str, path: str, files: Files) -> str:
    """The real path of the parent named by ``parentFileNameHint``, inside ``root``.

    ESXi often records an absolute ``/vmfs/volumes/...`` path: when that lies outside the
    backup, the parent is looked for beside the child instead. A relative hint that leaves the
    folder (``../``) or a device path is refused, never followed.
    """
    if device_path(hint):
        raise CatalogError(f"parent disk {hint!r} is a device, not a file of the backup", path=path)
    if not hint.startswith("/") and not windows_absolute(hint):
        candidate = confined(
            root, base, hint, what="parent disk", descriptor=path, realpath=files.real
        )
        if files.exists(candidate):
            return candidate
        raise CatalogError(f"parent disk {hint!r} not found", path=path)
    if hint.startswith("/"):
        real = files.real(hint)
        if inside(root, real) and files.exists(real):
            return real
    beside = os.path.basename(hint.replace("\\", "/"))
    candidate = confined(
        root, base, beside, what="parent disk", descriptor=path, realpath=files.real
    )
    if files.exists(candidate):
        return candidate
    raise CatalogError(f"parent disk {hint!r} not found (nor {beside!r} beside it)", path=path)
