"""Typed parameters: Python dicts ↔ the wire list, with libvirt-python's type rules."""

from __future__ import annotations

from typing import Any

import pytest

from pyvirt.client.error import libvirtError
from pyvirt.client.names import MIGRATE_PARAMS, flat_constants
from pyvirt.client.params import (
    MIGRATE_PARAM_TYPES,
    ParamError,
    from_typed_params,
    to_typed_params,
)
from pyvirt.errors import ErrorCode
from pyvirt.rpc.remote_types import TypedParam, TypedParamType

T = TypedParamType


def test_dict_to_typed_params() -> None:
    params = to_typed_params({
        "migrate_uri": "tcp://10.77.0.2:49152", "bandwidth": 100, "auto_converge.initial": 20,
        "migrate_disks": ["vda", "vdb"], "compression": "xbzrle",
    })  # fmt: skip
    assert params == [
        TypedParam("migrate_uri", T.STRING, "tcp://10.77.0.2:49152"),
        TypedParam("bandwidth", T.ULLONG, 100),
        TypedParam("auto_converge.initial", T.INT, 20),
        TypedParam("migrate_disks", T.STRING, "vda"),
        TypedParam("migrate_disks", T.STRING, "vdb"),
        TypedParam("compression", T.STRING, "xbzrle"),
    ]


def test_none_and_typed_lists_pass() -> None:
    assert to_typed_params(None) == [] and to_typed_params({}) == []
    typed = [TypedParam.of_int("anything", 1)]
    assert to_typed_params(typed) == typed


@pytest.mark.parametrize(("params", "needle"), [
    ({"no_such": 1}, "'no_such' is not supported"),
    ({"bandwidth": "fast"}, "needs an integer"),
    ({"bandwidth": -1}, "out of range"),
    ({"bandwidth": 1 << 64}, "out of range"),
    ({"disks_port": 1 << 31}, "out of range"),
    ({"disks_port": True}, "needs an integer"),
    ({"migrate_uri": 5}, "needs a string"),
    ({"migrate_uri": ["a", "b"]}, "single value"),
    ([{"not": "typed"}], "expected a dict or TypedParam list"),
])  # fmt: skip
def test_refusals(params: Any, needle: str) -> None:
    with pytest.raises(ParamError, match=needle) as info:
        to_typed_params(params)
    assert isinstance(info.value, libvirtError)
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG
    assert str(info.value).startswith("invalid argument: ")


def test_double_and_boolean_rules() -> None:
    types = {"d": T.DOUBLE, "b": T.BOOLEAN, "u": T.UINT, "l": T.LLONG}
    out = to_typed_params({"d": 1, "b": 1, "u": (1 << 32) - 1, "l": -(1 << 63)}, types)
    assert [(p.value, type(p.value)) for p in out] == [
        (1.0, float), (True, bool), ((1 << 32) - 1, int), (-(1 << 63), int)]  # fmt: skip
    with pytest.raises(ParamError):
        to_typed_params({"d": "x"}, types)


def test_from_typed_params() -> None:
    wire = [TypedParam.of_ullong("downtime", 5), TypedParam(
        "flag", T.BOOLEAN, 1), TypedParam.of_string("s", "x")]  # fmt: skip
    assert from_typed_params(wire) == {"downtime": 5, "flag": True, "s": "x"}
    assert from_typed_params(wire)["flag"] is True


def test_one_table_for_migration_params() -> None:
    # every VIR_MIGRATE_PARAM_* constant is a field of the type table, and vice versa
    fields = {v for k, v in flat_constants().items() if k.startswith("VIR_MIGRATE_PARAM_")}
    assert fields == set(MIGRATE_PARAM_TYPES) == {f for f, _ in MIGRATE_PARAMS.values()}
    assert MIGRATE_PARAM_TYPES["bandwidth"] is T.ULLONG
    assert MIGRATE_PARAM_TYPES["disks_port"] is T.INT
    assert MIGRATE_PARAM_TYPES["destination_xml"] is T.STRING

