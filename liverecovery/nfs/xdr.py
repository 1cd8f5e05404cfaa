"""XDR (RFC 4506) packing and unpacking: pure, allocation-light, struct-based.

The ``Unpacker`` walks a ``memoryview`` without copying until a value is returned; every
variable-length item is bounded by the caller's maximum, so a hostile length cannot make us
allocate. The ``Packer`` appends to a ``bytearray`` and keeps large opaque payloads (READ data)
as separate chunks, so a 1 MiB reply is copied once, when it is sent.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol, TypeAlias

__all__ = ["Buffer", "Packer", "Part", "Payload", "Unpacker", "XdrError"]

Buffer: TypeAlias = bytes | bytearray | memoryview


class Payload(Protocol):
    """Opaque bytes that are not in memory when a reply is encoded (READ data waiting in a
    pipe): encoding needs only their length, the sender supplies the bytes."""

    @property
    def nbytes(self) -> int: ...


Part: TypeAlias = "Buffer | Payload"
"""One piece of an encoded message: bytes, or a ``Payload`` the sender writes in its place."""

_U32: Final = struct.Struct(">I")
_I32: Final = struct.Struct(">i")
_U64: Final = struct.Struct(">Q")
_I64: Final = struct.Struct(">q")
_PAD: Final = (b"", b"\0\0\0", b"\0\0", b"\0")
_LARGE: Final = 16 * 1024
"""Opaque payloads at least this long become their own chunk instead of being copied."""


class XdrError(ValueError):
    """The bytes are not a valid encoding (too short, a length over its bound, bad enum value)."""


class Unpacker:
    """Reads XDR items from a buffer, advancing a position."""

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(self, data: Buffer, pos: int = 0) -> None:
        self._buf = memoryview(data).cast("B")
        self._pos = pos
        self._end = len(self._buf)

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _need(self, n: int) -> int:
        pos = self._pos
        if pos + n > self._end:
            raise XdrError(f"truncated at byte {pos}: need {n} bytes, have {self._end - pos}")
        self._pos = pos + n
        return pos

    def u32(self) -> int:
        return int(_U32.unpack_from(self._buf, self._need(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self._buf, self._need(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self._buf, self._need(8))[0])

    def i64(self) -> int:
        return int(_I64.unpack_from(self._buf, self._need(8))[0])

    def boolean(self) -> bool:
        value = self.u32()
        if value > 1:
            raise XdrError(f"bool at byte {self._pos - 4} is {value}")
        return value == 1

    def unpack_struct(self, fmt: struct.Struct) -> tuple[int, ...]:
        """Several fixed-size items at once (one call instead of one per field)."""
        return fmt.unpack_from(self._buf, self._need(fmt.size))

    def fixed_view(self, n: int) -> memoryview:
        pos = self._need(n + (-n & 3))
        return self._buf[pos : pos + n]

    def fixed(self, n: int) -> bytes:
        return bytes(self.fixed_view(n))

    def opaque_view(self, max_len: int) -> memoryview:
        """A variable-length opaque without copying it; the view lives as long as the buffer."""
        n = self.u32()
        if n > max_len:
            raise XdrError(f"opaque at byte {self._pos - 4} has length {n} > {max_len}")
        return self.fixed_view(n)

    def opaque(self, max_len: int) -> bytes:
        return bytes(self.opaque_view(max_len))

    def string(self, max_len: int) -> str:
        """A string, decoded as UTF-8 with ``surrogateescape`` for bytes that are not UTF-8."""
        return str(self.opaque_view(max_len), "utf-8", "surrogateescape")

    def array_length(self, max_len: int) -> int:
        n = self.u32()
        if n > max_len:
            raise XdrError(f"array at byte {self._pos - 4} has length {n} > {max_len}")
        return n


class Packer:
    """Accumulates XDR items; ``chunks()`` or ``getvalue()`` returns them."""

    __slots__ = ("_buf", "_chunks", "_external", "_size")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._chunks: list[Part] = []
        self._size = 0
        self._external = False

    def __len__(self) -> int:
        return self._size + len(self._buf)

    def u32(self, value: int) -> None:
        self._buf += _U32.pack(value)

    def i32(self, value: int) -> None:
        self._buf += _I32.pack(value)

    def u64(self, value: int) -> None:
        self._buf += _U64.pack(value)

    def i64(self, value: int) -> None:
        self._buf += _I64.pack(value)

    def boolean(self, value: bool) -> None:
        self._buf += _U32.pack(1 if value else 0)

    def pack_struct(self, fmt: struct.Struct, *values: int) -> None:
        self._buf += fmt.pack(*values)

    def raw(self, data: Buffer) -> None:
        """Bytes already XDR-encoded (a multiple of 4 long)."""
        self._buf += data

    def fixed(self, data: Buffer) -> None:
        n = memoryview(data).nbytes
        self._buf += data
        self._buf += _PAD[n & 3]

    def opaque(self, data: Buffer) -> None:
        n = memoryview(data).nbytes
        self._buf += _U32.pack(n)
        self.opaque_body(data, n)

    def opaque_body(self, data: Buffer, n: int) -> None:
        """The ``n`` bytes of an opaque whose length was packed already (with the fixed-size
        items before it, in one struct)."""
        if n >= _LARGE:
            self._chunks.append(self._buf)
            self._chunks.append(data)
            self._size += len(self._buf) + n
            self._buf = bytearray(_PAD[n & 3])
        else:
            self._buf += data
            self._buf += _PAD[n & 3]

    def opaque_payload(self, payload: Payload) -> None:
        """A variable-length opaque whose bytes the sender supplies (see ``parts``)."""
        n = payload.nbytes
        self._buf += _U32.pack(n)
        self._chunks.append(self._buf)
        self._chunks.append(payload)
        self._size += len(self._buf) + n
        self._buf = bytearray(_PAD[n & 3])
        self._external = True

    def string(self, value: str) -> None:
        self.opaque(value.encode("utf-8", "surrogateescape"))

    def chunks(self) -> list[Buffer]:
        """The encoded bytes as a list of buffers (large payloads are not copied).

        :raises TypeError: a ``Payload`` was packed (use ``parts``).
        """
        if self._external:
            raise TypeError("the message holds a Payload: use parts()")
        return self.parts()  # type: ignore[return-value]  # no Payload in it

    def parts(self) -> list[Part]:
        """The encoded message as buffers and ``Payload`` placeholders, in order."""
        if self._buf:
            return [*self._chunks, self._buf]
        return list(self._chunks)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks())
