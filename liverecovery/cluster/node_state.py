"""What a node needs from the shared state to serve a service address as any other node did:
the NFS handle key (``handle-key``, created once, read by every node, so every node mints the
same file handles) and the export registry of the address (``exports/<vip>.json``: export ids
and generations, so a handle given out by one node names the same export on the next).

Both are installed into the node's local NFS state directory before its server starts
(``nfs/handles.py`` and ``nfs/exports.py`` read them there); the export registry is mirrored back
to the store by its lease holder while it serves (``ExportsMirror``).
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Final

import anyio

from liverecovery.backends import SharedState
from liverecovery.errors import BackendError, LiveRecoveryError
from liverecovery.io.private_dirs import make_private_dirs, write_private_file

__all__ = [
    "HANDLE_KEY",
    "ExportsMirror",
    "exports_key",
    "install_node_state",
    "shared_handle_key",
]

HANDLE_KEY: Final = "handle-key"
_KEY_FILE: Final = "handle-key"  # nfs/handles.py KEY_FILE
_EXPORTS_FILE: Final = "exports.json"  # nfs/exports.py


def exports_key(vip: str) -> str:
    return f"exports/{vip}.json"


async def shared_handle_key(state: SharedState) -> bytes:
    """The cluster's 32-byte handle key: the first node to ask creates it (``create``: of two
    at once, one wins and the other reads the winner's), every node after reads it.

    :raises BackendError: the stored key is not 32 bytes, or the store does not answer.
    """
    found = await state.get(HANDLE_KEY)
    if found is None:
        key = secrets.token_bytes(32)
        if await state.create(HANDLE_KEY, key) is not None:
            return key
        found = await state.get(HANDLE_KEY)
        if found is None:
            raise BackendError("the shared handle key vanished", operation="shared_state")
    if len(found.data) != 32:
        raise BackendError(
            f"shared state {HANDLE_KEY}: must be 32 bytes, found {len(found.data)}",
            operation="shared_state",
        )
    return found.data


async def install_node_state(state: SharedState, vip: str, state_dir: Path) -> None:
    """Write the shared handle key and the address's export registry (if any) into
    ``state_dir``, replacing what was there: call before the NFS server of ``vip`` starts."""
    key = await shared_handle_key(state)
    exports = await state.get(exports_key(vip))

    def write() -> None:
        make_private_dirs(state_dir)
        write_private_file(state_dir / _KEY_FILE, key)
        if exports is not None:
            write_private_file(state_dir / _EXPORTS_FILE, exports.data)

    await anyio.to_thread.run_sync(write)


class ExportsMirror:
    """Copies the export registry of ``state_dir`` to ``exports/<vip>.json`` on every change:
    ``ExportRegistry.on_change(mirror.changed)`` makes each export wait for its copy, so an
    export a node made is in the store before any handle of it is given out. ``run`` copies
    once at start and again after a copy that failed (every ``interval_s`` until one succeeds);
    it does not poll the file. Plain writes: only the lease holder runs a mirror."""

    def __init__(
        self, state: SharedState, vip: str, state_dir: Path, *, interval_s: float = 0.2
    ) -> None:
        self.state = state
        self.vip = vip
        self.path = state_dir / _EXPORTS_FILE
        self.interval_s = interval_s
        self._sent: bytes | None = None
        self._etag: str | None = None
        self._lock = anyio.Lock()
        self._failed = True  # nothing copied yet: ``run`` copies what is on disk

    async def changed(self, data: bytes) -> None:
        """The registry is now ``data``: copy it before returning.

        :raises BackendError: the store did not take it (``run`` tries again).
        """
        async with self._lock:
            try:
                await self._write(data)
            except BaseException:
                self._failed = True
                raise

    async def sync(self) -> bool:
        """Copy the registry file if it changed since the last copy; whether it wrote."""
        async with self._lock:
            try:
                data = await anyio.Path(self.path).read_bytes()
            except FileNotFoundError:
                self._failed = False
                return False
            wrote = await self._write(data)
            self._failed = False
            return wrote

    async def _write(self, data: bytes) -> bool:
        if data == self._sent:
            return False
        key = exports_key(self.vip)
        if self._etag is None:
            current = await self.state.get(key)
            if current is not None and current.data == data:
                self._sent, self._etag = data, current.etag
                return False
            etag = (
                await self.state.create(key, data)
                if current is None
                else await self.state.replace(key, data, current.etag)
            )
        else:
            etag = await self.state.replace(key, data, self._etag)
            if etag is None:  # someone else wrote it: read it and write once more
                self._etag = None
                return await self._write(data)
        if etag is None:
            raise BackendError(
                f"shared state {key}: changed by another writer while copying the registry",
                operation="shared_state",
            )
        self._sent, self._etag = data, etag
        return True

    async def run(self) -> None:
        while True:
            if self._failed:
                with contextlib.suppress(LiveRecoveryError):  # the store is away: next round
                    await self.sync()
            await anyio.sleep(self.interval_s)
