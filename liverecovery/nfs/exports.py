"""What the server exports, and to whom: the export registry behind ``NfsServer``.

``ExportRegistry`` is the ``NfsExporter`` of ``liverecovery.backends``: ``export`` creates an
empty root (a ``CompositeFilesystem``) that jobs ``publish`` folders into; ``export_filesystem``
exports one ``Filesystem`` directly (``liverecovery serve``). It also mints and resolves file
handles, because a handle names an export (its persisted id and generation) as much as a file,
and it keeps the grace period after a start during which handles of exports not restored yet
get JUKEBOX rather than STALE.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol, TypeAlias, runtime_checkable

import anyio
import attrs

from liverecovery.errors import BackendError, LiveRecoveryError, NfsError, NfsStatus
from liverecovery.io.ranges import FileRange
from liverecovery.nfs.composite import CompositeFilesystem
from liverecovery.nfs.filesystem import FileAttributes, Filesystem
from liverecovery.nfs.handles import HandleCodec, load_or_create_key
from liverecovery.nfs.nfs3_codec import pack_fattr
from liverecovery.nfs.xdr import Buffer, Packer

__all__ = ["ATTRIBUTE_TTL_S", "Export", "ExportInfo", "ExportRegistry", "InlineFilesystem"]

log = logging.getLogger(__name__)

_EXPORTS_FILE: Final = "exports.json"

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

ATTRIBUTE_TTL_S: Final = 1.0
"""How long a file's attributes are answered from memory (GETATTR, READ's post-op attributes)
when nothing changed them through the server: every procedure that changes a file drops its
export's cached attributes, so this only bounds how late a change made behind the server's back
shows (NFS clients cache attributes for 3 s and more themselves)."""
_ATTRIBUTE_CACHE_MAX: Final = 4096


@runtime_checkable
class InlineFilesystem(Protocol):
    """A ``Filesystem`` that can answer some calls at once, without awaiting: the server then
    answers small READs of cached data and GETATTRs without a task."""

    def getattr_inline(self, fileid: int) -> FileAttributes:
        """``getattr``, at once. :raises NfsError: as ``getattr``."""

    def read_inline(self, fileid: int, offset: int, length: int) -> tuple[Buffer, bool] | None:
        """``read`` when its data is at hand (the page cache), else None (then ``read``).
        :raises NfsError: as ``read``."""


@attrs.frozen
class ExportInfo:
    """An NFS export: the path a client mounts and the addresses allowed to mount it."""

    path: str
    clients: tuple[str, ...]


def _same_class(fs: object, method: str, twin: str) -> bool:
    """``method`` and its inline ``twin`` come from the same class: a subclass that overrides
    ``read`` (say, to delay or count reads) and not ``read_inline`` is never bypassed."""

    def owner(name: str) -> type | None:
        return next((c for c in type(fs).__mro__ if name in vars(c)), None)

    return owner(method) is owner(twin)


@functools.lru_cache(maxsize=1024)
def _peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address, parsed once (every call checks it against the export's clients)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@attrs.define
class Export:
    """One served export: its filesystem, persisted identity and allow list."""

    path: str
    export_id: int
    generation: int
    fs: Filesystem
    clients: tuple[str, ...]
    networks: tuple[Network, ...]
    composite: CompositeFilesystem | None
    """The root jobs publish into; None when ``fs`` was exported directly."""
    read_file_range: Callable[[int, int, int], Awaitable[FileRange | None]] = attrs.field(
        init=False
    )
    """``fs.read_file_range``, bound once (not looked up per READ)."""
    _allowed: dict[str, bool] = attrs.field(factory=dict, init=False)
    """Answers of ``allows`` by peer address (every call asks); cleared when clients change."""
    read_inline: Callable[[int, int, int], tuple[Buffer, bool] | None] | None = attrs.field(
        init=False, default=None
    )
    """``fs.read_inline`` when the filesystem is an ``InlineFilesystem``."""
    _getattr_inline: Callable[[int], FileAttributes] | None = attrs.field(init=False, default=None)
    _attributes: dict[int, tuple[bytes, float]] = attrs.field(factory=dict, init=False)
    """Packed fattr3 by file id, with when it stops being fresh (``ATTRIBUTE_TTL_S``)."""
    attribute_epoch: int = attrs.field(default=0, init=False)
    """Counts ``forget_attributes``: attributes read before a change are not remembered after."""

    def __attrs_post_init__(self) -> None:
        self.read_file_range = self.fs.read_file_range
        if isinstance(self.fs, InlineFilesystem):
            if _same_class(self.fs, "read", "read_inline"):
                self.read_inline = self.fs.read_inline
            if _same_class(self.fs, "getattr", "getattr_inline"):
                self._getattr_inline = self.fs.getattr_inline

    def packed_attributes(self, fileid: int) -> bytes | None:
        """The file's fattr3 as sent (this export's fsid): cached, or read at once from an
        ``InlineFilesystem``; None when neither can say (then ask ``fs.getattr``).

        :raises NfsError: as ``getattr``.
        """
        now = time.monotonic()
        cached = self._attributes.get(fileid)
        if cached is not None and cached[1] > now:
            return cached[0]
        if self._getattr_inline is None:
            return None
        return self._store(fileid, self._getattr_inline(fileid), now)

    def remember_attributes(self, fileid: int, attributes: FileAttributes, epoch: int) -> None:
        """Keep attributes read (awaited) since ``epoch`` for the next GETATTRs."""
        if epoch == self.attribute_epoch:
            self._store(fileid, attributes, time.monotonic())

    def forget_attributes(self) -> None:
        """A file of this export changed (or may have): no attribute is answered from memory."""
        self.attribute_epoch += 1
        self._attributes.clear()

    def _store(self, fileid: int, attributes: FileAttributes, now: float) -> bytes:
        p = Packer()
        pack_fattr(p, attributes, self.export_id)
        packed = p.getvalue()
        if len(self._attributes) >= _ATTRIBUTE_CACHE_MAX:
            self._attributes.clear()
        self._attributes[fileid] = (packed, now + ATTRIBUTE_TTL_S)
        return packed

    def allows(self, address: str) -> bool:
        known = self._allowed.get(address)
        if known is None:
            ip = _peer_ip(address)
            known = ip is not None and any(ip in net for net in self.networks)
            if len(self._allowed) >= 1024:
                self._allowed.clear()
            self._allowed[address] = known
        return known

    def set_clients(self, clients: tuple[str, ...], networks: tuple[Network, ...]) -> None:
        self.networks = networks
        self.clients = clients
        self._allowed.clear()

    @property
    def info(self) -> ExportInfo:
        return ExportInfo(self.path, self.clients)


def _normalize_path(path: str) -> str:
    if not path.startswith("/"):
        raise BackendError(f"export path {path!r} must be absolute", operation="nfs.export")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BackendError(f"export path {path!r} has '.' or '..'", operation="nfs.export")
    return "/" + "/".join(parts)


async def _resolve_clients(clients: Sequence[str]) -> tuple[Network, ...]:
    nets: list[Network] = []
    for client in clients:
        try:
            nets.append(ipaddress.ip_network(client, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = await anyio.getaddrinfo(client, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise BackendError(
                f"export client {client!r} is neither an address nor a resolvable name: {exc}",
                operation="nfs.export",
            ) from None
        for info in infos:
            nets.append(ipaddress.ip_network(str(info[4][0]), strict=False))
    return tuple(nets)


class ExportRegistry:
    """The exports of one server, their persisted ids (``exports.json`` in ``state_dir``) and
    the file handles that name them; an ``NfsExporter``.

    Handles stay valid across restarts with the same ``state_dir``; ``unexport`` bumps the
    export's generation, so every handle it gave out becomes STALE, also after a restart.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, grace_s: float = 0.0) -> None:
        self._state_dir = Path(state_dir)
        self._handles = HandleCodec(load_or_create_key(self._state_dir))
        self.grace_s = grace_s
        """After ``start_grace``, how long handles of exports and folders not restored yet get
        NFS3ERR_JUKEBOX (retry later) instead of NFS3ERR_STALE: a restarted process needs a
        moment to export and publish again, and a running VM must not see its disk go stale."""
        self._grace_from = 0.0
        self._identities: dict[str, dict[str, int]] = self._load_identities()
        self._exports: dict[str, Export] = {}
        self._by_id: dict[int, Export] = {}
        self._unexport_listeners: list[Callable[[str], None]] = []
        self._change_listeners: list[Callable[[bytes], Awaitable[None]]] = []

    # -- persisted export ids ---------------------------------------------------------------

    def _load_identities(self) -> dict[str, dict[str, int]]:
        try:
            data = json.loads((self._state_dir / _EXPORTS_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BackendError(
                f"{self._state_dir / _EXPORTS_FILE}: unreadable export registry: {exc}",
                operation="nfs.start",
            ) from None
        return {
            str(k): {"id": int(v["id"]), "generation": int(v["generation"])}
            for k, v in data.items()
        }

    def _save_identities(self) -> bytes:
        """Write ``exports.json`` (fsynced, replaced by rename); its bytes."""
        path = self._state_dir / _EXPORTS_FILE
        tmp = path.with_suffix(".tmp")
        data = json.dumps(self._identities, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return data

    async def _changed(self, data: bytes) -> None:
        for listener in self._change_listeners:
            await listener(data)

    def _identity(self, path: str) -> tuple[int, int, bytes | None]:
        """The export id and generation of ``path``; the registry's new bytes if it changed."""
        entry = self._identities.get(path)
        saved = None
        if entry is None:
            next_id = max((e["id"] for e in self._identities.values()), default=0) + 1
            entry = {"id": next_id, "generation": 1}
            self._identities[path] = entry
            saved = self._save_identities()
        return entry["id"], entry["generation"], saved

    def _generation_of(self, export_id: int) -> int | None:
        """The current generation of a known export id (exported or not), None if unknown."""
        for entry in self._identities.values():
            if entry.get("id") == export_id:
                return int(entry.get("generation", 0))
        return None

    # -- NfsExporter ------------------------------------------------------------------------

    async def export(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """Create (or widen the client list of) an empty export that jobs publish folders into.

        :raises BackendError: bad path or client, or ``path`` exports a plain filesystem.
        """
        path = _normalize_path(path)
        existing = self._exports.get(path)
        if existing is not None:
            if existing.composite is None:
                raise BackendError(f"{path} already exports a filesystem", operation="nfs.export")
            merged = tuple(dict.fromkeys((*existing.clients, *clients)))
            existing.set_clients(merged, await _resolve_clients(merged))
            return existing.info
        composite = CompositeFilesystem(restoring=self.in_grace)
        return await self._add(path, composite, clients, composite)

    async def export_filesystem(
        self, path: str, filesystem: Filesystem, clients: Sequence[str]
    ) -> ExportInfo:
        """Export one filesystem directly at ``path``. :raises BackendError: path taken or bad."""
        path = _normalize_path(path)
        if path in self._exports:
            raise BackendError(f"{path} is already exported", operation="nfs.export")
        return await self._add(path, filesystem, clients, None)

    async def _add(
        self,
        path: str,
        fs: Filesystem,
        clients: Sequence[str],
        composite: CompositeFilesystem | None,
    ) -> ExportInfo:
        networks = await _resolve_clients(clients)
        export_id, generation, saved = self._identity(path)
        # every export, new or not: a listener that failed before is given the ids again
        await self._changed(saved or json.dumps(self._identities, sort_keys=True).encode())
        exp = Export(path, export_id, generation, fs, tuple(clients), networks, composite)
        self._exports[path] = exp
        self._by_id[export_id] = exp
        log.info("exported %s to %s", path, ", ".join(clients) or "nobody")
        return exp.info

    async def set_clients(self, path: str, clients: Sequence[str]) -> ExportInfo:
        """Replace the addresses allowed to use an export; refused ones get ACCES at once.

        :raises BackendError: ``path`` is not exported or a client does not resolve.
        """
        exp = self._exports.get(_normalize_path(path))
        if exp is None:
            raise BackendError(f"{path} is not exported", operation="nfs.set_clients")
        exp.set_clients(tuple(clients), await _resolve_clients(clients))
        return exp.info

    async def unexport(self, path: str) -> None:
        """Remove an export; every handle it gave out becomes STALE, also after a restart."""
        path = _normalize_path(path)
        exp = self._exports.pop(path, None)
        if exp is None:
            raise BackendError(f"{path} is not exported", operation="nfs.unexport")
        del self._by_id[exp.export_id]
        self._identities[path]["generation"] = exp.generation + 1
        saved = self._save_identities()
        for listener in self._unexport_listeners:
            listener(path)
        try:
            await self._changed(saved)
        except LiveRecoveryError as exc:  # unexported all the same; the listener retries
            log.warning("unexport %s: registry listener failed: %s", path, exc)

    def _composite(self, path: str, operation: str) -> CompositeFilesystem:
        exp = self._exports.get(_normalize_path(path))
        if exp is None or exp.composite is None:
            raise BackendError(f"{path} is not an export to publish into", operation=operation)
        return exp.composite

    async def publish(self, path: str, folder: str, filesystem: Filesystem) -> None:
        """Make ``filesystem`` visible as ``folder`` in the export's root. :raises BackendError:"""
        try:
            self._composite(path, "nfs.publish").publish(folder, filesystem)
        except NfsError as exc:
            raise BackendError(f"{path}: {exc}", operation="nfs.publish") from None
        self._exports[_normalize_path(path)].forget_attributes()  # its root changed

    async def unpublish(self, path: str, folder: str) -> None:
        """Remove a published folder; its handles become STALE. :raises BackendError:"""
        try:
            self._composite(path, "nfs.unpublish").unpublish(folder)
        except NfsError as exc:
            raise BackendError(f"{path}: {exc}", operation="nfs.unpublish") from None
        self._exports[_normalize_path(path)].forget_attributes()  # no attribute outlives it

    def exports(self) -> Mapping[str, ExportInfo]:
        return {path: exp.info for path, exp in self._exports.items()}

    async def aclose(self) -> None:
        """Exports live as long as their server; nothing to release here."""

    # -- what the programs ask --------------------------------------------------------------

    def get(self, path: str) -> Export | None:
        """The export at a normalized ``path`` (``/a/b``), if any."""
        return self._exports.get(path)

    def entries(self) -> Iterable[Export]:
        """Every live export, in the order they were exported."""
        return self._exports.values()

    def on_change(self, listener: Callable[[bytes], Awaitable[None]]) -> None:
        """Await ``listener(registry bytes)`` (``exports.json``'s) before each ``export`` and
        each ``unexport`` returns: several serving nodes mirror the registry with it
        (``cluster.node_state.ExportsMirror``). An export fails with its listener's error; an
        unexport only logs it (the export is gone either way)."""
        self._change_listeners.append(listener)

    def on_unexport(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` after each ``unexport`` (MOUNT forgets the path's mounts)."""
        self._unexport_listeners.append(listener)

    def start_grace(self) -> None:
        """The server (re)started: the grace period of ``grace_s`` begins now."""
        self._grace_from = time.monotonic()

    def in_grace(self) -> bool:
        return bool(self._grace_from) and time.monotonic() - self._grace_from < self.grace_s

    def handle(self, exp: Export, fileid: int) -> bytes:
        """The file handle of ``fileid`` in ``exp``."""
        return self._handles.encode(exp.export_id, exp.generation, fileid)

    def resolve(self, fh: bytes, peer: str) -> tuple[Export, int]:
        """The export and file id a handle names, for ``peer``.

        :raises NfsError: BADHANDLE (forged or malformed), STALE (export gone), JUKEBOX (not
            restored yet, in the grace period), ACCES (``peer`` is not allowed).
        """
        h = self._handles.decode(fh)
        exp = self._by_id.get(h.export_id)
        if exp is None or exp.generation != h.generation:
            if exp is None and self.in_grace() and self._generation_of(h.export_id) == h.generation:
                raise NfsError(NfsStatus.JUKEBOX, "export not restored yet after a restart")
            raise NfsError(NfsStatus.STALE, "export no longer exists")
        if not exp.allows(peer):
            raise NfsError(NfsStatus.ACCES, f"{peer} may not use {exp.path}")
        return exp, h.fileid
