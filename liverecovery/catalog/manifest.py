"""OVA manifests (``.mf``): parsed, and members checked against them before they are used.

A manifest line reads ``SHA256(disk1.vmdk)= 9f86d0...`` (or SHA1, or SHA512). A member the
manifest names is hashed in one streaming pass, in bounded chunks, before a disk of it is
served or its configuration read; a mismatch refuses the OVA, naming the member and both
digests. The choice: verify at open, not lazily at the first READ, so a damaged disk is
refused before anything is exported, and ESXi never waits minutes for its first READ. A
verified member (by file identity: device, inode, size, mtime) is remembered for the
process, so listing, inspecting and serving the same OVA hash each member once.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import threading
from collections.abc import Hashable
from typing import BinaryIO, Protocol

import attrs

from liverecovery.catalog.vmdk.files import ByteSource
from liverecovery.errors import CatalogError

__all__ = ["MAX_MANIFEST_BYTES", "ManifestEntry", "OvaSource", "parse_manifest", "verify_member"]

MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 4 << 20
_LINE = re.compile(
    r"^(?P<algo>SHA1|SHA256|SHA512)\s*\((?P<name>[^)]*)\)\s*=\s*(?P<digest>[0-9a-fA-F]+)\s*$"
)
_HEX_LENGTH = {"sha1": 40, "sha256": 64, "sha512": 128}
_VERIFIED: set[tuple[Hashable, str, str]] = set()
_VERIFIED_LOCK = threading.Lock()
_MAX_REMEMBERED = 4096


class OvaSource(Protocol):
    """**Protocol:** where an OVA's bytes are (a local file, an object in a store)."""

    name: str
    """A path or URL, for messages; its last part names the OVA."""

    def stream(self) -> BinaryIO:
        """The whole tar as a seekable binary stream (for ``tarfile``).
        :raises CatalogError: it cannot be opened."""
        ...

    def window(self, start: int, size: int) -> ByteSource:
        """``size`` bytes from ``start`` on (a member's data), for positional reads."""
        ...

    def identity(self) -> Hashable:
        """What changes whenever the bytes may have (file identity and mtime, an ETag)."""
        ...


@attrs.frozen
class ManifestEntry:
    """One manifest line: the algorithm (``sha256``), the member and its expected digest."""

    algorithm: str
    name: str
    digest: str


def parse_manifest(text: str, *, path: str = "") -> dict[str, ManifestEntry]:
    """The manifest's entries by member name. :raises CatalogError: a malformed line."""
    entries: dict[str, ManifestEntry] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip().rstrip("\x00")
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise CatalogError(f"manifest line {number}: cannot parse {line[:80]!r}", path=path)
        algo = match["algo"].lower()
        digest = match["digest"].lower()
        if len(digest) != _HEX_LENGTH[algo]:
            raise CatalogError(
                f"manifest line {number}: a {algo.upper()} digest has {_HEX_LENGTH[algo]} hex "
                f"digits, not {len(digest)}",
                path=path,
            )
        entries[match["name"]] = ManifestEntry(algo, match["name"], digest)
    return entries


def _manifest(ova: OvaSource, tar: tarfile.TarFile) -> dict[str, ManifestEntry]:
    entries: dict[str, ManifestEntry] = {}
    for member in tar.getmembers():
        if not member.name.lower().endswith(".mf") or not member.isreg():
            continue
        if member.size > MAX_MANIFEST_BYTES:
            raise CatalogError(f"manifest {member.name!r} is implausibly large", path=ova.name)
        extracted = tar.extractfile(member)
        assert extracted is not None  # a regular member
        raw = extracted.read(member.size)
        text = raw.decode("utf-8", errors="replace")
        entries.update(parse_manifest(text, path=f"{ova.name}:{member.name}"))
    return entries


def verify_member(ova: OvaSource, member: tarfile.TarInfo) -> None:
    """Check ``member`` of ``ova`` against the OVA's manifest (nothing to check without one,
    or when the manifest does not list the member).

    :raises CatalogError: the digest differs (naming the member and both digests), or the
        manifest is malformed.
    """
    try:
        with ova.stream() as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            entry = _manifest(ova, tar).get(member.name)
    except (tarfile.TarError, OSError) as exc:
        raise CatalogError(f"not a readable OVA (tar): {exc}", path=ova.name) from None
    if entry is None:
        return
    try:
        key = (ova.identity(), member.name, entry.digest)
    except OSError as exc:
        raise CatalogError(f"cannot read the OVA: {exc.strerror}", path=ova.name) from None
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return
    window = ova.window(member.offset_data, member.size)
    try:
        actual = _digest(window, member.size, entry.algorithm)
    finally:
        window.close()
    if actual is None:
        raise CatalogError(f"OVA member {member.name!r} is truncated", path=ova.name)
    if actual != entry.digest:
        raise CatalogError(
            f"OVA member {member.name!r} does not match the manifest: "
            f"{entry.algorithm.upper()} {actual}, the manifest says {entry.digest}",
            path=ova.name,
        )
    try:
        unchanged = ova.identity() == key[0]
    except OSError:
        unchanged = False
    if not unchanged:
        return  # replaced while it was hashed: check it again next time
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _MAX_REMEMBERED:
            _VERIFIED.clear()
        _VERIFIED.add(key)


def _digest(window: ByteSource, size: int, algorithm: str) -> str | None:
    """The hex digest of the window's ``size`` bytes, read in bounded chunks; None if short."""
    hasher = hashlib.new(algorithm)
    done = 0
    while done < size:
        chunk = window.pread(done, min(_CHUNK, size - done))
        if not chunk:
            return None
        hasher.update(chunk)
        done += len(chunk)
    return hasher.hexdigest()
