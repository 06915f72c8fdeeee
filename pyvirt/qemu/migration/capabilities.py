"""A migration request → the QEMU migration capabilities and parameters each side sets.

Two tables, each row tagged with the party that applies it (libvirt's idea in
qemu_migration_params.c: flag → capability maps tagged source/destination)::

    MigrationRequest ──plan(side)──► QemuMigrationSetup
                                       .capabilities  → migrate-set-capabilities
                                       .parameters    → migrate-set-parameters

    row: capability  party        when                      needed for
         events      BOTH         always                    migration events
         postcopy-ram BOTH        VIR_MIGRATE_POSTCOPY      --postcopy
         ...

:func:`plan` is pure and raises :class:`ArgumentUnsupportedError` *before anything moves*
when the running QEMU lacks something the request needs. ``capabilities`` names every
capability the tables manage (and QEMU has): ``True`` to enable, ``False`` to clear what an
earlier migration left on. ``downtime-limit`` is not here: migrate-setmaxdowntime sets it.

What the tables do not map is listed with a reason (:data:`FLAGS_HANDLED_ELSEWHERE`,
:data:`PARAMS_HANDLED_ELSEWHERE`) or refused by :mod:`params`; a test checks that every
libvirt flag and parameter is in exactly one of those places.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyvirt.constants import UNLIMITED_BANDWIDTH_BYTES, MigrateFlags
from pyvirt.errors import ArgumentUnsupportedError
from pyvirt.qemu.migration.params import (
    MIB,
    STORAGE_PARAMS,
    MigrationRequest,
    Side,
)


class Party(enum.Flag):
    SOURCE = enum.auto()
    DESTINATION = enum.auto()
    BOTH = SOURCE | DESTINATION


_PARTY_OF = {Side.SOURCE: Party.SOURCE, Side.DESTINATION: Party.DESTINATION}


# -- triggers: when a capability row applies (data, so the coverage test can read them) ------
@dataclass(frozen=True)
class Always:
    flags = MigrateFlags(0)

    def __call__(self, request: MigrationRequest) -> bool:
        return True


@dataclass(frozen=True)
class OnFlag:
    """The flag is set (``negate``: the flag is NOT set)."""

    flag: MigrateFlags
    negate: bool = False

    @property
    def flags(self) -> MigrateFlags:
        return self.flag

    def __call__(self, request: MigrationRequest) -> bool:
        return request.has(self.flag) != self.negate


@dataclass(frozen=True)
class OnCompression:
    """The request compresses with ``method`` (``--compressed`` alone means xbzrle)."""

    method: str
    flags = MigrateFlags.COMPRESSED

    def __call__(self, request: MigrationRequest) -> bool:
        return self.method in request.compression


@dataclass(frozen=True)
class OnStorageCopy:
    """Disks are copied over NBD (--copy-storage-all / --copy-storage-inc)."""

    flags = MigrateFlags.NON_SHARED_DISK | MigrateFlags.NON_SHARED_INC

    def __call__(self, request: MigrationRequest) -> bool:
        return request.storage_copy


Trigger = Always | OnFlag | OnCompression | OnStorageCopy


@dataclass(frozen=True)
class CapabilityRule:
    capability: str
    party: Party
    when: Trigger
    #: what the user asked for that needs it ("--postcopy"), for the error message
    needed_for: str
    #: False: libvirt's "always on when QEMU supports it" (silently skipped otherwise)
    required: bool = True


@dataclass(frozen=True)
class ParameterRule:
    parameter: str
    party: Party
    #: the typed parameter feeding it ("bandwidth"), None when derived from flags only
    typed_param: str | None
    #: the QEMU value from the request, or None
    value: Callable[[MigrationRequest, PlanContext], int | str | None]
    needed_for: str
    #: when the feature is on but the request gives no value, set ``default`` (QEMU's own
    #: default) so nothing an earlier attempt left in this QEMU leaks into this migration
    when: Trigger | None = None
    default: int | str | None = None


@dataclass(frozen=True)
class PlanContext:
    side: Side
    #: the domain's migrate-setspeed value (MiB/s); None: libvirt's default, unlimited
    max_speed_mib: int | None = None


_M = MigrateFlags

#: migrate-set-capabilities, in the order QEMU lists them
CAPABILITY_RULES: tuple[CapabilityRule, ...] = (
    CapabilityRule("xbzrle", Party.BOTH, OnCompression("xbzrle"), "--comp-methods xbzrle"),
    CapabilityRule("auto-converge", Party.SOURCE, OnFlag(_M.AUTO_CONVERGE), "--auto-converge"),
    # libvirt enables it at QEMU start; pyvirt's engine is event driven, so it is required
    CapabilityRule("events", Party.BOTH, Always(), "migration events"),
    CapabilityRule("postcopy-ram", Party.BOTH, OnFlag(_M.POSTCOPY), "--postcopy"),
    # libvirt: on unless tunnelled, both sides; QEMU's return path carries postcopy requests
    CapabilityRule("return-path", Party.BOTH, OnFlag(_M.TUNNELLED, negate=True),
                   "non-tunnelled migration"),
    # libvirt turns this on always; pyvirt only with NBD storage, whose mirrors must be
    # completed at pre-switchover before the engine sends migrate-continue
    CapabilityRule("pause-before-switchover", Party.SOURCE, OnStorageCopy(), "storage migration"),
    CapabilityRule("multifd", Party.BOTH, OnFlag(_M.PARALLEL), "--parallel"),
    # libvirt's always-on destination capability: disks activate at 'cont', not at the end
    # of the incoming stream, so a paused or failed arrival never holds the images
    CapabilityRule("late-block-activate", Party.DESTINATION, Always(), "late block activation",
                   required=False),
    CapabilityRule("zero-copy-send", Party.SOURCE, OnFlag(_M.ZEROCOPY), "--zerocopy"),
)  # fmt: skip


def _mib(value: int | None) -> int | None:
    return None if value is None else value * MIB


def _max_bandwidth(request: MigrationRequest, ctx: PlanContext) -> int:
    """libvirt: --bandwidth if non-zero, else the domain's speed, else unlimited."""
    if request.bandwidth_mib:
        return request.bandwidth_mib * MIB
    if ctx.max_speed_mib:
        return ctx.max_speed_mib * MIB
    return UNLIMITED_BANDWIDTH_BYTES


#: migrate-set-parameters (values in QEMU's units: bytes, bytes/s, percent, levels);
#: defaults are QEMU 10's own (reference/migration.md section 0)
PARAMETER_RULES: tuple[ParameterRule, ...] = (
    ParameterRule("max-bandwidth", Party.SOURCE, "bandwidth", _max_bandwidth,
                  "the migration bandwidth"),
    ParameterRule("max-postcopy-bandwidth", Party.BOTH, "bandwidth.postcopy",
                  lambda r, c: _mib(r.postcopy_bandwidth_mib), "--postcopy-bandwidth",
                  OnFlag(_M.POSTCOPY), 0),
    ParameterRule("avail-switchover-bandwidth", Party.SOURCE, "bandwidth.avail.switchover",
                  lambda r, c: _mib(r.avail_switchover_bandwidth_mib),
                  "--available-switchover-bandwidth"),
    ParameterRule("xbzrle-cache-size", Party.BOTH, "compression.xbzrle.cache",
                  lambda r, c: r.xbzrle_cache_bytes, "--comp-xbzrle-cache",
                  OnCompression("xbzrle"), 64 * MIB),
    ParameterRule("cpu-throttle-initial", Party.SOURCE, "auto_converge.initial",
                  lambda r, c: r.auto_converge_initial, "--auto-converge-initial",
                  OnFlag(_M.AUTO_CONVERGE), 20),
    ParameterRule("cpu-throttle-increment", Party.SOURCE, "auto_converge.increment",
                  lambda r, c: r.auto_converge_increment, "--auto-converge-increment",
                  OnFlag(_M.AUTO_CONVERGE), 10),
    # both ends must agree on channels and compression: always explicit with --parallel
    ParameterRule("multifd-channels", Party.BOTH, "parallel.connections",
                  lambda r, c: r.parallel_connections, "--parallel-connections",
                  OnFlag(_M.PARALLEL), 2),
    ParameterRule("multifd-compression", Party.BOTH, "compression",
                  lambda r, c: r.multifd_compression, "--parallel", OnFlag(_M.PARALLEL), "none"),
    ParameterRule("multifd-zlib-level", Party.BOTH, "compression.zlib.level",
                  lambda r, c: r.zlib_level, "--comp-zlib-level", OnCompression("zlib"), 1),
    ParameterRule("multifd-zstd-level", Party.BOTH, "compression.zstd.level",
                  lambda r, c: r.zstd_level, "--comp-zstd-level", OnCompression("zstd"), 1),
)  # fmt: skip

#: capability pairs QEMU 10.0 refuses together (probed; a qemu test re-checks it)
CAPABILITY_CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("postcopy-ram", "multifd",
     "--postcopy with --parallel: QEMU 10.0 cannot combine post-copy with multifd"),
)

#: flags that map to no capability or parameter, and who handles them
FLAGS_HANDLED_ELSEWHERE: Mapping[MigrateFlags, str] = {
    _M.LIVE: "engine: the guest keeps running during the copy (non-live pauses it first)",
    _M.PEER2PEER: "orchestration: the source daemon drives Prepare/Finish on the peer",
    _M.PERSIST_DEST: "Finish: the domain is defined on the destination",
    _M.UNDEFINE_SOURCE: "Confirm: the source definition is removed",
    _M.PAUSED: "Finish: the destination guest is left paused",
    _M.CHANGE_PROTECTION: "Begin: the migration job is held from Begin to Confirm",
    _M.UNSAFE: "Begin: skip the disk cache safety check",
    _M.OFFLINE: "orchestration: only the definition moves; QEMU is not involved",
    _M.ABORT_ON_ERROR: "engine: cancel on a guest I/O error during the copy",
    _M.NON_SHARED_SYNCHRONOUS_WRITES: "storage: blockdev-mirror copy-mode=write-blocking",
}
#: typed parameters that map to no QEMU migration parameter, and who handles them
PARAMS_HANDLED_ELSEWHERE: Mapping[str, str] = {
    "migrate_uri": "engine: the URI of QMP migrate / migrate-incoming",
    "destination_name": "Prepare: the domain's name on the destination",
    "destination_xml": "Begin/Prepare: the definition the destination starts",
    "persistent_xml": "Finish: the persistent definition on the destination",
    "graphics_uri": "Perform: client_migrate_info for SPICE clients",
    "listen_address": "Prepare: where the destination QEMU listens",
    **dict.fromkeys(STORAGE_PARAMS, "storage: NBD export and blockdev-mirror"),
}


@dataclass(frozen=True)
class QemuMigrationSetup:
    """What one side sends to its QEMU before migrating; send :meth:`qmp_commands`."""

    capabilities: dict[str, bool] = field(default_factory=dict)
    parameters: dict[str, int | str] = field(default_factory=dict)

    def capabilities_arg(self, *, cleared: bool = False) -> list[dict[str, str | bool]]:
        """The ``capabilities`` argument of QMP migrate-set-capabilities."""
        return [{"capability": name, "state": state and not cleared}
                for name, state in self.capabilities.items()]  # fmt: skip

    def qmp_commands(self) -> list[tuple[str, dict[str, object]]]:
        """The QMP commands, in an order QEMU accepts whatever an earlier attempt left set.

        QEMU checks new capabilities against the current parameters and the other way round
        (zero-copy-send vs multifd-compression), so: clear, set parameters, set capabilities.
        """
        commands: list[tuple[str, dict[str, object]]] = []
        if self.capabilities:
            commands.append(("migrate-set-capabilities",
                             {"capabilities": self.capabilities_arg(cleared=True)}))
        if self.parameters:
            commands.append(("migrate-set-parameters", dict(self.parameters)))
        if any(self.capabilities.values()):
            commands.append(("migrate-set-capabilities",
                             {"capabilities": self.capabilities_arg()}))
        return commands


def plan(
    request: MigrationRequest,
    side: Side | str,
    qemu_caps: set[str] | frozenset[str],
    qemu_params: set[str] | frozenset[str],
    *,
    max_speed_mib: int | None = None,
) -> QemuMigrationSetup:
    """The capabilities and parameters ``side`` sets, or ArgumentUnsupportedError.

    ``qemu_caps``/``qemu_params``: what the running QEMU lists in query-migrate-capabilities
    and query-migrate-parameters.
    """
    ctx = PlanContext(Side(side), max_speed_mib)
    party = _PARTY_OF[ctx.side]
    capabilities = _capabilities(request, party, qemu_caps)
    _check_conflicts(capabilities)
    return QemuMigrationSetup(capabilities, _parameters(request, ctx, party, qemu_params))


def _capabilities(request: MigrationRequest, party: Party,
                  qemu_caps: set[str] | frozenset[str]) -> dict[str, bool]:
    states: dict[str, bool] = {}
    for rule in CAPABILITY_RULES:
        wanted = bool(rule.party & party) and rule.when(request)
        if rule.capability not in qemu_caps:
            if wanted and rule.required:
                raise ArgumentUnsupportedError(
                    f"this QEMU does not support migration capability '{rule.capability}' "
                    f"needed for {rule.needed_for}")
            continue
        states[rule.capability] = wanted
    return states


def _check_conflicts(capabilities: Mapping[str, bool]) -> None:
    for first, second, reason in CAPABILITY_CONFLICTS:
        if capabilities.get(first) and capabilities.get(second):
            raise ArgumentUnsupportedError(f"{reason} ('{first}' and '{second}')")


def _parameters(request: MigrationRequest, ctx: PlanContext, party: Party,
                qemu_params: set[str] | frozenset[str]) -> dict[str, int | str]:
    values: dict[str, int | str] = {}
    for rule in PARAMETER_RULES:
        if not rule.party & party:
            continue
        value = rule.value(request, ctx)
        if value is None and rule.when is not None and rule.when(request):
            value = rule.default
        if value is None:
            continue
        if rule.parameter not in qemu_params:
            raise ArgumentUnsupportedError(
                f"this QEMU does not support migration parameter '{rule.parameter}' "
                f"needed for {rule.needed_for}")
        values[rule.parameter] = value
    return values


def managed_capabilities() -> frozenset[str]:
    """Every capability name :func:`plan` may emit."""
    return frozenset(rule.capability for rule in CAPABILITY_RULES)


def managed_parameters() -> frozenset[str]:
    """Every parameter name :func:`plan` may emit."""
    return frozenset(rule.parameter for rule in PARAMETER_RULES)


def mapped_flags() -> MigrateFlags:
    """Flags some capability row reads."""
    flags = MigrateFlags(0)
    for rule in CAPABILITY_RULES:
        flags |= rule.when.flags
    return flags


def mapped_params() -> frozenset[str]:
    """Typed parameters some parameter row reads (compression also drives xbzrle)."""
    return frozenset(r.typed_param for r in PARAMETER_RULES if r.typed_param is not None)

