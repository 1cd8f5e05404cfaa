"""Backups in an S3 store: where they are (``S3Location``), how to reach the store
(``StoreOptions``, credentials), and their objects as the VMDK readers' byte sources.

``ObjectWindow`` is one object read with ranged GETs (obstore, the Rust ``object_store``): each
GET carries the ETag the catalog listed (``If-Match``), so an object replaced since then is a
clear error naming its URL, never a mix of two backups. obstore bounds each request (timeouts)
and retries failed ones with exponential back-off, up to ``retries`` times and
``retry_timeout_s`` in all; a store that still does not answer raises
``BackupUnavailableError`` (temporary: an NFS client is told to retry later), while a missing
object, refused credentials or a changed object raise ``CatalogError`` (permanent).

Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``) or, for what the environment does not
set, from the standard AWS files (``~/.aws/credentials`` and ``~/.aws/config``, profile
``AWS_PROFILE`` or ``default``), never from command-line flags. TLS certificates are verified
unless ``Settings.s3_verify_tls`` is false.
"""

from __future__ import annotations

import configparser
import io
import os
import posixpath
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs
import obstore
import obstore.exceptions as obs_errors
from obstore.store import S3Store

from liverecovery.config import Settings
from liverecovery.errors import BackupUnavailableError, CatalogError, LiveRecoveryError

__all__ = [
    "ObjectFiles",
    "ObjectOva",
    "ObjectInfo",
    "ObjectWindow",
    "Outage",
    "ReadStats",
    "S3Location",
    "StoreOptions",
    "is_s3_url",
    "open_store",
    "store_credentials",
    "store_error",
]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$", re.IGNORECASE)


def is_s3_url(text: str | os.PathLike[str]) -> bool:
    """Whether a backup path names an S3 location (``s3://bucket/prefix``; also the
    ``s3:/bucket/prefix`` a ``Path`` makes of it)."""
    return os.fspath(text).startswith("s3:/")


@attrs.frozen
class S3Location:
    """``s3://bucket/prefix``: a backup root, one VM folder or a restore point in a bucket."""

    bucket: str
    prefix: str = ""
    """Without leading or trailing slashes; empty for the whole bucket."""

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> S3Location:
        """:raises CatalogError: not an ``s3://bucket[/prefix]`` URL."""
        raw = os.fspath(text)
        if not is_s3_url(raw):
            raise CatalogError("not an s3://bucket/prefix URL", path=raw)
        rest = raw[len("s3:/") :].lstrip("/")
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise CatalogError(f"invalid bucket name {bucket!r}", path=raw)
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise CatalogError("'.' and '..' have no meaning in an object key", path=raw)
        return cls(bucket, "/".join(parts))

    def url(self, key: str | None = None) -> str:
        """The URL of ``key`` (a full key in the bucket), or of the location itself."""
        return f"s3://{self.bucket}/{self.prefix if key is None else key}"


@attrs.frozen
class StoreOptions:
    """How the store is reached; from ``Settings`` (``s3_*``)."""

    verify_tls: bool = True
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    retries: int = 3
    retry_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreOptions:
        return cls(
            verify_tls=settings.s3_verify_tls,
            request_timeout_s=settings.s3_request_timeout_s,
            retries=settings.s3_retries,
            retry_timeout_s=settings.s3_retry_timeout_s,
        )


def _aws_file(path: str, section: str) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    return dict(parser[section]) if parser.has_section(section) else {}


def store_credentials(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The store's endpoint, region and keys: the environment first, then the AWS files.

    Keys of the result: ``access_key_id``, ``secret_access_key``, ``session_token``,
    ``region``, ``endpoint`` (only those found).
    """
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    creds = _aws_file(
        env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
        profile,
    )
    config = _aws_file(
        env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"),
        profile if profile == "default" else f"profile {profile}",
    )
    found: dict[str, str] = {}
    for key, env_names, file_value in (
        ("access_key_id", ("AWS_ACCESS_KEY_ID",), creds.get("aws_access_key_id")),
        ("secret_access_key", ("AWS_SECRET_ACCESS_KEY",), creds.get("aws_secret_access_key")),
        ("session_token", ("AWS_SESSION_TOKEN",), creds.get("aws_session_token")),
        ("region", ("AWS_REGION", "AWS_DEFAULT_REGION"), config.get("region")),
        (
            "endpoint",
            ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            config.get("endpoint_url") or creds.get("endpoint_url"),
        ),
    ):
        value = next((env[n] for n in env_names if env.get(n)), None) or file_value
        if value:
            found[key] = value.strip()
    return found


def open_store(
    location: S3Location,
    options: StoreOptions = StoreOptions(),
    environ: Mapping[str, str] | None = None,
    *,
    conditional_put: bool = False,
) -> S3Store:
    """An obstore client for the location's bucket (nothing is contacted yet); with
    ``conditional_put``, PUTs may carry ``If-Match`` / ``If-None-Match`` (the shared state)."""
    found = store_credentials(environ)
    config: Any = {"region": found.get("region", "us-east-1")}
    for key in ("access_key_id", "secret_access_key", "session_token", "endpoint"):
        if key in found:
            config[key] = found[key]
    if conditional_put:
        config["conditional_put"] = "etag"
    if "access_key_id" not in found:
        config["skip_signature"] = True  # anonymous: a public bucket
    endpoint = found.get("endpoint", "")
    client: Any = {
        "timeout": timedelta(seconds=options.request_timeout_s),
        "connect_timeout": timedelta(
            seconds=min(options.connect_timeout_s, options.request_timeout_s)
        ),
        # plain HTTP only when the operator's endpoint says so
        "allow_http": endpoint.startswith("http://"),
        "allow_invalid_certificates": not options.verify_tls,
    }
    retry: Any = {
        "max_retries": options.retries,
        "retry_timeout": timedelta(seconds=options.retry_timeout_s),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2.0,
        },
    }
    return S3Store(
        location.bucket,
        config=config,
        client_options=client,
        retry_config=retry,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0].strip()
    return text[:300]


def store_error(exc: BaseException, url: str) -> LiveRecoveryError:
    """What a failed store call means for the user, naming ``url``."""
    if isinstance(exc, LiveRecoveryError):
        return exc
    text = str(exc)
    if "NoSuchBucket" in text:
        return CatalogError("the bucket does not exist", path=url)
    if isinstance(exc, obs_errors.PreconditionError):
        return CatalogError(
            "the object changed since the catalog read it (its ETag differs): the backup was "
            "modified or replaced while in use; open it again to serve the new one",
            path=url,
        )
    if isinstance(exc, FileNotFoundError | obs_errors.NotFoundError) or " 404 " in text:
        return CatalogError("no such object in the store", path=url)
    if (
        isinstance(exc, obs_errors.PermissionDeniedError | obs_errors.UnauthenticatedError)
        or " 403 " in text
        or " 401 " in text
    ):
        return CatalogError(
            "access denied by the store: check the credentials (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials) and the bucket's permissions",
            path=url,
        )
    if re.search(r" 4\d\d ", text):
        return CatalogError(f"the store refused the request: {_first_line(exc)}", path=url)
    if isinstance(exc, obs_errors.BaseError | OSError | TimeoutError):
        return BackupUnavailableError(
            f"the store did not answer in time (retried): {_first_line(exc)}", url=url
        )
    return CatalogError(f"unexpected store error: {_first_line(exc)}", path=url)


@attrs.frozen
class ObjectInfo:
    """An object as listed: what a later GET must still find."""

    key: str
    size: int
    etag: str
    modified: datetime | None = None


class Outage:
    """What the reads of one store know of its health: once a request found it unavailable,
    the reads of the next ``hold_s`` seconds fail at once (then one tries the store again), so
    a store that is down costs one retry cycle per ``hold_s``, not one per READ, and does not
    hold every data-path read thread for ``retry_timeout_s``."""

    def __init__(self, hold_s: float = 1.0) -> None:
        self.hold_s = hold_s
        self._until = 0.0
        self._problem = ""
        self._lock = threading.Lock()

    def check(self, url: str) -> None:
        """:raises BackupUnavailableError: the store failed less than ``hold_s`` ago."""
        with self._lock:
            if time.monotonic() < self._until:
                raise BackupUnavailableError(self._problem, url=url)

    def failed(self, error: BackupUnavailableError) -> None:
        with self._lock:
            self._until = time.monotonic() + self.hold_s
            self._problem = error.problem


class ReadStats:
    """GETs and bytes read from the store, added to from any thread."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += nbytes


class ObjectWindow:
    """One object as a ``ByteSource``: ranged GETs, each checked against the listed ETag.

    Safe for concurrent use from many threads (obstore's client is); reads after ``close`` are
    refused.
    """

    def __init__(
        self,
        store: S3Store,
        info: ObjectInfo,
        url: str,
        stats: ReadStats | None = None,
        outage: Outage | None = None,
        *,
        start: int = 0,
        size: int | None = None,
    ) -> None:
        """``start``/``size``: a part of the object (a member of a tar), not all of it."""
        self.path = url
        self.url = url
        self.start = start
        whole = max(0, info.size - start)
        self.size = whole if size is None else max(0, min(size, whole))
        self._store = store
        self._key = info.key
        self._etag = info.etag
        self._closed = False
        self._stats = stats or ReadStats()
        self._outage = outage or Outage()

    def _get(self, offset: int, length: int) -> bytes:
        if self._closed:
            raise CatalogError("read from a closed disk", path=self.url)
        self._outage.check(self.url)
        options: Any = {"range": (self.start + offset, self.start + offset + length)}
        if self._etag:
            options["if_match"] = self._etag
        try:
            data = bytes(obstore.get(self._store, self._key, options=options).bytes())
        except Exception as exc:  # every store failure is mapped to our tree
            error = store_error(exc, self.url)
            if isinstance(error, BackupUnavailableError):
                self._outage.failed(error)
            raise error from None
        self._stats.add(len(data))
        return data

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short at the end of the object)."""
        length = max(0, min(length, self.size - offset))
        return self._get(offset, length) if length else b""

    def read_bytes(self, offset: int, length: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset``. :raises CatalogError: past the end."""
        if offset < 0 or offset + length > self.size:
            raise CatalogError(
                f"{what} at byte {offset} lies past the end of the object", path=self.url
            )
        if not length:
            return b""
        data = self._get(offset, length)
        if len(data) != length:
            raise CatalogError(
                f"{what} at byte {offset}: the store returned {len(data)} of {length} bytes",
                path=self.url,
            )
        return data

    def seek(self, offset: int, whence: int) -> int:
        """An object has no holes: data from ``offset`` on, its one hole at its end."""
        if whence == getattr(os, "SEEK_HOLE", -1):
            return self.size
        if offset >= self.size:
            raise OSError(6, "no data past the end")  # ENXIO, as lseek says
        return offset

    def close(self) -> None:
        self._closed = True


class _ObjectStream(io.RawIOBase):
    """An object as a seekable raw stream (what ``tarfile`` reads an OVA's headers with)."""

    def __init__(self, window: ObjectWindow) -> None:
        self._window = window
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._window.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self._window.pread(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class ObjectOva:
    """An OVA stored as one object (``catalog/ova.py``'s ``OvaSource``): its tar headers read
    through a small buffer, its members' data with ranged GETs, all pinned to the listed ETag."""

    _BUFFER = 64 * 1024  # a tar header read costs one GET of this, not of the member after it

    def __init__(
        self,
        store: S3Store,
        info: ObjectInfo,
        url: str,
        stats: ReadStats | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.name = url
        self._args = (store, info, url, stats, outage)
        self._tag = (url, info.size, info.etag)

    def stream(self) -> io.BufferedReader:
        return io.BufferedReader(_ObjectStream(ObjectWindow(*self._args)), self._BUFFER)

    def window(self, start: int, size: int) -> ObjectWindow:
        return ObjectWindow(*self._args, start=start, size=size)

    def identity(self) -> tuple[str, int, str]:
        return self._tag


class ObjectFiles:
    """The ``Files`` of a listed part of a bucket: paths are ``/`` + key.

    ``real`` only normalises (object stores have no symlinks); a key that was not listed does
    not exist. ``stats`` counts the GETs and bytes of every window opened through it.
    """

    def __init__(
        self,
        store: S3Store,
        location: S3Location,
        listing: Mapping[str, ObjectInfo],
        stats: ReadStats | None = None,
        outage: Outage | None = None,
    ) -> None:
        self._store = store
        self._location = location
        self._listing = listing
        self.stats = stats or ReadStats()
        self.outage = outage or Outage()

    def real(self, path: str) -> str:
        return posixpath.normpath("/" + path.lstrip("/"))

    def exists(self, real: str) -> bool:
        return real.lstrip("/") in self._listing

    def open(self, real: str, root: str | None) -> ObjectWindow:
        key = real.lstrip("/")
        url = self._location.url(key)
        info = self._listing.get(key)
        if info is None:
            raise CatalogError("extent file is missing (no such object)", path=url)
        return ObjectWindow(self._store, info, url, self.stats, self.outage)
