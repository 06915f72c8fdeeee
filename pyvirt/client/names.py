"""libvirt-python's flat names (``VIR_DOMAIN_RUNNING``, ``VIR_ERR_NO_DOMAIN``, ...), generated.

The numbers live once, in the enums of :mod:`pyvirt.constants` and :mod:`pyvirt.errors`
(plus the few client-only enums below); this module only says which prefix each enum
gets, so a value can never be copied wrong.  Import-light on purpose: ``import pyvirt``
runs it, and ``pyvirsh`` must reach its first RPC within 100 ms of starting.
"""

from __future__ import annotations

import enum

from pyvirt import constants as c
from pyvirt.constants import AbortJobFlags as AbortJobFlags  # re-exported: see below
from pyvirt.constants import ConnectFlags as ConnectFlags
from pyvirt.constants import DriverFeature as DriverFeature
from pyvirt.constants import EventID as EventID
from pyvirt.constants import JobStatsFlags as JobStatsFlags
from pyvirt.constants import MigrateMaxSpeedFlags as MigrateMaxSpeedFlags
from pyvirt.errors import ErrorCode, ErrorDomain, ErrorLevel


# -- client-only enums (libvirt's values) ----------------------------------------------------
# EventID, DriverFeature, ConnectFlags, JobStatsFlags, MigrateMaxSpeedFlags and AbortJobFlags
# live in pyvirt.constants (the daemon and virsh use them too) and are re-exported above,
# so ``pyvirt.client.names.DriverFeature`` and friends keep working.
class CloseReason(enum.IntEnum):
    """virConnectCloseReason: why a close callback fired."""

    ERROR = 0
    EOF = 1
    KEEPALIVE = 2
    CLIENT = 3


class ShutdownFlags(enum.IntFlag):
    """virDomainShutdownFlagValues; virDomainRebootFlagValues has the same values."""

    DEFAULT = 0
    ACPI_POWER_BTN = 1
    GUEST_AGENT = 2
    INITCTL = 4
    SIGNAL = 8
    PARAVIRT = 16


#: VIR_MIGRATE_PARAM_<key> → (typed-parameter field, virTypedParameterType name).
#: The one table of migration parameters: pyvirt.client.params derives its type table
#: from it, and ``pyvirt`` exports each key as a VIR_MIGRATE_PARAM_* string constant.
MIGRATE_PARAMS: dict[str, tuple[str, str]] = {
    "URI": ("migrate_uri", "STRING"),
    "DEST_NAME": ("destination_name", "STRING"),
    "DEST_XML": ("destination_xml", "STRING"),
    "PERSIST_XML": ("persistent_xml", "STRING"),
    "BANDWIDTH": ("bandwidth", "ULLONG"),
    "BANDWIDTH_POSTCOPY": ("bandwidth.postcopy", "ULLONG"),
    "BANDWIDTH_AVAIL_SWITCHOVER": ("bandwidth.avail.switchover", "ULLONG"),
    "GRAPHICS_URI": ("graphics_uri", "STRING"),
    "LISTEN_ADDRESS": ("listen_address", "STRING"),
    "MIGRATE_DISKS": ("migrate_disks", "STRING"),
    "MIGRATE_DISKS_DETECT_ZEROES": ("migrate_disks_detect_zeroes", "STRING"),
    "DISKS_PORT": ("disks_port", "INT"),
    "DISKS_URI": ("disks_uri", "STRING"),
    "COMPRESSION": ("compression", "STRING"),
    "COMPRESSION_MT_LEVEL": ("compression.mt.level", "INT"),
    "COMPRESSION_MT_THREADS": ("compression.mt.threads", "INT"),
    "COMPRESSION_MT_DTHREADS": ("compression.mt.dthreads", "INT"),
    "COMPRESSION_XBZRLE_CACHE": ("compression.xbzrle.cache", "ULLONG"),
    "COMPRESSION_ZLIB_LEVEL": ("compression.zlib.level", "INT"),
    "COMPRESSION_ZSTD_LEVEL": ("compression.zstd.level", "INT"),
    "AUTO_CONVERGE_INITIAL": ("auto_converge.initial", "INT"),
    "AUTO_CONVERGE_INCREMENT": ("auto_converge.increment", "INT"),
    "PARALLEL_CONNECTIONS": ("parallel.connections", "INT"),
    "TLS_DESTINATION": ("tls.destination", "STRING"),
}

#: parameters libvirt lets a caller give more than once (a list value in Python)
MULTI_VALUED_PARAMS = frozenset({"migrate_disks", "compression"})

# -- flat names ------------------------------------------------------------------------------
_FLAT: tuple[tuple[str, type[enum.Enum]], ...] = (
    ("VIR_DOMAIN_", c.DomainState),
    ("VIR_DOMAIN_RUNNING_", c.RunningReason),
    ("VIR_DOMAIN_PAUSED_", c.PausedReason),
    ("VIR_DOMAIN_SHUTDOWN_", c.ShutdownReason),
    ("VIR_DOMAIN_SHUTOFF_", c.ShutoffReason),
    ("VIR_DOMAIN_CRASHED_", c.CrashedReason),
    ("VIR_DOMAIN_EVENT_", c.LifecycleEvent),
    ("VIR_DOMAIN_EVENT_DEFINED_", c.EventDefinedDetail),
    ("VIR_DOMAIN_EVENT_UNDEFINED_", c.EventUndefinedDetail),
    ("VIR_DOMAIN_EVENT_STARTED_", c.EventStartedDetail),
    ("VIR_DOMAIN_EVENT_SUSPENDED_", c.EventSuspendedDetail),
    ("VIR_DOMAIN_EVENT_RESUMED_", c.EventResumedDetail),
    ("VIR_DOMAIN_EVENT_STOPPED_", c.EventStoppedDetail),
    ("VIR_DOMAIN_EVENT_SHUTDOWN_", c.EventShutdownDetail),
    ("VIR_DOMAIN_EVENT_CRASHED_", c.EventCrashedDetail),
    ("VIR_DOMAIN_EVENT_ID_", EventID),
    ("VIR_CONNECT_LIST_DOMAINS_", c.ListFlags),
    ("VIR_DOMAIN_XML_", c.XMLFlags),
    ("VIR_DOMAIN_UNDEFINE_", c.UndefineFlags),
    ("VIR_DOMAIN_DESTROY_", c.DestroyFlags),
    ("VIR_DOMAIN_", c.CreateFlags),  # VIR_DOMAIN_NONE, VIR_DOMAIN_START_PAUSED, ...
    ("VIR_DOMAIN_DEFINE_", c.DefineFlags),
    ("VIR_DOMAIN_SHUTDOWN_", ShutdownFlags),
    ("VIR_DOMAIN_REBOOT_", ShutdownFlags),
    ("VIR_DOMAIN_JOB_", c.JobType),
    ("VIR_DOMAIN_JOB_OPERATION_", c.JobOperation),
    ("VIR_DOMAIN_JOB_STATS_", JobStatsFlags),
    ("VIR_DOMAIN_MIGRATE_MAX_SPEED_", MigrateMaxSpeedFlags),
    ("VIR_DOMAIN_ABORT_JOB_", AbortJobFlags),
    ("VIR_MIGRATE_", c.MigrateFlags),
    ("VIR_CONNECT_", ConnectFlags),
    ("VIR_CONNECT_CLOSE_REASON_", CloseReason),
    ("VIR_ERR_", ErrorCode),
    ("VIR_ERR_", ErrorLevel),  # VIR_ERR_NONE, VIR_ERR_WARNING, VIR_ERR_ERROR
    ("VIR_FROM_", ErrorDomain),
)


def flat_constants() -> dict[str, int | str]:
    """Every flat name → value; a name generated twice with two values is a bug."""
    names: dict[str, int | str] = {}

    def put(name: str, value: int | str) -> None:
        if names.setdefault(name, value) != value:
            raise RuntimeError(f"{name} generated with two values: {names[name]} and {value}")

    for prefix, kind in _FLAT:
        # __members__ rather than iteration: Flag iteration skips 0 and multi-bit members
        for member_name, member in kind.__members__.items():
            put(prefix + member_name, int(member.value))
    for key, (field, _) in MIGRATE_PARAMS.items():
        put(f"VIR_MIGRATE_PARAM_{key}", field)
    return names
