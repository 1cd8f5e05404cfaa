"""The kernel holds little unsent data per connection (``TCP_NOTSENT_LOWAT``), so the order of
replies is the outbox's: a running VM's small READ does not wait behind megabytes of a copy's
READ replies already handed to the kernel."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute

from liverecovery.io.ranges import FileRange
from liverecovery.nfs import connection, zero_copy
from liverecovery.nfs.rpc import RecordReader
from liverecovery.nfs.xdr import Part

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

LARGE = 1 << 20


def frame(record: bytes) -> bytes:
    return struct.pack(">I", 0x80000000 | len(record)) + record


async def test_accepted_connections_bound_their_unsent_bytes() -> None:
    table = connection.ConnectionTable(connection.ConnectionLimits())
    listener = await connection.listen("127.0.0.1", 0, lambda r, p: [b"ok"], table)
    port = listener.sockets[0].getsockname()[1]
    try:
        with anyio.fail_after(30):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(frame(b"x"))
                reader = RecordReader(1 << 16)
                while reader.next_record() is None:
                    reader.feed(await stream.receive())
                (conn,) = table
                assert conn._transport is not None
                sock = conn._transport.get_extra_info("socket")
                lowat = sock.getsockopt(socket.IPPROTO_TCP, connection._TCP_NOTSENT_LOWAT)
        assert lowat == connection.NOTSENT_LOWAT > 0
    finally:
        listener.close()
        for conn in table:
            conn.close()


@pytest.mark.parametrize("spliced", [True, False], ids=["spliced", "copied"])
async def test_a_small_reply_comes_right_after_what_the_peer_already_had(
    tmp_path: Path, spliced: bool
) -> None:
    """30 READ replies of 1 MiB queued for a peer that does not read, then a small call: its
    reply is behind at most the few large ones the peer's receive buffer and the kernel's small
    unsent allowance held, not behind the megabytes a default send buffer takes, nor behind
    the transport's buffer, which sends in order (the copied replies, not spliced, go through
    the outbox too)."""
    if not zero_copy.zero_copy_supported():
        pytest.skip("no splice here")
    data = tmp_path / "disk"
    payload = os.urandom(LARGE)
    data.write_bytes(payload)
    pool = zero_copy.PipePool(LARGE, max_pipes=40)

    async def large() -> list[Part]:
        if not spliced:
            await anyio.lowlevel.checkpoint()
            return [b"L", payload]
        loaded = await zero_copy.load(pool, FileRange(os.open(data, os.O_RDONLY), 0, LARGE))
        assert loaded is not None
        return [b"L", loaded[0]]

    def dispatch(record: bytes | bytearray, peer: str) -> Any:
        return large() if record == b"L" else [b"S"]

    table = connection.ConnectionTable(connection.ConnectionLimits())
    listener = await connection.listen("127.0.0.1", 0, dispatch, table)
    port = listener.sockets[0].getsockname()[1]
    try:
        with anyio.fail_after(60):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                raw = stream.extra(SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
                await stream.send(frame(b"L") * 30)
                await anyio.sleep(1.0)  # not reading: the server's outbox fills
                await stream.send(frame(b"S"))
                await anyio.sleep(0.3)
                reader = RecordReader(2 << 20)
                got: list[bytes] = []
                while len(got) < 31:
                    reader.feed(await stream.receive())
                    while (record := reader.next_record()) is not None:
                        got.append(bytes(record[:1]))
        assert sorted(got) == [b"L"] * 30 + [b"S"]
        assert got.index(b"S") <= 2, got
    finally:
        listener.close()
        for conn in table:
            conn.close()
