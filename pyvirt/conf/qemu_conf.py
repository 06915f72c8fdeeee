"""qemu.conf: the QEMU driver's keys (libvirt's names and defaults) → frozen :class:`QemuConfig`.

:data:`QEMU_SCHEMA` lists every key of libvirt's qemu.conf. The subset pyvirt implements
(migration addresses and ports, ``shared_filesystems``, the peer-to-peer connection's
keepalive, display listen addresses and ports, log handling, QEMU's user, group, file
ownership and seccomp sandbox) becomes :class:`QemuConfig`
fields of the same name, plus pyvirt's own ``emulator`` and directory keys. Every other
libvirt key is accepted only at the value that describes what pyvirt does (often libvirt's
default, sometimes not: e.g. ``security_driver`` is "none": there is no MAC driver), so a
setting pyvirt would not honour is refused at start-up. ``docs/config.md`` explains each.

Pure except :func:`load_qemu_config`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyvirt.conf.confparse import (
    CrossCheck,
    Key,
    Kind,
    Schema,
    Status,
    apply_schema,
    check_absolute_path,
    check_address,
    check_keepalive_interval,
    check_port,
    parse_conf,
    read_conf_text,
)
from pyvirt.conf.daemon_conf import DaemonConfig
from pyvirt.qemu.identity import DEFAULT_QEMU_GROUP, DEFAULT_QEMU_USER

#: libvirt's QEMU_REMOTE_PORT_MIN: VNC display numbers are ports minus 5900.
REMOTE_DISPLAY_PORT_MIN = 5900
#: virtlogd.conf's max_size default; below MIN_LOG_SIZE every line would be a rotation
MAX_LOG_SIZE_DEFAULT = 2 * 1024 * 1024
MIN_LOG_SIZE = 4096
#: each rotation renames every backup: keep that a small loop
MAX_LOG_BACKUPS = 1000


# ------------------------------------------------------------------------ validators


def _not_local(name: str, value: str) -> str:
    # libvirt's rule (the peer must reach this address): refuse "localhost*", 127.0.0.1
    # and ::1, exactly those (other 127/8 addresses pass, as in libvirt).
    address = check_address(name, value)
    if address.startswith("localhost") or address in ("127.0.0.1", "::1"):
        raise ValueError(f"{name} must not be the address of the local machine: {value}")
    return address


def _check_display_port_min(name: str, value: int) -> int:
    if not REMOTE_DISPLAY_PORT_MIN <= value <= 65535:
        raise ValueError(
            f"{name}: port must be greater than or equal to {REMOTE_DISPLAY_PORT_MIN}"
            " and at most 65535"
        )
    return value


def _check_shared_filesystems(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    # libvirt also resolves symlinks (I/O); the driver compares these normalised paths.
    return tuple(check_absolute_path(name, path) for path in value)


def _check_stdio_handler(name: str, value: str) -> str:
    if value in ("logd", "file"):
        return value
    raise ValueError(f"{name}: Unknown stdio handler {value}")


def _check_user_or_group(name: str, value: str) -> str:
    # a name or libvirt's "+N" (a raw id); resolved when the driver starts
    if not value or "\0" in value or (value.startswith("+") and not value[1:].isdigit()):
        raise ValueError(f"{name}: invalid user or group '{value}'")
    return value


def _check_seccomp_sandbox(name: str, value: int) -> int:
    # libvirt: -1 "QEMU's default" (on here, QEMU is always built with seccomp), 0, 1
    if value not in (-1, 0, 1):
        raise ValueError(f"{name} must be -1, 0 or 1")
    return 0 if value == 0 else 1


def _in_range(low: int, high: int, unit: str = "") -> Callable[[str, int], int]:
    def check(name: str, value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}{unit}")
        return value

    return check


def _port_range(low: str, high: str) -> CrossCheck:
    def check(values: Mapping[str, Any]) -> str | None:
        if values[high] < values[low]:
            return f"{high}: port must be between the minimal port {values[low]} and 65535"
        return None

    return CrossCheck((low, high), check)


# ---------------------------------------------------------------------------- schema

_N = Status.NOT_YET
_B, _INT, _U, _S = Kind.BOOL, Kind.INT, Kind.UINT, Kind.STRING
_L, _SL, _ANY = Kind.STRING_LIST, Kind.STRING_OR_LIST, Kind.ANY


def _tls_keys(prefix: str, *, verify: bool, priority: bool = True) -> list[Key]:
    """The ``<prefix>_tls_x509_*`` family libvirt repeats per TLS user."""
    keys = [
        Key(f"{prefix}_tls_x509_cert_dir", _S, None, _N),
        Key(f"{prefix}_tls_x509_secret_uuid", _S, None, _N),
    ]
    if verify:
        keys.append(Key(f"{prefix}_tls_x509_verify", _B, None, _N))
    if priority:
        keys.append(Key(f"{prefix}_tls_priority", _S, None, _N))
    return keys


_IMPLEMENTED_KEYS = [
    Key("vnc_listen", _S, "127.0.0.1", check=check_address),
    Key("spice_listen", _S, "127.0.0.1", check=check_address),
    Key("remote_display_port_min", _U, 5900, check=_check_display_port_min),
    Key("remote_display_port_max", _U, 65535, check=check_port),
    Key("keepalive_interval", _INT, 5, check=check_keepalive_interval),
    Key("keepalive_count", _U, 5),
    Key("migration_address", _S, None, check=_not_local),
    Key("migration_host", _S, None, check=_not_local),
    Key("migration_port_min", _U, 49152, check=check_port),
    Key("migration_port_max", _U, 49215, check=check_port),
    Key("log_timestamp", _B, 1),
    Key("stdio_handler", _S, "logd", check=_check_stdio_handler),
    # virtlogd.conf's names and defaults: pyvirt's log writer is its virtlogd
    Key("max_size", _U, MAX_LOG_SIZE_DEFAULT, check=_in_range(MIN_LOG_SIZE, 2**32 - 1)),
    Key("max_backups", _U, 3, check=_in_range(0, MAX_LOG_BACKUPS)),
    Key("shared_filesystems", _L, (), check=_check_shared_filesystems),
    # who QEMU runs as, and what it may reach (pyvirt.qemu.identity, pyvirt.qemu.ownership)
    Key("user", _S, DEFAULT_QEMU_USER, check=_check_user_or_group),
    Key("group", _S, DEFAULT_QEMU_GROUP, check=_check_user_or_group),
    Key("dynamic_ownership", _B, 1),
    Key("remember_owner", _B, 1),
    Key("seccomp_sandbox", _INT, 1, check=_check_seccomp_sandbox),
    # pyvirt's own keys
    Key("emulator", _S, "/usr/bin/qemu-system-x86_64", check=check_absolute_path),
    Key("state_dir", _S, None, check=check_absolute_path),
    Key("run_dir", _S, None, check=check_absolute_path),
    Key("log_dir", _S, None, check=check_absolute_path),
    Key("dns_lookup_timeout", _U, 5, check=_in_range(1, 300, " seconds")),
    Key("dns_lookup_threads", _U, 4, check=_in_range(1, 64)),
]

#: libvirt keys pyvirt does not implement; the default is what pyvirt does.
_NOT_YET_KEYS = [
    Key("default_tls_x509_cert_dir", _S, "/etc/pki/qemu", _N),
    Key("default_tls_x509_verify", _B, None, _N),
    Key("default_tls_x509_secret_uuid", _S, None, _N),
    Key("default_tls_priority", _S, None, _N),
    Key("vnc_auto_unix_socket", _B, 0, _N),
    Key("vnc_tls", _B, 0, _N),
    *_tls_keys("vnc", verify=True),
    Key("vnc_password", _S, None, _N),
    Key("vnc_sasl", _B, 0, _N),
    Key("vnc_sasl_dir", _S, None, _N),
    Key("vnc_allow_host_audio", _B, 0, _N),
    Key("spice_tls", _B, 0, _N),
    Key("spice_tls_x509_cert_dir", _S, None, _N),
    Key("spice_auto_unix_socket", _B, 0, _N),
    Key("spice_password", _S, None, _N),
    Key("spice_sasl", _B, 0, _N),
    Key("spice_sasl_dir", _S, None, _N),
    Key("rdp_listen", _S, "127.0.0.1", _N),
    Key("rdp_tls_x509_cert_dir", _S, None, _N),
    Key("rdp_username", _S, None, _N),
    Key("rdp_password", _S, None, _N),
    Key("chardev_tls", _B, 0, _N),
    *_tls_keys("chardev", verify=True),
    Key("vxhs_tls", _B, 0, _N),
    *_tls_keys("vxhs", verify=False, priority=False),
    Key("nbd_tls", _B, 0, _N),
    *_tls_keys("nbd", verify=False),
    *_tls_keys("migrate", verify=True),
    Key("migrate_tls_force", _B, 0, _N),
    *_tls_keys("backup", verify=True),
    Key("nographics_allow_host_audio", _B, 0, _N),
    Key("remote_websocket_port_min", _U, 5700, _N),
    Key("remote_websocket_port_max", _U, 65535, _N),
    Key("security_driver", _SL, "none", _N),
    Key("security_default_confined", _B, 0, _N),
    Key("security_require_confined", _B, 0, _N),
    Key("cgroup_controllers", _L, (), _N),
    Key("cgroup_device_acl", _L, None, _N),
    Key("save_image_format", _S, "raw", _N),
    Key("dump_image_format", _S, "raw", _N),
    Key("snapshot_image_format", _S, "raw", _N),
    Key("auto_dump_path", _S, None, _N),
    Key("auto_dump_bypass_cache", _B, 0, _N),
    Key("auto_start_bypass_cache", _B, 0, _N),
    Key("auto_start_delay", _U, 0, _N),
    Key("auto_shutdown_try_save", _S, "none", _N),
    Key("auto_shutdown_try_shutdown", _S, "none", _N),
    Key("auto_shutdown_poweroff", _S, "none", _N),
    Key("auto_shutdown_wait", _U, None, _N),
    Key("auto_shutdown_restore", _B, None, _N),
    Key("auto_save_bypass_cache", _B, 0, _N),
    Key("hugetlbfs_mount", _SL, None, _N),
    Key("bridge_helper", _S, None, _N),
    Key("set_process_name", _B, 0, _N),
    Key("max_processes", _U, 0, _N),
    Key("max_files", _U, 0, _N),
    Key("max_threads_per_process", _U, 0, _N),
    Key("max_core", _ANY, None, _N),
    Key("dump_guest_core", _B, None, _N),
    Key("mac_filter", _B, 0, _N),
    Key("relaxed_acs_check", _B, 0, _N),
    Key("lock_manager", _S, None, _N),
    Key("allow_disk_format_probing", _B, 0, _N),
    Key("max_queued", _U, 0, _N),
    Key("nvram", _L, None, _N),
    Key("gluster_debug_level", _U, None, _N),
    Key("virtiofsd_debug", _B, 0, _N),
    Key("namespaces", _L, (), _N),
    Key("memory_backing_dir", _S, None, _N),
    Key("pr_helper", _S, None, _N),
    Key("slirp_helper", _S, None, _N),
    Key("qemu_rdp", _S, None, _N),
    Key("dbus_daemon", _S, None, _N),
    Key("swtpm_user", _S, None, _N),
    Key("swtpm_group", _S, None, _N),
    Key("capability_filters", _L, (), _N),
    Key("deprecation_behavior", _S, "none", _N),
    Key("sched_core", _S, "none", _N),
    Key("storage_use_nbdkit", _B, 0, _N),
    Key("default_cpu_deprecated_features", _S, None, _N),
]

QEMU_SCHEMA = Schema.of(
    _IMPLEMENTED_KEYS + _NOT_YET_KEYS,
    [
        _port_range("migration_port_min", "migration_port_max"),
        _port_range("remote_display_port_min", "remote_display_port_max"),
    ],
)


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class QemuConfig:
    """The QEMU driver's settings; one field per implemented key of :data:`QEMU_SCHEMA`."""

    vnc_listen: str = "127.0.0.1"
    spice_listen: str = "127.0.0.1"
    remote_display_port_min: int = 5900
    remote_display_port_max: int = 65535
    #: for the peer-to-peer migration connection to the destination daemon
    keepalive_interval: int = 5
    keepalive_count: int = 5
    #: None: any address, see :meth:`incoming_listen_address`
    migration_address: str | None = None
    #: None: the host's name (what the source connects to)
    migration_host: str | None = None
    migration_port_min: int = 49152
    migration_port_max: int = 49215
    log_timestamp: bool = True
    #: "logd": QEMU's and the serial logs go through a log writer that caps each file at
    #: max_size bytes with max_backups rotated copies; "file": QEMU writes them, uncapped
    stdio_handler: str = "logd"
    max_size: int = MAX_LOG_SIZE_DEFAULT
    max_backups: int = 3
    #: normalised absolute paths assumed shared with every migration peer
    shared_filesystems: tuple[str, ...] = ()
    #: who QEMU runs as; files it needs handed to it (dynamic_ownership) and given back to
    #: the owner recorded in xattrs (remember_owner); its seccomp filter on or off
    user: str = DEFAULT_QEMU_USER
    group: str = DEFAULT_QEMU_GROUP
    dynamic_ownership: bool = True
    remember_owner: bool = True
    seccomp_sandbox: int = 1
    emulator: str = "/usr/bin/qemu-system-x86_64"
    #: None: pyvirtd.conf's directory + "/qemu", see :meth:`with_daemon_dirs`
    state_dir: str | None = None
    run_dir: str | None = None
    log_dir: str | None = None
    #: seconds a host name lookup (virsh hostname) may take before the short name is used,
    #: and the threads that do lookups off the event loop
    dns_lookup_timeout: int = 5
    dns_lookup_threads: int = 4

    def with_daemon_dirs(self, daemon: DaemonConfig) -> QemuConfig:
        """Fill unset directories from pyvirtd.conf's (``<dir>/qemu``)."""
        return dataclasses.replace(
            self,
            state_dir=self.state_dir or os.path.join(daemon.state_dir, "qemu"),
            run_dir=self.run_dir or os.path.join(daemon.run_dir, "qemu"),
            log_dir=self.log_dir or os.path.join(daemon.log_dir, "qemu"),
        )

    def incoming_listen_address(self, *, ipv6: bool) -> str:
        """Where incoming migrations listen: ``migration_address``, else libvirt's default
        (``::``, which also takes IPv4, when the host and QEMU can do IPv6; else 0.0.0.0)."""
        if self.migration_address is not None:
            return self.migration_address
        return "::" if ipv6 else "0.0.0.0"


def parse_qemu_config(text: str, path: str, daemon: DaemonConfig | None = None) -> QemuConfig:
    """Parse qemu.conf *text*; with *daemon*, unset directories are derived from it."""
    cfg = QemuConfig(**apply_schema(QEMU_SCHEMA, parse_conf(text, path), path))
    return cfg if daemon is None else cfg.with_daemon_dirs(daemon)


def load_qemu_config(
    path: str | None, daemon: DaemonConfig | None = None, *, allow_missing: bool = False
) -> QemuConfig:
    """Read and parse qemu.conf at *path* (None: every default). libvirt treats a missing
    qemu.conf as empty; here that takes *allow_missing*."""
    if path is None or (allow_missing and not os.path.exists(path)):
        return parse_qemu_config("", path or "qemu.conf", daemon)
    return parse_qemu_config(read_conf_text(path), path, daemon)
