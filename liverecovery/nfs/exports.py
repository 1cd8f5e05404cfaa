"""What an NFS export is, as the server and the ``NfsExporter`` contract both describe it."""

from __future__ import annotations

import attrs

__all__ = ["ExportInfo"]


@attrs.frozen
class ExportInfo:
    """An NFS export: the path a client mounts and the addresses allowed to mount it."""

    path: str
    clients: tuple[str, ...]
