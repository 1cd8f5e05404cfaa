"""One client connection of the server, as an asyncio ``Protocol``: the hot path.

Records are reassembled as bytes arrive and each call runs in its own task, so replies go out
in completion order. At most ``max_in_flight`` calls run per connection; beyond that the
connection stops reading (TCP pushes back on the client) until one finishes. Writes respect the
transport's flow control. A protocol (rather than anyio streams) saves several awaits and
cancel-scope entries per call, which is most of the per-request cost in Python.

READ data that waits in a pipe (``zero_copy.PipedData``) is spliced from the pipe to the socket.
For that the connection writes to the socket itself, through a duplicate of its descriptor:
while such a reply (or anything queued behind it) is unsent, every reply waits in the
connection's own outbox, so records never interleave; the transport writes again once the
outbox is empty. When the transport still buffers bytes, piped data is copied out instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from liverecovery.nfs.rpc import RecordReader, RecordTooLarge, record_header
from liverecovery.nfs.xdr import Buffer, Part
from liverecovery.nfs.zero_copy import PipedData, zero_copy_supported

__all__ = ["Dispatch", "RpcServerProtocol", "listen"]

log = logging.getLogger(__name__)

Dispatch = Callable[[bytes | bytearray, str], Awaitable[list[Part] | None]]
"""Answers one record from a peer address: the reply's parts (buffers, or ``PipedData``), or
None to close the connection."""

_LOW_WATER: Final = 1 << 20
_HIGH_WATER: Final = 8 << 20
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_SPLICE_MORE: Final = getattr(os, "SPLICE_F_MORE", 4)
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)


def release(parts: Iterable[Part] | None) -> None:
    """Give back the pipes of a reply that will not be sent."""
    for part in parts or ():
        if isinstance(part, PipedData):
            part.release()


def _copied(parts: list[Part]) -> list[Buffer]:
    """The reply with piped data read into memory (for the transport, which cannot splice)."""
    out: list[Buffer] = []
    for part in parts:
        if isinstance(part, PipedData):
            try:
                out.append(part.take_bytes())
            finally:
                part.release()
        else:
            out.append(part)  # type: ignore[arg-type]  # every other part is a buffer
    return out


class RpcServerProtocol(asyncio.BufferedProtocol):
    def __init__(
        self,
        dispatch: Dispatch,
        *,
        max_in_flight: int,
        max_record: int,
        connections: set[RpcServerProtocol],
        partial_record_timeout: float = 60.0,
        serving: Callable[[], bool] | None = None,
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
        self._transport_paused = False
        self._raw: socket.socket | None = None
        """A duplicate of the connection's socket: splice writes to it while the outbox is busy."""
        self._outbox: collections.deque[tuple[collections.deque[Part], int]] = collections.deque()
        self._outbox_bytes = 0
        self._outbox_full = False
        self._waiting_writable = False
        self._serving = serving
        """Whether the listener still serves; a connection made after it closed is aborted."""

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._serving is not None and not self._serving():
            # Accepted by the kernel as the listener closed: asyncio still makes the
            # connection after the server dropped every connection it knew of, and it must
            # not outlive the server (a client would go on talking to its stale exports).
            transport.abort()
            return
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
        self._drop_outbox()
        if self._raw is not None:
            self._raw.close()  # before the transport closes its own descriptor (FIN goes out)
            self._raw = None
        self._can_write.set()

    def pause_writing(self) -> None:
        self._transport_paused = True
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._transport_paused = False
        if not self._outbox_full:
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
        if (
            self._eof
            and not self._tasks
            and not self._queued
            and not self._outbox
            and self._transport is not None
        ):
            self._transport.close()

    async def _answer(self, record: bytes | bytearray) -> None:
        reply = await self._dispatch(record, self._peer)
        try:
            if reply is not None and not self._can_write.is_set():
                await self._can_write.wait()
            self._send(reply)
        except BaseException:
            release(reply)  # a cancelled or failed send: no pipe stays taken
            raise

    def _send(self, reply: list[Part] | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            release(reply)
            return
        if reply is None:
            self.close()
            return
        size = 0
        piped = False
        for chunk in reply:
            if isinstance(chunk, (bytes, bytearray)):
                size += len(chunk)
            else:  # a memoryview, or PipedData
                size += chunk.nbytes
                piped = piped or isinstance(chunk, PipedData)
        parts: list[Part] = [record_header(size), *reply]
        if self._outbox:  # a spliced reply is on its way: queue behind it
            self._enqueue(parts, size + 4)
            return
        if piped:
            if not transport.get_write_buffer_size() and self._raw_socket() is not None:
                self._enqueue(parts, size + 4)
                self._pump()
                return
            parts = _copied(parts)  # type: ignore[assignment]
        buffers: list[Buffer] = parts  # type: ignore[assignment]  # no PipedData left
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

    # -- writing to the socket ourselves (spliced READ data) -------------------------------

    def _raw_socket(self) -> socket.socket | None:
        if self._raw is None and self._fileno >= 0 and zero_copy_supported():
            try:
                raw = socket.socket(fileno=os.dup(self._fileno))
                raw.setblocking(False)
            except OSError:
                return None
            self._raw = raw
        return self._raw

    def _enqueue(self, parts: list[Part], size: int) -> None:
        self._outbox.append((collections.deque(parts), size))
        self._outbox_bytes += size
        if self._outbox_bytes > _HIGH_WATER and not self._outbox_full:
            self._outbox_full = True
            self._can_write.clear()

    def _pump(self) -> None:
        """Send what the socket takes from the outbox; wait for it to be writable otherwise."""
        raw = self._raw
        if raw is None:
            self._drop_outbox()
            return
        fd = raw.fileno()
        try:
            while self._outbox:
                parts, size = self._outbox[0]
                more = len(self._outbox) > 1
                while parts:
                    head = parts[0]
                    if isinstance(head, PipedData):
                        if head.remaining == 0:
                            head.release()
                            parts.popleft()
                            continue
                        flags = _SPLICE_FLAGS | (_SPLICE_MORE if more or len(parts) > 1 else 0)
                        n = os.splice(head.fd, fd, head.remaining, flags=flags)
                        if n <= 0:
                            raise OSError("READ data pipe ran dry")
                        head.remaining -= n
                        continue
                    buffers: list[Buffer] = []
                    for part in parts:
                        if isinstance(part, PipedData):
                            break
                        buffers.append(part)  # type: ignore[arg-type]  # a buffer
                    tail = more or len(buffers) < len(parts)
                    n = raw.sendmsg(buffers, (), _MSG_MORE if tail else 0)
                    while parts and not isinstance(parts[0], PipedData):
                        chunk = memoryview(parts[0]).cast("B")  # type: ignore[arg-type]
                        if chunk.nbytes > n:
                            parts[0] = chunk[n:]
                            break
                        n -= chunk.nbytes
                        parts.popleft()
                    if parts and not isinstance(parts[0], PipedData):
                        raise BlockingIOError  # the socket took only part of the buffers
                self._outbox.popleft()
                self._outbox_bytes -= size
                if self._outbox_full and self._outbox_bytes <= _LOW_WATER:
                    self._outbox_full = False
                    if not self._transport_paused:
                        self._can_write.set()
        except BlockingIOError:
            if not self._waiting_writable:
                asyncio.get_running_loop().add_writer(fd, self._pump)
                self._waiting_writable = True
            return
        except OSError as exc:
            log.info("closing connection from %s: send failed: %s", self._peer, exc)
            self._drop_outbox()
            self.close()
            return
        self._stop_waiting()
        self._maybe_finish()

    def _stop_waiting(self) -> None:
        if self._waiting_writable and self._raw is not None:
            asyncio.get_running_loop().remove_writer(self._raw.fileno())
        self._waiting_writable = False

    def _drop_outbox(self) -> None:
        self._stop_waiting()
        while self._outbox:
            parts, _ = self._outbox.popleft()
            release(parts)
        self._outbox_bytes = 0
        self._outbox_full = False
        if not self._transport_paused:
            self._can_write.set()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def listen(
    host: str,
    port: int,
    dispatch: Dispatch,
    connections: set[RpcServerProtocol],
    *,
    max_in_flight: int,
    max_record: int,
    partial_record_timeout: float,
) -> asyncio.Server:
    """A TCP listener whose every connection is an ``RpcServerProtocol`` answering through
    ``dispatch``; ``connections`` holds the open ones (to drop them all on close).

    :raises OSError: the port is taken.
    """

    def accept() -> RpcServerProtocol:
        protocol = RpcServerProtocol(
            dispatch,
            max_in_flight=max_in_flight,
            max_record=max_record,
            connections=connections,
            partial_record_timeout=partial_record_timeout,
            serving=lambda: listener.is_serving(),
        )
        return protocol

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(accept, host, port, reuse_address=True)
    return listener
