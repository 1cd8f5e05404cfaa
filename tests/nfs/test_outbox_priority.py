"""A running VM's small READ replies go out ahead of a copy's queued 1 MiB READ replies."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.io.ranges import FileRange
from liverecovery.nfs import connection, zero_copy
from liverecovery.nfs.connection import outbox_position
from liverecovery.nfs.rpc import RecordReader
from liverecovery.nfs.xdr import Part

SMALL = 64 << 10
LARGE = 1 << 20

steps = st.lists(
    st.one_of(st.sampled_from([SMALL, 4 << 10, 128 << 10, LARGE, (128 << 10) + 1]), st.none()),
    max_size=60,
)


@given(steps)
def test_outbox_order(ops: list[int | None]) -> None:
    outbox: list[tuple[int, int]] = []  # (size, arrival)
    sent: list[tuple[int, int]] = []
    for arrival, op in enumerate(ops):
        if op is None:  # the socket took the head
            if outbox:
                sent.append(outbox.pop(0))
            continue
        head = outbox[0] if outbox else None
        outbox.insert(outbox_position([size for size, _ in outbox], op), (op, arrival))
        if head is not None:
            assert outbox[0] == head  # a half-sent reply is never split
        behind = outbox[1:]
        kinds = [size <= 128 << 10 for size, _ in behind]
        assert kinds == sorted(kinds, reverse=True)  # small ones ahead of every large one
    order = sent + outbox
    for small in (True, False):  # each kind keeps its own arrival order
        arrivals = [a for size, a in order if (size <= 128 << 10) is small]
        assert arrivals == sorted(arrivals)


def test_a_small_reply_overtakes_queued_copy_reads() -> None:
    queued = [LARGE] * 8  # a copy's READs, the first half sent
    assert outbox_position(queued, SMALL) == 1
    assert outbox_position([*queued[:1], SMALL, *queued[1:]], SMALL) == 2
    assert outbox_position(queued, LARGE) == 8
    assert outbox_position([], SMALL) == 0
    assert outbox_position([LARGE], SMALL) == 1


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_a_small_reply_overtakes_a_full_outbox_of_spliced_reads(tmp_path: Path) -> None:
    """A peer streams 30 READs of 1 MiB (spliced, the outbox fills past its high water mark),
    then asks a small call: its reply comes before most of the large ones, instead of after
    the outbox drained."""
    if not zero_copy.zero_copy_supported():
        pytest.skip("no splice here")
    data = tmp_path / "disk"
    data.write_bytes(os.urandom(LARGE))
    pool = zero_copy.PipePool(LARGE, max_pipes=40)

    async def large() -> list[Part]:
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

                def frame(r: bytes) -> bytes:
                    return struct.pack(">I", 0x80000000 | len(r)) + r

                await stream.send(frame(b"L") * 30)
                await anyio.sleep(1.0)  # not reading: the server's outbox fills
                conn = next(iter(table))
                assert conn._outbox_full
                await stream.send(frame(b"S"))
                await anyio.sleep(0.3)
                reader = RecordReader(2 << 20)
                got: list[bytes] = []
                while len(got) < 31:
                    reader.feed(await stream.receive())
                    while (record := reader.next_record()) is not None:
                        got.append(bytes(record[:1]))
        assert sorted(got) == [b"L"] * 30 + [b"S"]
        assert got.index(b"S") <= 12, got  # behind what the kernel buffers held, not all 30
    finally:
        listener.close()
        for conn in table:
            conn.close()
