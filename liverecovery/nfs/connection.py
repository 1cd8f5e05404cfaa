"""One client connection of the server, as an asyncio ``Protocol``: the hot path.

Records are reassembled as bytes arrive and each call runs in its own task, so replies go out
in completion order. At most ``max_in_flight`` calls run per connection; beyond that the
connection stops reading (TCP pushes back on the client) until one finishes. Writes respect the
transport's flow control. A protocol (rather than anyio streams) saves several awaits and
cancel-scope entries per call, which is most of the per-request cost in Python.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Final

from liverecovery.nfs.rpc import RecordReader, RecordTooLarge, record_header
from liverecovery.nfs.xdr import Buffer

__all__ = ["Dispatch", "RpcServerProtocol"]

log = logging.getLogger(__name__)

Dispatch = Callable[[bytes | bytearray, str], Awaitable[list[Buffer] | None]]
"""Answers one record from a peer address: the reply's buffers, or None to close the connection."""

_LOW_WATER: Final = 1 << 20
_HIGH_WATER: Final = 8 << 20


class RpcServerProtocol(asyncio.BufferedProtocol):
    def __init__(
        self,
        dispatch: Dispatch,
        *,
        max_in_flight: int,
        max_record: int,
        connections: set[RpcServerProtocol],
        partial_record_timeout: float = 60.0,
    ) -> None:
        self._partial_timeout = partial_record_timeout
        self._partial_timer: asyncio.TimerHandle | None = None
        self._dispatch = dispatch
        self._max_in_flight = max_in_flight
        self._reader = RecordReader(max_record)
        self._connections = connections
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: collections.deque[bytes | bytearray] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._fileno = -1
        self._reading_paused = False
        self._eof = False
        self._can_write = asyncio.Event()
        self._can_write.set()

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        sock = transport.get_extra_info("socket")
        self._fileno = sock.fileno() if sock is not None else -1
        self._connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.buffer_updated(nbytes)
        completed = False
        try:
            while (record := self._reader.next_record()) is not None:
                self._queued.append(record)
                completed = True
        except RecordTooLarge as exc:
            log.warning("closing connection from %s: %s", self._peer, exc)
            self.close()
            return
        self._watch_partial(completed)
        self._start_queued()

    def _watch_partial(self, progressed: bool) -> None:
        """Close a connection that leaves a record unfinished for too long (slow loris)."""
        if self._partial_timer is not None and (progressed or not self._reader.buffered):
            self._partial_timer.cancel()
            self._partial_timer = None
        if self._partial_timer is None and self._reader.buffered:
            self._partial_timer = asyncio.get_running_loop().call_later(
                self._partial_timeout, self._partial_expired
            )

    def _partial_expired(self) -> None:
        log.warning(
            "closing connection from %s: record unfinished for %s s",
            self._peer,
            self._partial_timeout,
        )
        self.close()

    def eof_received(self) -> bool:
        self._eof = True
        self._maybe_finish()
        return True  # keep the write side open for the answers still in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._partial_timer is not None:
            self._partial_timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- calls ------------------------------------------------------------------------------

    def _start_queued(self) -> None:
        while self._queued and len(self._tasks) < self._max_in_flight:
            record = self._queued.popleft()
            task = asyncio.get_running_loop().create_task(self._answer(record))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._queued and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not self._queued and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call from %s failed", self._peer, exc_info=task.exception())
        self._start_queued()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._eof and not self._tasks and not self._queued and self._transport is not None:
            self._transport.close()

    async def _answer(self, record: bytes | bytearray) -> None:
        reply = await self._dispatch(record, self._peer)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reply is None:
            self.close()
            return
        if not self._can_write.is_set():
            await self._can_write.wait()
            if transport.is_closing():
                return
        size = 0
        for chunk in reply:
            size += len(chunk) if not isinstance(chunk, memoryview) else chunk.nbytes
        buffers = [record_header(size), *reply]
        if self._fileno < 0 or transport.get_write_buffer_size():
            self._write_rest(transport, buffers, 0)
            return
        # The transport holds nothing: one writev puts the record mark and every chunk (READ
        # data unjoined, uncopied) on the socket in one system call and one TCP push; whatever
        # the socket does not take goes to the transport, which sends it in order.
        try:
            sent = os.writev(self._fileno, buffers)
        except OSError:  # EAGAIN, or an error the transport reports on its own write below
            sent = 0
        if sent < size + 4:
            self._write_rest(transport, buffers, sent)

    @staticmethod
    def _write_rest(transport: asyncio.Transport, buffers: list[Buffer], skip: int) -> None:
        for chunk in buffers:
            view = memoryview(chunk).cast("B")
            if skip >= len(view):
                skip -= len(view)
                continue
            transport.write(view[skip:] if skip else chunk)
            skip = 0

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
