"""Declarative XDR type descriptors: procedure arguments and replies described as data.

A descriptor knows how to pack a Python value into a :class:`~pyvirt.rpc.xdr.Packer` and
unpack it again.  Python representations are deliberately plain:

========================  ==============================================================
XDR                       Python value
========================  ==============================================================
int/hyper/char/short/...  ``int``
bool                      ``bool``
double                    ``float``
string<N>                 ``str``
opaque<N>, opaque[N]      ``bytes``
char<N>, char[N]          ``bytes`` (one wire word per byte)
T *                       ``T | None``
T <N>, T [N]              ``list[T]``
struct                    ``dict[str, Any]``, or an instance of ``cls`` when the struct
                          is bound to a dataclass (``Struct(..., cls=NonnullDomain)``)
union                     :class:`UnionValue` ``(discriminant, value)``
void                      ``None``
========================  ==============================================================

Structs decode to dicts by default because hundreds of procedure structs would otherwise
need hand-written classes; the few types used everywhere (domain handles, typed params,
errors) bind dataclasses for a typed, readable API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pyvirt.rpc.xdr import UNLIMITED, Packer, Unpacker, XDRError

T = TypeVar("T")


class XDRType(Generic[T]):
    """Base of all descriptors.  ``name`` is the ``.x`` name, for error messages."""

    name: str = "?"
    #: the smallest encoding of one value, used to bound array counts before decoding
    min_size: int = 4

    def pack(self, packer: Packer, value: T) -> None:
        raise NotImplementedError

    def unpack(self, unpacker: Unpacker) -> T:
        raise NotImplementedError

    def encode(self, value: T) -> bytes:
        packer = Packer()
        self.pack(packer, value)
        return packer.data()

    def decode(self, data: bytes | bytearray | memoryview, *, strict_padding: bool = False) -> T:
        """Decode exactly one value; trailing bytes are an error."""
        unpacker = Unpacker(data, strict_padding=strict_padding)
        value = self.unpack(unpacker)
        unpacker.done()
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Void(XDRType[None]):
    name = "void"
    min_size = 0

    def pack(self, packer: Packer, value: None) -> None:
        if value is not None:
            raise XDRError(f"void: expected None, got {type(value).__name__}")

    def unpack(self, unpacker: Unpacker) -> None:
        return None


class _Scalar(XDRType[T]):
    """A primitive bound to one Packer/Unpacker method pair."""

    def __init__(
        self,
        name: str,
        pack: Callable[[Packer, T], None],
        unpack: Callable[[Unpacker], T],
        size: int = 4,
    ) -> None:
        self.name = name
        self._pack = pack
        self._unpack = unpack
        self.min_size = size

    def pack(self, packer: Packer, value: T) -> None:
        self._pack(packer, value)

    def unpack(self, unpacker: Unpacker) -> T:
        return self._unpack(unpacker)


Void: XDRType[None] = _Void()
Int: XDRType[int] = _Scalar("int", Packer.pack_int, Unpacker.unpack_int)
UInt: XDRType[int] = _Scalar("unsigned int", Packer.pack_uint, Unpacker.unpack_uint)
Hyper: XDRType[int] = _Scalar("hyper", Packer.pack_hyper, Unpacker.unpack_hyper, 8)
UHyper: XDRType[int] = _Scalar("unsigned hyper", Packer.pack_uhyper, Unpacker.unpack_uhyper, 8)
Double: XDRType[float] = _Scalar("double", Packer.pack_double, Unpacker.unpack_double, 8)
Bool: XDRType[bool] = _Scalar("bool", Packer.pack_bool, Unpacker.unpack_bool)
Char: XDRType[int] = _Scalar("char", Packer.pack_char, Unpacker.unpack_char)
UChar: XDRType[int] = _Scalar("unsigned char", Packer.pack_uchar, Unpacker.unpack_uchar)
Short: XDRType[int] = _Scalar("short", Packer.pack_short, Unpacker.unpack_short)
UShort: XDRType[int] = _Scalar("unsigned short", Packer.pack_ushort, Unpacker.unpack_ushort)


class Enum(XDRType[int]):
    """An XDR enum: an int restricted to the declared values."""

    def __init__(self, name: str, values: Mapping[str, int]) -> None:
        self.name = name
        self.values = dict(values)
        self._allowed = frozenset(self.values.values())

    def pack(self, packer: Packer, value: int) -> None:
        if value not in self._allowed:
            raise XDRError(f"enum {self.name}: invalid value {value}")
        packer.pack_int(value)

    def unpack(self, unpacker: Unpacker) -> int:
        value = unpacker.unpack_int()
        if value not in self._allowed:
            raise XDRError(f"enum {self.name}: invalid value {value}")
        return value


class String(XDRType[str]):
    def __init__(self, max_len: int = UNLIMITED, name: str = "") -> None:
        self.max_len = max_len
        self.name = name or f"string<{max_len}>"

    def pack(self, packer: Packer, value: str) -> None:
        packer.pack_string(value, self.max_len)

    def unpack(self, unpacker: Unpacker) -> str:
        return unpacker.unpack_string(self.max_len)


class Opaque(XDRType[bytes]):
    def __init__(self, max_len: int = UNLIMITED, name: str = "") -> None:
        self.max_len = max_len
        self.name = name or f"opaque<{max_len}>"

    def pack(self, packer: Packer, value: bytes) -> None:
        packer.pack_opaque(value, self.max_len)

    def unpack(self, unpacker: Unpacker) -> bytes:
        return unpacker.unpack_opaque(self.max_len)


class FixedOpaque(XDRType[bytes]):
    def __init__(self, size: int, name: str = "") -> None:
        self.size = size
        self.name = name or f"opaque[{size}]"
        self.min_size = size + (4 - size % 4) % 4

    def pack(self, packer: Packer, value: bytes) -> None:
        packer.pack_fixed_opaque(value, self.size)

    def unpack(self, unpacker: Unpacker) -> bytes:
        return unpacker.unpack_fixed_opaque(self.size)


class CharArray(XDRType[bytes]):
    """``char x<N>``: a count, then one 4-byte word per byte."""

    def __init__(self, max_len: int = UNLIMITED, name: str = "") -> None:
        self.max_len = max_len
        self.name = name or f"char<{max_len}>"

    def pack(self, packer: Packer, value: bytes) -> None:
        packer.pack_char_array(value, self.max_len)

    def unpack(self, unpacker: Unpacker) -> bytes:
        return unpacker.unpack_char_array(self.max_len)


class FixedCharArray(XDRType[bytes]):
    """``char x[N]``: N words, no count (e.g. ``remote_node_get_info_ret.model``)."""

    def __init__(self, size: int, name: str = "") -> None:
        self.size = size
        self.name = name or f"char[{size}]"
        self.min_size = 4 * size

    def pack(self, packer: Packer, value: bytes) -> None:
        packer.pack_fixed_char_array(value, self.size)

    def unpack(self, unpacker: Unpacker) -> bytes:
        return unpacker.unpack_fixed_char_array(self.size)


class Optional(XDRType[T | None]):
    """``T *x``: a presence word, then T when present."""

    def __init__(self, item: XDRType[T], name: str = "") -> None:
        self.item = item
        self.name = name or f"{item.name} *"

    def pack(self, packer: Packer, value: T | None) -> None:
        packer.pack_optional(value, lambda v: self.item.pack(packer, v))

    def unpack(self, unpacker: Unpacker) -> T | None:
        return unpacker.unpack_optional(lambda: self.item.unpack(unpacker))


class Array(XDRType[list[T]]):
    """``T x<N>``: a count (checked against N and the bytes left), then the elements."""

    def __init__(self, item: XDRType[T], max_count: int = UNLIMITED, name: str = "") -> None:
        self.item = item
        self.max_count = max_count
        self.name = name or f"{item.name}<{max_count}>"

    def pack(self, packer: Packer, value: Sequence[T]) -> None:
        _require_sequence(self.name, value)
        packer.pack_array(value, lambda v: self.item.pack(packer, v), self.max_count)

    def unpack(self, unpacker: Unpacker) -> list[T]:
        return unpacker.unpack_array(
            lambda: self.item.unpack(unpacker), self.max_count, min_item_size=self.item.min_size
        )


class FixedArray(XDRType[list[T]]):
    """``T x[N]``: exactly N elements, no count."""

    def __init__(self, item: XDRType[T], count: int, name: str = "") -> None:
        self.item = item
        self.count = count
        self.name = name or f"{item.name}[{count}]"
        self.min_size = item.min_size * count

    def pack(self, packer: Packer, value: Sequence[T]) -> None:
        _require_sequence(self.name, value)
        packer.pack_fixed_array(value, lambda v: self.item.pack(packer, v), self.count)

    def unpack(self, unpacker: Unpacker) -> list[T]:
        if self.min_size > unpacker.remaining():
            raise XDRError(f"{self.name}: needs at least {self.min_size} bytes")
        return unpacker.unpack_fixed_array(lambda: self.item.unpack(unpacker), self.count)


def _require_sequence(name: str, value: object) -> None:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise XDRError(f"{name}: expected a list, got {type(value).__name__}")


Field = tuple[str, XDRType[Any]]


class Struct(XDRType[Any]):
    """An XDR struct.  Decodes to ``dict`` or, when ``cls`` is given, to ``cls(**fields)``.

    Packing accepts a mapping or any object with the field attributes (a dataclass).
    """

    def __init__(self, name: str, fields: Sequence[Field], cls: type | None = None) -> None:
        self.name = name
        self.fields: tuple[Field, ...] = tuple(fields)
        self.cls = cls
        self.min_size = sum(t.min_size for _, t in self.fields)
        names = [f for f, _ in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"struct {name}: duplicate field names")
        if cls is not None and dataclasses.is_dataclass(cls):
            cls_fields = {f.name for f in dataclasses.fields(cls) if f.init}
            if cls_fields != set(names):
                raise ValueError(f"struct {name}: fields do not match {cls.__name__}")

    def pack(self, packer: Packer, value: Any) -> None:
        get = _field_getter(self.name, value)
        for fname, ftype in self.fields:
            try:
                ftype.pack(packer, get(fname))
            except XDRError as exc:
                raise XDRError(f"{self.name}.{fname}: {exc}") from None

    def unpack(self, unpacker: Unpacker) -> Any:
        values: dict[str, Any] = {}
        for fname, ftype in self.fields:
            try:
                values[fname] = ftype.unpack(unpacker)
            except XDRError as exc:
                raise XDRError(f"{self.name}.{fname}: {exc}") from None
        return self.cls(**values) if self.cls is not None else values


def _field_getter(name: str, value: Any) -> Callable[[str], Any]:
    if isinstance(value, Mapping):

        def from_mapping(field: str) -> Any:
            try:
                return value[field]
            except KeyError:
                raise XDRError(f"struct {name}: missing field {field!r}") from None

        return from_mapping

    def from_attr(field: str) -> Any:
        try:
            return getattr(value, field)
        except AttributeError:
            raise XDRError(f"struct {name}: missing field {field!r}") from None

    return from_attr


@dataclasses.dataclass(frozen=True, slots=True)
class UnionValue:
    """A decoded union: which arm, and the arm's value (None for a void arm)."""

    discriminant: int
    value: Any = None


class Union(XDRType[UnionValue]):
    """``union switch (int d) { case ...: T x; ... default: ... }``.

    ``arms`` maps discriminant → arm type (``Void`` for an empty arm).  Without a
    ``default`` an unknown discriminant is an error, as in rpcgen's code.
    """

    def __init__(
        self,
        name: str,
        arms: Mapping[int, XDRType[Any]],
        default: XDRType[Any] | None = None,
        discriminant: XDRType[int] = Int,
    ) -> None:
        self.name = name
        self.arms = dict(arms)
        self.default = default
        self.discriminant = discriminant

    def _arm(self, disc: int) -> XDRType[Any]:
        arm = self.arms.get(disc, self.default)
        if arm is None:
            raise XDRError(f"union {self.name}: invalid discriminant {disc}")
        return arm

    def pack(self, packer: Packer, value: UnionValue) -> None:
        if not isinstance(value, UnionValue):
            raise XDRError(f"union {self.name}: expected UnionValue, got {type(value).__name__}")
        arm = self._arm(value.discriminant)
        self.discriminant.pack(packer, value.discriminant)
        arm.pack(packer, value.value)

    def unpack(self, unpacker: Unpacker) -> UnionValue:
        disc = self.discriminant.unpack(unpacker)
        return UnionValue(disc, self._arm(disc).unpack(unpacker))
