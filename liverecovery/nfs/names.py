"""Validation of the file names a client sends, before they reach a filesystem."""

from __future__ import annotations

from typing import Final

from liverecovery.errors import NfsError, NfsStatus

__all__ = ["NAME_MAX", "check_name"]

NAME_MAX: Final = 255


def check_name(name: str, *, allow_dots: bool = False) -> None:
    """Refuse names a directory entry cannot have.

    :raises NfsError: ACCES for ``/`` or NUL, EXIST/INVAL for ``.``/``..`` unless ``allow_dots``
        (lookups), NAMETOOLONG over 255 bytes, NOENT for an empty name.
    """
    if not name:
        raise NfsError(NfsStatus.NOENT, "empty name")
    if "/" in name or "\0" in name:
        raise NfsError(NfsStatus.ACCES, f"name {name!r} contains '/' or NUL")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise NfsError(NfsStatus.NAMETOOLONG, f"name of more than {NAME_MAX} bytes")
    if not allow_dots and name in (".", ".."):
        raise NfsError(NfsStatus.INVAL, f"name {name!r} is not allowed here")
