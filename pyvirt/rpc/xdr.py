"""XDR (RFC 4506) as libvirt's rpcgen code writes it, over bytes and memoryviews.

Everything is big-endian and occupies a multiple of 4 bytes.  Two libvirt quirks are
first-class here because they are easy to get wrong (``reference/libvirt-wire.md`` §5):

* ``char``/``short`` (signed or not) each take a full 4-byte word;
* ``char x<N>`` / ``char x[N]`` arrays take **one word per byte** (rpcgen uses
  ``xdr_vector(..., xdr_char)``), unlike ``opaque<N>`` which is packed.

Safety rules of the decoder (the daemon decodes bytes from untrusted peers):

* every length or count is checked against the declared maximum *and* against the bytes
  that remain *before* anything is sliced or allocated, so a 4 GiB length word costs
  nothing;
* every failure is an :class:`XDRError` (never ``IndexError`` or ``struct.error``);
* :meth:`Unpacker.done` reports trailing bytes.

Padding decision: libvirt's decoder (glibc/tirpc ``xdr_opaque``) reads the pad bytes and
ignores their value, so a strict check could only refuse peers libvirt accepts.  We
therefore *tolerate* non-zero padding by default and always *write* zero padding;
``Unpacker(data, strict_padding=True)`` rejects non-zero padding for tests and fuzzing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: "no limit" for variable-length items: still bounded by the bytes available
UNLIMITED = 0xFFFFFFFF

_INT = struct.Struct(">i")
_UINT = struct.Struct(">I")
_HYPER = struct.Struct(">q")
_UHYPER = struct.Struct(">Q")
_DOUBLE = struct.Struct(">d")
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
UINT_MAX = 2**32 - 1
HYPER_MIN, HYPER_MAX = -(2**63), 2**63 - 1
UHYPER_MAX = 2**64 - 1


class XDRError(ValueError):
    """Malformed XDR data, or a value that cannot be encoded."""


def _pad_len(n: int) -> int:
    return (4 - n % 4) % 4


def _check_range(what: str, value: int, lo: int, hi: int) -> None:
    # bool is an int subclass; accept it (XDR bool is an int) but refuse other types
    if not isinstance(value, int):
        raise XDRError(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise XDRError(f"{what}: {value} out of range [{lo}, {hi}]")


class Packer:
    """Accumulates XDR items; :meth:`data` returns the encoding."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def data(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    # -- scalars -----------------------------------------------------------------------------
    def pack_int(self, value: int) -> None:
        _check_range("int", value, INT_MIN, INT_MAX)
        self._buf += _INT.pack(value)

    def pack_uint(self, value: int) -> None:
        _check_range("unsigned int", value, 0, UINT_MAX)
        self._buf += _UINT.pack(value)

    def pack_hyper(self, value: int) -> None:
        _check_range("hyper", value, HYPER_MIN, HYPER_MAX)
        self._buf += _HYPER.pack(value)

    def pack_uhyper(self, value: int) -> None:
        _check_range("unsigned hyper", value, 0, UHYPER_MAX)
        self._buf += _UHYPER.pack(value)

    def pack_double(self, value: float) -> None:
        if not isinstance(value, (int, float)):
            raise XDRError(f"double: expected a number, got {type(value).__name__}")
        self._buf += _DOUBLE.pack(value)

    def pack_bool(self, value: bool) -> None:
        self._buf += _INT.pack(1 if value else 0)

    pack_enum = pack_int

    def pack_char(self, value: int) -> None:
        _check_range("char", value, -128, 127)
        self._buf += _INT.pack(value)

    def pack_uchar(self, value: int) -> None:
        _check_range("unsigned char", value, 0, 255)
        self._buf += _UINT.pack(value)

    def pack_short(self, value: int) -> None:
        _check_range("short", value, -(2**15), 2**15 - 1)
        self._buf += _INT.pack(value)

    def pack_ushort(self, value: int) -> None:
        _check_range("unsigned short", value, 0, 2**16 - 1)
        self._buf += _UINT.pack(value)

    # -- byte strings ------------------------------------------------------------------------
    def pack_fixed_opaque(self, data: bytes, size: int) -> None:
        if len(data) != size:
            raise XDRError(f"opaque[{size}]: got {len(data)} bytes")
        self._buf += data
        self._buf += _ZERO_PAD[size % 4]

    def pack_opaque(self, data: bytes, max_len: int = UNLIMITED) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise XDRError(f"opaque: expected bytes, got {type(data).__name__}")
        n = len(data)
        if n > max_len:
            raise XDRError(f"opaque<{max_len}>: {n} bytes is too long")
        self._buf += _UINT.pack(n)
        self._buf += data
        self._buf += _ZERO_PAD[n % 4]

    def pack_string(self, value: str, max_len: int = UNLIMITED) -> None:
        if not isinstance(value, str):
            raise XDRError(f"string: expected str, got {type(value).__name__}")
        # surrogateescape round-trips bytes that are not valid UTF-8 (see unpack_string)
        data = value.encode("utf-8", "surrogateescape")
        if len(data) > max_len:
            raise XDRError(f"string<{max_len}>: {len(data)} bytes is too long")
        self.pack_opaque(data)

    def pack_fixed_char_array(self, data: bytes, size: int) -> None:
        if len(data) != size:
            raise XDRError(f"char[{size}]: got {len(data)} bytes")
        self._pack_char_words(data)

    def pack_char_array(self, data: bytes, max_len: int = UNLIMITED) -> None:
        if len(data) > max_len:
            raise XDRError(f"char<{max_len}>: {len(data)} bytes is too long")
        self._buf += _UINT.pack(len(data))
        self._pack_char_words(data)

    def _pack_char_words(self, data: bytes) -> None:
        # C char is signed on the platforms libvirt runs on: bytes >= 0x80 go out negative
        words = [b - 256 if b > 127 else b for b in data]
        self._buf += struct.pack(f">{len(words)}i", *words)

    # -- composites --------------------------------------------------------------------------
    def pack_optional(self, value: T | None, pack_item: Callable[[T], None]) -> None:
        if value is None:
            self._buf += _UINT.pack(0)
        else:
            self._buf += _UINT.pack(1)
            pack_item(value)

    def pack_array(
        self, items: Sequence[T], pack_item: Callable[[T], None], max_count: int = UNLIMITED
    ) -> None:
        if len(items) > max_count:
            raise XDRError(f"array<{max_count}>: {len(items)} elements is too many")
        self._buf += _UINT.pack(len(items))
        for item in items:
            pack_item(item)

    def pack_fixed_array(
        self, items: Sequence[T], pack_item: Callable[[T], None], count: int
    ) -> None:
        if len(items) != count:
            raise XDRError(f"array[{count}]: got {len(items)} elements")
        for item in items:
            pack_item(item)


class Unpacker:
    """Decodes XDR items from a buffer, checking every size before touching memory."""

    __slots__ = ("_buf", "_pos", "_strict_padding")

    def __init__(self, data: bytes | bytearray | memoryview, *, strict_padding: bool = False):
        self._buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = 0
        self._strict_padding = strict_padding

    @property
    def position(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def done(self) -> None:
        """Raise :class:`XDRError` if bytes are left over."""
        left = self.remaining()
        if left:
            raise XDRError(f"{left} trailing bytes after the last item")

    def _need(self, n: int, what: str) -> int:
        pos = self._pos
        if n > len(self._buf) - pos:
            raise XDRError(f"{what}: need {n} bytes, only {len(self._buf) - pos} left")
        self._pos = pos + n
        return pos

    def _unpack(self, fmt: struct.Struct, what: str) -> int:
        pos = self._need(fmt.size, what)
        value: int = fmt.unpack_from(self._buf, pos)[0]
        return value

    # -- scalars -----------------------------------------------------------------------------
    def unpack_int(self) -> int:
        return self._unpack(_INT, "int")

    def unpack_uint(self) -> int:
        return self._unpack(_UINT, "unsigned int")

    def unpack_hyper(self) -> int:
        return self._unpack(_HYPER, "hyper")

    def unpack_uhyper(self) -> int:
        return self._unpack(_UHYPER, "unsigned hyper")

    def unpack_double(self) -> float:
        pos = self._need(8, "double")
        value: float = _DOUBLE.unpack_from(self._buf, pos)[0]
        return value

    def unpack_bool(self) -> bool:
        value = self.unpack_int()
        if value not in (0, 1):
            raise XDRError(f"bool: invalid value {value}")
        return value == 1

    unpack_enum = unpack_int

    def _ranged(self, what: str, value: int, lo: int, hi: int) -> int:
        if not lo <= value <= hi:
            raise XDRError(f"{what}: {value} out of range [{lo}, {hi}]")
        return value

    def unpack_char(self) -> int:
        return self._ranged("char", self.unpack_int(), -128, 127)

    def unpack_uchar(self) -> int:
        return self._ranged("unsigned char", self.unpack_uint(), 0, 255)

    def unpack_short(self) -> int:
        return self._ranged("short", self.unpack_int(), -(2**15), 2**15 - 1)

    def unpack_ushort(self) -> int:
        return self._ranged("unsigned short", self.unpack_uint(), 0, 2**16 - 1)

    # -- byte strings ------------------------------------------------------------------------
    def _padding(self, n: int, what: str) -> None:
        pad = _pad_len(n)
        if pad:
            pos = self._need(pad, what + " padding")
            if self._strict_padding and any(self._buf[pos : pos + pad]):
                raise XDRError(f"{what}: non-zero padding")

    def unpack_fixed_opaque(self, size: int) -> bytes:
        pos = self._need(size, f"opaque[{size}]")
        data = bytes(self._buf[pos : pos + size])
        self._padding(size, f"opaque[{size}]")
        return data

    def unpack_opaque(self, max_len: int = UNLIMITED) -> bytes:
        n = self.unpack_uint()
        if n > max_len:
            raise XDRError(f"opaque<{max_len}>: length {n} is too long")
        # the remaining-bytes check happens in _need, before slicing
        pos = self._need(n, f"opaque<{max_len}>")
        data = bytes(self._buf[pos : pos + n])
        self._padding(n, "opaque")
        return data

    def unpack_string(self, max_len: int = UNLIMITED) -> str:
        n = self.unpack_uint()
        if n > max_len:
            raise XDRError(f"string<{max_len}>: length {n} is too long")
        pos = self._need(n, f"string<{max_len}>")
        # C strings from libvirt are usually UTF-8 but nothing enforces it; keep the
        # original bytes recoverable instead of failing the whole message
        text = str(self._buf[pos : pos + n], "utf-8", "surrogateescape")
        self._padding(n, "string")
        return text

    def unpack_fixed_char_array(self, size: int) -> bytes:
        return self._unpack_char_words(size, f"char[{size}]")

    def unpack_char_array(self, max_len: int = UNLIMITED) -> bytes:
        n = self.unpack_uint()
        if n > max_len:
            raise XDRError(f"char<{max_len}>: count {n} is too many")
        return self._unpack_char_words(n, f"char<{max_len}>")

    def _unpack_char_words(self, n: int, what: str) -> bytes:
        if n > self.remaining() // 4:
            raise XDRError(f"{what}: need {4 * n} bytes, only {self.remaining()} left")
        pos = self._need(4 * n, what)
        words = struct.unpack_from(f">{n}i", self._buf, pos)
        try:
            return bytes(w & 0xFF if -128 <= w < 0 else w for w in words)
        except ValueError:
            raise XDRError(f"{what}: element out of char range") from None

    # -- composites --------------------------------------------------------------------------
    def unpack_optional(self, unpack_item: Callable[[], T]) -> T | None:
        flag = self.unpack_uint()
        if flag == 0:
            return None
        if flag != 1:
            raise XDRError(f"optional: invalid presence flag {flag}")
        return unpack_item()

    def unpack_array(
        self, unpack_item: Callable[[], T], max_count: int = UNLIMITED, *, min_item_size: int = 4
    ) -> list[T]:
        n = self.unpack_uint()
        if n > max_count:
            raise XDRError(f"array<{max_count}>: count {n} is too many")
        # every XDR item takes at least 4 bytes: refuse counts the data cannot hold
        # before building anything (a count of 2**32-1 must not loop or allocate)
        if n * max(min_item_size, 1) > self.remaining():
            raise XDRError(f"array: count {n} exceeds the {self.remaining()} bytes left")
        return [unpack_item() for _ in range(n)]

    def unpack_fixed_array(self, unpack_item: Callable[[], T], count: int) -> list[T]:
        return [unpack_item() for _ in range(count)]
