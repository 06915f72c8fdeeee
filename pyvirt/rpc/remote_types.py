"""Wire types shared by many remote-protocol procedures.

Limits are libvirt's (``reference/libvirt-wire.md`` §2, §6); the layouts are described here
as data, not copied from ``remote_protocol.x``.  These are *wire* shapes: a domain handle is
just (name, uuid, id) and carries no meaning for the RPC layer.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from pyvirt.rpc.types import (
    Array,
    Bool,
    Double,
    FixedOpaque,
    Hyper,
    Int,
    Opaque,
    Optional,
    String,
    Struct,
    UHyper,
    UInt,
    XDRType,
)
from pyvirt.rpc.xdr import Packer, Unpacker, XDRError

# -- limits (libvirt's numbers) --------------------------------------------------------------
STRING_MAX = 4_194_304
MIGRATE_COOKIE_MAX = 4_194_304
DOMAIN_LIST_MAX = 16_384
MIGRATE_PARAM_LIST_MAX = 64
JOB_STATS_MAX = 64
AUTH_TYPE_LIST_MAX = 20
AUTH_SASL_DATA_MAX = 65_536
SECURITY_MODEL_MAX = 257  # VIR_SECURITY_MODEL_BUFLEN
SECURITY_DOI_MAX = 257  # VIR_SECURITY_DOI_BUFLEN
SECURITY_LABEL_MAX = 4097  # VIR_SECURITY_LABEL_BUFLEN
CONNECT_IDENTITY_PARAMS_MAX = 20
#: VIR_TYPED_PARAM_FIELD_LENGTH (80) less the NUL: libvirt refuses longer typed-parameter
#: names when it copies them into virTypedParameter.field
TYPED_PARAM_FIELD_MAX = 79
DOMAIN_MESSAGES_MAX = 2048
UUID_LEN = 16

# -- strings ---------------------------------------------------------------------------------
NonnullString: XDRType[str] = String(STRING_MAX, "remote_nonnull_string")
OptString: XDRType[str | None] = Optional(NonnullString, "remote_string")
UUID: XDRType[bytes] = FixedOpaque(UUID_LEN, "remote_uuid")
Cookie: XDRType[bytes] = Opaque(MIGRATE_COOKIE_MAX, "migrate cookie")


@dataclasses.dataclass(frozen=True, slots=True)
class NonnullDomain:
    """``remote_nonnull_domain``: a domain handle on the wire (id is -1 when inactive)."""

    name: str
    uuid: bytes
    id: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class NonnullNetwork:
    """``remote_nonnull_network``; appears only as the (always absent) ``remote_error.net``."""

    name: str
    uuid: bytes


Domain: XDRType[Any] = Struct(
    "remote_nonnull_domain", [("name", NonnullString), ("uuid", UUID), ("id", Int)], NonnullDomain
)
OptDomain: XDRType[Any] = Optional(Domain, "remote_domain")
Network: XDRType[Any] = Struct(
    "remote_nonnull_network", [("name", NonnullString), ("uuid", UUID)], NonnullNetwork
)
OptNetwork: XDRType[Any] = Optional(Network, "remote_network")
DomainList: XDRType[Any] = Array(Domain, DOMAIN_LIST_MAX)


# -- typed parameters ------------------------------------------------------------------------
class TypedParamType(enum.IntEnum):
    """virTypedParameterType: the discriminant of ``remote_typed_param_value``."""

    INT = 1
    UINT = 2
    LLONG = 3
    ULLONG = 4
    DOUBLE = 5
    BOOLEAN = 6
    STRING = 7


TypedValue = int | float | bool | str

_PARAM_ARMS: dict[TypedParamType, XDRType[Any]] = {
    TypedParamType.INT: Int,
    TypedParamType.UINT: UInt,
    TypedParamType.LLONG: Hyper,
    TypedParamType.ULLONG: UHyper,
    TypedParamType.DOUBLE: Double,
    # libvirt sends booleans as an int; decoding refuses values other than 0/1
    TypedParamType.BOOLEAN: Bool,
    TypedParamType.STRING: NonnullString,
}


@dataclasses.dataclass(frozen=True, slots=True)
class TypedParam:
    """One ``remote_typed_param``, e.g. ``TypedParam.of_ullong("bandwidth", 100)``."""

    field: str
    type: TypedParamType
    value: TypedValue

    @classmethod
    def of_int(cls, field: str, value: int) -> TypedParam:
        return cls(field, TypedParamType.INT, value)

    @classmethod
    def of_uint(cls, field: str, value: int) -> TypedParam:
        return cls(field, TypedParamType.UINT, value)

    @classmethod
    def of_llong(cls, field: str, value: int) -> TypedParam:
        return cls(field, TypedParamType.LLONG, value)

    @classmethod
    def of_ullong(cls, field: str, value: int) -> TypedParam:
        return cls(field, TypedParamType.ULLONG, value)

    @classmethod
    def of_double(cls, field: str, value: float) -> TypedParam:
        return cls(field, TypedParamType.DOUBLE, value)

    @classmethod
    def of_bool(cls, field: str, value: bool) -> TypedParam:
        return cls(field, TypedParamType.BOOLEAN, value)

    @classmethod
    def of_string(cls, field: str, value: str) -> TypedParam:
        return cls(field, TypedParamType.STRING, value)


class _TypedParamXDR(XDRType[TypedParam]):
    name = "remote_typed_param"
    min_size = 12  # empty field name + discriminant + smallest arm

    def pack(self, packer: Packer, value: TypedParam) -> None:
        if not isinstance(value, TypedParam):
            raise XDRError(f"{self.name}: expected TypedParam, got {type(value).__name__}")
        if len(value.field.encode("utf-8", "surrogateescape")) > TYPED_PARAM_FIELD_MAX:
            raise XDRError(f"{self.name}: field name {value.field[:TYPED_PARAM_FIELD_MAX]!r}... "
                           f"is longer than {TYPED_PARAM_FIELD_MAX} bytes")
        arm = _PARAM_ARMS.get(value.type)
        if arm is None:
            raise XDRError(f"{self.name} {value.field!r}: invalid type {value.type}")
        NonnullString.pack(packer, value.field)
        packer.pack_int(int(value.type))
        try:
            arm.pack(packer, value.value)
        except XDRError as exc:
            raise XDRError(f"{self.name} {value.field!r}: {exc}") from None

    def unpack(self, unpacker: Unpacker) -> TypedParam:
        # the name's length is checked before its bytes are read: a peer's 4 MiB name
        # would otherwise be decoded, then echoed in errors and log lines
        try:
            field = unpacker.unpack_string(TYPED_PARAM_FIELD_MAX)
        except XDRError as exc:
            raise XDRError(f"{self.name} field name: {exc}") from None
        disc = unpacker.unpack_int()
        try:
            kind = TypedParamType(disc)
        except ValueError:
            raise XDRError(f"{self.name} {field!r}: invalid type {disc}") from None
        return TypedParam(field, kind, _PARAM_ARMS[kind].unpack(unpacker))


TypedParamXDR: XDRType[TypedParam] = _TypedParamXDR()


def typed_params(max_count: int) -> XDRType[list[TypedParam]]:
    """A ``remote_typed_param x<max_count>`` list."""
    return Array(TypedParamXDR, max_count, f"remote_typed_param<{max_count}>")


MigrateParams = typed_params(MIGRATE_PARAM_LIST_MAX)
JobStatsParams = typed_params(JOB_STATS_MAX)


# -- remote_error ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class RemoteError:
    """``remote_error`` (same layout as ``virNetMessageError``).

    Convert to and from :class:`pyvirt.errors.VirtError` only through
    :mod:`pyvirt.rpc.error`, the one place that knows the mapping.
    """

    code: int
    domain: int
    message: str | None
    level: int
    dom: NonnullDomain | None = None
    str1: str | None = None
    str2: str | None = None
    str3: str | None = None
    int1: int = 0
    int2: int = 0
    net: NonnullNetwork | None = None


RemoteErrorXDR: XDRType[Any] = Struct(
    "remote_error",
    [
        ("code", Int),
        ("domain", Int),
        ("message", OptString),
        ("level", Int),
        ("dom", OptDomain),
        ("str1", OptString),
        ("str2", OptString),
        ("str3", OptString),
        ("int1", Int),
        ("int2", Int),
        ("net", OptNetwork),
    ],
    RemoteError,
)
