"""A migration request, parsed once at the edge: flags + typed parameters → MigrationRequest.

Every migration entry point (Begin, Prepare, Perform, Finish, Confirm; p2p, tunnelled, direct)
hands its ``flags`` and ``params`` to :func:`parse_request` first; the rest of the engine only
ever sees the frozen :class:`MigrationRequest`. Checks run in a fixed order, because the first
failing check is the error the caller sees (libvirt's order where libvirt has the check)::

    flags, params ──► 1 unknown flag bits            virCheckFlags
                      2 typed parameters             virTypedParamsValidate (sorted by name)
                      3 what pyvirt refuses          TLS, RDMA, postcopy-resume, mt, storage switch
                      4 --direct (source only)       pyvirt's own mode
                      5 tuning parameters            qemuMigrationParamsFromFlags
                      6 value ranges                 what QEMU 10 would refuse later
                      6b names and addresses         hostile input (docs/security.md):
                                                     dname, URIs, listen address
                      7 flag combinations            qemuMigrationSrcBeginPhase, PerformPeer2Peer
                                                     (the flag rules: pyvirt.migrate_flags)
                  ──► MigrationRequest

:meth:`MigrationRequest.to_params` turns a request back into typed parameters (the p2p source
forwards them to the destination: :meth:`~MigrationRequest.destination_params`).

Storage migration (NBD) can be switched off by ONE constant,
:data:`STORAGE_MIGRATION_SUPPORTED` (then refused with ArgumentUnsupported); its rules are
:data:`STORAGE_RULES`, the engine's side is in :mod:`storage`, :mod:`storage_src` and
:mod:`storage_dst`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pyvirt import migrate_flags as mf
from pyvirt.client.names import MIGRATE_PARAMS, MULTI_VALUED_PARAMS
from pyvirt.conf.domain_validate import validate_domain_name
from pyvirt.constants import UNLIMITED_BANDWIDTH_BYTES, MigrateFlags
from pyvirt.errors import (
    ArgumentUnsupportedError,
    ErrorCode,
    InvalidArgError,
    OperationInvalidError,
    OperationUnsupportedError,
    VirtError,
)
from pyvirt.migrate_flags import OPTION_OF, SOURCE_ONLY_FLAGS, FlagRule, Layer
from pyvirt.qemu.migration import uris
from pyvirt.qemu.migration.storage import parse_disks_uri
from pyvirt.rpc.remote_types import TypedParam, TypedParamType, TypedValue

#: THE switch for storage migration (--copy-storage-*, migrate_disks, disks_port, disks_uri).
#: False: refused with ArgumentUnsupported.
STORAGE_MIGRATION_SUPPORTED: Final = True

MIB: Final = 1024 * 1024
#: libvirt's QEMU_DOMAIN_MIG_BANDWIDTH_MAX (MiB/s); times MiB it is UNLIMITED_BANDWIDTH_BYTES
BANDWIDTH_MAX_MIB: Final = UNLIMITED_BANDWIDTH_BYTES // MIB
#: parameters libvirt scales by MiB through an unsigned long long (qemuMigrationParamsGetTPULL)
ULLONG_MAX_MIB: Final = ((1 << 64) - 1) // MIB
#: xbzrle-cache-size must be a power of two no smaller than the target page (x86: 4 KiB)
XBZRLE_MIN_CACHE: Final = 4096


class Side(enum.StrEnum):
    SOURCE = "source"
    DESTINATION = "destination"


#: the libvirt function whose flag check a caller sees (virCheckFlags names it)
_DEFAULT_API = {Side.SOURCE: "qemuDomainMigratePerform3Params",
                Side.DESTINATION: "qemuDomainMigratePrepare3Params"}

#: every flag's virsh option, for messages ("needed for --postcopy")
FLAG_OPTIONS: Mapping[MigrateFlags, str] = OPTION_OF


def flag_label(flag: MigrateFlags) -> str:
    """``VIR_MIGRATE_POSTCOPY (--postcopy)``."""
    return f"VIR_MIGRATE_{flag.name} ({FLAG_OPTIONS[flag]})"


# -- the parameter table: typed parameter → MigrationRequest attribute --------------------------
#: Types and multiplicity come from pyvirt.client.names (the one table of migration parameters).
#: A field missing here is refused (REFUSED_PARAMS); a test checks nothing falls through.
PARAM_ATTRS: Mapping[str, str] = {
    "migrate_uri": "migrate_uri",
    "destination_name": "destination_name",
    "destination_xml": "destination_xml",
    "persistent_xml": "persistent_xml",
    "bandwidth": "bandwidth_mib",
    "bandwidth.postcopy": "postcopy_bandwidth_mib",
    "bandwidth.avail.switchover": "avail_switchover_bandwidth_mib",
    "graphics_uri": "graphics_uri",
    "listen_address": "listen_address",
    "migrate_disks": "migrate_disks",
    "migrate_disks_detect_zeroes": "migrate_disks_detect_zeroes",
    "disks_port": "disks_port",
    "disks_uri": "disks_uri",
    "compression": "compression",
    "compression.xbzrle.cache": "xbzrle_cache_bytes",
    "compression.zlib.level": "zlib_level",
    "compression.zstd.level": "zstd_level",
    "auto_converge.initial": "auto_converge_initial",
    "auto_converge.increment": "auto_converge_increment",
    "parallel.connections": "parallel_connections",
}
PARAM_TYPES: Mapping[str, TypedParamType] = {
    field: TypedParamType[kind] for field, kind in MIGRATE_PARAMS.values()
}

_MT_REASON = ("QEMU 10 has no multi-thread compression (removed in QEMU 9.1); "
              "use --parallel with --comp-methods zlib or zstd")  # fmt: skip
#: parameters libvirt knows and pyvirt refuses, with the reason
REFUSED_PARAMS: Mapping[str, str] = {
    "compression.mt.level": _MT_REASON,
    "compression.mt.threads": _MT_REASON,
    "compression.mt.dthreads": _MT_REASON,
    "tls.destination": "TLS migration is not supported yet",
}
#: flags pyvirt refuses, with the reason
REFUSED_FLAGS: Mapping[MigrateFlags, str] = {
    MigrateFlags.TLS: "TLS migration is not supported yet",
    MigrateFlags.RDMA_PIN_ALL: "RDMA migration is not supported: pyvirt has no RDMA transport",
    MigrateFlags.POSTCOPY_RESUME: "resuming a failed post-copy migration is not supported yet",
}
STORAGE_FLAGS: Final = (MigrateFlags.NON_SHARED_DISK | MigrateFlags.NON_SHARED_INC
                        | MigrateFlags.NON_SHARED_SYNCHRONOUS_WRITES)  # fmt: skip
STORAGE_PARAMS: Final = frozenset(
    {"migrate_disks", "migrate_disks_detect_zeroes", "disks_port", "disks_uri"})
#: parameters only the source uses: a p2p source does not forward them to Prepare
SOURCE_ONLY_PARAMS: Final = frozenset({"persistent_xml", "auto_converge.initial",
                                       "auto_converge.increment", "bandwidth.avail.switchover"})

#: --direct: what needs a pyvirtd on the destination, and what it would have done there
_NBD = "export the destination disks over NBD"
DIRECT_REFUSED_FLAGS: Mapping[MigrateFlags, str] = {
    MigrateFlags.PERSIST_DEST: "define the domain on the destination",
    MigrateFlags.UNDEFINE_SOURCE: "confirm the guest runs there before undefining it here",
    MigrateFlags.PAUSED: "keep the guest paused on the destination",
    MigrateFlags.OFFLINE: "define the domain on the destination",
    MigrateFlags.POSTCOPY: "enable post-copy in the destination QEMU",
    MigrateFlags.PARALLEL: "enable multifd in the destination QEMU",
    MigrateFlags.NON_SHARED_DISK: _NBD,
    MigrateFlags.NON_SHARED_INC: _NBD,
    MigrateFlags.NON_SHARED_SYNCHRONOUS_WRITES: _NBD,
}
DIRECT_REFUSED_PARAMS: Mapping[str, str] = {
    "destination_name": "rename the domain on the destination",
    "destination_xml": "start the destination from a definition",
    "persistent_xml": "define the domain on the destination",
    "listen_address": "choose where the destination QEMU listens",
    **dict.fromkeys(STORAGE_PARAMS, _NBD),
}


# -- compression (qemuMigrationParamsSetCompression) ------------------------------------------
@dataclass(frozen=True)
class CompressionMethod:
    name: str
    parallel: bool  # True: multifd compression (needs --parallel); False: not with --parallel
    tuning: str  # the typed parameter that tunes it


COMPRESSION_METHODS: Mapping[str, CompressionMethod] = {
    m.name: m for m in (
        CompressionMethod("xbzrle", parallel=False, tuning="compression.xbzrle.cache"),
        CompressionMethod("zlib", parallel=True, tuning="compression.zlib.level"),
        CompressionMethod("zstd", parallel=True, tuning="compression.zstd.level"),
    )
}  # fmt: skip

#: integer parameters and the range QEMU 10 accepts for what they become (probed; see tests)
RANGES: Mapping[str, tuple[int, int]] = {
    "parallel.connections": (1, 255),
    "compression.zlib.level": (0, 9),
    "compression.zstd.level": (0, 20),
    "auto_converge.initial": (1, 99),
    "auto_converge.increment": (1, 99),
    "disks_port": (0, 65535),
}
#: MiB/s parameters: the largest value and libvirt's VIR_ERR_OVERFLOW wording
OVERFLOWS: Mapping[str, tuple[int, str]] = {
    "bandwidth": (BANDWIDTH_MAX_MIB, "bandwidth must be less than {}"),
    "bandwidth.postcopy": (ULLONG_MAX_MIB,
                           "migration parameter 'bandwidth.postcopy' must be less than {}"),
    "bandwidth.avail.switchover": (
        ULLONG_MAX_MIB, "migration parameter 'bandwidth.avail.switchover' must be less than {}"),
}  # fmt: skip


# -- the request ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MigrationRequest:
    """One migration's flags and parameters, checked. Sizes: MiB/s for bandwidths, bytes else.

    ``compression`` is the effective list of methods: ``--compressed`` without methods is
    ``("xbzrle",)`` (libvirt's default). ``direct`` is pyvirt's source-only mode (``--direct``):
    QEMU migrates straight to ``migrate_uri`` with no pyvirtd on the destination.
    """

    side: Side
    flags: MigrateFlags
    direct: bool = False
    migrate_uri: str | None = None
    destination_name: str | None = None
    destination_xml: str | None = None
    persistent_xml: str | None = None
    bandwidth_mib: int | None = None
    postcopy_bandwidth_mib: int | None = None
    avail_switchover_bandwidth_mib: int | None = None
    graphics_uri: str | None = None
    listen_address: str | None = None
    migrate_disks: tuple[str, ...] = ()
    migrate_disks_detect_zeroes: tuple[str, ...] = ()
    disks_port: int | None = None
    disks_uri: str | None = None
    compression: tuple[str, ...] = ()
    xbzrle_cache_bytes: int | None = None
    zlib_level: int | None = None
    zstd_level: int | None = None
    auto_converge_initial: int | None = None
    auto_converge_increment: int | None = None
    parallel_connections: int | None = None

    def has(self, flag: MigrateFlags) -> bool:
        return bool(self.flags & flag)

    @property
    def live(self) -> bool:
        return self.has(MigrateFlags.LIVE)

    @property
    def peer2peer(self) -> bool:
        return self.has(MigrateFlags.PEER2PEER)

    @property
    def tunnelled(self) -> bool:
        return self.has(MigrateFlags.TUNNELLED)

    @property
    def offline(self) -> bool:
        return self.has(MigrateFlags.OFFLINE)

    @property
    def postcopy(self) -> bool:
        return self.has(MigrateFlags.POSTCOPY)

    @property
    def parallel(self) -> bool:
        return self.has(MigrateFlags.PARALLEL)

    @property
    def zerocopy(self) -> bool:
        return self.has(MigrateFlags.ZEROCOPY)

    @property
    def paused(self) -> bool:
        return self.has(MigrateFlags.PAUSED)

    @property
    def persist_dest(self) -> bool:
        return self.has(MigrateFlags.PERSIST_DEST)

    @property
    def undefine_source(self) -> bool:
        return self.has(MigrateFlags.UNDEFINE_SOURCE)

    @property
    def abort_on_error(self) -> bool:
        return self.has(MigrateFlags.ABORT_ON_ERROR)

    @property
    def auto_converge(self) -> bool:
        return self.has(MigrateFlags.AUTO_CONVERGE)

    @property
    def storage_copy(self) -> bool:
        """Disks are copied (NBD + mirror): --copy-storage-all or --copy-storage-inc."""
        return self.has(mf.STORAGE_COPY)

    @property
    def storage_incremental(self) -> bool:
        """--copy-storage-inc: only the top image is copied (the backing chain is shared)."""
        return self.has(MigrateFlags.NON_SHARED_INC)

    @property
    def synchronous_writes(self) -> bool:
        """--copy-storage-synchronous-writes: the mirrors run in write-blocking mode."""
        return self.has(MigrateFlags.NON_SHARED_SYNCHRONOUS_WRITES)

    @property
    def multifd_compression(self) -> str | None:
        """zlib or zstd when parallel migration compresses, else None."""
        return next((m for m in self.compression if COMPRESSION_METHODS[m].parallel), None)

    @property
    def needs_locked_memory(self) -> bool:
        """--zerocopy: QEMU pins the guest's pages, so RLIMIT_MEMLOCK must cover guest RAM."""
        return self.zerocopy

    @property
    def destination_flags(self) -> MigrateFlags:
        """The flags a p2p source sends to Prepare/Finish (libvirt's destflags)."""
        return self.flags & ~SOURCE_ONLY_FLAGS

    def to_params(self) -> list[TypedParam]:
        """The typed parameters that parse back to this request (names-table order)."""
        out: list[TypedParam] = []
        for field, attr in PARAM_ATTRS.items():
            value = getattr(self, attr)
            values = value if isinstance(value, tuple) else () if value is None else (value,)
            out.extend(TypedParam(field, PARAM_TYPES[field], v) for v in values)
        return out

    def destination_params(self) -> list[TypedParam]:
        """What a p2p source forwards to the destination's Prepare (no source-only ones)."""
        return [p for p in self.to_params() if p.field not in SOURCE_ONLY_PARAMS]


# -- 1 and 2: flags and typed parameters --------------------------------------------------------
def _check_flags(flags: int, api: str) -> MigrateFlags:
    known = sum(MigrateFlags)
    unknown = flags & ~known & 0xFFFFFFFF_FFFFFFFF
    if unknown or flags < 0:
        raise InvalidArgError(f"unsupported flags (0x{unknown:x}) in function {api}")
    return MigrateFlags(flags)


_Values = dict[str, list[TypedValue]]


def _collect(params: Sequence[TypedParam]) -> _Values:
    """virTypedParamsValidate: known names, right types, repeats only where allowed.

    libvirt checks in name order (it sorts a copy), so the first error is the first by name;
    the sort is stable, so repeated parameters keep the caller's order.
    """
    values: _Values = {}
    for param in sorted(params, key=lambda p: p.field):
        expected = PARAM_TYPES.get(param.field)
        if expected is None:
            raise ArgumentUnsupportedError(f"parameter '{param.field}' not supported")
        if param.field in values and param.field not in MULTI_VALUED_PARAMS:
            raise InvalidArgError(f"parameter '{param.field}' occurs multiple times")
        if param.type != expected:
            raise InvalidArgError(
                f"invalid type '{_type_name(param.type)}' for parameter '{param.field}', "
                f"expected '{expected.name.lower()}'")
        if not _value_fits(param):
            raise InvalidArgError(f"parameter '{param.field}' has an invalid "
                                  f"{expected.name.lower()} value {param.value!r}")
        values.setdefault(param.field, []).append(param.value)
    return values


def _type_name(kind: object) -> str:
    return kind.name.lower() if isinstance(kind, TypedParamType) else "unknown"


_INT_LIMITS: Mapping[TypedParamType, tuple[int, int]] = {
    TypedParamType.INT: (-(1 << 31), (1 << 31) - 1),
    TypedParamType.ULLONG: (0, (1 << 64) - 1),
}


def _value_fits(param: TypedParam) -> bool:
    """What the wire guarantees, checked for in-process callers too."""
    if param.type is TypedParamType.STRING:
        return isinstance(param.value, str)
    low, high = _INT_LIMITS[param.type]
    value = param.value
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# -- 3: what pyvirt refuses ---------------------------------------------------------------------
def _refuse_unsupported(flags: MigrateFlags, values: _Values) -> None:
    for flag, reason in REFUSED_FLAGS.items():
        if flag in flags:
            raise ArgumentUnsupportedError(f"{reason} ({flag_label(flag)})")
    for field, reason in REFUSED_PARAMS.items():
        if field in values:
            raise ArgumentUnsupportedError(f"{reason} (parameter '{field}')")
    if "mt" in values.get("compression", []):
        raise ArgumentUnsupportedError(f"{_MT_REASON} (compression method 'mt')")
    if not STORAGE_MIGRATION_SUPPORTED:
        _refuse_storage(flags, values)


def _refuse_storage(flags: MigrateFlags, values: _Values) -> None:
    for flag in STORAGE_FLAGS:
        if flag in flags:
            raise ArgumentUnsupportedError(
                f"{flag_label(flag)}: storage migration is not supported yet")
    given = sorted(STORAGE_PARAMS & values.keys())
    if given:
        raise ArgumentUnsupportedError(
            f"parameter '{given[0]}': storage migration is not supported yet")


# -- 4: --direct ----------------------------------------------------------------------------
def _check_direct(side: Side, flags: MigrateFlags, values: _Values) -> None:
    if side is not Side.SOURCE:
        raise InvalidArgError("direct migration is a source-only mode")

    def refuse(what: str, purpose: str) -> ArgumentUnsupportedError:
        return ArgumentUnsupportedError(
            f"direct migration cannot honour {what}: with --direct no pyvirtd runs on the "
            f"destination to {purpose}")

    for flag, purpose in DIRECT_REFUSED_FLAGS.items():
        if flag in flags:
            raise refuse(flag_label(flag), purpose)
    for field, purpose in DIRECT_REFUSED_PARAMS.items():
        if field in values:
            raise refuse(f"parameter '{field}'", purpose)
    if "migrate_uri" not in values:
        raise InvalidArgError("direct migration needs a migration URI (parameter "
                              "'migrate_uri'): QEMU migrates straight to it")  # fmt: skip


# -- 5: tuning parameters (qemuMigrationParamsFromFlags) ----------------------------------------
def _check_tuning(side: Side, flags: MigrateFlags, values: _Values) -> tuple[str, ...]:
    """libvirt reads auto_converge.* on the source only, so only the source checks them."""
    if side is Side.SOURCE and MigrateFlags.AUTO_CONVERGE not in flags and (
            values.keys() & {"auto_converge.initial", "auto_converge.increment"}):
        raise InvalidArgError("Turn auto convergence on to tune it")
    if "parallel.connections" in values and MigrateFlags.PARALLEL not in flags:
        raise InvalidArgError("Turn parallel migration on to tune it")
    return _compression(flags, values)


def _compression(flags: MigrateFlags, values: _Values) -> tuple[str, ...]:
    parallel = MigrateFlags.PARALLEL in flags
    chosen: list[str] = []
    for name in (str(v) for v in values.get("compression", [])):
        method = COMPRESSION_METHODS.get(name)
        if method is None:
            raise InvalidArgError(f"Unsupported compression method '{name}'")
        if name in chosen:
            raise InvalidArgError(f"Compression method '{name}' is specified twice")
        if parallel and not method.parallel:
            raise InvalidArgError(
                f"Compression method '{name}' isn't supported with parallel migration")
        if method.parallel and not parallel:
            raise InvalidArgError(
                f"Compression method '{name}' is only supported with parallel migration")
        if method.parallel and any(COMPRESSION_METHODS[c].parallel for c in chosen):
            raise InvalidArgError(
                "Only one compression method could be specified with parallel compression")
        chosen.append(name)
    for method in COMPRESSION_METHODS.values():
        if method.tuning in values and method.name not in chosen:
            raise InvalidArgError(f"Turn {method.name} compression on to tune it")
    if not chosen and MigrateFlags.COMPRESSED in flags:
        if parallel:
            raise InvalidArgError("No compression algorithm selected for parallel migration")
        chosen.append("xbzrle")
    return tuple(chosen)


# -- 6: ranges ------------------------------------------------------------------------------
def _check_ranges(values: _Values) -> None:
    for field, (low, high) in RANGES.items():
        for value in values.get(field, []):
            if not low <= int(value) <= high:
                raise InvalidArgError(
                    f"parameter '{field}' must be between {low} and {high}, got {value}")
    for field, (high, wording) in OVERFLOWS.items():
        for value in values.get(field, []):
            if int(value) > high:
                raise VirtError(wording.format(high + 1), code=ErrorCode.OVERFLOW)
    for value in values.get("compression.xbzrle.cache", []):
        size = int(value)
        if size < XBZRLE_MIN_CACHE or size & (size - 1):
            raise InvalidArgError(
                f"parameter 'compression.xbzrle.cache' must be a power of two of at least "
                f"{XBZRLE_MIN_CACHE} bytes, got {size}")


# -- 6b: names and addresses (they reach the filesystem and QMP) -----------------------------
#: parameter → its check; each refuses with the reason (see uris.py for the URI allow-list)
ADDRESS_CHECKS: Mapping[str, Callable[[str], object]] = {
    "destination_name": validate_domain_name,
    "migrate_uri": uris.parse_migration_uri,
    "disks_uri": parse_disks_uri,
    "graphics_uri": uris.check_graphics_uri,
    "listen_address": uris.check_listen_address,
}


def _check_addresses(values: _Values) -> None:
    for field, check in ADDRESS_CHECKS.items():
        for value in values.get(field, []):
            check(str(value))


# -- 7: flag combinations -----------------------------------------------------------------------
_F = MigrateFlags


@dataclass(frozen=True)
class _Check:
    """One check of step 7: when ``applies``, ``error`` is raised."""

    applies: Callable[[MigrateFlags, _Values, tuple[str, ...]], bool]
    error: Callable[[], VirtError]
    #: the shared flag rule it applies (pyvirt.migrate_flags), None for a rule on parameters
    rule: FlagRule | None = None


def _shared(rule: FlagRule, error: Callable[[str], VirtError]) -> _Check:
    """A rule of pyvirt.migrate_flags, in this driver's words, raised as ``error``."""
    return _Check(lambda f, v, c: rule.broken(f), lambda: error(rule.message_for(Layer.DRIVER)),
                  rule)


#: in the order libvirt checks them; the first match is reported
FLAG_RULES: tuple[_Check, ...] = (
    _shared(mf.TUNNELLED_NEEDS_P2P, InvalidArgError),  # virDomainMigrate3's code
    _shared(mf.TUNNELLED_PARALLEL_EXCLUSIVE, InvalidArgError),
    _Check(lambda f, v, c: _F.TUNNELLED in f and "migrate_uri" in v,
           lambda: ArgumentUnsupportedError(
               "migration URI is not supported by tunnelled migration")),
    _Check(lambda f, v, c: _F.TUNNELLED in f and "listen_address" in v,
           lambda: ArgumentUnsupportedError(
               "listen address is not supported by tunnelled migration")),
    _shared(mf.LIVE_OFFLINE_EXCLUSIVE, OperationInvalidError),  # pyvirt's (virsh's too)
    _shared(mf.POSTCOPY_NEEDS_LIVE, ArgumentUnsupportedError),
    _shared(mf.POSTCOPY_NOT_TUNNELLED, ArgumentUnsupportedError),
    _shared(mf.OFFLINE_NO_STORAGE_COPY, OperationInvalidError),
    _shared(mf.OFFLINE_NEEDS_PERSIST, OperationInvalidError),
    _shared(mf.OFFLINE_NOT_TUNNELLED, OperationInvalidError),
    _shared(mf.ZEROCOPY_NEEDS_PARALLEL, OperationInvalidError),
    _Check(lambda f, v, c: _F.ZEROCOPY in f and bool(c),  # pyvirt's: QEMU refuses it
           lambda: ArgumentUnsupportedError(
               "zero-copy is not supported with compressed parallel migration")),
)  # fmt: skip

#: storage rules, live once STORAGE_MIGRATION_SUPPORTED is True
STORAGE_RULES: tuple[_Check, ...] = (
    _shared(mf.DISK_INC_EXCLUSIVE, InvalidArgError),
    _shared(mf.SYNC_WRITES_NEED_STORAGE_COPY, InvalidArgError),
    _shared(mf.STORAGE_COPY_NOT_TUNNELLED, OperationUnsupportedError),
    _Check(lambda f, v, c: _F.TUNNELLED in f and "disks_port" in v,
           lambda: ArgumentUnsupportedError(
               "disk port address is not supported by tunnelled migration")),
    _Check(lambda f, v, c: "migrate_disks" in v and not f & mf.STORAGE_COPY,
           lambda: OperationUnsupportedError(
               "use of 'VIR_MIGRATE_PARAM_MIGRATE_DISKS' requires use of "
               "'VIR_MIGRATE_NON_SHARED_DISK' or 'VIR_MIGRATE_NON_SHARED_INC' flag")),
    _Check(lambda f, v, c: "disks_port" in v and "disks_uri" in v,
           lambda: InvalidArgError("Both port and URI requested for disk migration while "
                                   "being mutually exclusive")),
    _Check(lambda f, v, c: "migrate_disks_detect_zeroes" in v and not f & mf.STORAGE_COPY,
           lambda: OperationUnsupportedError(
               "use of 'VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES' requires use of "
               "'VIR_MIGRATE_NON_SHARED_DISK' or 'VIR_MIGRATE_NON_SHARED_INC' flag")),
    _shared(mf.POSTCOPY_NO_STORAGE_COPY, ArgumentUnsupportedError),
)  # fmt: skip


def _check_flag_rules(flags: MigrateFlags, values: _Values, multifd: tuple[str, ...]) -> None:
    rules = FLAG_RULES + (STORAGE_RULES if STORAGE_MIGRATION_SUPPORTED else ())
    for check in rules:
        if check.applies(flags, values, multifd):
            raise check.error()


# -- the entry point ------------------------------------------------------------------------
def parse_request(
    flags: int,
    params: Sequence[TypedParam],
    *,
    side: Side | str,
    direct: bool = False,
    api: str | None = None,
) -> MigrationRequest:
    """Check ``flags`` and ``params`` for ``side`` and return the request, or raise VirtError.

    ``direct``: the caller used the unmanaged API without PEER2PEER (``virsh --direct``).
    ``api``: the function name libvirt would report unknown flag bits from.
    """
    where = Side(side)
    checked = _check_flags(flags, api or _DEFAULT_API[where])
    values = _collect(params)
    _refuse_unsupported(checked, values)
    if direct:
        _check_direct(where, checked, values)
    compression = _check_tuning(where, checked, values)
    _check_ranges(values)
    _check_addresses(values)
    multifd = tuple(m for m in compression if COMPRESSION_METHODS[m].parallel)
    _check_flag_rules(checked, values, multifd)
    return _build(where, checked, direct, values, compression)


def _build(side: Side, flags: MigrateFlags, direct: bool, values: _Values,
           compression: tuple[str, ...]) -> MigrationRequest:
    fields: dict[str, Any] = {}
    for field, found in values.items():
        attr = PARAM_ATTRS[field]
        fields[attr] = tuple(found) if field in MULTI_VALUED_PARAMS else found[0]
    fields["compression"] = compression
    return MigrationRequest(side=side, flags=flags, direct=direct, **fields)
