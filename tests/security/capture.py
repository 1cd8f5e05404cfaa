"""Helpers to look for a secret everywhere: every log record of every logger, an exception's
whole chain, and the forms a secret takes once encoded."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import traceback
import urllib.parse
from collections.abc import Iterator

__all__ = ["AllLogs", "capture_all_logs", "encodings", "exception_text"]


def encodings(secret: str) -> set[bytes]:
    """The secret as bytes in every form a careless log line or file could carry it."""
    raw = secret.encode()
    forms = {
        raw,
        secret.encode("utf-16-le"),
        secret.encode("utf-16-be"),
        secret.encode("utf-32-le"),
        binascii.hexlify(raw),
        binascii.hexlify(raw).upper(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.b32encode(raw),
        json.dumps(secret).encode(),
        json.dumps(secret, ensure_ascii=False).encode(),
        repr(secret).encode(),
        repr(raw).encode(),
        urllib.parse.quote(secret).encode(),
        urllib.parse.quote_plus(secret).encode(),
        secret[::-1].encode(),
    }
    return forms | {f.strip(b"\"'=") for f in forms}


class AllLogs(logging.Handler):
    """Keeps every record, formatted with its traceback and its raw arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.args) + repr(record.msg) + repr(vars(record)))


@contextlib.contextmanager
def capture_all_logs() -> Iterator[AllLogs]:
    """Every logger at DEBUG into one handler (also loggers that do not propagate)."""
    handler = AllLogs()
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    root = logging.getLogger()
    root.addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        if lg is not root and not lg.propagate:
            lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            if handler in lg.handlers:
                lg.removeHandler(handler)


def exception_text(exc: BaseException) -> str:
    """str, repr, notes, args and traceback of ``exc`` and of its whole cause/context chain."""
    out: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e), repr(e.args), repr(getattr(e, "__notes__", None))]
        out += traceback.format_exception(e)
        out += [repr(vars(e)) if hasattr(e, "__dict__") else ""]
        todo += [e.__cause__, e.__context__]
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)
    return "\n".join(out)
