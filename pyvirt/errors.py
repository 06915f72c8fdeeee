"""libvirt's error model: stable numeric codes and domains, and the VirtError tree.

Every refusal pyvirt makes is a :class:`VirtError` carrying libvirt's ``code`` and
``domain`` numbers (``include/libvirt/virterror.h``), so that the stock virsh and
libvirt-python see exactly the error a real libvirtd would send. The wire encoding of
these errors lives in :mod:`pyvirt.rpc` (one place); this module knows no wire.

Caller errors (bad XML, unknown domain, invalid operation) are expected and must not be
logged with tracebacks; :attr:`VirtError.expected` tells them apart from internal faults.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """virErrorNumber values (subset used by pyvirt; numbers are libvirt's)."""

    OK = 0
    INTERNAL_ERROR = 1
    NO_MEMORY = 2
    NO_SUPPORT = 3
    UNKNOWN_HOST = 4
    NO_CONNECT = 5
    INVALID_CONN = 6
    INVALID_DOMAIN = 7
    INVALID_ARG = 8
    OPERATION_FAILED = 9
    GET_FAILED = 10
    POST_FAILED = 11
    HTTP_ERROR = 12
    SEXPR_SERIAL = 13
    NO_XEN = 14
    XEN_CALL = 15
    OS_TYPE = 16
    NO_KERNEL = 17
    NO_ROOT = 18
    NO_SOURCE = 19
    NO_TARGET = 20
    NO_NAME = 21
    NO_OS = 22
    NO_DEVICE = 23
    NO_XENSTORE = 24
    DRIVER_FULL = 25
    CALL_FAILED = 26
    XML_ERROR = 27
    DOM_EXIST = 28
    OPERATION_DENIED = 29
    OPEN_FAILED = 30
    READ_FAILED = 31
    PARSE_FAILED = 32
    CONF_SYNTAX = 33
    WRITE_FAILED = 34
    XML_DETAIL = 35
    SYSTEM_ERROR = 38
    RPC = 39
    NO_DOMAIN = 42
    AUTH_FAILED = 45
    OPERATION_INVALID = 55
    NO_SECURITY_MODEL = 54
    CONFIG_UNSUPPORTED = 67
    OPERATION_TIMEOUT = 68
    MIGRATE_PERSIST_FAILED = 69
    HOOK_SCRIPT_FAILED = 70
    INVALID_DOMAIN_SNAPSHOT = 71
    NO_DOMAIN_SNAPSHOT = 72
    INVALID_STREAM = 73
    ARGUMENT_UNSUPPORTED = 74
    OPERATION_ABORTED = 78
    AUTH_CANCELLED = 79
    NO_DOMAIN_METADATA = 80
    MIGRATE_UNSAFE = 81
    OVERFLOW = 82
    BLOCK_COPY_ACTIVE = 83
    OPERATION_UNSUPPORTED = 84
    SSH = 85
    AGENT_UNRESPONSIVE = 86
    RESOURCE_BUSY = 87
    ACCESS_DENIED = 88
    DBUS_SERVICE = 89
    STORAGE_VOL_EXIST = 90
    CPU_INCOMPATIBLE = 91
    XML_INVALID_SCHEMA = 92
    MIGRATE_FINISH_OK = 93
    AUTH_UNAVAILABLE = 94
    NO_SERVER = 95
    NO_CLIENT = 96
    AGENT_UNSYNCED = 97
    LIBSSH = 98
    DEVICE_MISSING = 99
    INVALID_NWFILTER_BINDING = 100
    NO_NWFILTER_BINDING = 101


class ErrorDomain(enum.IntEnum):
    """virErrorDomain values (subset; numbers are libvirt's)."""

    NONE = 0
    XEN = 1
    XEND = 2
    XENSTORE = 3
    SEXPR = 4
    XML = 5
    DOM = 6
    RPC = 7
    PROXY = 8
    CONF = 9
    QEMU = 10
    NET = 11
    TEST = 12
    REMOTE = 13
    DOMAIN = 20
    STREAMS = 38
    ADMIN = 62


class ErrorLevel(enum.IntEnum):
    NONE = 0
    WARNING = 1
    ERROR = 2


#: libvirt's VIR_ERROR_MAX_LENGTH: the longest message an error carries (characters here)
ERROR_MAX_LENGTH = 1024


class VirtError(Exception):
    """An error with libvirt's numbers. ``str()`` is the message virsh prints."""

    #: an ErrorCode member, or a plain int for numbers pyvirt has no name for
    code: int = ErrorCode.INTERNAL_ERROR
    domain: int = ErrorDomain.QEMU
    #: expected errors are the caller's fault: reply, do not log a traceback
    expected: bool = True

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        domain: int | None = None,
        level: int = ErrorLevel.ERROR,
    ) -> None:
        if len(message) > ERROR_MAX_LENGTH:
            # libvirt formats every message into VIR_ERROR_MAX_LENGTH: a message quoting a
            # hostile 4 MiB name must not grow replies and logs (or outgrow remote_error)
            message = message[:ERROR_MAX_LENGTH - 3] + "..."
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = _as_enum(ErrorCode, code)
        if domain is not None:
            self.domain = _as_enum(ErrorDomain, domain)
        self.level = level

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={int(self.code)})"


def _as_enum(kind: type[enum.IntEnum], value: int) -> int:
    try:
        return kind(value)
    except ValueError:
        return int(value)


class InternalError(VirtError):
    code = ErrorCode.INTERNAL_ERROR
    expected = False

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"internal error: {detail}", **kw)


class NoDomainError(VirtError):
    code = ErrorCode.NO_DOMAIN

    @classmethod
    def by_name(cls, name: str) -> NoDomainError:
        return cls(f"Domain not found: no domain with matching name '{name}'")

    @classmethod
    def by_uuid(cls, uuid: str) -> NoDomainError:
        return cls(f"Domain not found: no domain with matching uuid '{uuid}'")

    @classmethod
    def by_id(cls, dom_id: int) -> NoDomainError:
        return cls(f"Domain not found: no domain with matching id {dom_id}")


class DomainExistsError(VirtError):
    code = ErrorCode.DOM_EXIST


class OperationInvalidError(VirtError):
    code = ErrorCode.OPERATION_INVALID

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"Requested operation is not valid: {detail}", **kw)


class OperationFailedError(VirtError):
    code = ErrorCode.OPERATION_FAILED

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"operation failed: {detail}", **kw)


class XMLError(VirtError):
    code = ErrorCode.XML_ERROR
    domain = ErrorDomain.DOMAIN

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"XML error: {detail}", **kw)


class ConfigUnsupportedError(VirtError):
    code = ErrorCode.CONFIG_UNSUPPORTED
    domain = ErrorDomain.DOMAIN

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"unsupported configuration: {detail}", **kw)


class InvalidArgError(VirtError):
    code = ErrorCode.INVALID_ARG

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"invalid argument: {detail}", **kw)


class ArgumentUnsupportedError(VirtError):
    code = ErrorCode.ARGUMENT_UNSUPPORTED

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"argument unsupported: {detail}", **kw)


class OperationUnsupportedError(VirtError):
    code = ErrorCode.OPERATION_UNSUPPORTED

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"Operation not supported: {detail}", **kw)


class NoSupportError(VirtError):
    code = ErrorCode.NO_SUPPORT

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"this function is not supported by the connection driver: {detail}", **kw)


class OperationTimeoutError(VirtError):
    code = ErrorCode.OPERATION_TIMEOUT

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"Timed out during operation: {detail}", **kw)


class OperationAbortedError(VirtError):
    code = ErrorCode.OPERATION_ABORTED

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"operation aborted: {detail}", **kw)


class SystemError_(VirtError):
    """An OS-level failure (libvirt's VIR_ERR_SYSTEM_ERROR); message is as given."""

    code = ErrorCode.SYSTEM_ERROR
    expected = False


class MigrateUnsafeError(VirtError):
    code = ErrorCode.MIGRATE_UNSAFE

    def __init__(self, detail: str, **kw: int) -> None:
        super().__init__(f"Unsafe migration: {detail}", **kw)


class ConfSyntaxError(VirtError):
    """A daemon configuration file error; the message carries file and line."""

    code = ErrorCode.CONF_SYNTAX
    domain = ErrorDomain.CONF

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"configuration file syntax error: {path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class RPCError(VirtError):
    code = ErrorCode.RPC
    domain = ErrorDomain.RPC
