"""pyvirtd.conf: libvirtd.conf's keys and defaults, parsed into a frozen :class:`DaemonConfig`.

The schema is one table (:data:`DAEMON_SCHEMA`): every libvirtd.conf key pyvirtd knows,
with its value kind, default and status. Implemented keys become :class:`DaemonConfig`
fields of the same name; not-yet-implemented keys are accepted only at their default, so
a setting pyvirtd would not honour stops the daemon at start-up instead of being ignored.
``docs/config.md`` describes every key; ``etc/pyvirtd.conf`` shows them all commented out.

Deliberate deviations from libvirtd (documented in docs/config.md): ``auth_tcp`` defaults to
``"none"`` (no SASL yet), ``audit_level`` to 0 (no auditing); a missing ``host_uuid``
comes from SMBIOS, then /etc/machine-id.

Everything here is pure except :func:`load_daemon_config` and :func:`resolve_host_uuid`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyvirt.conf.confparse import (
    ConfEntry,
    CrossCheck,
    Key,
    Kind,
    Schema,
    Status,
    apply_schema,
    check_absolute_path,
    check_address,
    check_keepalive_interval,
    check_nonempty,
    check_positive,
    parse_conf,
    read_conf_text,
)
from pyvirt.errors import ConfSyntaxError, InvalidArgError
from pyvirt.rpc.tls import (
    DEFAULT_CA_FILE,
    DEFAULT_SERVER_CERT,
    DEFAULT_SERVER_KEY,
    check_priority,
)

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/pyvirt/pyvirtd.conf"

#: libvirt's log priorities (1 debug .. 4 error) as Python logging levels.
LOG_LEVEL_TO_PYTHON: Mapping[int, int] = {
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}


@dataclass(frozen=True)
class LogFilter:
    """``level:match``: loggers whose name contains the glob *match* log at *level*+."""

    level: int
    match: str


@dataclass(frozen=True)
class LogOutput:
    """``level:stderr``, ``level:file:/path`` or ``level:syslog:ident``."""

    level: int
    kind: str
    #: the file path (``file``) or the syslog ident (``syslog``); None for ``stderr``
    target: str | None = None


# ------------------------------------------------------------------------ validators


def _check_tcp_port(name: str, value: str) -> int:
    # libvirt also takes a service name; resolving one needs /etc/services (I/O).
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{name}: service names are not supported, give a port number: '{value}'")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}: port must be between 1 and 65535: {value}")
    return port


def _check_perms(name: str, value: str) -> int:
    if not re.fullmatch(r"[0-7]{1,5}", value) or int(value, 8) > 0o7777:
        raise ValueError(f"{name}: Failed to parse mode '{value}' (expected octal, e.g. \"0700\")")
    return int(value, 8)


def _check_auth(name: str, value: str) -> str:
    if value == "none":
        return value
    if value in ("sasl", "polkit"):
        raise ValueError(f'{name} = "{value}" is not supported yet (only "none")')
    raise ValueError(f"{name}: unsupported auth {value}")


def _check_log_level(name: str, value: int) -> int:
    if value not in LOG_LEVEL_TO_PYTHON:
        raise ValueError(f"{name}: must be 1 (debug), 2 (info), 3 (warning) or 4 (error): {value}")
    return value


def _split_level(name: str, item: str) -> tuple[int, str]:
    level, sep, rest = item.partition(":")
    if not sep or not level.isdigit() or int(level) not in LOG_LEVEL_TO_PYTHON:
        raise ValueError(f"{name}: '{item}' must start with a level 1-4 and ':'")
    return int(level), rest


def _check_log_filters(name: str, value: str) -> tuple[LogFilter, ...]:
    filters = []
    for item in value.split():
        level, match = _split_level(name, item)
        if not match:
            raise ValueError(f"{name}: '{item}' has no match string")
        if match.startswith("+"):
            raise ValueError(f"{name}: the '+' (stack trace) flag in '{item}' is not supported")
        filters.append(LogFilter(level, match))
    return tuple(filters)


def _parse_log_output(name: str, item: str) -> LogOutput:
    level, rest = _split_level(name, item)
    kind, _, target = rest.partition(":")
    if kind == "stderr" and not target:
        return LogOutput(level, kind)
    if kind == "file" and target.startswith("/"):
        return LogOutput(level, kind, os.path.normpath(target))
    if kind == "syslog" and target:
        return LogOutput(level, kind, target)
    if kind == "journald":
        raise ValueError(f"{name}: output 'journald' is not supported by pyvirtd yet")
    expected = "level:stderr, level:file:/absolute/path or level:syslog:ident"
    raise ValueError(f"{name}: invalid output '{item}' (expected {expected})")


def _check_log_outputs(name: str, value: str) -> tuple[LogOutput, ...]:
    return tuple(_parse_log_output(name, item) for item in value.split())


def parse_uuid(value: str) -> str | None:
    """libvirt's host UUID rules: 32 hex digits (dashes allowed), not all bytes equal.
    Returns the canonical lower-case form, or None if *value* is not acceptable."""
    digits = value.strip().replace("-", "")
    if not re.fullmatch(r"[0-9a-fA-F]{32}", digits):
        return None
    raw = bytes.fromhex(digits)
    if raw == raw[:1] * 16:
        return None  # e.g. all zeros: the placeholder libvirt's sample file ships
    return str(uuid.UUID(bytes=raw))


def _check_host_uuid(name: str, value: str) -> str:
    canonical = parse_uuid(value)
    if canonical is None:
        raise ValueError(f"{name}: invalid host UUID '{value}' (all digits equal, or not a UUID)")
    return canonical


def _check_uuid_source(name: str, value: str) -> str:
    if value not in ("smbios", "machine-id"):
        raise ValueError(f"{name}: unknown host UUID source '{value}' (smbios or machine-id)")
    return value


def _workers_order(values: Mapping[str, Any]) -> str | None:
    if values["min_workers"] > values["max_workers"]:
        return (
            f"min_workers ({values['min_workers']}) must not be greater than "
            f"max_workers ({values['max_workers']})"
        )
    return None


def _anonymous_below_total(values: Mapping[str, Any]) -> str | None:
    if values["max_anonymous_clients"] > values["max_clients"]:
        return (
            f"max_anonymous_clients ({values['max_anonymous_clients']}) must not be greater "
            f"than max_clients ({values['max_clients']})"
        )
    return None


# ---------------------------------------------------------------------------- schema

_N = Status.NOT_YET
_B, _INT, _U, _S, _L = Kind.BOOL, Kind.INT, Kind.UINT, Kind.STRING, Kind.STRING_LIST

DAEMON_SCHEMA = Schema.of(
    [
        # Network connectivity
        Key("listen_tls", _B, 1),
        Key("listen_tcp", _B, 0),
        Key("tls_port", _S, "16514", check=_check_tcp_port),
        Key("tcp_port", _S, "16509", check=_check_tcp_port),
        Key("listen_addr", _S, None, check=check_address),
        # UNIX socket access
        Key("unix_sock_group", _S, None, check=check_nonempty),
        Key("unix_sock_ro_perms", _S, "0777", check=_check_perms),
        Key("unix_sock_rw_perms", _S, "0700", check=_check_perms),
        Key("unix_sock_admin_perms", _S, "0700", check=_check_perms),
        Key("unix_sock_dir", _S, None, check=check_absolute_path),
        # Authentication
        Key("auth_unix_ro", _S, "none", check=_check_auth),
        Key("auth_unix_rw", _S, "none", check=_check_auth),
        Key("auth_tcp", _S, "none", check=_check_auth),
        Key("auth_tls", _S, "none", check=_check_auth),
        Key("tcp_min_ssf", _U, None, _N),
        Key("access_drivers", _L, ("nop",), _N),
        # TLS x509 certificates
        Key("key_file", _S, DEFAULT_SERVER_KEY, check=check_absolute_path),
        Key("key_files", _L, None, _N),
        Key("cert_file", _S, DEFAULT_SERVER_CERT, check=check_absolute_path),
        Key("cert_files", _L, None, _N),
        Key("ca_file", _S, DEFAULT_CA_FILE, check=check_absolute_path),
        # None: /etc/pki/CA/cacrl.pem when it exists (libvirt's rule)
        Key("crl_file", _S, None, check=check_absolute_path),
        # Authorization
        Key("tls_no_sanity_certificate", _B, 0, _N),
        Key("tls_no_verify_certificate", _B, 0),
        Key("tls_allowed_dn_list", _L, None),
        Key("tls_priority", _S, "NORMAL", check=check_priority),
        Key("sasl_allowed_username_list", _L, None, _N),
        # Processing controls
        Key("max_clients", _U, 5000, check=check_positive),
        Key("max_queued_clients", _U, 1000),
        Key("max_anonymous_clients", _U, 20),
        Key("min_workers", _U, 5),
        Key("max_workers", _U, 20, check=check_positive),
        Key("prio_workers", _U, 5),
        Key("max_requests", _U, 20, check=check_positive),
        Key("max_client_requests", _U, 5, check=check_positive),
        # pyvirt's per-client caps and file-descriptor reserve (docs/security.md)
        Key("max_client_queued_bytes", _U, 8 << 20, check=check_positive),
        Key("max_client_streams", _U, 16, check=check_positive),
        Key("max_client_event_callbacks", _U, 256, check=check_positive),
        Key("max_stream_queued_bytes", _U, 4 << 20, check=check_positive),
        Key("nofile_reserve", _U, 1024),
        Key("handshake_timeout", _U, 60),
        # Processing controls of the admin interface (libvirtd's code defaults)
        Key("admin_min_workers", _U, 5, _N),
        Key("admin_max_workers", _U, 20, _N),
        Key("admin_max_clients", _U, 5000, _N),
        Key("admin_max_queued_clients", _U, 20, _N),
        Key("admin_max_client_requests", _U, 5, _N),
        # Logging
        Key("log_level", _U, 3, check=_check_log_level),
        Key("log_filters", _S, "", check=_check_log_filters),
        Key("log_outputs", _S, "", check=_check_log_outputs),
        # Auditing
        Key("audit_level", _U, 0, _N),
        Key("audit_logging", _B, 0, _N),
        # Host UUID
        Key("host_uuid", _S, None, check=_check_host_uuid),
        Key("host_uuid_source", _S, "smbios", check=_check_uuid_source),
        # Keepalive
        Key("keepalive_interval", _INT, 5, check=check_keepalive_interval),
        Key("keepalive_count", _U, 5),
        Key("keepalive_required", _B, 0, _N),
        Key("admin_keepalive_interval", _INT, 5, _N),
        Key("admin_keepalive_count", _U, 5, _N),
        Key("admin_keepalive_required", _B, 0, _N),
        # Open vSwitch
        Key("ovs_timeout", _U, 5, _N),
        # pyvirt's own keys
        Key("state_dir", _S, "/var/lib/pyvirt", check=check_absolute_path),
        Key("run_dir", _S, "/run/pyvirt", check=check_absolute_path),
        Key("log_dir", _S, "/var/log/pyvirt", check=check_absolute_path),
        Key("qemu_conf", _S, None, check=check_absolute_path),
        Key("event_loop_tick_ms", _U, 50, check=check_positive),
        Key("event_loop_lag_warn_ms", _U, 100, check=check_positive),
    ],
    [
        CrossCheck(("min_workers", "max_workers"), _workers_order),
        CrossCheck(("max_anonymous_clients", "max_clients"), _anonymous_below_total),
    ],
)


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DaemonConfig:
    """pyvirtd's settings; one field per implemented key of :data:`DAEMON_SCHEMA`.

    Perms are ints (``0o700``); ports are ints; ``unix_sock_dir`` and ``qemu_conf`` are
    always resolved (defaults: ``run_dir``, and ``qemu.conf`` next to pyvirtd.conf).
    """

    #: both only with ``--listen`` (libvirtd's rule)
    listen_tls: bool = True
    listen_tcp: bool = False
    tls_port: int = 16514
    tcp_port: int = 16509
    #: None: all interfaces
    listen_addr: str | None = None
    #: group of the three sockets (a name, or a gid; ``+N``: always a gid); None: the
    #: daemon's own group. Resolved when the daemon starts (pyvirt.rpc.unix_listen).
    unix_sock_group: str | None = None
    unix_sock_ro_perms: int = 0o777
    unix_sock_rw_perms: int = 0o700
    unix_sock_admin_perms: int = 0o700
    unix_sock_dir: str = "/run/pyvirt"
    auth_unix_ro: str = "none"
    auth_unix_rw: str = "none"
    auth_tcp: str = "none"
    #: the client certificate authenticates (libvirtd's default)
    auth_tls: str = "none"
    key_file: str = DEFAULT_SERVER_KEY
    cert_file: str = DEFAULT_SERVER_CERT
    ca_file: str = DEFAULT_CA_FILE
    #: None: /etc/pki/CA/cacrl.pem if it exists
    crl_file: str | None = None
    tls_no_verify_certificate: bool = False
    #: None: any certificate the CA signed; globs matched against the subject DN
    tls_allowed_dn_list: tuple[str, ...] | None = None
    tls_priority: str = "NORMAL"
    max_clients: int = 5000
    max_queued_clients: int = 1000
    max_anonymous_clients: int = 20
    min_workers: int = 5
    max_workers: int = 20
    prio_workers: int = 5
    max_requests: int = 20
    max_client_requests: int = 5
    max_client_queued_bytes: int = 8 << 20
    max_client_streams: int = 16
    max_client_event_callbacks: int = 256
    max_stream_queued_bytes: int = 4 << 20
    #: file descriptors kept free besides max_clients (QEMU monitors, logs, admin, ...)
    nofile_reserve: int = 1024
    #: seconds a connection may stay without CONNECT_OPEN; 0: no limit
    handshake_timeout: int = 60
    log_level: int = 3
    log_filters: tuple[LogFilter, ...] = ()
    #: empty: :func:`default_log_outputs`
    log_outputs: tuple[LogOutput, ...] = ()
    #: None: :func:`resolve_host_uuid` derives one
    host_uuid: str | None = None
    host_uuid_source: str = "smbios"
    keepalive_interval: int = 5
    keepalive_count: int = 5
    state_dir: str = "/var/lib/pyvirt"
    run_dir: str = "/run/pyvirt"
    log_dir: str = "/var/log/pyvirt"
    qemu_conf: str = "/etc/pyvirt/qemu.conf"
    #: the event-loop lag monitor (pyvirt.daemon.loopwatch)
    event_loop_tick_ms: int = 50
    event_loop_lag_warn_ms: int = 100

    def with_overrides(self, **changes: Any) -> DaemonConfig:
        """A copy with *changes* applied, validated like the file (values in file form:
        ``min_workers=10``, ``log_filters="1:qemu"``). For runtime changes (admin API).
        Raises InvalidArgError."""
        entries = [ConfEntry(name, value, 0) for name, value in changes.items()]
        try:
            values = apply_schema(DAEMON_SCHEMA, entries, "<override>", _field_values(self))
        except ConfSyntaxError as exc:
            raise InvalidArgError(exc.reason) from exc
        return dataclasses.replace(self, **values)


def _field_values(cfg: DaemonConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def parse_daemon_config(text: str, path: str) -> DaemonConfig:
    """Parse pyvirtd.conf *text*; *path* names the file in errors and places qemu.conf."""
    values = apply_schema(DAEMON_SCHEMA, parse_conf(text, path), path)
    if values["unix_sock_dir"] is None:
        values["unix_sock_dir"] = values["run_dir"]
    if values["qemu_conf"] is None:
        values["qemu_conf"] = os.path.join(os.path.dirname(path), "qemu.conf")
    return DaemonConfig(**values)


def load_daemon_config(path: str | None, *, allow_missing: bool = False) -> DaemonConfig:
    """Read and parse pyvirtd.conf at *path*; None gives every default. A missing file is
    an error unless *allow_missing* (then: the defaults, as if the file were empty)."""
    if path is None:
        return parse_daemon_config("", DEFAULT_CONFIG_PATH)
    if allow_missing and not os.path.exists(path):
        return parse_daemon_config("", path)
    return parse_daemon_config(read_conf_text(path), path)


def default_log_outputs(cfg: DaemonConfig, *, daemonized: bool) -> tuple[LogOutput, ...]:
    """The outputs to use when ``log_outputs`` is empty (libvirt's rule minus journald):
    a file in ``log_dir`` when running as a daemon, stderr in the foreground."""
    if cfg.log_outputs:
        return cfg.log_outputs
    if daemonized:
        return (LogOutput(cfg.log_level, "file", os.path.join(cfg.log_dir, "pyvirtd.log")),)
    return (LogOutput(cfg.log_level, "stderr"),)


def _read_uuid(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return parse_uuid(handle.read(128))
    except OSError:
        return None


def resolve_host_uuid(
    cfg: DaemonConfig,
    machine_id_path: str = "/etc/machine-id",
    smbios_path: str = "/sys/class/dmi/id/product_uuid",
) -> str:
    """The host UUID: ``host_uuid`` if set, else from ``host_uuid_source``.

    ``smbios`` reads the firmware's system UUID (what ``dmidecode -s system-uuid`` shows)
    and falls back to the machine-id; ``machine-id`` reads /etc/machine-id. If neither
    gives a valid UUID, a temporary random one is used, as libvirt does.
    """
    if cfg.host_uuid is not None:
        return cfg.host_uuid
    sources = [machine_id_path]
    if cfg.host_uuid_source == "smbios":
        sources.insert(0, smbios_path)
    for source in sources:
        found = _read_uuid(source)
        if found is not None:
            return found
    log.warning("no valid host UUID in %s; using a temporary one", " or ".join(sources))
    return str(uuid.uuid4())
