"""qemu.conf: schema, defaults, validation, example file and docs in step."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from pyvirt.conf.confparse import Key, Kind, example_line, format_value
from pyvirt.conf.daemon_conf import parse_daemon_config
from pyvirt.conf.qemu_conf import (
    QEMU_SCHEMA,
    QemuConfig,
    load_qemu_config,
    parse_qemu_config,
)
from pyvirt.errors import ConfSyntaxError, SystemError_

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "qemu.conf"
DOCS = ROOT / "docs" / "config.md"
PATH = "/etc/pyvirt/qemu.conf"


def parse(text: str) -> QemuConfig:
    return parse_qemu_config(text, PATH)


def error(text: str) -> ConfSyntaxError:
    with pytest.raises(ConfSyntaxError) as info:
        parse(text)
    assert info.value.path == PATH
    return info.value


# ---------------------------------------------------------------------------- defaults


def test_empty_file_gives_dataclass_defaults() -> None:
    assert parse("") == QemuConfig()
    assert load_qemu_config(None) == QemuConfig()


def test_fields_are_exactly_the_implemented_keys() -> None:
    fields = [f.name for f in dataclasses.fields(QemuConfig)]
    implemented = [key.name for key in QEMU_SCHEMA.keys.values() if key.implemented]
    assert sorted(fields) == sorted(implemented)


@pytest.mark.parametrize(
    "key", [k for k in QEMU_SCHEMA.keys.values() if k.implemented], ids=lambda k: k.name
)
def test_table_default_matches_dataclass_default(key: Key) -> None:
    assert QEMU_SCHEMA.defaults()[key.name] == getattr(QemuConfig(), key.name)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("migration_address", None),
        ("migration_host", None),
        ("migration_port_min", 49152),
        ("migration_port_max", 49215),
        ("shared_filesystems", ()),
        ("keepalive_interval", 5),
        ("keepalive_count", 5),
        ("vnc_listen", "127.0.0.1"),
        ("spice_listen", "127.0.0.1"),
        ("remote_display_port_min", 5900),
        ("remote_display_port_max", 65535),
        ("log_timestamp", True),
        ("stdio_handler", "logd"),
        ("max_size", 2097152),
        ("max_backups", 3),
        ("emulator", "/usr/bin/qemu-system-x86_64"),
        ("state_dir", None),
        ("run_dir", None),
        ("log_dir", None),
        ("dns_lookup_timeout", 5),
        ("dns_lookup_threads", 4),
    ],
)
def test_each_default(field: str, expected: object) -> None:
    assert getattr(parse(""), field) == expected


def test_directories_derive_from_the_daemon() -> None:
    daemon = parse_daemon_config(
        'state_dir = "/srv/s"\nrun_dir = "/srv/r"\nlog_dir = "/srv/l"', "/srv/pyvirtd.conf"
    )
    cfg = parse_qemu_config('run_dir = "/tmp/q"', PATH, daemon)
    assert (cfg.state_dir, cfg.run_dir, cfg.log_dir) == ("/srv/s/qemu", "/tmp/q", "/srv/l/qemu")
    assert QemuConfig().with_daemon_dirs(daemon).state_dir == "/srv/s/qemu"


def test_incoming_listen_address() -> None:
    assert QemuConfig().incoming_listen_address(ipv6=True) == "::"
    assert QemuConfig().incoming_listen_address(ipv6=False) == "0.0.0.0"
    cfg = parse('migration_address = "10.77.0.1"')
    assert cfg.incoming_listen_address(ipv6=True) == "10.77.0.1"


# ------------------------------------------------------------------------ valid values


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ('migration_address = "0.0.0.0"', "migration_address", "0.0.0.0"),
        ('migration_address = "[::]"', "migration_address", "::"),
        ('migration_address = "10.77.0.2"', "migration_address", "10.77.0.2"),
        ('migration_host = "host2.lab"', "migration_host", "host2.lab"),
        ('migration_host = "[fd00::2]"', "migration_host", "fd00::2"),
        ('migration_host = "127.0.0.2"', "migration_host", "127.0.0.2"),  # libvirt allows it
        ("migration_port_min = 1\nmigration_port_max = 1", "migration_port_min", 1),
        ("migration_port_max = 65535", "migration_port_max", 65535),
        (
            'shared_filesystems = [\n  "/var/lib/pyvirt/shared/",\n  "/srv//nfs",\n]',
            "shared_filesystems",
            ("/var/lib/pyvirt/shared", "/srv/nfs"),
        ),
        ("shared_filesystems = []", "shared_filesystems", ()),
        ("keepalive_interval = -1", "keepalive_interval", -1),
        ("keepalive_count = 0", "keepalive_count", 0),
        ('vnc_listen = "0.0.0.0"', "vnc_listen", "0.0.0.0"),
        ('spice_listen = "::"', "spice_listen", "::"),
        ("remote_display_port_min = 5900", "remote_display_port_min", 5900),
        ("remote_display_port_max = 6000", "remote_display_port_max", 6000),
        ("log_timestamp = 0", "log_timestamp", False),
        ('stdio_handler = "file"', "stdio_handler", "file"),
        ('stdio_handler = "logd"', "stdio_handler", "logd"),
        ("max_size = 4096", "max_size", 4096),
        ("max_backups = 0", "max_backups", 0),
        ("max_backups = 1000", "max_backups", 1000),
        ("dns_lookup_timeout = 1", "dns_lookup_timeout", 1),
        ("dns_lookup_threads = 64", "dns_lookup_threads", 64),
        (
            'emulator = "/opt/qemu/bin/qemu-system-x86_64"',
            "emulator",
            "/opt/qemu/bin/qemu-system-x86_64",
        ),
        ('state_dir = "/srv/q/state"', "state_dir", "/srv/q/state"),
        ('log_dir = "/srv/q/log"', "log_dir", "/srv/q/log"),
    ],
)
def test_valid_settings(text: str, field: str, expected: object) -> None:
    assert getattr(parse(text), field) == expected


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            'migration_address = "localhost"',
            "migration_address must not be the address of the local machine: localhost",
        ),
        ('migration_address = "127.0.0.1"', "migration_address must not be the address of"),
        ('migration_address = "[::1]"', "migration_address must not be the address of"),
        ('migration_host = "localhost.localdomain"', "migration_host must not be the address"),
        ('migration_host = "bad host"', "migration_host: not an IP address or host name"),
        ("migration_host = 1", "expected a string for 'migration_host' parameter"),
        ("migration_port_min = 0", "migration_port_min: port must be between 1 and 65535: 0"),
        ("migration_port_min = -1", "expected an unsigned integer for 'migration_port_min'"),
        ("migration_port_max = 65536", "migration_port_max: port must be between 1 and 65535"),
        (
            "migration_port_max = 49000",
            "migration_port_max: port must be between the minimal port 49152 and 65535",
        ),
        ('shared_filesystems = "/srv"', "expected a string list for 'shared_filesystems'"),
        ('shared_filesystems = [ "/srv", 1 ]', "expected a string list for 'shared_filesystems'"),
        ('shared_filesystems = [ "srv" ]', "shared_filesystems: path must be absolute: 'srv'"),
        ("keepalive_interval = 0", "keepalive_interval: must be -1 (keepalive off)"),
        ("keepalive_count = -3", "expected an unsigned integer for 'keepalive_count'"),
        ('vnc_listen = "1.2.3.256"', "vnc_listen: not an IP address or host name"),
        ('spice_listen = ""', "spice_listen: not an IP address or host name"),
        ("remote_display_port_min = 5899", "remote_display_port_min: port must be greater"),
        ("remote_display_port_max = 70000", "remote_display_port_max: port must be between 1"),
        (
            "remote_display_port_max = 5800",
            "remote_display_port_max: port must be between the minimal port 5900",
        ),
        ("log_timestamp = 2", "value for 'log_timestamp' parameter must be 0 or 1"),
        ("max_size = 4095", "max_size must be between 4096 and 4294967295"),
        ("max_size = -1", "expected an unsigned integer for 'max_size'"),
        ("max_backups = 1001", "max_backups must be between 0 and 1000"),
        ("dns_lookup_timeout = 0", "dns_lookup_timeout must be between 1 and 300 seconds"),
        ("dns_lookup_threads = 65", "dns_lookup_threads must be between 1 and 64"),
        ('stdio_handler = "pipe"', "stdio_handler: Unknown stdio handler pipe"),
        ('emulator = "qemu-system-x86_64"', "emulator: path must be absolute"),
        ('run_dir = "run"', "run_dir: path must be absolute"),
        ("migrate_tls_force = 1", "'migrate_tls_force' is not supported by pyvirtd yet"),
        ("max_processes = 100", "'max_processes' is not supported by pyvirtd yet"),
        ('stdio = "file"', "unknown key 'stdio'"),
        ("migration_port = 1", "unknown key 'migration_port' (did you mean"),
    ],
)
def test_errors_carry_file_and_line(text: str, reason: str) -> None:
    err = error(f"# qemu.conf\ndynamic_ownership = 0\n{text}\n")
    assert err.line == 3
    assert err.reason.startswith(reason), err.reason
    assert str(err).startswith(f"configuration file syntax error: {PATH}:3: ")


def test_port_range_error_points_at_the_later_line() -> None:
    assert error("migration_port_max = 100\nmigration_port_min = 200").line == 2


# ---------------------------------------------------------------------- not-yet keys


def _other_value(key: Key) -> Any:
    default = key.default
    if key.kind is Kind.BOOL:
        return 0 if default == 1 else 1
    if key.kind in (Kind.INT, Kind.UINT, Kind.ANY):
        return (default if isinstance(default, int) else 0) + 1
    if key.kind is Kind.STRING_LIST:
        return ("something-else",)
    return "something-else"


NOT_YET = [key for key in QEMU_SCHEMA.keys.values() if not key.implemented]


@pytest.mark.parametrize("key", NOT_YET, ids=lambda k: k.name)
def test_not_yet_key_refused_unless_default(key: Key) -> None:
    err = error(f"\n{key.name} = {format_value(_other_value(key))}")
    assert (err.line, err.reason) == (2, f"'{key.name}' is not supported by pyvirtd yet")
    if key.default is not None:
        assert parse(f"{key.name} = {format_value(key.default)}") == QemuConfig()


def test_values_matching_what_pyvirt_does_are_accepted() -> None:
    text = 'security_driver = [ "none" ]\nnamespaces = [ ]\n'
    assert parse(text) == QemuConfig()
    assert error('security_driver = "selinux"').reason.startswith("'security_driver'")


def test_qemu_identity_and_confinement_keys() -> None:
    default = parse("")
    assert (default.user, default.group) == ("pyvirt-qemu", "pyvirt-qemu")
    assert default.dynamic_ownership and default.remember_owner
    assert default.seccomp_sandbox == 1
    cfg = parse('user = "+107"\ngroup = "kvm"\ndynamic_ownership = 0\nremember_owner = 0\n'
                "seccomp_sandbox = 0\n")
    assert (cfg.user, cfg.group, cfg.dynamic_ownership, cfg.remember_owner,
            cfg.seccomp_sandbox) == ("+107", "kvm", False, False, 0)
    assert parse("seccomp_sandbox = -1").seccomp_sandbox == 1  # libvirt's "QEMU default"
    assert "must be -1, 0 or 1" in error("seccomp_sandbox = 2").reason
    assert "invalid user or group" in error('user = "+x"').reason
    assert "invalid user or group" in error('group = ""').reason


def test_schema_covers_libvirts_qemu_conf_keys() -> None:
    # A sample of libvirt's qemu.conf across its sections.
    libvirt_keys = {
        "vnc_tls", "vnc_tls_x509_verify", "spice_tls", "chardev_tls_x509_cert_dir",
        "nbd_tls", "migrate_tls_x509_verify", "migrate_tls_force", "backup_tls_priority",
        "security_driver", "user", "group", "dynamic_ownership", "cgroup_device_acl",
        "save_image_format", "auto_shutdown_try_save", "hugetlbfs_mount", "max_core",
        "lock_manager", "max_queued", "seccomp_sandbox", "nvram", "namespaces",
        "swtpm_user", "capability_filters", "sched_core", "storage_use_nbdkit",
    }  # fmt: skip
    assert libvirt_keys <= set(QEMU_SCHEMA.keys)


# ------------------------------------------------------------------------- loading


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "qemu.conf"
    path.write_text('shared_filesystems = [ "/var/lib/pyvirt/shared" ]\n')
    assert load_qemu_config(str(path)).shared_filesystems == ("/var/lib/pyvirt/shared",)


def test_load_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "qemu.conf")
    with pytest.raises(SystemError_):
        load_qemu_config(missing)
    daemon = parse_daemon_config('state_dir = "/srv/s"', str(tmp_path / "pyvirtd.conf"))
    cfg = load_qemu_config(missing, daemon, allow_missing=True)
    assert cfg.state_dir == "/srv/s/qemu"


# ------------------------------------------------------------- example file and docs


def test_example_file_parses_to_defaults() -> None:
    assert parse_qemu_config(EXAMPLE.read_text(), PATH) == QemuConfig()


@pytest.mark.parametrize("key", list(QEMU_SCHEMA.keys.values()), ids=lambda k: k.name)
def test_example_file_shows_every_key_at_its_default(key: Key) -> None:
    lines = EXAMPLE.read_text().splitlines()
    expected = example_line(key)
    if expected is not None:
        assert expected in lines
    else:
        assert any(line == f"#{key.name} =" or line.startswith(f"#{key.name} = ") for line in lines)


def test_example_values_are_valid_when_uncommented() -> None:
    lines = [
        line[1:] for line in EXAMPLE.read_text().splitlines() if re.match(r"#[a-z_]+ = ", line)
    ]
    parse("\n".join(lines))


@pytest.mark.parametrize("key", list(QEMU_SCHEMA.keys.values()), ids=lambda k: k.name)
def test_docs_describe_every_key(key: Key) -> None:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith(f"| `{key.name}` |")]
    assert rows, f"docs/config.md has no row for {key.name}"
    status = "yes" if key.implemented else "not yet"
    assert any(f"| {status} |" in row for row in rows)
