"""The ADMIN program table: libvirt's numbers, well-formed entries, layouts that round-trip."""

from __future__ import annotations

from typing import Any

import pytest

from pyvirt.rpc.admin_protocol import (
    ADMIN,
    AdminClient,
    AdminProc,
    AdminServer,
    Client,
    ClientTransport,
)
from pyvirt.rpc.packet import ADMIN_PROGRAM
from pyvirt.rpc.remote_types import TypedParam, TypedParamXDR
from pyvirt.rpc.types import (
    Array,
    Hyper,
    Optional,
    String,
    Struct,
    UHyper,
    UInt,
    Void,
    XDRType,
)
from pyvirt.rpc.xdr import XDRError

# libvirt's admin_protocol.x numbering (9.0 has 1..19)
LIBVIRT_NUMBERS = {
    "CONNECT_OPEN": 1, "CONNECT_CLOSE": 2, "CONNECT_GET_LIB_VERSION": 3,
    "CONNECT_LIST_SERVERS": 4, "CONNECT_LOOKUP_SERVER": 5,
    "SERVER_GET_THREADPOOL_PARAMETERS": 6, "SERVER_SET_THREADPOOL_PARAMETERS": 7,
    "SERVER_LIST_CLIENTS": 8, "SERVER_LOOKUP_CLIENT": 9, "CLIENT_GET_INFO": 10,
    "CLIENT_CLOSE": 11, "SERVER_GET_CLIENT_LIMITS": 12, "SERVER_SET_CLIENT_LIMITS": 13,
    "CONNECT_GET_LOGGING_OUTPUTS": 14, "CONNECT_GET_LOGGING_FILTERS": 15,
    "CONNECT_SET_LOGGING_OUTPUTS": 16, "CONNECT_SET_LOGGING_FILTERS": 17,
    "SERVER_UPDATE_TLS_FILES": 18, "CONNECT_SET_DAEMON_TIMEOUT": 19,
}  # fmt: skip
GETTERS = {1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 14, 15}

_SCALARS: dict[Any, Any] = {UInt: 7, UHyper: 2**40 + 3, Hyper: -5, Void: None}


def sample(kind: XDRType[Any]) -> Any:
    """A representative value of any type the admin table uses."""
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind is TypedParamXDR:
        return TypedParam.of_uint("maxWorkers", 7)
    if isinstance(kind, String):
        return "libvirtd"
    if isinstance(kind, Optional):
        return sample(kind.item)
    if isinstance(kind, Array):
        return [sample(kind.item), sample(kind.item)]
    if isinstance(kind, Struct):
        values = {name: sample(ftype) for name, ftype in kind.fields}
        return kind.cls(**values) if kind.cls is not None else values
    raise AssertionError(f"no sample for {kind!r}")


def test_program_identity() -> None:
    assert ADMIN.number == ADMIN_PROGRAM == 0x06900690
    assert ADMIN.version == 1
    assert {p.name: p.value for p in AdminProc} == LIBVIRT_NUMBERS
    assert {n: s.name for n, s in ADMIN.procs.items()} == {p.value: p.name for p in AdminProc}


def test_entries_well_formed() -> None:
    apis = set()
    for number, spec in ADMIN.procs.items():
        assert spec.number == number
        assert spec.api.startswith("virAdm") and spec.api not in apis
        apis.add(spec.api)
        assert not spec.needs_auth  # the admin program has no authentication step
        assert not spec.priority  # admin_protocol.x marks nothing @priority: high
        assert not spec.is_message and spec.stream is None
        assert spec.readonly == (number in GETTERS), spec.name


@pytest.mark.parametrize("number", sorted(ADMIN.procs))
def test_layouts_round_trip(number: int) -> None:
    spec = ADMIN.procs[number]
    for kind in (spec.args_type, spec.ret_type):
        value = sample(kind)
        assert kind.decode(kind.encode(value)) == value


def test_every_settable_procedure_takes_flags() -> None:
    for spec in ADMIN.procs.values():
        if spec.args_type is not Void:
            assert isinstance(spec.args_type, Struct)
            assert spec.args_type.fields[-1] == ("flags", UInt), spec.name


# -- golden bytes ------------------------------------------------------------------------------
def test_connect_open_args_are_one_flags_word() -> None:
    assert ADMIN.procs[AdminProc.CONNECT_OPEN].encode_args({"flags": 0}) == b"\0\0\0\0"


def test_list_servers_reply_bytes() -> None:
    spec = ADMIN.procs[AdminProc.CONNECT_LIST_SERVERS]
    ret = {"servers": [AdminServer("libvirtd"), AdminServer("admin")], "ret": 2}
    expected = bytes.fromhex(
        "00000002"  # two servers
        "00000008"
        + b"libvirtd".hex()  # name, no padding needed
        + "00000005"
        + b"admin".hex()
        + "000000"  # name, padded to 8
        "00000002"  # ret
    )
    assert spec.encode_ret(ret) == expected
    assert spec.decode_ret(expected) == ret


def test_client_handle_layout() -> None:
    handle = AdminClient(AdminServer("admin"), 3, 1_700_000_000, ClientTransport.TCP)
    wire = Client.encode(handle)
    assert (
        wire
        == bytes.fromhex(
            "00000005" + b"admin".hex() + "000000"
            "0000000000000003"  # id: unsigned hyper
            "000000006553f100"  # timestamp: hyper, seconds
            "00000001"  # transport: TCP
        )
    )
    assert Client.decode(wire) == handle


def test_threadpool_params_decode_as_typed_params() -> None:
    spec = ADMIN.procs[AdminProc.SERVER_SET_THREADPOOL_PARAMETERS]
    args = {"srv": AdminServer("libvirtd"), "params": [TypedParam.of_uint("maxWorkers", 7)],
            "flags": 0}  # fmt: skip
    wire = spec.encode_args(args)
    assert wire.endswith(bytes.fromhex("00000002 00000007 00000000"))  # UINT arm, 7, flags
    assert spec.decode_args(wire) == args


def test_oversized_lists_refused() -> None:
    spec = ADMIN.procs[AdminProc.SERVER_SET_CLIENT_LIMITS]
    args = {"srv": AdminServer("x"), "params": [TypedParam.of_uint("nclients_max", 1)] * 33,
            "flags": 0}  # fmt: skip
    with pytest.raises(XDRError, match="33 elements is too many"):
        spec.encode_args(args)
