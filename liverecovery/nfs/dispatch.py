"""From one RPC record to the program that answers it.

Programs are looked up by (program, version) in one table; a known program asked for another
version gets PROG_MISMATCH, an unknown one PROG_UNAVAIL. A program raises ``GarbageArgs`` for
arguments that do not decode; any other failure is answered SYSTEM_ERR, so nothing a client
sends crashes the server; such failures are logged with their traceback, at most once a
minute per procedure (a client repeating the call cannot flood the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeAlias

from liverecovery.nfs.rpc import (
    AcceptStat,
    Call,
    CallRejected,
    RpcError,
    decode_call,
    encode_accepted,
)
from liverecovery.nfs.xdr import Part, Unpacker

__all__ = ["Answer", "GarbageArgs", "Program", "QuickProgram", "RpcDispatcher", "proc_unavailable"]

log = logging.getLogger(__name__)

_FAILURE_LOG_INTERVAL: Final = 60.0

Program: TypeAlias = Callable[[int, int, Unpacker, str], Awaitable[list[Part]]]
"""One version of an RPC program: ``(xid, proc, args, peer)`` to the reply's parts (buffers, or
``PipedData`` for spliced READ data). :raises GarbageArgs: the arguments do not decode."""


QuickProgram: TypeAlias = Callable[[int, int, Unpacker, str], list[Part] | Awaitable[list[Part]]]
"""A program that answers at once when it can (a READ of cached data, a GETATTR): the reply's
parts; else what to await for it (only calls that must wait pay for a task).
:raises GarbageArgs: the arguments do not decode."""

Answer: TypeAlias = list[Part] | None
"""A reply's parts, or None: close the connection (the record is not an RPC call)."""


class GarbageArgs(Exception):
    """Arguments that do not decode: answer GARBAGE_ARGS."""


def proc_unavailable(xid: int) -> list[Part]:
    """The reply to a procedure number the program does not have."""
    return encode_accepted(xid, AcceptStat.PROC_UNAVAIL).parts()


class RpcDispatcher:
    """Answers records with the programs of ``programs``, keyed by (program, version)."""

    def __init__(
        self,
        programs: Mapping[tuple[int, int], Program],
        quick: Mapping[tuple[int, int], QuickProgram] | None = None,
    ) -> None:
        self._programs = dict(programs)
        self._quick = dict(quick or {})
        """Programs that may answer without a task, keyed like ``programs`` (which they
        replace for ``answer``)."""
        self._failures: dict[tuple[int, int], tuple[float, int]] = {}
        """When each (program, procedure) failure was last logged, and how many since."""
        self._versions: dict[int, tuple[int, int]] = {}
        for prog, vers in self._programs:
            low, high = self._versions.get(prog, (vers, vers))
            self._versions[prog] = (min(low, vers), max(high, vers))

    async def dispatch(self, record: bytes | bytearray, peer: str) -> Answer:
        """The reply to one record; None when it is not an RPC call (the connection closes)."""
        answer = self.answer(record, peer)
        if answer is None or isinstance(answer, list):
            return answer
        return await answer

    def answer(self, record: bytes | bytearray, peer: str) -> Answer | Awaitable[Answer]:
        """The reply to one record when it is ready at once (``dispatch``'s answer), else what
        to await for it: the connection runs only calls that must wait in a task of their own.
        Never raises (a failure is answered SYSTEM_ERR)."""
        try:
            call = decode_call(record)
        except CallRejected as exc:
            log.debug("rejected call: %s", exc)
            return [exc.reply]
        except RpcError as exc:
            log.info("closing connection from %s: %s", peer, exc)
            return None
        key = (call.prog, call.vers)
        quick = self._quick.get(key)
        if quick is not None:
            try:
                reply = quick(call.xid, call.proc, call.args, peer)
            except GarbageArgs as exc:
                return self._garbage(call, peer, exc)
            except Exception:
                self._log_failure(call, peer)
                return [encode_accepted(call.xid, AcceptStat.SYSTEM_ERR).getvalue()]
            if isinstance(reply, list):
                return reply
            return self._finish(call, peer, reply)
        program = self._programs.get(key)
        if program is None:
            return [self._unavailable(call)]
        return self._finish(call, peer, None, program)

    async def _finish(
        self,
        call: Call,
        peer: str,
        pending: Awaitable[list[Part]] | None,
        program: Program | None = None,
    ) -> Answer:
        try:
            if pending is None:
                assert program is not None
                pending = program(call.xid, call.proc, call.args, peer)
            return await pending
        except GarbageArgs as exc:
            return self._garbage(call, peer, exc)
        except Exception:
            self._log_failure(call, peer)
            return [encode_accepted(call.xid, AcceptStat.SYSTEM_ERR).getvalue()]

    @staticmethod
    def _garbage(call: Call, peer: str, exc: GarbageArgs) -> list[Part]:
        log.debug("garbage arguments from %s: %s", peer, exc)
        return [encode_accepted(call.xid, AcceptStat.GARBAGE_ARGS).getvalue()]

    def _log_failure(self, call: Call, peer: str) -> None:
        key = (call.prog, call.proc & 0xFFFF)
        now = time.monotonic()
        last, skipped = self._failures.get(key, (-_FAILURE_LOG_INTERVAL, 0))
        if now - last < _FAILURE_LOG_INTERVAL:
            self._failures[key] = (last, skipped + 1)
            return
        self._failures[key] = (now, 0)
        log.exception(
            "call %s/%s from %s failed (%d more since the last report)",
            call.prog,
            call.proc,
            peer,
            skipped,
        )

    def _unavailable(self, call: Call) -> bytes:
        versions = self._versions.get(call.prog)
        if versions is None:
            return encode_accepted(call.xid, AcceptStat.PROG_UNAVAIL).getvalue()
        return encode_accepted(call.xid, AcceptStat.PROG_MISMATCH, versions).getvalue()
