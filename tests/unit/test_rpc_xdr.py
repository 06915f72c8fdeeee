"""XDR codec: encodings, round trips, and hostile input (sizes checked before allocation)."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirt.rpc.xdr import Packer, Unpacker, XDRError


def packed(fn_name: str, *args: object) -> bytes:
    p = Packer()
    getattr(p, fn_name)(*args)
    return p.data()


# -- encodings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "args", "hex_"),
    [
        ("pack_int", (-1,), "ffffffff"),
        ("pack_uint", (0x20008086,), "20008086"),
        ("pack_hyper", (-2,), "fffffffffffffffe"),
        ("pack_uhyper", (2**64 - 1,), "ffffffffffffffff"),
        ("pack_double", (1.5,), "3ff8000000000000"),
        ("pack_bool", (True,), "00000001"),
        ("pack_char", (-1,), "ffffffff"),
        ("pack_uchar", (5,), "00000005"),
        ("pack_short", (-2,), "fffffffe"),
        ("pack_ushort", (65535,), "0000ffff"),
        ("pack_string", ("qemu:///system",), "0000000e71656d753a2f2f2f73797374656d0000"),
        ("pack_opaque", (b"\x01",), "0000000101000000"),
        ("pack_char_array", (b"ab\xff", 10), "00000003 00000061 00000062 ffffffff"),
        ("pack_fixed_char_array", (b"a\0", 2), "00000061 00000000"),
    ],
)
def test_encodings(method: str, args: tuple[object, ...], hex_: str) -> None:
    assert packed(method, *args).hex() == hex_.replace(" ", "")


def test_fixed_opaque_padding() -> None:
    assert packed("pack_fixed_opaque", b"\x01\x02\x03\x04\x05", 5).hex() == "0102030405000000"


def test_security_model_observed_on_the_wire() -> None:
    # NODE_GET_SECURITY_MODEL from a real libvirtd: count 13, then 13 words, NUL included
    data = packed("pack_char_array", b"testSecurity\0", 257)
    assert len(data) == 4 + 13 * 4
    u = Unpacker(data)
    assert u.unpack_char_array(257) == b"testSecurity\0"
    u.done()


def test_optional_and_arrays() -> None:
    p = Packer()
    p.pack_optional(None, p.pack_int)
    p.pack_optional(7, p.pack_int)
    p.pack_array([1, 2], p.pack_uint, 5)
    p.pack_fixed_array([3, 4], p.pack_uint, 2)
    expected = "00000000 00000001 00000007 00000002 00000001 00000002 00000003 00000004"
    assert p.data().hex() == expected.replace(" ", "")
    u = Unpacker(p.data())
    assert u.unpack_optional(u.unpack_int) is None
    assert u.unpack_optional(u.unpack_int) == 7
    assert u.unpack_array(u.unpack_uint, 5) == [1, 2]
    assert u.unpack_fixed_array(u.unpack_uint, 2) == [3, 4]
    u.done()


# -- encode-side validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("pack_int", (2**31,)),
        ("pack_uint", (-1,)),
        ("pack_hyper", (2**63,)),
        ("pack_uhyper", (2**64,)),
        ("pack_char", (128,)),
        ("pack_uchar", (256,)),
        ("pack_short", (2**15,)),
        ("pack_ushort", (-1,)),
        ("pack_int", ("1",)),
        ("pack_double", ("x",)),
        ("pack_string", ("abcdef", 5)),
        ("pack_string", (b"bytes",)),
        ("pack_opaque", (b"abcdef", 5)),
        ("pack_opaque", ("str",)),
        ("pack_fixed_opaque", (b"abc", 4)),
        ("pack_char_array", (b"abc", 2)),
        ("pack_fixed_char_array", (b"abc", 4)),
    ],
)
def test_pack_rejects_bad_values(method: str, args: tuple[object, ...]) -> None:
    with pytest.raises(XDRError):
        packed(method, *args)


def test_pack_array_limits() -> None:
    p = Packer()
    with pytest.raises(XDRError):
        p.pack_array([1, 2, 3], p.pack_int, 2)
    with pytest.raises(XDRError):
        p.pack_fixed_array([1], p.pack_int, 2)


# -- decode-side validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "args", "data"),
    [
        ("unpack_int", (), b"\0\0\0"),
        ("unpack_hyper", (), b"\0" * 7),
        ("unpack_double", (), b"\0" * 4),
        ("unpack_bool", (), struct.pack(">i", 2)),
        ("unpack_char", (), struct.pack(">i", 128)),
        ("unpack_uchar", (), struct.pack(">I", 256)),
        ("unpack_short", (), struct.pack(">i", -40000)),
        ("unpack_ushort", (), struct.pack(">I", 70000)),
        ("unpack_string", (4,), struct.pack(">I", 5) + b"abcde\0\0\0"),
        ("unpack_string", (), struct.pack(">I", 5) + b"abcde"),  # padding missing
        ("unpack_opaque", (), struct.pack(">I", 8) + b"abc"),
        ("unpack_fixed_opaque", (16,), b"\0" * 15),
        ("unpack_char_array", (3,), struct.pack(">I", 4) + b"\0" * 16),
        ("unpack_char_array", (), struct.pack(">I", 2) + struct.pack(">i", 300) + b"\0" * 4),
        ("unpack_fixed_char_array", (2,), b"\0" * 7),
    ],
)
def test_unpack_rejects_malformed(method: str, args: tuple[object, ...], data: bytes) -> None:
    with pytest.raises(XDRError):
        getattr(Unpacker(data), method)(*args)


def test_unpack_optional_bad_flag() -> None:
    u = Unpacker(struct.pack(">I", 2) + b"\0" * 4)
    with pytest.raises(XDRError):
        u.unpack_optional(u.unpack_int)


def test_array_count_checked_against_max_and_data() -> None:
    u = Unpacker(struct.pack(">I", 3) + b"\0" * 12)
    with pytest.raises(XDRError, match="too many"):
        u.unpack_array(u.unpack_int, 2)
    calls = 0

    def item() -> int:
        nonlocal calls
        calls += 1
        return u.unpack_int()

    u = Unpacker(struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(XDRError, match="exceeds"):
        u.unpack_array(item)
    assert calls == 0  # refused before decoding a single element


def test_huge_lengths_do_not_allocate() -> None:
    """A 4 GiB length must be refused from the length word alone."""
    hostile = struct.pack(">I", 0xFFFFFFFF) + b"x" * 64
    tracemalloc.start()
    try:
        for method in ("unpack_string", "unpack_opaque", "unpack_char_array"):
            with pytest.raises(XDRError):
                getattr(Unpacker(hostile), method)()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_trailing_bytes_detected() -> None:
    u = Unpacker(b"\0\0\0\1\0")
    assert u.unpack_int() == 1
    with pytest.raises(XDRError, match="trailing"):
        u.done()


def test_padding_tolerated_by_default_strict_on_request() -> None:
    data = struct.pack(">I", 1) + b"a\x01\x02\x03"
    assert Unpacker(data).unpack_opaque() == b"a"
    with pytest.raises(XDRError, match="padding"):
        Unpacker(data, strict_padding=True).unpack_opaque()
    assert Unpacker(struct.pack(">I", 1) + b"a\0\0\0", strict_padding=True).unpack_opaque() == b"a"


def test_invalid_utf8_round_trips() -> None:
    data = struct.pack(">I", 2) + b"\xff\xfe\0\0"
    text = Unpacker(data).unpack_string()
    assert packed("pack_string", text) == data


def test_memoryview_input() -> None:
    buf = bytearray(b"\0\0\0\x05tail")
    u = Unpacker(memoryview(buf)[:4])
    assert u.unpack_int() == 5
    u.done()


# -- property-based round trips -----------------------------------------------------------------
ints = st.integers(-(2**31), 2**31 - 1)
hypers = st.integers(-(2**63), 2**63 - 1)


@given(ints, st.integers(0, 2**32 - 1), hypers, st.integers(0, 2**64 - 1), st.booleans())
def test_scalar_round_trip(i: int, ui: int, h: int, uh: int, b: bool) -> None:
    p = Packer()
    p.pack_int(i)
    p.pack_uint(ui)
    p.pack_hyper(h)
    p.pack_uhyper(uh)
    p.pack_bool(b)
    u = Unpacker(p.data(), strict_padding=True)
    assert (u.unpack_int(), u.unpack_uint(), u.unpack_hyper(), u.unpack_uhyper()) == (i, ui, h, uh)
    assert u.unpack_bool() is b
    u.done()


@given(st.floats(allow_nan=False))
def test_double_round_trip(value: float) -> None:
    assert Unpacker(packed("pack_double", value)).unpack_double() == value


@given(st.text(), st.binary(), st.binary(max_size=64))
def test_bytes_round_trip(text: str, blob: bytes, chars: bytes) -> None:
    p = Packer()
    p.pack_string(text)
    p.pack_opaque(blob)
    p.pack_char_array(chars)
    p.pack_fixed_opaque(blob, len(blob))
    data = p.data()
    assert len(data) % 4 == 0
    u = Unpacker(data, strict_padding=True)
    assert u.unpack_string() == text
    assert u.unpack_opaque() == blob
    assert u.unpack_char_array() == chars
    assert u.unpack_fixed_opaque(len(blob)) == blob
    u.done()


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_xdrerror(data: bytes) -> None:
    for method in ("unpack_string", "unpack_opaque", "unpack_char_array", "unpack_hyper"):
        u = Unpacker(data)
        with contextlib.suppress(XDRError):
            getattr(u, method)()
