"""Flags and enums with libvirt's numeric values (include/libvirt/libvirt-domain.h).

Names drop the ``VIR_DOMAIN_`` prefix and live in IntEnum/IntFlag classes; the client
library re-exports them under libvirt-python's flat names.
"""

from __future__ import annotations

import enum


class DomainState(enum.IntEnum):
    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


#: virsh's words for each state (tools/virsh-domain-monitor.c)
STATE_NAMES: dict[DomainState, str] = {
    DomainState.NOSTATE: "no state",
    DomainState.RUNNING: "running",
    DomainState.BLOCKED: "idle",
    DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "in shutdown",
    DomainState.SHUTOFF: "shut off",
    DomainState.CRASHED: "crashed",
    DomainState.PMSUSPENDED: "pmsuspended",
}


class RunningReason(enum.IntEnum):
    UNKNOWN = 0
    BOOTED = 1
    MIGRATED = 2
    RESTORED = 3
    FROM_SNAPSHOT = 4
    UNPAUSED = 5
    MIGRATION_CANCELED = 6
    SAVE_CANCELED = 7
    WAKEUP = 8
    CRASHED = 9
    POSTCOPY = 10
    POSTCOPY_FAILED = 11


class PausedReason(enum.IntEnum):
    UNKNOWN = 0
    USER = 1
    MIGRATION = 2
    SAVE = 3
    DUMP = 4
    IOERROR = 5
    WATCHDOG = 6
    FROM_SNAPSHOT = 7
    SHUTTING_DOWN = 8
    SNAPSHOT = 9
    CRASHED = 10
    STARTING_UP = 11
    POSTCOPY = 12
    POSTCOPY_FAILED = 13
    API_ERROR = 14


class ShutdownReason(enum.IntEnum):
    UNKNOWN = 0
    USER = 1


class ShutoffReason(enum.IntEnum):
    UNKNOWN = 0
    SHUTDOWN = 1
    DESTROYED = 2
    CRASHED = 3
    MIGRATED = 4
    SAVED = 5
    FAILED = 6
    FROM_SNAPSHOT = 7
    DAEMON = 8


class CrashedReason(enum.IntEnum):
    UNKNOWN = 0
    PANICKED = 1


#: virsh's words for reasons, per state (domstate --reason)
REASON_NAMES: dict[DomainState, dict[int, str]] = {
    DomainState.NOSTATE: {0: "unknown"},
    DomainState.RUNNING: {
        0: "unknown", 1: "booted", 2: "migrated", 3: "restored", 4: "from snapshot",
        5: "unpaused", 6: "migration canceled", 7: "save canceled", 8: "event wakeup",
        9: "crashed", 10: "post-copy", 11: "post-copy failed",
    },
    DomainState.BLOCKED: {0: "unknown"},
    DomainState.PAUSED: {
        0: "unknown", 1: "user", 2: "migrating", 3: "saving", 4: "dumping", 5: "I/O error",
        6: "watchdog", 7: "from snapshot", 8: "shutting down", 9: "creating snapshot",
        10: "crashed", 11: "starting up", 12: "post-copy", 13: "post-copy failed",
        14: "api error",
    },
    DomainState.SHUTDOWN: {0: "unknown", 1: "user"},
    DomainState.SHUTOFF: {
        0: "unknown", 1: "shutdown", 2: "destroyed", 3: "crashed", 4: "migrated",
        5: "saved", 6: "failed", 7: "from snapshot", 8: "daemon",
    },
    DomainState.CRASHED: {0: "unknown", 1: "panicked"},
    DomainState.PMSUSPENDED: {0: "unknown"},
}


class LifecycleEvent(enum.IntEnum):
    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class EventDefinedDetail(enum.IntEnum):
    ADDED = 0
    UPDATED = 1
    RENAMED = 2
    FROM_SNAPSHOT = 3


class EventUndefinedDetail(enum.IntEnum):
    REMOVED = 0
    RENAMED = 1


class EventStartedDetail(enum.IntEnum):
    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4


class EventSuspendedDetail(enum.IntEnum):
    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6
    POSTCOPY = 7
    POSTCOPY_FAILED = 8


class EventResumedDetail(enum.IntEnum):
    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2
    POSTCOPY = 3
    POSTCOPY_FAILED = 4


class EventStoppedDetail(enum.IntEnum):
    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6


class EventShutdownDetail(enum.IntEnum):
    FINISHED = 0
    GUEST = 1
    HOST = 2


class EventCrashedDetail(enum.IntEnum):
    PANICKED = 0
    CRASHLOADED = 1


class ListFlags(enum.IntFlag):
    """virConnectListAllDomainsFlags."""

    ACTIVE = 1
    INACTIVE = 2
    PERSISTENT = 4
    TRANSIENT = 8
    RUNNING = 16
    PAUSED = 32
    SHUTOFF = 64
    OTHER = 128
    MANAGEDSAVE = 256
    NO_MANAGEDSAVE = 512
    AUTOSTART = 1024
    NO_AUTOSTART = 2048
    HAS_SNAPSHOT = 4096
    NO_SNAPSHOT = 8192
    HAS_CHECKPOINT = 16384
    NO_CHECKPOINT = 32768


class XMLFlags(enum.IntFlag):
    """virDomainXMLFlags."""

    SECURE = 1
    INACTIVE = 2
    UPDATE_CPU = 4
    MIGRATABLE = 8


class UndefineFlags(enum.IntFlag):
    MANAGED_SAVE = 1
    SNAPSHOTS_METADATA = 2
    NVRAM = 4
    KEEP_NVRAM = 8
    CHECKPOINTS_METADATA = 16
    TPM = 32
    KEEP_TPM = 64


class DestroyFlags(enum.IntFlag):
    DEFAULT = 0
    GRACEFUL = 1
    REMOVE_LOGS = 2


class CreateFlags(enum.IntFlag):
    NONE = 0
    START_PAUSED = 1
    START_AUTODESTROY = 2
    START_BYPASS_CACHE = 4
    START_FORCE_BOOT = 8
    START_VALIDATE = 16
    START_RESET_NVRAM = 32


class DefineFlags(enum.IntFlag):
    VALIDATE = 1


class JobType(enum.IntEnum):
    NONE = 0
    BOUNDED = 1
    UNBOUNDED = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


class JobOperation(enum.IntEnum):
    UNKNOWN = 0
    START = 1
    SAVE = 2
    RESTORE = 3
    MIGRATION_IN = 4
    MIGRATION_OUT = 5
    SNAPSHOT = 6
    SNAPSHOT_REVERT = 7
    DUMP = 8
    BACKUP = 9


class MigrateFlags(enum.IntFlag):
    LIVE = 0x1
    PEER2PEER = 0x2
    TUNNELLED = 0x4
    PERSIST_DEST = 0x8
    UNDEFINE_SOURCE = 0x10
    PAUSED = 0x20
    NON_SHARED_DISK = 0x40
    NON_SHARED_INC = 0x80
    CHANGE_PROTECTION = 0x100
    UNSAFE = 0x200
    OFFLINE = 0x400
    COMPRESSED = 0x800
    ABORT_ON_ERROR = 0x1000
    AUTO_CONVERGE = 0x2000
    RDMA_PIN_ALL = 0x4000
    POSTCOPY = 0x8000
    TLS = 0x10000
    PARALLEL = 0x20000
    NON_SHARED_SYNCHRONOUS_WRITES = 0x40000
    POSTCOPY_RESUME = 0x80000
    ZEROCOPY = 0x100000


class EventID(enum.IntEnum):
    """virDomainEventID: the domain event IDs pyvirt speaks (daemon, client and virsh)."""

    LIFECYCLE = 0
    MIGRATION_ITERATION = 20
    JOB_COMPLETED = 21


class DriverFeature(enum.IntEnum):
    """VIR_DRV_FEATURE_* (src/libvirt_internal.h): CONNECT_SUPPORTS_FEATURE's argument."""

    MIGRATION_V1 = 1
    REMOTE = 2
    MIGRATION_V2 = 3
    MIGRATION_P2P = 4
    MIGRATION_DIRECT = 5
    MIGRATION_V3 = 6
    MIGRATE_CHANGE_PROTECTION = 7
    FD_PASSING = 8
    TYPED_PARAM_STRING = 9
    PROGRAM_KEEPALIVE = 10
    XML_MIGRATABLE = 11
    MIGRATION_OFFLINE = 12
    MIGRATION_PARAMS = 13
    REMOTE_EVENT_CALLBACK = 14
    REMOTE_CLOSE_CALLBACK = 15
    NETWORK_UPDATE_HAS_CORRECT_ORDER = 16


class ConnectFlags(enum.IntFlag):
    """virConnectFlags (CONNECT_OPEN's flags)."""

    RO = 1
    NO_ALIASES = 2


class JobStatsFlags(enum.IntFlag):
    """virDomainGetJobStatsFlags."""

    COMPLETED = 1
    KEEP_COMPLETED = 2


class MigrateMaxSpeedFlags(enum.IntFlag):
    """virDomainMigrateMaxSpeedFlags."""

    POSTCOPY = 1


class AbortJobFlags(enum.IntFlag):
    """virDomainAbortJobFlagsValues."""

    POSTCOPY = 1


#: "unlimited" migration bandwidth as libvirt programs it into QEMU (bytes/s)
UNLIMITED_BANDWIDTH_BYTES = 9223372036853727232
