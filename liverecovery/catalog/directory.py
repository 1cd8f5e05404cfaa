"""A ``CatalogReader`` over a folder of VM backups.

Layouts understood, under a backup root::

    root/<vm>/<vm>.vmx ...                          one VM folder: one restore point
    root/<vm>/<vm>-2024-05-01_22-00-00/<vm>.vmx     dated restore points (ghettoVCB style)
    root/<vm>/<name>.ova                            OVA exports: one restore point each

The root itself may also be one VM folder, or one .ova file. Each restore point folder may hold a
``catalog.json`` (see ``point_meta``). Everything is read on demand, never written.

A VM's restore points are read once and kept (a plan of many VMs looks each up several times):
the kept answer is used only while every file and folder it was read from has the same
``stat`` (modification and change times, size, inode) as then, checked on each lookup, so a VM
removed, renamed, added to or rewritten is read again. An answer read while one of those files
was changing (its change time within ``racy_window_s`` of the read, finer than the file system's
clock) is not kept, as git does for "racily clean" entries.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiofiles
import aiofiles.os
import attrs
from anyio.abc import AsyncResource

from liverecovery.backends import DiskInfo, DiskReader, RestorePoint
from liverecovery.catalog.point_meta import CATALOG_FILE, PointMeta, parse_point_meta
from liverecovery.catalog.vm_config import VmConfig, config_from_vmx
from liverecovery.catalog.vmdk import VmdkDisk, open_vmdk
from liverecovery.catalog.vmdk.confine import inside
from liverecovery.catalog.vmx import VmxFile
from liverecovery.errors import CatalogError
from liverecovery.io.threads import run_sync

__all__ = ["MAX_SMALL_FILE", "DirectoryCatalog"]

MAX_SMALL_FILE = 64 << 20  # .vmx, .nvram, .vmxf: far smaller in practice
_DATED = re.compile(r"^(?P<vm>.+)-(?P<when>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})$")


@attrs.frozen
class _Point:
    point: RestorePoint
    folder: Path
    ova: Path | None = None
    confine: Path | None = None  # the VM folder every file of the point must lie in
    read_from: tuple[Path, ...] = ()  # the files read, present or not (kept answers check them)
    vmx: bytes | None = None  # the .vmx as read (unchanged while the point is kept)


@attrs.frozen
class _Stamp:
    """What ``stat`` says of a path a restore point was read from (None: it did not exist)."""

    mtime_ns: int
    ctime_ns: int
    size: int
    inode: int
    device: int


@attrs.frozen
class _Indexed:
    """A VM's restore points as read, and the stamps of every path they were read from."""

    points: tuple[_Point, ...]
    stamps: tuple[tuple[Path, _Stamp | None], ...]


class DirectoryCatalog(AsyncResource):
    """Restore points found under ``root`` (see the module docstring for the layouts)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        grain_cache_bytes: int = 64 << 20,
        racy_window_s: float = 2.0,
    ) -> None:
        """``grain_cache_bytes`` bounds each opened compressed disk's LRU of inflated grains.

        ``racy_window_s``: restore points read from a file changed less than this long before
        are read again on the next lookup (coarser than the file system's timestamps: 2 s covers
        FAT and 1 s clocks; local Linux file systems tick every few milliseconds).

        ``root`` is made absolute first, so ``.`` or ``..`` name the folder they stand for (the
        VM name of a single VM folder is its folder's name).
        """
        self.root = Path(os.path.abspath(root))
        self.grain_cache_bytes = grain_cache_bytes
        self.racy_window_s = racy_window_s
        self._index: dict[str, _Indexed] = {}

    # -- CatalogReader -----------------------------------------------------------------------

    async def vm_names(self) -> Sequence[str]:
        """Names (folder names) of the VMs with at least one restore point."""
        return await run_sync(self._vm_names)

    async def restore_points(self, vm_name: str) -> Sequence[RestorePoint]:
        """Restore points of ``vm_name``, oldest first. :raises CatalogError: unknown VM."""
        return [p.point for p in await self._points(vm_name)]

    async def restore_point(self, vm_name: str, point_id: str | None = None) -> RestorePoint:
        """One restore point, the newest when ``point_id`` is None. :raises CatalogError:"""
        return (await self._find(vm_name, point_id)).point

    async def read_file(self, point: RestorePoint, name: str) -> bytes:
        """A small file of the restore point's folder. :raises CatalogError:"""
        found = await self._find(point.vm_name, point.point_id)
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise CatalogError(f"invalid file name {name!r}", path=str(found.folder))
        if found.vmx is not None and name == found.point.vmx_name:
            return found.vmx  # read with the point, and unchanged since (``_points``)
        if found.ova is not None:
            from liverecovery.catalog.ova import read_ova_file

            return await run_sync(
                functools.partial(read_ova_file, found.ova, name, limit=MAX_SMALL_FILE)
            )
        path = await run_sync(_inside, found, found.folder / name)
        return await _read_bounded(path)

    async def open_disk(self, point: RestorePoint, disk: DiskInfo) -> DiskReader:
        """Open one disk of a restore point read-only. :raises CatalogError:"""
        found = await self._find(point.vm_name, point.point_id)
        return await run_sync(self._open_disk, found, disk.file_name)

    async def aclose(self) -> None:
        """Nothing to release: every disk opened is closed by its reader."""
        return None

    # -- restore points: folders scanned in a worker thread, small files read with aiofiles ----

    async def _points(self, vm_name: str) -> list[_Point]:
        kept = self._index.get(vm_name)
        if kept is not None:
            if await run_sync(_unchanged, kept.stamps):
                return list(kept.points)
            if self._index.get(vm_name) is kept:
                del self._index[vm_name]
        started = time.time_ns()
        watched: list[Path] = []
        found = await run_sync(self._point_candidates, vm_name, watched)
        confine = await run_sync(self._confinement, vm_name)
        points = [await self._load(vm_name, folder, ova, confine) for folder, ova in found]
        points.sort(key=lambda p: p.point.created or datetime.min.replace(tzinfo=UTC))
        watched.extend(path for p in points for path in p.read_from)
        stamps = await run_sync(_stamps, watched)
        racy = started - int(self.racy_window_s * 1e9)
        if all(stamp is None or stamp.ctime_ns < racy for _, stamp in stamps):
            self._index[vm_name] = _Indexed(tuple(points), stamps)
        return points

    async def _find(self, vm_name: str, point_id: str | None) -> _Point:
        points = await self._points(vm_name)
        if point_id is None:
            return points[-1]
        for p in points:
            if p.point.point_id == point_id:
                return p
        raise CatalogError(f"VM {vm_name!r} has no restore point {point_id!r}", path=str(self.root))

    async def _load(self, vm_name: str, folder: Path, ova: Path | None, confine: Path) -> _Point:
        meta = await _meta(folder)
        if ova is not None:
            ova = await run_sync(_confined_file, confine, ova)
            from liverecovery.catalog.ova import load_ova_point

            point_id = folder.name if folder.name != vm_name else ova.stem
            created = meta.created or _dated(folder.name) or await _mtime(ova)
            meta = attrs.evolve(meta, created=created)
            point = await run_sync(
                functools.partial(
                    load_ova_point, ova, vm_name=vm_name, point_id=point_id, meta=meta
                )
            )
            return _Point(point, folder, ova, confine, (folder / CATALOG_FILE, ova))
        vmx_path = await run_sync(_confined_file, confine, await run_sync(_single_vmx, folder))
        vmx = await _read_bounded(vmx_path)
        config = config_from_vmx(VmxFile.parse(vmx), path=str(vmx_path))
        created = meta.created or _dated(folder.name) or await _mtime(vmx_path)
        disks = await run_sync(_disk_infos, folder, config, confine)
        read_from = [folder / CATALOG_FILE, vmx_path, *(folder / d.file_name for d in disks)]
        nvram = config.nvram_name
        if nvram is not None:
            read_from.append(folder / nvram)
            if not await aiofiles.os.path.isfile(folder / nvram):
                nvram = None
        point = RestorePoint(
            vm_name=vm_name,
            point_id=folder.name,
            vmx_name=vmx_path.name,
            disks=disks,
            media=meta.media,
            archived=meta.archived,
            passkey_required=meta.passkey_required,
            created=created,
            guest_os=config.guest_os,
            memory_mb=config.memory_mb,
            num_cpus=config.num_cpus,
            nvram_name=nvram,
            warnings=config.warnings,
        )
        return _Point(point, folder, None, confine, tuple(read_from), vmx)

    # -- scanning (sync, run in a worker thread) -------------------------------------------

    def _is_single_vm(self) -> bool:
        return _has_vmx(self.root)

    def _is_single_ova(self) -> bool:
        return self.root.suffix.lower() == ".ova" and self.root.is_file()

    def _check_root(self) -> None:
        """:raises CatalogError: the root does not exist, or is a file and no .ova."""
        if not self.root.exists():
            raise CatalogError("the backup path does not exist", path=str(self.root))
        if not self.root.is_dir():
            raise CatalogError(
                "the backup path is neither a folder nor an .ova file", path=str(self.root)
            )

    def _vm_names(self) -> list[str]:
        if self._is_single_ova():
            return [self.root.stem]
        self._check_root()
        if self._is_single_vm():
            return [self.root.name]
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and self._point_folders(entry):
                names.append(entry.name)
        return names

    def _vm_folder(self, vm_name: str) -> Path:
        if self._is_single_vm() and vm_name == self.root.name:
            return self.root
        if not vm_name or "/" in vm_name or vm_name in (".", ".."):
            raise CatalogError(f"invalid VM name {vm_name!r}", path=str(self.root))
        self._check_root()
        folder = self.root / vm_name
        if not folder.is_dir():
            raise CatalogError(f"no VM {vm_name!r} in the backup root", path=str(self.root))
        return folder

    def _confinement(self, vm_name: str) -> Path:
        """The real VM folder: every file of its restore points must resolve inside it."""
        if self._is_single_ova():
            return Path(os.path.realpath(self.root.parent))
        return Path(os.path.realpath(self._vm_folder(vm_name)))

    def _point_folders(
        self, vm_folder: Path, watched: list[Path] | None = None
    ) -> list[tuple[Path, Path | None]]:
        """(folder, ova file or None) of every restore point of one VM folder.

        ``watched`` gets every folder whose listing decided the answer.
        """
        found: list[tuple[Path, Path | None]] = []
        if _has_vmx(vm_folder):
            found.append((vm_folder, None))
        else:
            found.extend((vm_folder, ova) for ova in sorted(vm_folder.glob("*.ova")))
        if watched is not None:
            watched.append(vm_folder)
        for sub in sorted(vm_folder.iterdir()):
            if sub.is_dir() and _DATED.match(sub.name):
                if watched is not None:
                    watched.append(sub)
                if _has_vmx(sub):
                    found.append((sub, None))
                else:
                    found.extend((sub, ova) for ova in sorted(sub.glob("*.ova")))
        return found

    def _point_candidates(
        self, vm_name: str, watched: list[Path] | None = None
    ) -> list[tuple[Path, Path | None]]:
        """(folder, ova file or None) of each restore point of ``vm_name``, unread yet.

        ``watched`` gets the root and every folder whose listing decided the answer.
        """
        if watched is not None:
            watched.append(self.root)
        if self._is_single_ova():
            if vm_name != self.root.stem:
                raise CatalogError(f"no VM {vm_name!r} in the OVA", path=str(self.root))
            return [(self.root.parent, self.root)]
        folder = self._vm_folder(vm_name)
        found = self._point_folders(folder, watched)
        if not found:
            raise CatalogError(f"VM {vm_name!r} has no restore points", path=str(folder))
        return found

    def _open_disk(self, found: _Point, file_name: str) -> VmdkDisk:
        if found.ova is not None:
            from liverecovery.catalog.ova import open_ova_disk

            return open_ova_disk(found.ova, file_name, grain_cache_bytes=self.grain_cache_bytes)
        if "/" in file_name or file_name in (".", ".."):
            raise CatalogError(f"invalid disk name {file_name!r}", path=str(found.folder))
        return open_vmdk(
            found.folder / file_name,
            grain_cache_bytes=self.grain_cache_bytes,
            confine=found.confine,
        )


# -- helpers -----------------------------------------------------------------------------------


def _has_vmx(folder: Path) -> bool:
    """Whether ``folder`` holds a .vmx file (the names first: a stat only for .vmx entries)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.lower().endswith(".vmx") and e.is_file() for e in entries)
    except OSError:
        return False


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


def _stamps(paths: Sequence[Path]) -> tuple[tuple[Path, _Stamp | None], ...]:
    return tuple((path, _stamp(path)) for path in dict.fromkeys(paths))


def _unchanged(stamps: Sequence[tuple[Path, _Stamp | None]]) -> bool:
    return all(_stamp(path) == stamp for path, stamp in stamps)


def _single_vmx(folder: Path) -> Path:
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".vmx" and p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        raise CatalogError(f"expected one .vmx, found {len(found)} ({names})", path=str(folder))
    return found[0]


async def _read_bounded(path: Path) -> bytes:
    """A small control-plane file, whole (aiofiles: no data-path hand-off needed here)."""
    try:
        async with aiofiles.open(path, "rb") as f:
            data = await f.read(MAX_SMALL_FILE + 1)
    except FileNotFoundError:
        raise CatalogError("file is missing", path=str(path)) from None
    except OSError as exc:
        raise CatalogError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if len(data) > MAX_SMALL_FILE:
        raise CatalogError(f"larger than {MAX_SMALL_FILE} bytes", path=str(path))
    return data


async def _meta(folder: Path) -> PointMeta:
    path = folder / CATALOG_FILE
    if not await aiofiles.os.path.isfile(path):
        return PointMeta()
    return parse_point_meta(await _read_bounded(path), path=str(path))


def _dated(name: str) -> datetime | None:
    match = _DATED.match(name)
    if match is None:
        return None
    return datetime.strptime(match["when"], "%Y-%m-%d_%H-%M-%S").replace(tzinfo=UTC)


async def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp((await aiofiles.os.stat(path)).st_mtime, tz=UTC)


def _confined_file(confine: Path, path: Path) -> Path:
    """``path``, checked to resolve (symlinks followed) inside the real folder ``confine``."""
    real = os.path.realpath(path)
    if not inside(str(confine), real):
        raise CatalogError(
            f"resolves to {real!r}, outside the backup folder {str(confine)!r}", path=str(path)
        )
    if os.path.exists(real) and not os.path.isfile(real):
        raise CatalogError("not a regular file", path=str(path))
    return path


def _inside(found: _Point, path: Path) -> Path:
    return path if found.confine is None else _confined_file(found.confine, path)


def _disk_info(
    folder: Path, key: str, file_name: str, adapter: str, confine: Path | None = None
) -> DiskInfo:
    disk = open_vmdk(folder / file_name, confine=confine)
    try:
        size = disk.size
        # What ESXi writes for a thin disk: preflight then counts its allocated bytes only.
        thin = disk.descriptor.ddb.get("ddb.thinprovisioned", "").strip() == "1"
    finally:
        disk.close()
    return DiskInfo(key=key, file_name=file_name, capacity_bytes=size, adapter=adapter, thin=thin)


def _disk_infos(
    folder: Path, config: VmConfig, confine: Path | None = None
) -> tuple[DiskInfo, ...]:
    return tuple(_disk_info(folder, d.key, d.file_name, d.adapter, confine) for d in config.disks)


async def config_of(folder: Path) -> VmConfig:
    """The configuration of the VM folder ``folder`` (its single .vmx)."""
    vmx_path = await run_sync(_single_vmx, folder)
    return config_from_vmx(VmxFile.parse(await _read_bounded(vmx_path)), path=str(vmx_path))
