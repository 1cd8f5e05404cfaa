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
Large replies that are not piped (over ``_SMALL_REPLY``) take the outbox too, and the kernel
keeps little unsent data per socket (``NOTSENT_LOWAT``): what waits, waits in the outbox, where
a small reply goes ahead of a storage vMotion's queued 1 MiB READs (``outbox_position``).

Nothing a peer sends before it is known to be a client can make the server hold more than it
sent (see ``RecordReader``), and ``listen`` bounds what peers can take in total: it accepts
connections itself and closes at once those over the total or per-address limit or from an
address ``admits`` refuses; one timer per connection closes it when a record stays unfinished
or the connection stays idle too long; errors of ``accept`` (EMFILE...) and refusals are
logged at most once per interval (``LogThrottle``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import math
import os
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from liverecovery.nfs.rpc import (
    DEFAULT_MAX_FRAGMENTS,
    RecordReader,
    RecordTooLarge,
    record_header,
    scratch_buffer,
)
from liverecovery.nfs.xdr import Buffer, Part
from liverecovery.nfs.zero_copy import PipedData, zero_copy_supported

__all__ = [
    "ConnectionLimits",
    "ConnectionTable",
    "Dispatch",
    "Listener",
    "LogThrottle",
    "RpcServerProtocol",
    "StreamTransport",
    "listen",
    "outbox_position",
]

log = logging.getLogger(__name__)

Dispatch = Callable[[bytes | bytearray, str], list[Part] | Awaitable[list[Part] | None] | None]
"""Answers one record from a peer address: the reply's parts (buffers, or ``PipedData``), or
None to close the connection; either at once, or as something to await (which then runs in a
task of its own, so that a slow call never holds up the others)."""

_LOW_WATER: Final = 1 << 20
_HIGH_WATER: Final = 8 << 20
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_SPLICE_MORE: Final = getattr(os, "SPLICE_F_MORE", 4)
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
_IOV_MAX: Final = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024) - 8
"""Buffers gathered for one writev at most (the kernel refuses more than IOV_MAX)."""
_SMALL_REPLY: Final = 128 << 10
"""A reply up to this size (a running guest's READ, any metadata answer) goes ahead of queued
larger ones (a storage vMotion's 1 MiB READs): see ``outbox_position``."""
_ACCEPT_BATCH: Final = 64
"""Connections accepted per wake-up of the listening socket (then other work runs)."""
_ACCEPT_RETRY_S: Final = 0.5
"""After an accept failed for lack of resources (EMFILE...), wait this long before the next."""
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKLOG: Final = 128
_TCP_NOTSENT_LOWAT: Final = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux >= 3.12
NOTSENT_LOWAT: Final = 256 << 10
"""Unsent bytes an accepted TCP socket holds at most (``TCP_NOTSENT_LOWAT``): past that it is
not writable, so queued replies wait in the connection's outbox, where a small reply goes
ahead of large ones (``outbox_position``), rather than in the kernel behind them."""
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


@runtime_checkable
class StreamTransport(Protocol):
    """What a connection needs of its transport: asyncio's ``Transport`` has it, and so has
    uvloop's (which is not an ``asyncio.Transport`` subclass)."""

    def write(self, data: Buffer, /) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_extra_info(self, name: str, default: Any = None, /) -> Any: ...
    def get_write_buffer_size(self) -> int: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def outbox_position(queued: list[int], size: int) -> int:
    """Where a reply of ``size`` bytes goes in an outbox of replies of ``queued`` sizes.

    Replies answer by xid, so their order on the wire is free. A small reply (a running VM's
    READ, a GETATTR) goes ahead of the large ones queued behind the head (which may be half
    sent), after the small ones already there: one copy's 8 MiB of queued READ replies never
    delays a guest's READ. Large replies keep their order among themselves, small ones theirs.
    """
    if size > _SMALL_REPLY:
        return len(queued)
    at = 1
    while at < len(queued) and queued[at] <= _SMALL_REPLY:
        at += 1
    return min(at, len(queued))


@attrs.frozen
class ConnectionLimits:
    """What one server lets peers take: per connection and in total.

    Memory per connection is at most about ``max_record`` for the record being received (less
    until the peer is trusted: what it sent, doubled) plus ``max_in_flight`` records being
    answered; ``max_connections`` bounds the number of connections.
    """

    max_in_flight: int = 64
    max_record: int = 1 << 20
    max_fragments: int = DEFAULT_MAX_FRAGMENTS
    max_connections: int = 256
    max_connections_per_address: int = 64
    partial_record_timeout: float = 60.0
    """Seconds a record may stay unfinished (slow loris, endless empty fragments)."""
    idle_timeout: float = 360.0
    """Seconds a connection may stay without a call before it is closed (0: never); clients
    reconnect transparently (knfsd closes idle connections after 6 minutes too)."""
    log_interval: float = 60.0
    """Refusals and accept errors are logged at most once per this many seconds each."""

    @property
    def check_interval(self) -> float:
        """How often a connection's timer looks at it: a quarter of the shorter timeout."""
        timeouts = [t for t in (self.partial_record_timeout, self.idle_timeout) if t > 0]
        return max(0.01, min(timeouts, default=60.0) / 4)


class LogThrottle:
    """Logs each kind of event at most once per ``interval`` seconds, counting the rest.

    A hostile peer can cause refusals as fast as it can open sockets; one line a minute says
    the same as a million.
    """

    def __init__(self, interval: float, logger: logging.Logger = log) -> None:
        self.interval = interval
        self._log = logger
        self._seen: dict[str, tuple[float, int]] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message`` unless ``kind`` was logged less than ``interval`` ago; True if logged."""
        now = time.monotonic()
        last, skipped = self._seen.get(kind, (-math.inf, 0))
        if now - last < self.interval:
            self._seen[kind] = (last, skipped + 1)
            return False
        if skipped:
            message += " (and %d more like it since the last report)"
            args = (*args, skipped)
        self._log.log(level, message, *args)
        self._seen[kind] = (now, 0)
        return True


def _descriptor_share() -> int:
    """Half the process's soft descriptor limit (at least 16)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1 << 30
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, soft // 2)


class ConnectionTable:
    """The open connections of one server, counted in total and per source address."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.max_connections = min(limits.max_connections, _descriptor_share())
        """``limits.max_connections``, but at most half the process's descriptor limit: the
        table fills before ``accept`` runs out of descriptors (EMFILE), so a client of an
        export can still be let in by eviction."""
        self.throttle = LogThrottle(limits.log_interval)
        self._all: dict[RpcServerProtocol, None] = {}
        """In the order they were accepted."""
        self._per_address: dict[str, int] = {}
        self.closed = False
        """Set when the server closes: connections still being set up close at once."""
        self.refused = 0
        """Connections closed at accept (limits, or an address no export could allow)."""

    def __iter__(self) -> Iterator[RpcServerProtocol]:
        return iter(list(self._all))

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, conn: object) -> bool:
        return conn in self._all

    def count(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` must be closed at once, or None."""
        if self.closed:
            return "the server is closing"
        if len(self._all) >= self.max_connections:
            return (
                f"{len(self._all)} connections open, the limit (nfs_max_connections, at most "
                "half the descriptor limit)"
            )
        if self._per_address.get(address, 0) >= self.limits.max_connections_per_address:
            return (
                f"{self.limits.max_connections_per_address} connections open from this "
                "address, the limit (nfs_max_connections_per_address)"
            )
        return None

    def add(self, conn: RpcServerProtocol) -> None:
        if conn not in self._all:
            self._all[conn] = None
            self._per_address[conn.peer] = self._per_address.get(conn.peer, 0) + 1

    def discard(self, conn: RpcServerProtocol) -> None:
        if conn in self._all:
            del self._all[conn]
            left = self._per_address[conn.peer] - 1
            if left:
                self._per_address[conn.peer] = left
            else:
                del self._per_address[conn.peer]

    def full(self) -> bool:
        return len(self._all) >= self.max_connections

    def evict_untrusted(self, trusts: Callable[[str], bool]) -> RpcServerProtocol | None:
        """Close the oldest connection from an address no export allows (``trusts``), else the
        oldest that has made no call yet: a full table must not lock the ESX hosts out. None
        if every connection is a client's that has made a call."""
        victim = next((c for c in self._all if not trusts(c.peer)), None)
        if victim is None:
            victim = next((c for c in self._all if not c.trusted), None)
        if victim is not None:
            self.discard(victim)
            victim.close()
        return victim

    def buffered_bytes(self) -> int:
        """Memory the records being received hold, over every connection."""
        return sum(conn.held for conn in self._all)


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
    """One connection: records in, calls answered through ``dispatch``, replies out."""

    def __init__(
        self,
        dispatch: Dispatch,
        peer: str,
        table: ConnectionTable,
        *,
        trusts: Callable[[str], bool] = lambda _peer: True,
        scratch: memoryview | None = None,
    ) -> None:
        limits = table.limits
        self.peer = peer
        self._table = table
        self._trusts = trusts
        self._dispatch = dispatch
        self._max_in_flight = limits.max_in_flight
        self._reader = RecordReader(
            limits.max_record, max_fragments=limits.max_fragments, eager=False, scratch=scratch
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: collections.deque[bytes | bytearray] = collections.deque()
        self._transport: StreamTransport | None = None
        self._fileno = -1
        self._reading_paused = False
        self._eof = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._transport_paused = False
        self._raw: socket.socket | None = None
        """A duplicate of the connection's socket: splice writes to it while the outbox is busy."""
        self._corked: list[Buffer] = []
        """Replies finished in this turn of the event loop, written together at its end."""
        self._corked_bytes = 0
        self._flush_planned = False
        self._batching = False
        """Inside ``_start_queued``, which writes what it answered when it is done."""
        self._outbox: collections.deque[tuple[collections.deque[Part], int]] = collections.deque()
        self._outbox_bytes = 0
        self._outbox_full = False
        self._waiting_writable = False
        self._records = 0
        """Records received so far (the watchdog compares it between its looks)."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._seen_records = 0
        self._active_at = 0.0
        self._partial_since: float | None = None

    @property
    def held(self) -> int:
        """Memory held by the record being received."""
        return self._reader.held

    @property
    def trusted(self) -> bool:
        """The peer has made a call while an export allowed its address."""
        return self._reader.eager

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, StreamTransport):  # a datagram or subprocess transport
            raise TypeError(f"an RPC connection needs a stream transport, not {transport!r}")
        self._transport = transport
        if self._table.closed or self not in self._table:  # closing, or evicted while starting
            transport.close()
            return
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        sock = transport.get_extra_info("socket")
        self._fileno = sock.fileno() if sock is not None else -1
        loop = asyncio.get_running_loop()
        self._active_at = loop.time()
        self._watchdog = loop.call_later(self._table.limits.check_interval, self._check)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._reader
        reader.buffer_updated(nbytes)
        try:
            while (record := reader.next_record()) is not None:
                self._queued.append(record)
                self._records += 1
        except RecordTooLarge as exc:
            self._refuse("record", "closing connection from %s: %s", self.peer, exc)
            return
        self._start_queued()

    def _refuse(self, kind: str, message: str, *args: object) -> None:
        self._table.throttle.log(logging.WARNING, kind, message, *args)
        self._queued.clear()
        self.close()

    def _check(self) -> None:
        """The connection's one timer: close it when a record stays unfinished (slow loris,
        endless empty fragments) or nothing happens on it for too long."""
        limits = self._table.limits
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._watchdog = loop.call_later(limits.check_interval, self._check)
        progressed = self._records != self._seen_records
        self._seen_records = self._records
        busy = bool(self._tasks or self._queued or self._outbox)
        if progressed or busy:
            self._active_at = now
        if not self._reader.pending:
            self._partial_since = None
        elif progressed or self._partial_since is None or self._reading_paused:
            # (paused: we stopped reading the rest ourselves, while its calls run)
            self._partial_since = now
        elif limits.partial_record_timeout and (
            now - self._partial_since >= limits.partial_record_timeout
        ):
            self._refuse(
                "partial",
                "closing connection from %s: record unfinished for %s s",
                self.peer,
                limits.partial_record_timeout,
            )
            return
        if (
            limits.idle_timeout
            and not busy
            and not self._reader.pending
            and now - self._active_at >= limits.idle_timeout
        ):
            self._refuse(
                "idle",
                "closing connection from %s: idle for %s s",
                self.peer,
                limits.idle_timeout,
            )

    def eof_received(self) -> bool:
        self._eof = True
        self._maybe_finish()
        return True  # keep the write side open for the answers still in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self._table.discard(self)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for task in self._tasks:
            task.cancel()
        self._drop_outbox()
        self._corked = []
        self._corked_bytes = 0
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
        """Answer what is ready at once (no task, replies gathered into one write); calls that
        must wait run in tasks, at most ``max_in_flight``."""
        self._batching = True
        try:
            while self._queued and len(self._tasks) < self._max_in_flight:
                record = self._queued.popleft()
                try:
                    answer = self._dispatch(record, self.peer)
                except Exception:  # (a dispatch that raises: as a failed task, no reply)
                    log.error("call from %s failed", self.peer, exc_info=True)
                    continue
                if (answer is None or isinstance(answer, list)) and self._can_write.is_set():
                    self._reply(answer)
                    continue
                task = asyncio.get_running_loop().create_task(self._answer(answer))
                self._tasks.add(task)
                task.add_done_callback(self._done)
        finally:
            self._batching = False
        self._flush()
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
            log.error("call from %s failed", self.peer, exc_info=task.exception())
        self._start_queued()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._eof and not self._tasks and not self._queued:
            self._flush()
        if (
            self._eof
            and not self._tasks
            and not self._queued
            and not self._outbox
            and self._transport is not None
        ):
            self._transport.close()

    async def _answer(self, answer: list[Part] | Awaitable[list[Part] | None] | None) -> None:
        reply = answer if answer is None or isinstance(answer, list) else await answer
        try:
            if reply is not None and not self._can_write.is_set() and not self._may_jump(reply):
                await self._can_write.wait()
            self._reply(reply)
        except BaseException:
            release(reply)  # a cancelled or failed send: no pipe stays taken
            raise

    def _may_jump(self, reply: list[Part]) -> bool:
        """Whether a small reply may go into a full outbox, ahead of its large replies
        (``outbox_position``), rather than wait for them to drain: only the spliced outbox is
        full (the transport's buffer, which sends in order, is not), and at most
        ``max_in_flight`` small replies can pile up that way."""
        if not self._outbox or self._transport_paused:
            return False
        size = 0
        for chunk in reply:
            size += len(chunk) if isinstance(chunk, (bytes, bytearray)) else chunk.nbytes
            if size > _SMALL_REPLY:
                return False
        return True

    def _reply(self, reply: list[Part] | None) -> None:
        if reply is not None and not self._reader.eager:
            # A client of some export: its large WRITEs may be received without doublings.
            self._reader.eager = self._trusts(self.peer)
        self._send(reply)

    def _send(self, reply: list[Part] | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            release(reply)
            return
        if reply is None:
            self._flush()
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
        if piped or size > _SMALL_REPLY:
            # A large reply goes through the outbox, like spliced data: whatever is queued
            # behind it there can still be reordered (a small reply ahead of it), which the
            # transport's buffer, sending in order, cannot do.
            self._flush()  # the gathered replies go first
            if not transport.get_write_buffer_size() and self._raw_socket() is not None:
                self._enqueue(parts, size + 4)
                self._pump()
                return
            if piped:
                parts = _copied(parts)  # type: ignore[assignment]
        buffers: list[Buffer] = parts  # type: ignore[assignment]  # no PipedData left
        if self._fileno < 0 or transport.get_write_buffer_size():
            self._flush()
            self._write_rest(transport, buffers, 0)
            return
        # The transport holds nothing: the replies finished in this turn of the event loop are
        # gathered and go out in one writev (record marks and every chunk, READ data unjoined
        # and uncopied) at its end: one system call and one TCP push for many small replies.
        self._corked.extend(buffers)
        self._corked_bytes += size + 4
        if len(self._corked) > _IOV_MAX or self._corked_bytes >= _LOW_WATER:
            self._flush()
        elif not self._flush_planned and not self._batching:
            self._flush_planned = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write the gathered replies: what the socket does not take goes to the transport,
        which sends it in order."""
        self._flush_planned = False
        buffers = self._corked
        if not buffers:
            return
        size = self._corked_bytes
        self._corked = []
        self._corked_bytes = 0
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        sent = 0
        if not transport.get_write_buffer_size():
            try:
                sent = os.writev(self._fileno, buffers)
            except OSError:  # EAGAIN, or an error the transport reports on its write below
                sent = 0
        if sent < size:
            self._write_rest(transport, buffers, sent)

    @staticmethod
    def _write_rest(transport: StreamTransport, buffers: list[Buffer], skip: int) -> None:
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
        at = outbox_position([queued for _, queued in self._outbox], size)
        self._outbox.insert(at, (collections.deque(parts), size))
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
            log.info("closing connection from %s: send failed: %s", self.peer, exc)
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


def _limit_unsent(conn: socket.socket) -> None:
    """Bound what the kernel queues unsent on ``conn`` (``NOTSENT_LOWAT``): where the option
    does not exist (not Linux, not TCP), the connection works as before."""
    if NOTSENT_LOWAT > 0 and conn.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


class Listener:
    """Listening sockets whose connections are ``RpcServerProtocol`` objects.

    Accepts by itself (not ``loop.create_server``) so that a connection to refuse is closed
    before anything is allocated for it, and so that running out of descriptors is logged once
    per interval instead of a traceback per failed ``accept``.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        dispatch: Dispatch,
        table: ConnectionTable,
        admits: Callable[[str], bool],
        trusts: Callable[[str], bool],
    ) -> None:
        self.sockets = sockets
        self._dispatch = dispatch
        self._table = table
        self._admits = admits
        self._trusts = trusts
        self._scratch = scratch_buffer()
        self._loop = asyncio.get_running_loop()
        self._starting: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        for sock in sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        throttle = self._table.throttle
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    throttle.log(
                        logging.ERROR,
                        "accept",
                        "cannot accept connections on %s: %s; retrying every %s s",
                        sock.getsockname(),
                        exc,
                        _ACCEPT_RETRY_S,
                    )
                    self._pause(sock)
                    return
                # ECONNABORTED, EPERM (a firewall)...: that one connection is gone.
                throttle.log(logging.INFO, "accept-other", "accept failed: %s", exc)
                continue
            peer = str(address[0]) if isinstance(address, tuple) and address else ""
            if self._table.full() and self._trusts(peer):
                evicted = self._table.evict_untrusted(self._trusts)
                if evicted is not None:
                    throttle.log(
                        logging.WARNING,
                        "evicted",
                        "connection limit reached: closed a connection from %s for one from %s, "
                        "a client of an export",
                        evicted.peer,
                        peer,
                    )
            why = self._table.refusal(peer)
            if why is None and not self._admits(peer):
                why = "no export allows this address"
            if why is not None:
                self._table.refused += 1
                with contextlib.suppress(OSError):  # reset: nothing lingers on our side
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                conn.close()
                throttle.log(
                    logging.WARNING, "refused", "refused a connection from %s: %s", peer, why
                )
                continue
            conn.setblocking(False)
            _limit_unsent(conn)
            protocol = RpcServerProtocol(
                self._dispatch, peer, self._table, trusts=self._trusts, scratch=self._scratch
            )
            self._table.add(protocol)
            task = self._loop.create_task(self._start(conn, protocol))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, conn: socket.socket, protocol: RpcServerProtocol) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, conn)
        except BaseException:
            self._table.discard(protocol)
            conn.close()
            raise

    def _pause(self, sock: socket.socket) -> None:
        self._loop.remove_reader(sock.fileno())
        if (
            self._retry is not None
            and not self._retry.cancelled()
            and self._retry.when() > (self._loop.time())
        ):
            return  # a retry is already planned

        def resume() -> None:
            if not self._closed:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
                self._accept(sock)

        self._retry = self._loop.call_later(_ACCEPT_RETRY_S, resume)

    def close(self) -> None:
        """Stop listening (open connections stay; the server closes them)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in self._starting:
            task.cancel()

    async def wait_closed(self) -> None:
        """Connections still being set up when ``close`` was called are gone."""
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)


def _bind(infos: list[tuple[Any, ...]], port: int) -> list[socket.socket]:
    """Listening sockets on the addresses of ``infos`` (as ``loop.create_server`` binds)."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # every address on the first one's port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as err:  # name the address, as asyncio's create_server does
                raise OSError(
                    err.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(err.strerror or '').lower()}",
                ) from None
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def listen(
    host: str,
    port: int,
    dispatch: Dispatch,
    table: ConnectionTable,
    *,
    admits: Callable[[str], bool] = lambda _peer: True,
    trusts: Callable[[str], bool] = lambda _peer: True,
) -> Listener:
    """A TCP listener whose every connection is an ``RpcServerProtocol`` answering through
    ``dispatch``, within ``table.limits``; ``table`` holds the open ones (to drop them all on
    close). A connection from an address ``admits`` refuses is closed at once; one from an
    address ``trusts`` may receive large records without doublings after its first call.

    :raises OSError: the port is taken, or ``host`` does not resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return Listener(_bind(infos, port), dispatch, table, admits, trusts)
