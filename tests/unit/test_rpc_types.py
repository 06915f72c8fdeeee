"""Declarative descriptors, common remote types and the remote_error mapping."""

from __future__ import annotations

import contextlib
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirt.errors import ERROR_MAX_LENGTH, ErrorCode, ErrorDomain, NoDomainError, VirtError
from pyvirt.rpc import error as rpc_error
from pyvirt.rpc.remote_types import (
    STRING_MAX,
    TYPED_PARAM_FIELD_MAX,
    Domain,
    JobStatsParams,
    MigrateParams,
    NonnullDomain,
    RemoteError,
    RemoteErrorXDR,
    TypedParam,
    TypedParamType,
    TypedParamXDR,
)
from pyvirt.rpc.types import (
    Array,
    CharArray,
    Enum,
    Field,
    FixedArray,
    FixedCharArray,
    Hyper,
    Int,
    Optional,
    String,
    Struct,
    UChar,
    UHyper,
    Union,
    UnionValue,
    UShort,
    Void,
)
from pyvirt.rpc.xdr import XDRError

DOMAIN_INFO = Struct(
    "remote_domain_get_info_ret",
    [
        ("state", UChar),
        ("max_mem", UHyper),
        ("memory", UHyper),
        ("nr_virt_cpu", UShort),
        ("cpu_time", UHyper),
    ],
)

UUID = bytes.fromhex("05b16a01" + "00" * 10 + "427a")


def test_domain_get_info_is_32_bytes() -> None:
    info = {"state": 1, "max_mem": 1024, "memory": 512, "nr_virt_cpu": 2, "cpu_time": 10}
    data = DOMAIN_INFO.encode(info)
    assert len(data) == 32
    assert DOMAIN_INFO.decode(data) == info


def test_node_get_info_is_160_bytes() -> None:
    ints: list[Field] = [(f, Int) for f in ("cpus", "mhz", "nodes", "sockets", "cores", "threads")]
    node_info = Struct(
        "remote_node_get_info_ret", [("model", FixedCharArray(32)), ("memory", UHyper), *ints]
    )
    value = {"model": b"x86_64".ljust(32, b"\0"), "memory": 1, "cpus": 2, "mhz": 3}
    value |= {"nodes": 1, "sockets": 1, "cores": 2, "threads": 1}
    data = node_info.encode(value)
    assert len(data) == 160
    assert node_info.decode(data) == value


def test_nonnull_domain_observed_bytes() -> None:
    data = Domain.encode(NonnullDomain("x", UUID, 1))
    assert data.hex() == "00000001 78000000".replace(" ", "") + UUID.hex() + "00000001"
    assert Domain.decode(data) == NonnullDomain("x", UUID, 1)


def test_struct_from_mapping_or_object_and_missing_field() -> None:
    assert Domain.encode({"name": "x", "uuid": UUID, "id": 1}) == Domain.encode(
        NonnullDomain("x", UUID, 1)
    )
    with pytest.raises(XDRError, match="missing field 'id'"):
        Domain.encode({"name": "x", "uuid": UUID})
    with pytest.raises(XDRError, match=r"remote_nonnull_domain\.uuid"):
        Domain.encode(NonnullDomain("x", b"short", 1))


def test_struct_definition_checks() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Struct("s", [("a", Int), ("a", Int)])
    with pytest.raises(ValueError, match="do not match"):
        Struct("s", [("name", Int)], NonnullDomain)


def test_void_and_enum() -> None:
    assert Void.encode(None) == b""
    assert Void.decode(b"") is None
    with pytest.raises(XDRError):
        Void.decode(b"\0\0\0\0")  # trailing bytes
    auth = Enum("remote_auth_type", {"NONE": 0, "SASL": 1, "POLKIT": 2})
    assert auth.decode(auth.encode(2)) == 2
    with pytest.raises(XDRError):
        auth.encode(3)
    with pytest.raises(XDRError):
        auth.decode(struct.pack(">i", 9))


def test_union() -> None:
    u = Union("u", {1: Int, 2: String(10), 3: Void})
    for value in (UnionValue(1, -5), UnionValue(2, "hi"), UnionValue(3)):
        assert u.decode(u.encode(value)) == value
    with pytest.raises(XDRError, match="discriminant"):
        u.encode(UnionValue(4, 0))
    with pytest.raises(XDRError, match="discriminant"):
        u.decode(struct.pack(">i", 9))
    with_default = Union("u", {1: Int}, default=Hyper)
    assert with_default.decode(with_default.encode(UnionValue(9, 2**40))) == UnionValue(9, 2**40)


def test_array_descriptors() -> None:
    arr = Array(Int, 3)
    assert arr.decode(arr.encode([1, 2, 3])) == [1, 2, 3]
    with pytest.raises(XDRError):
        arr.encode([1, 2, 3, 4])
    with pytest.raises(XDRError):
        arr.encode("abc")  # type: ignore[arg-type]  # a str is not a list
    # a count that the remaining bytes cannot hold is refused before decoding elements
    with pytest.raises(XDRError):
        Array(Domain).decode(struct.pack(">I", 1000) + b"\0" * 40)
    fixed = FixedArray(Int, 2)
    assert fixed.decode(fixed.encode([5, 6])) == [5, 6]
    with pytest.raises(XDRError):
        fixed.decode(b"\0" * 4)
    opt = Optional(CharArray(8))
    assert opt.decode(opt.encode(b"abc")) == b"abc"
    assert opt.decode(opt.encode(None)) is None


# -- typed params ---------------------------------------------------------------------------------
def test_typed_param_observed_encoding() -> None:
    xml = "<domain/>"
    data = TypedParamXDR.encode(TypedParam.of_string("destination_xml", xml))
    expected = struct.pack(">I", 15) + b"destination_xml\0" + struct.pack(">iI", 7, len(xml))
    assert data == expected + xml.encode() + b"\0" * 3


def test_typed_param_all_types() -> None:
    params = [
        TypedParam.of_int("operation", -5),
        TypedParam.of_uint("u", 2**32 - 1),
        TypedParam.of_llong("l", -(2**40)),
        TypedParam.of_ullong("bandwidth", 2**64 - 1),
        TypedParam.of_double("d", 0.25),
        TypedParam.of_bool("b", True),
        TypedParam.of_string("s", "x"),
    ]
    assert JobStatsParams.decode(JobStatsParams.encode(params)) == params
    assert [p.type for p in params] == list(TypedParamType)


def test_typed_param_errors() -> None:
    with pytest.raises(XDRError, match="'bandwidth'"):
        TypedParamXDR.encode(TypedParam.of_uint("bandwidth", -1))
    with pytest.raises(XDRError, match="invalid type 9"):
        TypedParamXDR.decode(struct.pack(">I", 1) + b"a\0\0\0" + struct.pack(">i", 9))
    with pytest.raises(XDRError):
        JobStatsParams.encode([TypedParam.of_int("x", 1)] * 65)


# names fit libvirt's 79-byte field even when every character takes 4 UTF-8 bytes
_field_names = st.text(max_size=TYPED_PARAM_FIELD_MAX // 4)
typed_param_strategy = st.one_of(
    st.builds(TypedParam.of_int, _field_names, st.integers(-(2**31), 2**31 - 1)),
    st.builds(TypedParam.of_ullong, _field_names, st.integers(0, 2**64 - 1)),
    st.builds(TypedParam.of_double, _field_names, st.floats(allow_nan=False)),
    st.builds(TypedParam.of_bool, _field_names, st.booleans()),
    st.builds(TypedParam.of_string, _field_names, st.text()),
)


@given(st.lists(typed_param_strategy, max_size=64))
def test_typed_params_round_trip(params: list[TypedParam]) -> None:
    assert JobStatsParams.decode(JobStatsParams.encode(params), strict_padding=True) == params


def _raw_param(name: bytes, kind: int = 1, value: bytes = b"\0\0\0\1") -> bytes:
    padded = name + b"\0" * (-len(name) % 4)
    return struct.pack(">I", len(name)) + padded + struct.pack(">i", kind) + value


def test_typed_param_names_are_capped_at_libvirts_field_length() -> None:
    longest = b"n" * TYPED_PARAM_FIELD_MAX
    assert TypedParamXDR.decode(_raw_param(longest)).field == longest.decode()
    with pytest.raises(XDRError, match="field name"):
        TypedParamXDR.decode(_raw_param(longest + b"n"))
    with pytest.raises(XDRError, match="longer than 79 bytes"):
        TypedParamXDR.encode(TypedParam.of_int("é" * 40, 1))  # 80 bytes in UTF-8


def test_typed_param_name_length_is_refused_before_its_bytes_are_read() -> None:
    # a 4 MiB name claimed (and sent): refused from the length word, and the error does
    # not echo the name (it would end up in replies and log lines)
    claimed = struct.pack(">I", STRING_MAX) + b"A" * STRING_MAX + struct.pack(">ii", 1, 1)
    with pytest.raises(XDRError) as info:
        MigrateParams.decode(struct.pack(">I", 1) + claimed)
    assert len(str(info.value)) < 200


@given(st.binary(max_size=300))
def test_decoding_garbage_raises_only_xdrerror(data: bytes) -> None:
    for kind in (JobStatsParams, RemoteErrorXDR, Domain, DOMAIN_INFO):
        with contextlib.suppress(XDRError):
            kind.decode(data)


# -- remote_error ---------------------------------------------------------------------------
def test_remote_error_round_trip_to_virterror() -> None:
    exc = NoDomainError.by_name("nosuchdomain")
    decoded = rpc_error.error_from_wire(rpc_error.error_to_wire(exc))
    assert isinstance(decoded, VirtError)
    assert decoded.code == ErrorCode.NO_DOMAIN
    assert decoded.domain == ErrorDomain.QEMU
    assert decoded.message == "Domain not found: no domain with matching name 'nosuchdomain'"
    assert decoded.level == 2


def test_remote_error_layout_minimal_server() -> None:
    payload = rpc_error.error_to_wire(VirtError("boom", code=9, domain=10))
    err: Any = RemoteErrorXDR.decode(payload)
    assert err == RemoteError(code=9, domain=10, message="boom", level=2)
    # code, domain, present flag + "boom", level, then 4 absent optionals, 2 ints, absent net
    assert len(payload) == 4 + 4 + 4 + 8 + 4 + 4 * 4 + 8 + 4


def test_unknown_procedure_becomes_no_support() -> None:
    decoded = rpc_error.error_from_wire(rpc_error.error_to_wire(rpc_error.unknown_procedure(426)))
    assert decoded.code == ErrorCode.NO_SUPPORT
    assert decoded.domain == ErrorDomain.RPC
    assert decoded.message == "unknown procedure: 426"


def test_internal_exception_does_not_leak_text() -> None:
    decoded = rpc_error.error_from_wire(rpc_error.error_to_wire(KeyError("secret detail")))
    assert decoded.code == ErrorCode.INTERNAL_ERROR
    assert "secret" not in decoded.message


def test_error_messages_are_capped_and_always_encode() -> None:
    # found by the wire fuzzer: an error quoting a 4 MiB name outgrew remote_error's string
    # and the reply was never sent; libvirt formats messages into 1024 characters
    huge = VirtError("name '" + "x" * (5 << 20) + "' is bad", code=27)
    assert len(huge.message) == ERROR_MAX_LENGTH and huge.message.endswith("...")
    assert len(rpc_error.error_to_wire(huge)) < 2 * ERROR_MAX_LENGTH
    odd = rpc_error.error_from_wire(rpc_error.error_to_wire(VirtError("bad \udcff name")))
    assert odd.message.startswith("bad ")


def test_undecodable_error_payload() -> None:
    decoded = rpc_error.error_from_wire(b"\0\0")
    assert decoded.code == ErrorCode.RPC


def test_real_daemon_style_error_fields_decode() -> None:
    err = RemoteError(
        code=42,
        domain=10,
        message="Domain not found",
        level=2,
        dom=NonnullDomain("x", uuid.UUID(int=1).bytes, -1),
        str1="Domain not found: %s",
        str2="x",
        int1=-1,
        int2=-1,
    )
    decoded = rpc_error.error_from_wire(RemoteErrorXDR.encode(err))
    assert decoded.code == 42
    assert decoded.message == "Domain not found"


def test_daemon_node_info_fits_its_wire_type() -> None:
    # char model[32] is fixed: a shorter model failed every NODE_GET_INFO (wire fuzzer)
    from pyvirt.daemon import hostinfo
    from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc

    spec = REMOTE.procs[RemoteProc.NODE_GET_INFO]
    assert len(spec.encode_ret(hostinfo.node_info())) == 160
