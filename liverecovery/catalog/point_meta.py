"""The optional ``catalog.json`` of a restore point: what a VM folder cannot say by itself.

Pure: bytes in, a validated ``PointMeta`` out. Example::

    {"media": "disk", "archived": false, "created": "2024-05-01T22:00:00Z",
     "passkey_required": false}

Every key is optional; unknown keys are refused so a typo does not silently change a rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import attrs

from liverecovery.backends import MediaKind
from liverecovery.errors import CatalogError

__all__ = ["CATALOG_FILE", "PointMeta", "parse_point_meta"]

CATALOG_FILE = "catalog.json"
_KEYS = {"media", "archived", "created", "passkey_required"}


@attrs.frozen
class PointMeta:
    media: MediaKind = MediaKind.DISK
    archived: bool = False
    created: datetime | None = None
    passkey_required: bool = False


def parse_point_meta(data: bytes, *, path: str = "") -> PointMeta:
    """Validate a catalog.json. :raises CatalogError: bad JSON, unknown key or wrong type."""
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"not valid JSON: {exc}", path=path) from None
    if not isinstance(doc, dict):
        raise CatalogError("must be a JSON object", path=path)
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise CatalogError(
            f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})",
            path=path,
        )
    media = doc.get("media", "disk")
    try:
        kind = MediaKind(media)
    except ValueError:
        allowed = ", ".join(m.value for m in MediaKind)
        raise CatalogError(f"media must be one of {allowed}, not {media!r}", path=path) from None
    flags = {}
    for key in ("archived", "passkey_required"):
        value = doc.get(key, False)
        if not isinstance(value, bool):
            raise CatalogError(f"{key} must be true or false, not {value!r}", path=path)
        flags[key] = value
    created = doc.get("created")
    when = None
    if created is not None:
        if not isinstance(created, str):
            raise CatalogError(f"created must be an ISO 8601 string, not {created!r}", path=path)
        try:
            when = datetime.fromisoformat(created)
        except ValueError:
            raise CatalogError(f"created is not ISO 8601: {created!r}", path=path) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return PointMeta(kind, flags["archived"], when, flags["passkey_required"])
