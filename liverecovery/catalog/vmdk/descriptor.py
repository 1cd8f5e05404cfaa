"""Parse a VMDK text descriptor into its header keys, extent lines and disk database.

Pure: text in, a ``Descriptor`` out. Real descriptors vary: quoted or bare values, CRLF line
ends, comments, blank lines, spaces in file names, keys in any order, optional keys missing.
"""

from __future__ import annotations

import enum
import re

import attrs

from liverecovery.errors import CatalogError

__all__ = ["Descriptor", "ExtentLine", "ExtentType", "parse_descriptor"]

SECTOR = 512

# Bounds that keep a malformed descriptor from asking for absurd work.
MAX_DESCRIPTOR_BYTES = 1 << 20
MAX_EXTENTS = 100_000


class ExtentType(enum.StrEnum):
    """The extent types of a descriptor's extent lines."""

    FLAT = "FLAT"
    VMFS = "VMFS"
    SPARSE = "SPARSE"
    ZERO = "ZERO"
    VMFSSPARSE = "VMFSSPARSE"
    VMFSRDM = "VMFSRDM"
    VMFSRAW = "VMFSRAW"
    SESPARSE = "SESPARSE"


@attrs.frozen
class ExtentLine:
    """One extent line: ``RW 2097152 FLAT "disk-flat.vmdk" 0``.

    ``sectors`` is the extent's size in the virtual disk, ``offset_sectors`` where it starts in
    its file (FLAT/VMFS only), ``file_name`` is relative to the descriptor's folder.
    """

    access: str
    sectors: int
    type: ExtentType
    file_name: str | None = None
    offset_sectors: int = 0


@attrs.frozen
class Descriptor:
    """A parsed descriptor; ``header`` and ``ddb`` keep every key (lower-cased) with its value."""

    header: dict[str, str]
    extents: tuple[ExtentLine, ...]
    ddb: dict[str, str]

    @property
    def create_type(self) -> str:
        return self.header.get("createtype", "")

    @property
    def cid(self) -> str:
        return self.header.get("cid", "")

    @property
    def parent_cid(self) -> str:
        return self.header.get("parentcid", "ffffffff")

    @property
    def parent_file_name(self) -> str | None:
        """The parent's descriptor, relative to this one, for delta disks (else None)."""
        hint = self.header.get("parentfilenamehint")
        return hint or None

    @property
    def capacity_bytes(self) -> int:
        return sum(e.sectors for e in self.extents) * SECTOR


_EXTENT_RE = re.compile(
    r"""^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<type>[A-Za-z]+)
        (?:\s+(?:"(?P<qname>[^"]*)"|(?P<name>\S+))(?:\s+(?P<offset>\d+))?)?\s*$""",
    re.VERBOSE,
)
_KEY_RE = re.compile(r"^(?P<key>[A-Za-z0-9_.\-]+)\s*=\s*(?P<value>.*?)\s*$")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_descriptor(text: str, *, path: str = "") -> Descriptor:
    """Parse descriptor ``text`` (read from ``path``, used in errors).

    :raises CatalogError: not a descriptor, a malformed line, or no extents.
    """
    if len(text) > MAX_DESCRIPTOR_BYTES:
        raise CatalogError(f"descriptor is larger than {MAX_DESCRIPTOR_BYTES} bytes", path=path)
    header: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[ExtentLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip().rstrip("\x00").strip()
        if not line or line.startswith("#"):
            continue
        match = _EXTENT_RE.match(line)
        if match:
            extents.append(_extent(match, number, path))
            if len(extents) > MAX_EXTENTS:
                raise CatalogError(f"more than {MAX_EXTENTS} extents", path=path)
            continue
        kv = _KEY_RE.match(line)
        if kv is None:
            raise CatalogError(f"line {number}: cannot parse {line[:80]!r}", path=path)
        key = kv["key"].lower()
        value = _unquote(kv["value"])
        (ddb if key.startswith("ddb.") else header)[key] = value
    if not extents:
        raise CatalogError("descriptor has no extent lines", path=path)
    if "createtype" not in header and "version" not in header:
        raise CatalogError("not a VMDK descriptor (no version or createType)", path=path)
    return Descriptor(header=header, extents=tuple(extents), ddb=ddb)


def _extent(match: re.Match[str], number: int, path: str) -> ExtentLine:
    type_name = match["type"].upper()
    try:
        kind = ExtentType(type_name)
    except ValueError:
        raise CatalogError(f"line {number}: unknown extent type {type_name!r}", path=path) from None
    name = match["qname"] if match["qname"] is not None else match["name"]
    if kind is not ExtentType.ZERO and not name:
        raise CatalogError(f"line {number}: {type_name} extent without a file name", path=path)
    offset = int(match["offset"]) if match["offset"] else 0
    return ExtentLine(
        access=match["access"],
        sectors=int(match["sectors"]),
        type=kind,
        file_name=name or None,
        offset_sectors=offset,
    )
