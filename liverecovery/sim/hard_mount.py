"""An NFS datastore mount as ESXi holds one: hard, riding out a restart of the server.

When the process serving a live recovery dies, ESXi does not fail the VM's I/O: the datastore
goes "all paths down", every call is retried, and when the server is back (same address, same
file handles) the VM simply continues. This wrapper gives the simulated ESX host the same
behaviour: a call that fails because the connection broke (not because the server answered
with an error) reconnects through the portmapper and is sent again, and a call answered
NFS3ERR_JUKEBOX is sent again after a pause, until ``apd_timeout_s`` has passed (ESXi's
``Misc.APDTimeout`` defaults to 140 s).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from liverecovery.errors import NfsClientError, NfsError, NfsStatus
from liverecovery.nfs import nfs3_codec as n3
from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.filesystem import FileAttributes, SetAttributes, Stability

__all__ = ["HardMount"]

T = TypeVar("T")


class HardMount:
    """One NFS export mounted hard; the methods the simulated host needs, each retried."""

    def __init__(
        self,
        client: NfsClient,
        root: bytes,
        *,
        remote_host: str,
        remote_path: str,
        portmap_port: int,
        apd_timeout_s: float = 140.0,
        retry_delay_s: float = 0.2,
    ) -> None:
        self.client = client
        self.root = root
        self.remote_host = remote_host
        self.remote_path = remote_path
        self.portmap_port = portmap_port
        self.apd_timeout_s = apd_timeout_s
        self.retry_delay_s = retry_delay_s
        self.reconnects = 0
        """How many times the connection was re-established (for tests and logs)."""
        self._lock = anyio.Lock()

    @classmethod
    async def mount(
        cls,
        remote_host: str,
        remote_path: str,
        *,
        portmap_port: int,
        apd_timeout_s: float = 140.0,
    ) -> HardMount:
        """Connect and mount once (a first mount is not retried: ESXi reports it failed).

        :raises NfsClientError: the server cannot be reached. :raises NfsError: MNT refused.
        """
        client = await NfsClient.connect(remote_host, portmap_port=portmap_port)
        try:
            root = await client.mount(remote_path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            raise
        return cls(
            client,
            root,
            remote_host=remote_host,
            remote_path=remote_path,
            portmap_port=portmap_port,
            apd_timeout_s=apd_timeout_s,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _reconnect(self, broken: NfsClient) -> None:
        async with self._lock:
            if self.client is not broken:
                return  # another task already reconnected
            with anyio.CancelScope(shield=True):
                await broken.aclose()
            # No MNT again: as any NFSv3 client, we keep the handles we hold (they persist).
            self.client = await NfsClient.connect(
                self.remote_host, portmap_port=self.portmap_port, call_timeout=10.0
            )
            self.reconnects += 1

    async def call(self, op: Callable[[NfsClient], Awaitable[T]]) -> T:
        """Run ``op`` on the current connection, reconnecting and retrying while the server is
        unreachable, and retrying while it answers NFS3ERR_JUKEBOX (a restarted server not done
        restoring its exports). Any other answer (``NfsError``) goes to the caller as is.

        :raises NfsClientError: still unreachable after ``apd_timeout_s``.
        """
        deadline = time.monotonic() + self.apd_timeout_s
        while True:
            client = self.client
            try:
                return await op(client)
            except NfsError as exc:
                if exc.status is not NfsStatus.JUKEBOX or time.monotonic() >= deadline:
                    raise
                await anyio.sleep(self.retry_delay_s)
                continue
            except NfsClientError:
                if time.monotonic() >= deadline:
                    raise
            while True:
                await anyio.sleep(self.retry_delay_s)
                try:
                    await self._reconnect(client)
                    break
                except NfsClientError:
                    if time.monotonic() >= deadline:
                        raise

    # -- the calls -------------------------------------------------------------------------------

    async def getattr(self, fh: bytes) -> FileAttributes:
        return await self.call(lambda c: c.getattr(fh))

    async def lookup(self, dir_fh: bytes, name: str) -> tuple[bytes, FileAttributes | None]:
        return await self.call(lambda c: c.lookup(dir_fh, name))

    async def lookup_path(self, root: bytes, path: str) -> bytes:
        return await self.call(lambda c: c.lookup_path(root, path))

    async def read(self, fh: bytes, offset: int, count: int) -> tuple[bytes, bool]:
        return await self.call(lambda c: c.read(fh, offset, count))

    async def write(
        self, fh: bytes, offset: int, data: bytes, stable: Stability = Stability.FILE_SYNC
    ) -> n3.WriteRes:
        return await self.call(lambda c: c.write(fh, offset, data, stable))

    async def commit(self, fh: bytes) -> bytes:
        return await self.call(lambda c: c.commit(fh))

    async def create(
        self, dir_fh: bytes, name: str, attributes: SetAttributes | None = None
    ) -> tuple[bytes, FileAttributes | None]:
        return await self.call(lambda c: c.create(dir_fh, name, attributes))

    async def remove(self, dir_fh: bytes, name: str) -> None:
        await self.call(lambda c: c.remove(dir_fh, name))

    async def fsinfo(self, fh: bytes) -> n3.FsinfoRes:
        return await self.call(lambda c: c.fsinfo(fh))

    async def fsstat(self, fh: bytes) -> n3.FsstatRes:
        return await self.call(lambda c: c.fsstat(fh))

    async def umount(self) -> None:
        await self.call(lambda c: c.umount(self.remote_path))
