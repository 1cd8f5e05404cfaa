"""A ``CatalogReader`` over VM-folder backups stored as objects: ``s3://bucket/prefix``.

The layout is the folder catalog's, with keys for paths (see ``catalog/directory.py``)::

    prefix/<vm>/<vm>.vmx ...                          one VM folder: one restore point
    prefix/<vm>/<vm>-2024-05-01_22-00-00/<vm>.vmx     dated restore points (ghettoVCB style)
    prefix/<vm>/<name>.ova                            OVA exports: one restore point each

The prefix itself may also be one VM folder. Each restore point folder may hold a
``catalog.json``. Every extent form the folder catalog reads is read the same way (the VMDK
readers see objects through ``catalog/objects.py``'s byte sources; an OVA's tar through
``ObjectOva``, its manifest checked as on disk, streamed once). A VM's objects are listed once per catalog (its restore points are kept:
a restore point added later is seen by a new catalog), with their ETags; every later ranged GET
must find the same object (``If-Match``). Nothing is ever written to the store.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs
import obstore
from anyio.abc import AsyncResource
from obstore.store import S3Store

from liverecovery.backends import DiskInfo, DiskReader, RestorePoint
from liverecovery.catalog.directory import MAX_SMALL_FILE
from liverecovery.catalog.objects import (
    ObjectFiles,
    ObjectInfo,
    ObjectOva,
    Outage,
    ReadStats,
    S3Location,
    StoreOptions,
    open_store,
    store_error,
)
from liverecovery.catalog.ova import load_ova_point, open_ova_disk, read_ova_file
from liverecovery.catalog.point_meta import CATALOG_FILE, PointMeta, parse_point_meta
from liverecovery.catalog.vm_config import VmConfig, config_from_vmx
from liverecovery.catalog.vmdk import VmdkDisk, open_vmdk
from liverecovery.catalog.vmx import VmxFile
from liverecovery.errors import CatalogError
from liverecovery.io.threads import run_sync

__all__ = ["ObjectCatalog"]

_DATED = re.compile(r"^(?P<vm>.+)-(?P<when>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})$")


@attrs.frozen
class _Point:
    point: RestorePoint
    folder: str  # key prefix of the restore point's folder
    confine: str  # key prefix of the VM folder every file must lie in
    listing: Mapping[str, ObjectInfo]
    ova: str | None = None  # the key of the OVA this restore point is, if it is one


class ObjectCatalog(AsyncResource):
    """Restore points found under ``s3://bucket/prefix`` (layouts: the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        options: StoreOptions | None = None,
        grain_cache_bytes: int = 64 << 20,
        environ: Mapping[str, str] | None = None,
        store: S3Store | None = None,
    ) -> None:
        """``environ`` (default ``os.environ``) is where credentials are looked up first.

        :raises CatalogError: ``url`` is not an ``s3://bucket[/prefix]`` URL.
        """
        self.location = S3Location.parse(url)
        self.url = self.location.url()
        self.grain_cache_bytes = grain_cache_bytes
        self._store = store or open_store(self.location, options or StoreOptions(), environ)
        self._cache: dict[str, list[_Point]] = {}
        self._lock = anyio.Lock()
        self.stats = ReadStats()
        """GETs and bytes the opened disks have read from the store."""
        self.outage = Outage()
        """The store's health as the disks' reads found it (shared: one outage, one wait)."""

    @property
    def store(self) -> S3Store:
        """The obstore client (for benchmarks and tests that read the same objects)."""
        return self._store

    @property
    def bytes_read(self) -> int:
        """Bytes the opened disks have fetched from the store so far."""
        return self.stats.bytes

    # -- CatalogReader -----------------------------------------------------------------------

    async def vm_names(self) -> Sequence[str]:
        """Names (folder names) of the VMs with at least one restore point."""
        with self._urls():
            root = self.location.prefix
            keys, folders = await self._level(root)
            if _vmx_in(keys):
                return [self._single_name()]
            names = []
            for folder in folders:
                listing = await self._list(folder)
                if _point_folders(folder, listing):
                    names.append(posixpath.basename(folder))
            if not names and not keys and not folders:
                raise CatalogError("nothing is stored under this prefix", path=self.url)
            return names

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
            raise CatalogError(f"invalid file name {name!r}", path=self.location.url(found.folder))
        if found.ova is not None:
            return await run_sync(
                functools.partial(
                    read_ova_file, self._ova(found.listing, found.ova), name, limit=MAX_SMALL_FILE
                )
            )
        with self._urls():
            return await self._read_small(found.listing, _join(found.folder, name))

    async def open_disk(self, point: RestorePoint, disk: DiskInfo) -> DiskReader:
        """Open one disk of a restore point read-only. :raises CatalogError:"""
        found = await self._find(point.vm_name, point.point_id)
        name = disk.file_name
        if found.ova is not None:
            return await run_sync(
                functools.partial(
                    open_ova_disk,
                    self._ova(found.listing, found.ova),
                    name,
                    grain_cache_bytes=self.grain_cache_bytes,
                )
            )
        if "/" in name or name in (".", ".."):
            raise CatalogError(f"invalid disk name {name!r}", path=self.location.url(found.folder))
        files = ObjectFiles(self._store, self.location, found.listing, self.stats, self.outage)
        with self._urls():
            return await run_sync(
                functools.partial(
                    open_vmdk,
                    "/" + _join(found.folder, name),
                    grain_cache_bytes=self.grain_cache_bytes,
                    confine="/" + found.confine,
                    files=files,
                )
            )

    async def aclose(self) -> None:
        """Nothing to release: every disk opened is closed by its reader."""
        return None

    async def object_tags(self) -> dict[str, tuple[int, str]]:
        """Key -> (size, ETag) of every object under the prefix: equal before and after a
        recovery when nothing was written to the backup (any write changes an ETag)."""
        listing = await self._list(self.location.prefix)
        return {k: (v.size, v.etag) for k, v in listing.items()}

    # -- listing ------------------------------------------------------------------------------

    async def _call(self, url: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(self._store, *args, **kwargs)
        except Exception as exc:  # every store failure is mapped to our tree
            raise store_error(exc, url) from None

    async def _level(self, prefix: str) -> tuple[list[str], list[str]]:
        """(object keys, folder prefixes) directly under ``prefix``."""
        found = await self._call(
            self.location.url(prefix),
            obstore.list_with_delimiter_async,
            prefix=prefix + "/" if prefix else None,
        )
        keys = [o["path"] for o in found["objects"]]
        folders = [p.rstrip("/") for p in found["common_prefixes"]]
        return keys, sorted(folders)

    async def _list(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under ``prefix``, recursively, with its size and ETag."""
        url = self.location.url(prefix)
        out: dict[str, ObjectInfo] = {}
        try:
            stream = obstore.list(self._store, prefix=prefix + "/" if prefix else None)
            async for batch in stream:
                for meta in batch:
                    key = meta["path"]
                    out[key] = ObjectInfo(
                        key, meta["size"], meta.get("e_tag") or "", meta.get("last_modified")
                    )
        except Exception as exc:  # every store failure is mapped to our tree
            raise store_error(exc, url) from None
        return out

    async def _read_small(self, listing: Mapping[str, ObjectInfo], key: str) -> bytes:
        url = self.location.url(key)
        info = listing.get(key)
        if info is None:
            raise CatalogError("file is missing (no such object)", path=url)
        if info.size > MAX_SMALL_FILE:
            raise CatalogError(f"larger than {MAX_SMALL_FILE} bytes", path=url)
        options: Any = {"if_match": info.etag} if info.etag else {}
        result = await self._call(url, obstore.get_async, key, options=options)
        try:
            return bytes(await result.bytes_async())
        except Exception as exc:  # every store failure is mapped to our tree
            raise store_error(exc, url) from None

    # -- restore points -----------------------------------------------------------------------

    def _single_name(self) -> str:
        return posixpath.basename(self.location.prefix) or self.location.bucket

    async def _vm_folder(self, vm_name: str) -> tuple[str, dict[str, ObjectInfo]]:
        root = self.location.prefix
        if vm_name == self._single_name():
            keys, _ = await self._level(root)
            if _vmx_in(keys):
                return root, await self._list(root)
        if not vm_name or "/" in vm_name or vm_name in (".", ".."):
            raise CatalogError(f"invalid VM name {vm_name!r}", path=self.url)
        folder = _join(root, vm_name)
        listing = await self._list(folder)
        if not listing:
            raise CatalogError(f"no VM {vm_name!r} in the backup root", path=self.url)
        return folder, listing

    async def _points(self, vm_name: str) -> list[_Point]:
        async with self._lock:
            cached = self._cache.get(vm_name)
            if cached is not None:
                return cached
            with self._urls():
                folder, listing = await self._vm_folder(vm_name)
                found = _point_folders(folder, listing)
                if not found:
                    raise CatalogError(
                        f"VM {vm_name!r} has no restore points", path=self.location.url(folder)
                    )
                points = [await self._load(vm_name, p, ova, folder, listing) for p, ova in found]
            points.sort(key=lambda p: p.point.created or datetime.min.replace(tzinfo=UTC))
            self._cache[vm_name] = points
            return points

    async def _find(self, vm_name: str, point_id: str | None) -> _Point:
        points = await self._points(vm_name)
        if point_id is None:
            return points[-1]
        for p in points:
            if p.point.point_id == point_id:
                return p
        raise CatalogError(f"VM {vm_name!r} has no restore point {point_id!r}", path=self.url)

    def _ova(self, listing: Mapping[str, ObjectInfo], key: str) -> ObjectOva:
        url = self.location.url(key)
        return ObjectOva(self._store, listing[key], url, self.stats, self.outage)

    async def _load(
        self,
        vm_name: str,
        folder: str,
        ova: str | None,
        confine: str,
        listing: dict[str, ObjectInfo],
    ) -> _Point:
        meta_key = _join(folder, CATALOG_FILE)
        meta = PointMeta()
        if meta_key in listing:
            meta = parse_point_meta(
                await self._read_small(listing, meta_key), path=self.location.url(meta_key)
            )
        name = posixpath.basename(folder)
        if ova is not None:
            stem = posixpath.splitext(posixpath.basename(ova))[0]
            created = meta.created or _dated(name) or listing[ova].modified
            point = await run_sync(
                functools.partial(
                    load_ova_point,
                    self._ova(listing, ova),
                    vm_name=vm_name,
                    point_id=name if name != vm_name else stem,
                    meta=attrs.evolve(meta, created=created),
                )
            )
            return _Point(point, folder, confine, listing, ova)
        vmx_key = _single_vmx(folder, listing, self.location)
        vmx_url = self.location.url(vmx_key)
        config = config_from_vmx(
            VmxFile.parse(await self._read_small(listing, vmx_key)), path=vmx_url
        )
        created = meta.created or _dated(name) or listing[vmx_key].modified
        files = ObjectFiles(self._store, self.location, listing, self.stats, self.outage)
        disks = await run_sync(_disk_infos, folder, config, confine, files, self.grain_cache_bytes)
        nvram = config.nvram_name
        if nvram is not None and _join(folder, nvram) not in listing:
            nvram = None
        point = RestorePoint(
            vm_name=vm_name,
            point_id=name or self.location.bucket,
            vmx_name=posixpath.basename(vmx_key),
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
        return _Point(point, folder, confine, listing)

    @contextmanager
    def _urls(self) -> Iterator[None]:
        """Errors about keys (``/key``, the readers' paths) name their ``s3://`` URL."""
        try:
            yield
        except CatalogError as exc:
            if exc.path.startswith("/"):
                url = self.location.url(exc.path.lstrip("/"))
                raise CatalogError(exc.problem, path=url) from None
            raise


# -- helpers (pure, or sync for a worker thread) -----------------------------------------------


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _direct(folder: str, listing: Mapping[str, ObjectInfo] | Sequence[str]) -> list[str]:
    """Keys directly in ``folder`` (not in a subfolder)."""
    lead = folder + "/" if folder else ""
    return [k for k in listing if k.startswith(lead) and "/" not in k[len(lead) :]]


def _vmx_in(keys: Sequence[str]) -> bool:
    return any(k.lower().endswith(".vmx") for k in keys)


def _in_folder(folder: str, listing: Mapping[str, ObjectInfo]) -> list[tuple[str, str | None]]:
    """The restore points directly in ``folder``: itself if it holds a .vmx, else each .ova."""
    keys = _direct(folder, listing)
    if _vmx_in(keys):
        return [(folder, None)]
    return [(folder, k) for k in sorted(keys) if k.lower().endswith(".ova")]


def _point_folders(folder: str, listing: Mapping[str, ObjectInfo]) -> list[tuple[str, str | None]]:
    """(folder, OVA key or None) of each restore point of one VM folder: in itself, and in
    its dated subfolders."""
    found = _in_folder(folder, listing)
    lead = folder + "/" if folder else ""
    subs = sorted({k[len(lead) :].split("/", 1)[0] for k in listing if "/" in k[len(lead) :]})
    for sub in subs:
        if _DATED.match(sub):
            found.extend(_in_folder(_join(folder, sub), listing))
    return found


def _single_vmx(folder: str, listing: Mapping[str, ObjectInfo], location: S3Location) -> str:
    found = sorted(k for k in _direct(folder, listing) if k.lower().endswith(".vmx"))
    if len(found) != 1:
        names = ", ".join(posixpath.basename(k) for k in found)
        raise CatalogError(
            f"expected one .vmx, found {len(found)} ({names})", path=location.url(folder)
        )
    return found[0]


def _dated(name: str) -> datetime | None:
    match = _DATED.match(name)
    if match is None:
        return None
    return datetime.strptime(match["when"], "%Y-%m-%d_%H-%M-%S").replace(tzinfo=UTC)


def _disk_infos(
    folder: str, config: VmConfig, confine: str, files: ObjectFiles, cache: int
) -> tuple[DiskInfo, ...]:
    infos = []
    for d in config.disks:
        disk: VmdkDisk = open_vmdk(
            "/" + _join(folder, d.file_name),
            grain_cache_bytes=cache,
            confine="/" + confine,
            files=files,
        )
        try:
            size = disk.size
            thin = disk.descriptor.ddb.get("ddb.thinprovisioned", "").strip() == "1"
        finally:
            disk.close()
        infos.append(
            DiskInfo(
                key=d.key, file_name=d.file_name, capacity_bytes=size, adapter=d.adapter, thin=thin
            )
        )
    return tuple(infos)
