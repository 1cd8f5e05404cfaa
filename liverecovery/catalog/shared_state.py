"""The ``SharedState`` of several serving nodes: in a directory every node sees
(``DirectorySharedState``: tests, embedders, one machine) or in the S3 store under a state prefix
(``ObjectSharedState``: conditional PUTs).

Measured on Ceph RGW 16.2 through obstore 0.12: ``PUT If-None-Match: *`` answers 412 when the key
exists (``create``); ``PUT If-Match`` answers 412 on a stale tag and on a missing key
(``replace``), but RGW 16.2 compares ``If-Match`` with the ETag *without* its quotes, so the
tag is sent unquoted (AWS S3 takes it either way). An S3 ETag is the MD5 of the bytes: writing
the same bytes again gives the same tag, so callers make every write's bytes unique (a lease
carries a renewal counter) or a stale writer could win.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import obstore
import obstore.exceptions as obs_errors

from liverecovery.backends import StateObject
from liverecovery.catalog.objects import (
    S3Location,
    StoreOptions,
    is_s3_url,
    open_store,
    store_error,
)
from liverecovery.errors import BackendError, SettingsError
from liverecovery.io.private_dirs import make_private_dirs, write_private_file

__all__ = [
    "DirectorySharedState",
    "ObjectSharedState",
    "open_shared_state",
    "state_key",
]


def state_key(key: str) -> str:
    """A relative key with no empty, ``.`` or ``..`` part. :raises ValueError: otherwise."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid shared-state key {key!r}")
    return key


class DirectorySharedState:
    """Shared state as files under one directory; each conditional write holds an exclusive
    ``flock`` on ``<root>/.lock`` (so it works between processes), the tag is the SHA-256 of
    the bytes, and a file is replaced by rename (a reader never sees half of it)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        make_private_dirs(self.root)

    def _path(self, key: str) -> Path:
        return self.root / state_key(key)

    def _read(self, key: str) -> StateObject | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return StateObject(data, hashlib.sha256(data).hexdigest())

    def _write(self, key: str, data: bytes, expect: str | None) -> str | None:
        path = self._path(key)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            make_private_dirs(path.parent)  # under the lock: a delete removes empty folders
            current = self._read(key)
            if (current.etag if current else None) != expect:
                return None
            write_private_file(path, data)
            return hashlib.sha256(data).hexdigest()

    async def get(self, key: str) -> StateObject | None:
        return await anyio.to_thread.run_sync(self._read, key)

    async def create(self, key: str, data: bytes) -> str | None:
        return await anyio.to_thread.run_sync(self._write, key, data, None)

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        return await anyio.to_thread.run_sync(self._write, key, data, etag)

    def _keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    async def keys(self, prefix: str) -> list[str]:
        return await anyio.to_thread.run_sync(self._keys, prefix)

    def _delete(self, keys: Sequence[str]) -> None:
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for key in keys:
                path = self._path(key)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                # folders emptied go too (as keys under a prefix do in a store); under the
                # lock, so a create in one of them is not racing the removal
                for folder in path.parents:
                    if folder == self.root or self.root not in folder.parents:
                        break
                    try:
                        folder.rmdir()
                    except OSError:
                        break  # not empty (or already gone): nothing above is empty either

    async def delete(self, keys: Sequence[str]) -> None:
        await anyio.to_thread.run_sync(self._delete, list(keys))

    async def aclose(self) -> None:
        return None


def _unquoted(etag: str) -> str:
    return etag.strip('"')


class ObjectSharedState:
    """Shared state in an S3 bucket under ``location.prefix`` (conditional PUTs; see the module
    docstring for what was measured)."""

    def __init__(self, location: S3Location, options: StoreOptions | None = None) -> None:
        if not location.prefix:
            raise SettingsError(
                f"shared_state {location.url()}: give a prefix of its own, not a whole bucket"
            )
        self.location = location
        self._store = open_store(location, options or StoreOptions(), conditional_put=True)

    def _key(self, key: str) -> str:
        return posixpath.join(self.location.prefix, state_key(key))

    async def get(self, key: str) -> StateObject | None:
        full = self._key(key)
        try:
            result = await obstore.get_async(self._store, full)
            data = bytes(await result.bytes_async())
        except (FileNotFoundError, obs_errors.NotFoundError):
            return None
        except Exception as exc:  # every store failure is mapped to our tree
            raise _state_error(exc, self.location.url(full)) from None
        return StateObject(data, _unquoted(result.meta.get("e_tag") or ""))

    async def _put(self, key: str, data: bytes, mode: Any) -> str | None:
        full = self._key(key)
        try:
            result = await obstore.put_async(self._store, full, data, mode=mode)
        except (obs_errors.AlreadyExistsError, obs_errors.PreconditionError):
            return None
        except Exception as exc:
            raise _state_error(exc, self.location.url(full)) from None
        return _unquoted(result.get("e_tag") or "")

    async def create(self, key: str, data: bytes) -> str | None:
        return await self._put(key, data, "create")

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        return await self._put(key, data, {"e_tag": _unquoted(etag)})

    async def keys(self, prefix: str) -> list[str]:
        full = self._key(prefix) + "/"
        try:
            found = await obstore.list(self._store, prefix=full).collect_async()
        except Exception as exc:
            raise _state_error(exc, self.location.url(full)) from None
        start = len(self.location.prefix) + 1
        return sorted(str(meta["path"])[start:] for meta in found)

    async def delete(self, keys: Sequence[str]) -> None:
        """One DeleteObjects request per 1000 keys (obstore batches them)."""
        if not keys:
            return
        full = [self._key(k) for k in keys]
        try:
            await obstore.delete_async(self._store, full)
        except (FileNotFoundError, obs_errors.NotFoundError):
            return
        except Exception as exc:
            raise _state_error(exc, self.location.url(full[0])) from None

    async def aclose(self) -> None:
        return None


def _state_error(exc: BaseException, url: str) -> BackendError:
    error = store_error(exc, url)
    if isinstance(error, BackendError):
        return error
    return BackendError(f"shared state {url}: {error}", operation="shared_state")


def open_shared_state(
    url: str, options: StoreOptions | None = None, *, backups: str = ""
) -> ObjectSharedState | DirectorySharedState:
    """The shared state at ``url`` (``s3://bucket/prefix`` or a directory).

    :raises SettingsError: it is empty, or lies inside ``backups`` (the backups are never
        written) or contains it.
    """
    if not url:
        raise SettingsError("shared_state is not set")
    if backups and _nested(url, backups):
        raise SettingsError(
            f"shared_state {url} overlaps the backups at {backups}: the backups are never "
            "written, give the state a prefix of its own"
        )
    if is_s3_url(url):
        return ObjectSharedState(S3Location.parse(url), options)
    return DirectorySharedState(url)


def _nested(a: str, b: str) -> bool:
    def parts(text: str) -> list[str]:
        if is_s3_url(text):
            loc = S3Location.parse(text)
            return ["s3:", loc.bucket, *[p for p in loc.prefix.split("/") if p]]
        return [p for p in Path(os.path.abspath(text)).parts]

    pa, pb = parts(a), parts(b)
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]
