"""A hostile TCP peer cannot hurt the server, and everyone else keeps being served.

Attackers are real sockets bound to 127.0.0.2 (loopback has all of 127.0.0.0/8); the allowed
client is our ``NfsClient`` from 127.0.0.1, which must keep getting answers within a bound while
each attack runs. Memory is asserted on what the server's connections hold
(``NfsServer.connections.buffered_bytes``), the figure the attacks used to inflate.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from liverecovery.nfs.client import NfsClient
from liverecovery.nfs.localfs import LocalFilesystem
from liverecovery.nfs.server import NfsServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

ATTACKER = "127.0.0.2"
EXPORT = "/export"
DECOY = "/decoy"
MiB = 1 << 20
LAST = 0x80000000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(
    tmp_path: Path, *, admit_attacker: bool, **limits: Any
) -> AsyncIterator[tuple[NfsServer, NfsClient, bytes]]:
    """A server exporting a directory to 127.0.0.1 (and, with ``admit_attacker``, another one
    to the attacker's address, so its connections are kept and the per-connection bounds are
    what stops it); a connected, mounted allowed client; the handle of ``file``."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(b"still served\n")
    async with NfsServer(tmp_path / "state", **limits) as server:
        fs = LocalFilesystem(data)
        await server.export_filesystem(EXPORT, fs, ["127.0.0.1"])
        if admit_attacker:
            (tmp_path / "decoy").mkdir()
            await server.export_filesystem(DECOY, LocalFilesystem(tmp_path / "decoy"), [ATTACKER])
        async with await NfsClient.connect(
            "127.0.0.1", server.port, call_timeout=20, local_host="127.0.0.1"
        ) as client:
            root = await client.mount(EXPORT)
            fh, _ = await client.lookup(root, "file")
            yield server, client, fh
        await fs.aclose()


async def still_served(client: NfsClient, fh: bytes, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        assert await client.read(fh, 0, 100) == (b"still served\n", True)


async def connect(port: int, host: str = ATTACKER) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp("127.0.0.1", port, local_host=host)


async def try_connect(port: int) -> anyio.abc.SocketStream | None:
    """A connection from the attacker, or None when the server reset it at once."""
    try:
        return await connect(port)
    except OSError:
        return None


async def closed_by_server(stream: anyio.abc.SocketStream, within: float) -> bool:
    """The server closed (or reset) the connection within ``within`` seconds."""
    try:
        with anyio.fail_after(within):
            while True:
                await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
        return True
    except TimeoutError:
        return False


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not check():
            await anyio.sleep(0.02)


async def close_all(streams: list[anyio.abc.SocketStream]) -> None:
    for s in streams:
        await s.aclose()


async def test_an_address_no_export_allows_is_closed_at_accept(tmp_path: Path) -> None:
    """300 sockets from an address no export allows, each announcing a 1 MiB record: each is
    reset at accept (the connect itself may already see the reset), nothing is buffered."""
    async with serving(tmp_path, admit_attacker=False) as (server, client, fh):
        streams: list[anyio.abc.SocketStream] = []
        try:
            for _ in range(300):
                try:
                    s = await connect(server.port)
                    streams.append(s)
                    await s.send(struct.pack(">I", LAST | MiB) + b"x" * 1000)
                except (OSError, anyio.BrokenResourceError):
                    pass
            for s in streams:
                assert await closed_by_server(s, 5)
            await eventually(lambda: server.connections.refused >= 300)
            assert server.connections.count(ATTACKER) == 0
            assert server.connections.buffered_bytes() == 0
            await still_served(client, fh)
        finally:
            await close_all(streams)


async def test_announced_record_sizes_cost_nothing_until_sent(tmp_path: Path) -> None:
    """200 sockets each announce a 1 MiB record and send 5 bytes of it (this used to allocate
    the whole MiB per socket); one sends half of its record: it holds about what it sent."""
    async with serving(
        tmp_path, admit_attacker=True, max_connections=400, max_connections_per_address=300
    ) as (server, client, fh):
        streams = [await connect(server.port) for _ in range(200)]
        try:
            for s in streams:
                await s.send(struct.pack(">I", LAST | MiB) + b"12345")
            await eventually(lambda: server.connections.count(ATTACKER) == 200)
            await eventually(lambda: server.connections.buffered_bytes() >= 200 * 9)
            await still_served(client, fh)
            assert server.connections.buffered_bytes() < 200 * 64
            half = MiB // 2
            await streams[0].send(b"y" * (half - 5))
            await eventually(lambda: server.connections.buffered_bytes() >= half)
            await still_served(client, fh)
            assert server.connections.buffered_bytes() <= 2 * (half + 4) + 200 * 64
        finally:
            await close_all(streams)


async def test_endless_empty_fragments_are_cut_off(tmp_path: Path) -> None:
    """Empty fragments used to be kept in a list without limit (64 MiB of zeros: +129 MiB):
    the fragment cap closes the connection after 1024 of them."""
    async with serving(tmp_path, admit_attacker=True) as (server, client, fh):
        s = await connect(server.port)
        try:
            with pytest.raises((anyio.BrokenResourceError, OSError)):
                for _ in range(1000):
                    await s.send(b"\0\0\0\0" * 1000)  # 1000 empty non-last fragments
                    await anyio.lowlevel.checkpoint()
            assert server.connections.count(ATTACKER) == 0
            assert server.connections.buffered_bytes() < 64 * 1024
            await still_served(client, fh)
        finally:
            await s.aclose()


async def test_empty_fragments_do_not_keep_a_partial_record_alive(tmp_path: Path) -> None:
    """A trickle of empty fragments (below the fragment cap) used to cancel the partial-record
    timer; the record is unfinished all the same."""
    async with serving(tmp_path, admit_attacker=True, partial_record_timeout=0.5) as (
        server,
        client,
        fh,
    ):
        s = await connect(server.port)
        try:
            t0 = anyio.current_time()
            with pytest.raises((anyio.BrokenResourceError, OSError)):
                for _ in range(200):  # 10 s of trickle, 200 fragments (cap: 1024)
                    await s.send(b"\0\0\0\0")
                    await anyio.sleep(0.05)
                    await still_served(client, fh)
            assert anyio.current_time() - t0 < 5
            await eventually(lambda: server.connections.count(ATTACKER) == 0)
        finally:
            await s.aclose()


async def test_idle_sockets_up_to_the_per_address_cap_lock_nobody_out(tmp_path: Path) -> None:
    """~1,100 idle sockets from one address used to exhaust the descriptors; now one address
    gets ``max_connections_per_address`` of them, and idle ones are closed after a while."""
    async with serving(
        tmp_path,
        admit_attacker=True,
        max_connections=32,
        max_connections_per_address=8,
        idle_timeout=1.5,
    ) as (server, client, fh):
        streams = [s for _ in range(40) if (s := await try_connect(server.port)) is not None]
        try:
            await eventually(lambda: server.connections.refused >= 32)
            assert server.connections.count(ATTACKER) == 8
            await still_served(client, fh)
            # A new client from the allowed address still gets in and is answered.
            async with await NfsClient.connect(
                "127.0.0.1", server.port, call_timeout=10, local_host="127.0.0.1"
            ) as other:
                with anyio.fail_after(5):
                    root = await other.mount(EXPORT)
                    fh2, _ = await other.lookup(root, "file")
                    assert (await other.read(fh2, 0, 100))[0] == b"still served\n"
            # Idle connections are closed (the attacker's and, had it idled, the client's).
            kept = [s for s in streams if not await closed_by_server(s, 0.05)]
            assert len(kept) <= 8
            for s in kept:
                assert await closed_by_server(s, 10)
            await eventually(lambda: server.connections.count(ATTACKER) == 0)
        finally:
            await close_all(streams)


async def test_a_full_server_makes_room_for_a_client_of_an_export(tmp_path: Path) -> None:
    """Before anything is exported every address is kept (nobody is known yet); once the
    table is full, a client of an export still gets in: the oldest connection of an address
    no export allows is closed for it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(b"still served\n")
    async with NfsServer(
        tmp_path / "state", max_connections=10, max_connections_per_address=10
    ) as server:
        streams = [await connect(server.port) for _ in range(10)]
        try:
            await eventually(lambda: server.connections.count(ATTACKER) == 10)
            fs = LocalFilesystem(data)
            await server.export_filesystem(EXPORT, fs, ["127.0.0.1"])
            async with await NfsClient.connect(
                "127.0.0.1", server.port, call_timeout=10, local_host="127.0.0.1"
            ) as client:
                with anyio.fail_after(5):
                    root = await client.mount(EXPORT)
                    fh, _ = await client.lookup(root, "file")
                await still_served(client, fh)
                assert server.connections.count(ATTACKER) == 9
                assert len(server.connections) == 10
            await fs.aclose()
        finally:
            await close_all(streams)


async def test_accept_errors_are_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of descriptors, every ``accept`` fails: asyncio logged a traceback for each (up to
    476 MB of stderr in 95 s). Now one line per interval, without a traceback, and accepting
    resumes once descriptors are free again."""
    async with serving(tmp_path, admit_attacker=False) as (server, client, fh):
        listener = server._listeners[0]
        real = listener.sockets[0]

        class Exhausted:
            """The listening socket while the process has no descriptor left."""

            failing = True

            def accept(self) -> Any:
                if self.failing:
                    raise OSError(errno.EMFILE, "Too many open files")
                return real.accept()

            def fileno(self) -> int:
                return real.fileno()

            def getsockname(self) -> Any:
                return real.getsockname()

        stub = Exhausted()
        loop = asyncio.get_running_loop()
        loop.remove_reader(real.fileno())
        loop.add_reader(real.fileno(), listener._accept, stub)
        with caplog.at_level(logging.DEBUG):
            waiting = [await anyio.connect_tcp("127.0.0.1", server.port) for _ in range(3)]
            for _ in range(100):  # 2 s of failing accepts, woken again and again
                listener._accept(stub)  # type: ignore[arg-type]
                await anyio.sleep(0.02)
            stub.failing = False
            async with await NfsClient.connect(
                "127.0.0.1", server.port, call_timeout=10, local_host="127.0.0.1"
            ) as other:
                with anyio.fail_after(5):
                    await other.mount(EXPORT)
        lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None
        assert not [r for r in caplog.records if r.exc_info is not None]
        await still_served(client, fh)
        await close_all(waiting)


def test_the_connection_limit_leaves_descriptors_for_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``ulimit -n 100`` the table holds 50 connections whatever the setting says, so it
    fills (and evicts for clients of an export) before ``accept`` fails with EMFILE."""
    from liverecovery.nfs import connection

    monkeypatch.setattr(connection.resource, "getrlimit", lambda _which: (100, 4096))
    assert connection.ConnectionTable(connection.ConnectionLimits()).max_connections == 50
    limits = connection.ConnectionLimits(max_connections=20)
    assert connection.ConnectionTable(limits).max_connections == 20
