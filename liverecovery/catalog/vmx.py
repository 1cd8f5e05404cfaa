"""Read and edit a .vmx file without disturbing anything that was not edited.

A .vmx is kept as its lines: an unchanged file writes back byte for byte (order, comments, blank
lines, key case, spacing, ``|22``-style escapes, CRLF or LF). Keys are case-insensitive, as
VMware treats them; values are exposed unescaped and escaped again when written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import attrs

__all__ = ["VmxFile", "VmxWarning", "vmx_escape", "vmx_unescape"]

_LINE = re.compile(
    r"""^(?P<lead>[ \t]*)(?P<key>[^=\s#][^=]*?)(?P<sep>[ \t]*=[ \t]*)
        (?:"(?P<quoted>[^"]*)"|(?P<bare>[^"]*?))(?P<trail>[ \t]*)$""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")
_NEEDS_ESCAPE = re.compile(r'[|"\x00-\x1f\x7f]')


def vmx_unescape(value: str) -> str:
    """Decode VMware's ``|XX`` escapes (``|22`` is ``"``, ``|7C`` is ``|``)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


def vmx_escape(value: str) -> str:
    """Encode the characters a quoted .vmx value cannot hold as ``|XX``."""
    return _NEEDS_ESCAPE.sub(lambda m: f"|{ord(m.group(0)):02X}", value)


@attrs.frozen
class VmxWarning:
    """A line that is neither ``key = value``, a comment nor blank: VMware ignores it, and so
    do we, but the operator should know (it often is a hand edit gone wrong)."""

    line: int  # 1-based
    text: str

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"line {self.line}: not a key = value line, ignored: {shown!r}"


@attrs.define
class _Line:
    text: str  # the line without its line ending
    ending: str  # "\r\n", "\n" or "" (the last line without one)
    key: str | None = None  # lower-cased, for key = value lines
    value: str | None = None  # raw (still escaped)


class VmxFile:
    """A parsed .vmx. ``to_bytes()`` returns the original bytes until something is changed."""

    def __init__(
        self, lines: list[_Line], newline: str, warnings: tuple[VmxWarning, ...] = ()
    ) -> None:
        self._lines = lines
        self._newline = newline
        self.warnings = warnings
        """The lines parsing ignored, with their line numbers."""

    @classmethod
    def parse(cls, data: bytes | str) -> VmxFile:
        """Parse .vmx content; lines that are not ``key = value`` are kept verbatim, and those
        that are not comments or blank either are listed in ``warnings``."""
        text = data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")
        lines: list[_Line] = []
        warnings: list[VmxWarning] = []
        # only "\n" ends a line (str.splitlines would also split on \x85, \u2028...)
        for raw in re.findall(r"[^\n]*\n|[^\n]+$", text):
            body = raw[:-2] if raw.endswith("\r\n") else raw.rstrip("\n")
            line = _Line(body, raw[len(body) :])
            match = _LINE.match(body)
            if match:
                line.key = match["key"].strip().lower()
                line.value = match["quoted"] if match["quoted"] is not None else match["bare"]
            elif body.strip() and not body.lstrip().startswith("#"):
                warnings.append(VmxWarning(len(lines) + 1, body.strip()))
            lines.append(line)
        newline = "\r\n" if lines and lines[0].ending == "\r\n" else "\n"
        return cls(lines, newline, tuple(warnings))

    def to_bytes(self) -> bytes:
        """The file's bytes, identical to the input for every line not edited."""
        return self.to_text().encode("utf-8", "surrogateescape")

    def to_text(self) -> str:
        return "".join(line.text + line.ending for line in self._lines)

    # -- reading -----------------------------------------------------------------------------

    def _find(self, key: str) -> _Line | None:
        wanted = key.lower()
        for line in reversed(self._lines):  # VMware: the last assignment wins
            if line.key == wanted:
                return line
        return None

    def get(self, key: str, default: str | None = None) -> str | None:
        """The unescaped value of ``key`` (any case), or ``default``."""
        line = self._find(key)
        if line is None or line.value is None:
            return default
        return vmx_unescape(line.value)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def keys(self) -> list[str]:
        """Keys as written, in file order, each once."""
        seen: dict[str, str] = {}
        for line in self._lines:
            if line.key is not None and line.key not in seen:
                match = _LINE.match(line.text)
                assert match is not None
                seen[line.key] = match["key"].strip()
        return list(seen.values())

    def items(self) -> Iterator[tuple[str, str]]:
        """(key as written, unescaped value) for every key, in file order."""
        for key in self.keys():
            yield key, self[key]

    def with_prefix(self, prefix: str) -> dict[str, str]:
        """Every key starting with ``prefix`` (any case), lower-cased, with its value."""
        wanted = prefix.lower()
        return {k.lower(): v for k, v in self.items() if k.lower().startswith(wanted)}

    # -- editing -----------------------------------------------------------------------------

    def set(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``: in place (keeping its spelling and spacing) if present,
        else as a new ``key = "value"`` line at the end."""
        encoded = vmx_escape(value)
        line = self._find(key)
        if line is not None:
            match = _LINE.match(line.text)
            assert match is not None
            line.text = f'{match["lead"]}{match["key"]}{match["sep"]}"{encoded}"{match["trail"]}'
            line.value = encoded
            return
        if self._lines and not self._lines[-1].ending:
            self._lines[-1].ending = self._newline
        self._lines.append(_Line(f'{key} = "{encoded}"', self._newline, key.lower(), encoded))

    def remove(self, key: str) -> bool:
        """Remove every assignment of ``key``; returns whether there was one."""
        wanted = key.lower()
        before = len(self._lines)
        self._lines = [line for line in self._lines if line.key != wanted]
        return len(self._lines) != before
