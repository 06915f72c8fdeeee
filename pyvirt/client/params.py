"""Typed parameters as Python dicts, converted the way libvirt-python converts them.

Going out, each key must be known (a table of name → virTypedParameterType, like
libvirt-python's per-API hints) and its value must fit the type: ``{"bandwidth": 100}``
becomes one ULLONG ``bandwidth``.  A list value repeats the parameter for the names
libvirt allows more than once (``migrate_disks``, ``compression``).  Coming back, a list of
typed parameters becomes a dict whose values are int / float / bool / str.

Callers that already hold :class:`~pyvirt.rpc.remote_types.TypedParam` objects (the
peer-to-peer source forwarding what its client sent) may pass them as a list, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from pyvirt.client.error import libvirtError
from pyvirt.client.names import MIGRATE_PARAMS, MULTI_VALUED_PARAMS
from pyvirt.errors import ErrorCode, ErrorDomain
from pyvirt.rpc.remote_types import TypedParam, TypedParamType, TypedValue

#: what callers may pass where typed parameters are expected
ParamsIn: TypeAlias = Mapping[str, object] | Sequence[TypedParam]

#: migration parameter field → its type, derived from the one table in names.py
MIGRATE_PARAM_TYPES: dict[str, TypedParamType] = {
    field: TypedParamType[kind] for field, kind in MIGRATE_PARAMS.values()
}

_INT_RANGES: dict[TypedParamType, tuple[int, int]] = {
    TypedParamType.INT: (-(1 << 31), (1 << 31) - 1),
    TypedParamType.UINT: (0, (1 << 32) - 1),
    TypedParamType.LLONG: (-(1 << 63), (1 << 63) - 1),
    TypedParamType.ULLONG: (0, (1 << 64) - 1),
}


class ParamError(libvirtError):
    """A typed parameter the caller got wrong (refused before anything is sent)."""

    code = ErrorCode.INVALID_ARG
    domain = ErrorDomain.DOMAIN

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid argument: {detail}")


def to_typed_params(
    params: ParamsIn | None, types: Mapping[str, TypedParamType] = MIGRATE_PARAM_TYPES
) -> list[TypedParam]:
    """A dict (or an already-typed list) → the wire list, checked against ``types``."""
    if params is None:
        return []
    if not isinstance(params, Mapping):
        return _checked_list(params)
    out: list[TypedParam] = []
    for field, value in params.items():
        kind = types.get(field)
        if kind is None:
            raise ParamError(f"parameter '{field}' is not supported")
        values = value if isinstance(value, list | tuple) else [value]
        if len(values) != 1 and field not in MULTI_VALUED_PARAMS:
            raise ParamError(f"parameter '{field}' takes a single value")
        out.extend(TypedParam(field, kind, convert_value(field, kind, v)) for v in values)
    return out


def _checked_list(params: Sequence[TypedParam]) -> list[TypedParam]:
    items = list(params)
    for item in items:
        if not isinstance(item, TypedParam):
            raise ParamError(f"expected a dict or TypedParam list, got {type(item).__name__}")
    return items


def convert_value(field: str, kind: TypedParamType, value: object) -> TypedValue:
    """``value`` as ``kind`` wants it; refuses what libvirt-python would refuse."""
    if kind in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"parameter '{field}' needs an integer, got {value!r}")
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise ParamError(f"parameter '{field}' value {value} is out of range")
        return value
    if kind is TypedParamType.DOUBLE:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"parameter '{field}' needs a number, got {value!r}")
        return float(value)
    if kind is TypedParamType.BOOLEAN:
        return bool(value)
    if not isinstance(value, str):
        raise ParamError(f"parameter '{field}' needs a string, got {value!r}")
    return value


def from_typed_params(params: Iterable[TypedParam]) -> dict[str, TypedValue]:
    """The wire list → a dict; a repeated field keeps its last value (libvirt-python)."""
    out: dict[str, TypedValue] = {}
    for param in params:
        value = param.value
        if param.type is TypedParamType.BOOLEAN:
            value = bool(value)
        out[param.field] = value
    return out
