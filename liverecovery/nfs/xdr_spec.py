"""Declarative XDR: a message's fields are declared once, its pack and unpack are generated.

Why: every NFSv3, MOUNT and PORTMAP message used to carry a hand-mirrored ``pack``/``unpack``
pair, and a mismatch between the two halves only showed when a peer choked. Here a field's wire
type sits in its annotation (``fh: Annotated[bytes, Opaque(64)]``) and ``message`` compiles both
directions once per class into straight-line Python:

- runs of fixed-size items (words, hypers, fixed opaques, times, whole fixed structs such as
  fattr3) become one precompiled ``struct.Struct``: one ``pack`` or ``unpack_from`` per run;
- nested structs, optionals and unions are inlined, so a reply is one function call;
- every variable length is checked against its bound before anything is allocated, with the
  same ``XdrError`` messages as ``Unpacker``.

The generated code works on the ``Packer``'s buffer and on the ``Unpacker``'s view and position
directly (``_buf``, ``_pos``, ``_end``): this module is the codec layer's friend; nothing else
touches those slots.
"""

from __future__ import annotations

import inspect
import itertools
import struct
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Self

import attrs

from liverecovery.nfs.xdr import Packer, Unpacker, XdrError

__all__ = [
    "Array",
    "BOOL",
    "Bool",
    "Choice",
    "Codec",
    "Const",
    "Enum",
    "Field",
    "Fixed",
    "FromContext",
    "I32",
    "I64",
    "Ignored",
    "List",
    "MASKED_U32",
    "Message",
    "NFSTIME",
    "Opaque",
    "Optional",
    "Record",
    "String",
    "Struct",
    "Time",
    "Tuple",
    "U32",
    "U64",
    "Unless",
    "When",
    "Word",
    "XdrType",
    "codec",
    "message",
    "spec",
]

_NS: Final = 1_000_000_000
_LARGE: Final = 16 * 1024
"""Opaques that may be this long are packed through ``Packer.opaque`` (own chunk, no copy)."""
_PAD: Final = (b"", b"\0\0\0", b"\0\0", b"\0")
_FACTORY: Final[type[Any]] = type(attrs.Factory(list))


def _truncated(pos: int, n: int, end: int) -> XdrError:
    return XdrError(f"truncated at byte {pos}: need {n} bytes, have {end - pos}")


def _bool_error(pos: int, value: int) -> XdrError:
    return XdrError(f"bool at byte {pos} is {value}")


def _clamp32(sec: int) -> int:
    return min(max(sec, 0), 0xFFFFFFFF)


# -- code generation -----------------------------------------------------------------------------


class _Gen:
    """Shared state of one generated function: its lines, constants and fresh names."""

    def __init__(self, ns: dict[str, Any], names: Iterator[int]) -> None:
        self.ns = ns
        self._names = names
        self.lines: list[str] = []
        self.depth = 1

    def tmp(self) -> str:
        return f"_v{next(self._names)}"

    def const(self, value: object) -> str:
        """A name bound to ``value`` in the generated function's globals."""
        for key, have in self.ns.items():
            if have is value and key.startswith("_k"):
                return key
        name = f"_k{next(self._names)}"
        self.ns[name] = value
        return name

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)


class _PackGen(_Gen):
    """Emits packing code; fixed-size items wait in a run until something variable comes."""

    def __init__(self, ns: dict[str, Any], names: Iterator[int], context: Sequence[str]) -> None:
        super().__init__(ns, names)
        self.context = frozenset(context)
        self._fmt: list[str] = []
        self._args: list[str] = []

    def put(self, fmt: str, *args: str) -> None:
        self._fmt.append(fmt)
        self._args.extend(args)

    def flush(self) -> None:
        if not self._fmt:
            return
        fmt = ">" + "".join(self._fmt)
        s = self.const(struct.Struct(fmt))
        self.line(f"buf += {s}.pack({', '.join(self._args)})")
        self._fmt, self._args = [], []

    def bind(self, expr: str) -> str:
        """``expr`` evaluated once, as a local name."""
        if expr.isidentifier():
            return expr
        name = self.tmp()
        self.line(f"{name} = {expr}")
        return name

    def need(self, name: str) -> str:
        if name not in self.context:
            raise TypeError(
                f"XDR pack needs {name!r}, not among the arguments {sorted(self.context)}"
            )
        return name

    def branches(self, arms: Sequence[tuple[str, Callable[[], None]]]) -> None:
        """``if``/``elif``/``else`` arms; the pending run is copied into each (one pack per path)."""
        fmt, args = self._fmt, self._args
        for header, body in arms:
            self.line(header)
            self.depth += 1
            self._fmt, self._args = list(fmt), list(args)
            body()
            self.flush()
            self.line("pass")
            self.depth -= 1
        self._fmt, self._args = [], []

    def loop(self, header: str, body: Callable[[], None]) -> None:
        self.flush()
        self.line(header)
        self.depth += 1
        body()
        self.flush()
        self.line("pass")
        self.depth -= 1


class _UnpackGen(_Gen):
    """Emits unpacking code; fixed-size items are read together when something needs them.

    ``take`` returns the name the item's value will have once the run is read; code that uses
    such names is emitted after ``flush``.
    """

    def __init__(self, ns: dict[str, Any], names: Iterator[int]) -> None:
        super().__init__(ns, names)
        self._fmt: list[str] = []
        self._vars: list[str] = []
        self._size = 0
        self._after: list[tuple[int, Callable[[int], list[str]]]] = []

    def take(self, fmt: str, after: Callable[[int], list[str]] | None = None) -> str:
        """One item of the run; ``after(back)`` gives checks to run once it is read (``back``:
        how far before the run's end the item starts)."""
        var = self.tmp()
        self._fmt.append(fmt)
        self._vars.append(var)
        self._size += struct.calcsize(">" + fmt)
        if after is not None:
            self._after.append((self._size - struct.calcsize(">" + fmt), after))
        return var

    def skip(self, n: int) -> None:
        self._fmt.append(f"{n}x")
        self._size += n

    def flush(self) -> None:
        if not self._fmt:
            return
        size = self._size
        self.line(f"if pos + {size} > end: raise _truncated(pos, {size}, end)")
        if self._vars:
            s = self.const(struct.Struct(">" + "".join(self._fmt)))
            self.line(f"{', '.join(self._vars)}, = {s}.unpack_from(buf, pos)")
        self.line(f"pos += {size}")
        for start, after in self._after:
            for text in after(size - start):
                self.line(text)
        self._fmt, self._vars, self._size, self._after = [], [], 0, []

    def block(self, header: str, body: Callable[[], None]) -> None:
        self.line(header)
        self.depth += 1
        body()
        self.flush()
        self.line("pass")
        self.depth -= 1


def _compile(name: str, params: str, lines: list[str], ns: dict[str, Any]) -> Any:
    src = f"def {name}({params}):\n" + "\n".join(lines) + "\n"
    ns.update(_truncated=_truncated, _bool_error=_bool_error, _XdrError=XdrError, _PAD=_PAD)
    ns.update(_clamp32=_clamp32)
    exec(compile(src, f"<xdr {name}>", "exec"), ns)
    fn = ns[name]
    fn.__xdr_source__ = src
    return fn


# -- wire types ----------------------------------------------------------------------------------


class XdrType:
    """A wire type: emits the code that packs a value expression and that unpacks one."""

    def emit_pack(self, g: _PackGen, v: str) -> None:
        raise NotImplementedError

    def emit_unpack(self, g: _UnpackGen) -> str:
        """Emit reading code; returns an expression of the value (valid after ``g.flush()``)."""
        raise NotImplementedError


@attrs.frozen
class Word(XdrType):
    """A fixed-size integer: ``I`` (unsigned int), ``i`` (int), ``Q`` (unsigned hyper), ``q``."""

    fmt: str

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put(self.fmt, v)

    def emit_unpack(self, g: _UnpackGen) -> str:
        return g.take(self.fmt)


U32: Final = Word("I")
I32: Final = Word("i")
U64: Final = Word("Q")
I64: Final = Word("q")


@attrs.frozen
class _Masked32(XdrType):
    """An unsigned int packed modulo 2**32 (a uid of -1 goes out as 4294967295)."""

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put("I", f"({v}) & 0xFFFFFFFF")

    def emit_unpack(self, g: _UnpackGen) -> str:
        return g.take("I")


MASKED_U32: Final = _Masked32()


@attrs.frozen
class Bool(XdrType):
    """An XDR bool: 0 or 1, anything else refused."""

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put("I", f"1 if {v} else 0")

    def emit_unpack(self, g: _UnpackGen) -> str:
        var = ""

        def check(back: int) -> list[str]:
            return [f"if {var} > 1: raise _bool_error(pos - {back}, {var})"]

        var = g.take("I", check)
        return f"{var} == 1"


BOOL: Final = Bool()


@attrs.frozen
class Enum(XdrType):
    """An enum: unpacks to the member, refuses other values (``what: <word> <value>``)."""

    cls: type[typing.Any]
    what: str
    word: str = "invalid value"

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put("I", v)

    def emit_unpack(self, g: _UnpackGen) -> str:
        members = g.const({int(m): m for m in self.cls})
        out = g.tmp()
        raw = ""

        def check(back: int) -> list[str]:
            message = f"{self.what}: {self.word} {{{raw}}}"
            return [
                f"{out} = {members}.get({raw})",
                f'if {out} is None: raise _XdrError(f"{message}")',
            ]

        raw = g.take("I", check)
        return out


@attrs.frozen
class Time(XdrType):
    """A time in nanoseconds as (seconds, nanoseconds) words; seconds clamp to 0..2**32-1."""

    def emit_pack(self, g: _PackGen, v: str) -> None:
        sec, nsec = g.tmp(), g.tmp()
        g.line(f"{sec}, {nsec} = divmod({v}, {_NS})")
        g.put("II", f"{sec} if 0 <= {sec} <= 0xFFFFFFFF else _clamp32({sec})", nsec)

    def emit_unpack(self, g: _UnpackGen) -> str:
        sec, nsec = g.take("I"), g.take("I")
        return f"{sec} * {_NS} + {nsec}"


NFSTIME: Final = Time()
"""nfstime3 (and the identical RPC/NFS time pair)."""


@attrs.frozen
class Fixed(XdrType):
    """Fixed-length opaque of ``n`` bytes; a shorter value packs zero-filled, a longer truncated."""

    n: int

    @property
    def fmt(self) -> str:
        pad = -self.n & 3
        return f"{self.n}s" + (f"{pad}x" if pad else "")

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put(self.fmt, v)

    def emit_unpack(self, g: _UnpackGen) -> str:
        return g.take(self.fmt)


@attrs.frozen
class Opaque(XdrType):
    """Variable-length opaque of at most ``bound`` bytes; ``view``: unpack a memoryview into the
    record instead of a copy."""

    bound: int
    view: bool = False

    def _pack_bytes(self, g: _PackGen, data: str) -> None:
        if self.bound >= _LARGE:
            g.flush()
            g.line(f"p.opaque({data})")
            g.line("buf = p._buf")
            return
        n = g.tmp()
        g.line(f"{n} = len({data})")
        g.put("I", n)
        g.flush()
        g.line(f"buf += {data}")
        g.line(f"buf += _PAD[{n} & 3]")

    def emit_pack(self, g: _PackGen, v: str) -> None:
        self._pack_bytes(g, g.bind(v))

    def _unpack_view(self, g: _UnpackGen) -> tuple[str, str]:
        """Emit the bounded read; returns the start and length names."""
        n = g.take("I")
        g.flush()
        start, padded = g.tmp(), g.tmp()
        bound = self.bound
        g.line(
            f"if {n} > {bound}: "
            f'raise _XdrError(f"opaque at byte {{pos - 4}} has length {{{n}}} > {bound}")'
        )
        g.line(f"{padded} = {n} + (-{n} & 3)")
        g.line(f"if pos + {padded} > end: raise _truncated(pos, {padded}, end)")
        g.line(f"{start} = pos")
        g.line(f"pos += {padded}")
        return start, n

    def emit_unpack(self, g: _UnpackGen) -> str:
        start, n = self._unpack_view(g)
        out = g.tmp()
        if self.view:
            g.line(f"{out} = buf[{start} : {start} + {n}]")
        else:
            g.line(f"{out} = bytes(buf[{start} : {start} + {n}])")
        return out


@attrs.frozen
class String(Opaque):
    """A string of at most ``bound`` bytes: UTF-8, ``surrogateescape`` for bytes that are not."""

    def emit_pack(self, g: _PackGen, v: str) -> None:
        data = g.tmp()
        g.line(f'{data} = {v}.encode("utf-8", "surrogateescape")')
        self._pack_bytes(g, data)

    def emit_unpack(self, g: _UnpackGen) -> str:
        start, n = self._unpack_view(g)
        out = g.tmp()
        g.line(f'{out} = str(buf[{start} : {start} + {n}], "utf-8", "surrogateescape")')
        return out


@attrs.frozen
class Ignored(XdrType):
    """Wire-only fixed bytes: packed as ``value``, skipped when unpacking (fattr3's rdev)."""

    fmt: str
    value: int = 0

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put(self.fmt, str(self.value))

    def emit_unpack(self, g: _UnpackGen) -> str:
        g.skip(struct.calcsize(">" + self.fmt))
        return "None"


@attrs.frozen
class FromContext(XdrType):
    """Wire-only fixed item packed from an argument of ``pack`` (fattr3's fsid), skipped when
    unpacking."""

    fmt: str
    name: str

    def emit_pack(self, g: _PackGen, v: str) -> None:
        g.put(self.fmt, g.need(self.name))

    def emit_unpack(self, g: _UnpackGen) -> str:
        g.skip(struct.calcsize(">" + self.fmt))
        return "None"


@attrs.frozen
class Optional(XdrType):
    """``T *`` (optional-data): a bool, then the value if it is there; None when it is not."""

    of: XdrType

    def emit_pack(self, g: _PackGen, v: str) -> None:
        v = g.bind(v)

        def present() -> None:
            g.put("I", "1")
            self.of.emit_pack(g, v)

        g.branches([(f"if {v} is None:", lambda: g.put("I", "0")), ("else:", present)])

    def emit_unpack(self, g: _UnpackGen) -> str:
        d = g.take("I")
        g.flush()
        out = g.tmp()

        def present() -> None:
            value = self.of.emit_unpack(g)
            g.flush()
            g.line(f"{out} = {value}")

        g.block(f"if {d} == 1:", present)
        g.block(f"elif {d} == 0:", lambda: g.line(f"{out} = None"))
        g.block("else:", lambda: g.line(f"raise _bool_error(pos - 4, {d})"))
        return out


@attrs.frozen
class Const:
    """A void union arm standing for ``value`` (matched by identity when packing)."""

    value: object


@attrs.frozen
class Choice(XdrType):
    """A union on an unsigned discriminant whose arms are ``Const`` values or one typed arm
    (set_atime: DONT_CHANGE → None, SET_TO_SERVER_TIME → SERVER_TIME, SET_TO_CLIENT_TIME → t)."""

    what: str
    arms: dict[int, Const | XdrType]

    def emit_pack(self, g: _PackGen, v: str) -> None:
        v = g.bind(v)
        arms: list[tuple[str, Callable[[], None]]] = []
        typed: tuple[int, XdrType] | None = None
        for disc, arm in self.arms.items():
            if isinstance(arm, Const):
                header = "if" if not arms else "elif"
                arms.append((f"{header} {v} is {g.const(arm.value)}:", _put_word(g, disc)))
            else:
                typed = (disc, arm)
        if typed is None:
            raise TypeError(f"{self.what}: a union needs a typed arm")
        disc, arm = typed

        def value() -> None:
            g.put("I", str(disc))
            arm.emit_pack(g, v)

        g.branches([*arms, ("else:", value)])

    def emit_unpack(self, g: _UnpackGen) -> str:
        d = g.take("I")
        g.flush()
        out = g.tmp()
        for i, (disc, arm) in enumerate(self.arms.items()):

            def body(arm: Const | XdrType = arm) -> None:
                if isinstance(arm, Const):
                    g.line(f"{out} = {g.const(arm.value)}")
                else:
                    value = arm.emit_unpack(g)
                    g.flush()
                    g.line(f"{out} = {value}")

            g.block(f"{'if' if i == 0 else 'elif'} {d} == {disc}:", body)
        message = f"{self.what}: invalid value {{{d}}}"
        g.block("else:", lambda: g.line(f'raise _XdrError(f"{message}")'))
        return out


def _put_word(g: _PackGen, value: int) -> Callable[[], None]:
    return lambda: g.put("I", str(value))


@attrs.frozen
class Tuple(XdrType):
    """A fixed sequence of items (specdata3: two words) as a Python tuple."""

    items: tuple[XdrType, ...]

    def emit_pack(self, g: _PackGen, v: str) -> None:
        v = g.bind(v)
        for i, item in enumerate(self.items):
            item.emit_pack(g, f"{v}[{i}]")

    def emit_unpack(self, g: _UnpackGen) -> str:
        values = [item.emit_unpack(g) for item in self.items]
        return f"({', '.join(values)},)"


@attrs.frozen
class Array(XdrType):
    """A counted array ``T<bound>``, unpacked as a tuple."""

    of: XdrType
    bound: int

    def emit_pack(self, g: _PackGen, v: str) -> None:
        v = g.bind(v)
        g.put("I", f"len({v})")
        item = g.tmp()
        g.loop(f"for {item} in {v}:", lambda: self.of.emit_pack(g, item))

    def emit_unpack(self, g: _UnpackGen) -> str:
        n = g.take("I")
        g.flush()
        bound = self.bound
        g.line(
            f"if {n} > {bound}: "
            f'raise _XdrError(f"array at byte {{pos - 4}} has length {{{n}}} > {bound}")'
        )
        out = g.tmp()
        g.line(f"{out} = []")

        def item() -> None:
            value = self.of.emit_unpack(g)
            g.flush()
            g.line(f"{out}.append({value})")

        g.block(f"for _ in range({n}):", item)
        return f"tuple({out})"


@attrs.frozen
class List(XdrType):
    """A linked list (``value_follows`` before each item, a 0 after the last), at most ``bound``
    items (``what`` is the error when there are more); unpacked as ``container``."""

    of: XdrType
    bound: int
    what: str
    container: type[list[Any]] | type[tuple[Any, ...]] = list

    def emit_pack(self, g: _PackGen, v: str) -> None:
        item = g.tmp()

        def body() -> None:
            g.put("I", "1")
            self.of.emit_pack(g, item)

        g.loop(f"for {item} in {v}:", body)
        g.put("I", "0")

    def emit_unpack(self, g: _UnpackGen) -> str:
        g.flush()
        out = g.tmp()
        g.line(f"{out} = []")

        def body() -> None:
            d = g.take("I")
            g.flush()
            g.line(f"if {d} != 1:")
            g.line(f"    if {d}: raise _bool_error(pos - 4, {d})")
            g.line("    break")
            g.line(f"if len({out}) >= {self.bound}: raise _XdrError({self.what!r})")
            value = self.of.emit_unpack(g)
            g.flush()
            g.line(f"{out}.append({value})")

        g.block("while True:", body)
        return out if self.container is list else f"tuple({out})"


# -- structs -------------------------------------------------------------------------------------


class When:
    """A field present only when an earlier field is one of ``values`` (a union arm)."""

    __slots__ = ("field", "values")

    def __init__(self, field: str, *values: object) -> None:
        self.field = field
        self.values = values

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, When) or type(other) is not type(self):
            return NotImplemented
        return (self.field, self.values) == (other.field, other.values)

    def __hash__(self) -> int:
        return hash((type(self), self.field, self.values))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.field!r}, {', '.join(map(repr, self.values))})"

    def expr(self, g: _Gen, v: str) -> str:
        if len(self.values) == 1:
            return f"{v} == {g.const(self.values[0])}"
        return f"{v} in {g.const(self.values)}"


class Unless(When):
    """A field present only when an earlier field is none of ``values``."""

    __slots__ = ()

    def expr(self, g: _Gen, v: str) -> str:
        if len(self.values) == 1:
            return f"{v} != {g.const(self.values[0])}"
        return f"{v} not in {g.const(self.values)}"


@attrs.frozen
class Field:
    """One item of a struct: the attribute it fills (None: wire-only), its type, its condition."""

    name: str | None
    type: XdrType
    when: When | None = None


@attrs.frozen
class Record(XdrType):
    """A struct whose items fill the attributes of an attrs class (in wire order)."""

    cls: type[Any]
    fields: tuple[Field, ...]

    def _groups(self) -> list[tuple[When | None, list[Field]]]:
        groups: list[tuple[When | None, list[Field]]] = []
        for f in self.fields:
            if groups and f.when is not None and groups[-1][0] == f.when:
                groups[-1][1].append(f)
            else:
                groups.append((f.when, [f]))
        return groups

    def emit_pack(self, g: _PackGen, v: str) -> None:
        v = g.bind(v)
        tested = {f.when.field for f in self.fields if f.when is not None}
        bound: dict[str, str] = {}
        for when, fields in self._groups():

            def body(fields: list[Field] = fields) -> None:
                for f in fields:
                    expr = "None" if f.name is None else f"{v}.{f.name}"
                    if f.name in tested:
                        expr = bound[f.name] = g.bind(expr)
                    f.type.emit_pack(g, expr)

            if when is None:
                body()
            else:
                g.branches([(f"if {when.expr(g, bound[when.field])}:", body), ("else:", _nothing)])

    def emit_unpack(self, g: _UnpackGen, cls_name: str | None = None) -> str:
        values: dict[str, str] = {}
        for when, fields in self._groups():
            if when is None:
                for f in fields:
                    value = f.type.emit_unpack(g)
                    if f.name is not None:
                        values[f.name] = value
                continue
            g.flush()
            names = {f.name: g.tmp() for f in fields if f.name is not None}

            def present(fields: list[Field] = fields, names: dict[str, str] = names) -> None:
                got = [(f.name, f.type.emit_unpack(g)) for f in fields]
                g.flush()
                for name, value in got:
                    if name is not None:
                        g.line(f"{names[name]} = {value}")

            def absent(names: dict[str, str] = names) -> None:
                for name, var in names.items():
                    g.line(f"{var} = {self._default(g, name)}")

            g.block(f"if {when.expr(g, values[when.field])}:", present)
            g.block("else:", absent)
            values.update(names)
        args = [
            values[a.name] if a.name in values else self._default(g, a.name)
            for a in attrs.fields(self.cls)
            if a.init
        ]
        return f"{cls_name or g.const(self.cls)}({', '.join(args)})"

    def _default(self, g: _Gen, name: str) -> str:
        default: Any = attrs.fields_dict(self.cls)[name].default
        if default is attrs.NOTHING:
            raise TypeError(f"{self.cls.__name__}.{name} is conditional but has no default")
        if isinstance(default, _FACTORY):
            return f"{g.const(default.factory)}()"
        return g.const(default)


def _nothing() -> None:
    pass


@attrs.frozen
class Codec:
    """The generated functions of one type: ``pack(p, value, *context)`` and ``unpack(u)``."""

    type: XdrType
    pack: Callable[..., None]
    unpack: Callable[[Unpacker], Any]


def _pack_lines(t: XdrType, g: _PackGen, v: str) -> list[str]:
    g.line("buf = p._buf")
    t.emit_pack(g, v)
    g.flush()
    return g.lines


def codec(t: XdrType, context: Sequence[str] = ()) -> Codec:
    """Compile ``t``: packing takes the value, then the ``context`` arguments (``fsid``)."""
    names = itertools.count()
    ns: dict[str, Any] = {}
    pack = _compile(
        "pack",
        ", ".join(["p", "value", *context]),
        _pack_lines(t, _PackGen(ns, names, context), "value"),
        ns,
    )
    g = _UnpackGen(ns, names)
    g.line("buf = u._buf")
    g.line("pos = u._pos")
    g.line("end = u._end")
    value = t.emit_unpack(g)
    g.flush()
    g.line("u._pos = pos")
    g.line(f"return {value}")
    return Codec(t, pack, _compile("unpack", "u", g.lines, ns))


class Struct:
    """Base of messages: ``message`` generates ``unpack`` and, after the signature of the
    ``pack`` a subclass declares, ``pack``."""

    __slots__ = ()

    @classmethod
    def unpack(cls, u: Unpacker) -> Self:
        raise NotImplementedError(f"{cls.__name__} is not decorated with @message")


class Message(Struct):
    """Base of messages packed with ``pack(p)`` (no context)."""

    __slots__ = ()

    def pack(self, p: Packer) -> None:
        raise NotImplementedError(f"{type(self).__name__} is not decorated with @message")


def spec(cls: type[Any]) -> Record:
    """The struct a ``message`` class declares."""
    record = cls.__dict__.get("__xdr__")
    if not isinstance(record, Record):
        raise TypeError(f"{cls.__name__} is not an XDR message")
    return record


def _declared(cls: type[Any], order: Sequence[str] | None) -> Record:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Field] = {}
    for a in attrs.fields(cls):
        hint = hints[a.name]
        meta = getattr(hint, "__metadata__", ())
        types = [m for m in meta if isinstance(m, XdrType)]
        whens = [m for m in meta if isinstance(m, When)]
        if len(types) != 1 or len(whens) > 1:
            raise TypeError(f"{cls.__name__}.{a.name}: annotate one XDR type (and one condition)")
        fields[a.name] = Field(a.name, types[0], whens[0] if whens else None)
    if order is not None:
        if sorted(order) != sorted(fields):
            raise TypeError(f"{cls.__name__}: wire order {order} must name every field once")
        return Record(cls, tuple(fields[name] for name in order))
    return Record(cls, tuple(fields.values()))


def message(cls: type[Any] | None = None, *, order: Sequence[str] | None = None) -> Any:
    """Declare an attrs class as an XDR struct from its ``Annotated`` fields.

    Generates ``pack`` (its arguments after ``p`` are those of the ``pack`` the class inherits,
    e.g. ``fsid``) and ``unpack`` unless the class writes its own. ``order``: the wire order when
    it differs from the attribute order.
    """

    def wrap(cls: type[Any]) -> type[Any]:
        record = _declared(cls, order)
        type.__setattr__(cls, "__xdr__", record)
        methods: dict[str, Any] = {}
        names = itertools.count()
        ns: dict[str, Any] = {}
        stub = getattr(cls, "pack", None)
        if stub is not None and "pack" not in cls.__dict__:
            context = list(inspect.signature(stub).parameters)[2:]
            g = _PackGen(ns, names, context)
            lines = _pack_lines(record, g, "self")
            methods["pack"] = _compile("pack", ", ".join(["self", "p", *context]), lines, ns)
        if stub is not None and "unpack" not in cls.__dict__:
            u = _UnpackGen(ns, names)
            u.line("buf = u._buf")
            u.line("pos = u._pos")
            u.line("end = u._end")
            value = record.emit_unpack(u, "cls")
            u.flush()
            u.line("u._pos = pos")
            u.line(f"return {value}")
            methods["unpack"] = classmethod(_compile("unpack", "cls, u", u.lines, ns))
        for fn in methods.values():
            inner = getattr(fn, "__func__", fn)
            inner.__qualname__ = f"{cls.__qualname__}.{inner.__name__}"
        for name, fn in methods.items():
            type.__setattr__(cls, name, fn)
        return cls

    return wrap if cls is None else wrap(cls)
