"""pyvirtd.conf: schema, defaults, validation, example file and docs in step."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from pyvirt.conf.confparse import Key, Kind, example_line, format_value
from pyvirt.conf.daemon_conf import (
    DAEMON_SCHEMA,
    DEFAULT_CONFIG_PATH,
    DaemonConfig,
    LogFilter,
    LogOutput,
    default_log_outputs,
    load_daemon_config,
    parse_daemon_config,
    parse_uuid,
    resolve_host_uuid,
)
from pyvirt.errors import ConfSyntaxError, InvalidArgError, SystemError_

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "pyvirtd.conf"
DOCS = ROOT / "docs" / "config.md"
PATH = "/etc/pyvirt/pyvirtd.conf"
#: implemented keys whose default is derived rather than written in the table
DERIVED = {"unix_sock_dir", "qemu_conf"}


def parse(text: str) -> DaemonConfig:
    return parse_daemon_config(text, PATH)


def error(text: str) -> ConfSyntaxError:
    with pytest.raises(ConfSyntaxError) as info:
        parse(text)
    assert info.value.path == PATH
    return info.value


# ---------------------------------------------------------------------------- defaults


def test_empty_file_gives_dataclass_defaults() -> None:
    assert parse("") == DaemonConfig()
    assert load_daemon_config(None) == DaemonConfig()


def test_fields_are_exactly_the_implemented_keys() -> None:
    fields = [f.name for f in dataclasses.fields(DaemonConfig)]
    implemented = [key.name for key in DAEMON_SCHEMA.keys.values() if key.implemented]
    assert sorted(fields) == sorted(implemented)


@pytest.mark.parametrize(
    "key", [k for k in DAEMON_SCHEMA.keys.values() if k.implemented], ids=lambda k: k.name
)
def test_table_default_matches_dataclass_default(key: Key) -> None:
    if key.name in DERIVED:
        return
    assert DAEMON_SCHEMA.defaults()[key.name] == getattr(DaemonConfig(), key.name)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("listen_tcp", False),
        ("tcp_port", 16509),
        ("listen_addr", None),
        ("unix_sock_group", None),
        ("unix_sock_ro_perms", 0o777),
        ("unix_sock_rw_perms", 0o700),
        ("unix_sock_dir", "/run/pyvirt"),
        ("auth_unix_ro", "none"),
        ("auth_unix_rw", "none"),
        ("auth_tcp", "none"),
        ("max_clients", 5000),
        ("max_queued_clients", 1000),
        ("max_anonymous_clients", 20),
        ("min_workers", 5),
        ("max_workers", 20),
        ("prio_workers", 5),
        ("max_requests", 20),
        ("max_client_requests", 5),
        ("log_level", 3),
        ("log_filters", ()),
        ("log_outputs", ()),
        ("host_uuid", None),
        ("host_uuid_source", "smbios"),
        ("keepalive_interval", 5),
        ("keepalive_count", 5),
        ("state_dir", "/var/lib/pyvirt"),
        ("run_dir", "/run/pyvirt"),
        ("log_dir", "/var/log/pyvirt"),
        ("qemu_conf", "/etc/pyvirt/qemu.conf"),
    ],
)
def test_each_default(field: str, expected: object) -> None:
    assert getattr(parse(""), field) == expected


def test_derived_defaults_follow_run_dir_and_file_location() -> None:
    cfg = parse_daemon_config('run_dir = "/tmp/h1/run"', "/srv/h1/pyvirtd.conf")
    assert cfg.unix_sock_dir == "/tmp/h1/run"
    assert cfg.qemu_conf == "/srv/h1/qemu.conf"
    assert load_daemon_config(None).qemu_conf == "/etc/pyvirt/qemu.conf"
    assert DEFAULT_CONFIG_PATH == "/etc/pyvirt/pyvirtd.conf"


def test_deliberate_deviations_from_libvirtd() -> None:
    keys = DAEMON_SCHEMA.keys
    assert keys["auth_tcp"].default == "none"  # libvirtd: "sasl"
    assert keys["listen_tls"].default == 1  # as libvirtd (only with --listen)
    assert keys["audit_level"].default == 0  # libvirtd: 1


# ------------------------------------------------------------------------ valid values


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("listen_tcp = 1", "listen_tcp", True),
        ('tcp_port = "16599"', "tcp_port", 16599),
        ('listen_addr = "10.77.0.1"', "listen_addr", "10.77.0.1"),
        ('listen_addr = "[::1]"', "listen_addr", "::1"),
        ('listen_addr = "host1.lab"', "listen_addr", "host1.lab"),
        ('unix_sock_group = "libvirt"', "unix_sock_group", "libvirt"),
        ('unix_sock_ro_perms = "0770"', "unix_sock_ro_perms", 0o770),
        ('unix_sock_rw_perms = "770"', "unix_sock_rw_perms", 0o770),
        ('unix_sock_dir = "/tmp/s//x/"', "unix_sock_dir", "/tmp/s/x"),
        ('auth_tcp = "none"', "auth_tcp", "none"),
        ("max_clients = 1\nmax_anonymous_clients = 0", "max_clients", 1),
        ("max_queued_clients = 0", "max_queued_clients", 0),
        ("max_anonymous_clients = 0", "max_anonymous_clients", 0),
        ("min_workers = 0", "min_workers", 0),
        ("max_workers = 1\nmin_workers = 1", "max_workers", 1),
        ("prio_workers = 0", "prio_workers", 0),
        ("max_requests = 100", "max_requests", 100),
        ("max_client_requests = 50", "max_client_requests", 50),
        ("log_level = 1", "log_level", 1),
        ("log_level = 4", "log_level", 4),
        ('host_uuid_source = "machine-id"', "host_uuid_source", "machine-id"),
        ("keepalive_interval = -1", "keepalive_interval", -1),
        ("keepalive_count = 0", "keepalive_count", 0),
        ('state_dir = "/srv/state"', "state_dir", "/srv/state"),
        ('log_dir = "/srv/log"', "log_dir", "/srv/log"),
        ('qemu_conf = "/srv/q.conf"', "qemu_conf", "/srv/q.conf"),
    ],
)
def test_valid_settings(text: str, field: str, expected: object) -> None:
    assert getattr(parse(text), field) == expected


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("2E8D4D6A-1F30-4C4A-9B0B-2F0E6C1D5A01", "2e8d4d6a-1f30-4c4a-9b0b-2f0e6c1d5a01"),
        ("2e8d4d6a1f304c4a9b0b2f0e6c1d5a01", "2e8d4d6a-1f30-4c4a-9b0b-2f0e6c1d5a01"),
        ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_host_uuid_canonical(value: str, canonical: str) -> None:
    assert parse(f'host_uuid = "{value}"').host_uuid == canonical


def test_log_filters_and_outputs_are_parsed() -> None:
    cfg = parse(
        'log_filters = "1:qemu  4:object 3:rpc.*"\n'
        'log_outputs = "3:stderr 1:file:/var/log/p/d.log 2:syslog:pyvirtd"\n'
    )
    assert cfg.log_filters == (LogFilter(1, "qemu"), LogFilter(4, "object"), LogFilter(3, "rpc.*"))
    assert cfg.log_outputs == (
        LogOutput(3, "stderr"),
        LogOutput(1, "file", "/var/log/p/d.log"),
        LogOutput(2, "syslog", "pyvirtd"),
    )


def test_default_log_outputs() -> None:
    cfg = parse('log_level = 2\nlog_dir = "/srv/log"')
    assert default_log_outputs(cfg, daemonized=True) == (
        LogOutput(2, "file", "/srv/log/pyvirtd.log"),
    )
    assert default_log_outputs(cfg, daemonized=False) == (LogOutput(2, "stderr"),)
    given = parse('log_outputs = "4:stderr"')
    assert default_log_outputs(given, daemonized=True) == (LogOutput(4, "stderr"),)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("listen_tcp = 2", "value for 'listen_tcp' parameter must be 0 or 1"),
        ('listen_tcp = "1"', "expected a bool for 'listen_tcp' parameter"),
        ("tcp_port = 16509", "expected a string for 'tcp_port' parameter"),
        ('tcp_port = "libvirt"', "tcp_port: service names are not supported"),
        ('tcp_port = "0"', "tcp_port: port must be between 1 and 65535: 0"),
        ('tcp_port = "65536"', "tcp_port: port must be between 1 and 65535: 65536"),
        ('listen_addr = "999.1.1.1"', "listen_addr: not an IP address or host name"),
        ('unix_sock_group = ""', "unix_sock_group: must not be empty"),
        ('unix_sock_ro_perms = "0800"', "unix_sock_ro_perms: Failed to parse mode '0800'"),
        ('unix_sock_rw_perms = "rwx"', "unix_sock_rw_perms: Failed to parse mode 'rwx'"),
        ("unix_sock_rw_perms = 448", "expected a string for 'unix_sock_rw_perms' parameter"),
        ('unix_sock_dir = "run"', "unix_sock_dir: path must be absolute: 'run'"),
        ('auth_tcp = "sasl"', 'auth_tcp = "sasl" is not supported yet (only "none")'),
        ('auth_unix_rw = "polkit"', 'auth_unix_rw = "polkit" is not supported yet (only "none")'),
        ('auth_unix_ro = "sasl"', 'auth_unix_ro = "sasl" is not supported yet (only "none")'),
        ('auth_tcp = "kerberos"', "auth_tcp: unsupported auth kerberos"),
        ("max_clients = -1", "expected an unsigned integer for 'max_clients' parameter"),
        ("max_clients = 0", "'max_clients' must be greater than 0"),
        ("max_workers = 0", "'max_workers' must be greater than 0"),
        ("prio_workers = -1", "expected an unsigned integer for 'prio_workers' parameter"),
        ("min_workers = -5", "expected an unsigned integer for 'min_workers' parameter"),
        ("max_requests = 0", "'max_requests' must be greater than 0"),
        ("max_client_requests = 0", "'max_client_requests' must be greater than 0"),
        ('max_workers = "20"', "expected an unsigned integer for 'max_workers' parameter"),
        ("min_workers = 21", "min_workers (21) must not be greater than max_workers (20)"),
        ("max_workers = 4", "min_workers (5) must not be greater than max_workers (4)"),
        (
            "max_clients = 10",
            "max_anonymous_clients (20) must not be greater than max_clients (10)",
        ),
        ("log_level = 0", "log_level: must be 1 (debug), 2 (info), 3 (warning) or 4 (error)"),
        ("log_level = 5", "log_level: must be 1"),
        ('log_filters = "qemu"', "log_filters: 'qemu' must start with a level 1-4 and ':'"),
        ('log_filters = "5:qemu"', "log_filters: '5:qemu' must start with a level"),
        ('log_filters = "1:"', "log_filters: '1:' has no match string"),
        ('log_filters = "1:+qemu"', "log_filters: the '+' (stack trace) flag"),
        ('log_outputs = "1:journald"', "log_outputs: output 'journald' is not supported"),
        ('log_outputs = "1:file:rel.log"', "log_outputs: invalid output '1:file:rel.log'"),
        ('log_outputs = "1:syslog"', "log_outputs: invalid output '1:syslog'"),
        ('log_outputs = "1:stderr:x"', "log_outputs: invalid output '1:stderr:x'"),
        ('log_outputs = "stderr"', "log_outputs: 'stderr' must start with a level"),
        ('host_uuid = "00000000-0000-0000-0000-000000000000"', "host_uuid: invalid host UUID"),
        ('host_uuid = "ffffffff-ffff-ffff-ffff-ffffffffffff"', "host_uuid: invalid host UUID"),
        ('host_uuid = "01010101-0101-0101-0101-010101010101"', "host_uuid: invalid host UUID"),
        ('host_uuid = "not-a-uuid"', "host_uuid: invalid host UUID"),
        ('host_uuid = "2e8d4d6a-1f30-4c4a-9b0b-2f0e6c1d5a0"', "host_uuid: invalid host UUID"),
        ('host_uuid_source = "dmidecode"', "host_uuid_source: unknown host UUID source"),
        ("keepalive_interval = 0", "keepalive_interval: must be -1 (keepalive off)"),
        ("keepalive_interval = -2", "keepalive_interval: must be -1"),
        ("keepalive_count = -1", "expected an unsigned integer for 'keepalive_count' parameter"),
        ('state_dir = "var/lib"', "state_dir: path must be absolute"),
        ('qemu_conf = "qemu.conf"', "qemu_conf: path must be absolute"),
        ("foo = 1", "unknown key 'foo'"),
        ("max_worker = 1", "unknown key 'max_worker' (did you mean 'max_workers'?)"),
        ("key_files = [\"/k\"]", "'key_files' is not supported by pyvirtd yet"),
        ('tls_priority = "SECURE256"', "tls_priority: GnuTLS priority 'SECURE256' has no"),
        ('tls_port = "https"', "tls_port: service names are not supported"),
        ('ca_file = "cacert.pem"', "ca_file: path must be absolute"),
    ],
)
def test_errors_carry_file_and_line(text: str, reason: str) -> None:
    # The bad setting sits on line 3 behind a comment and a valid setting.
    err = error(f"# pyvirtd.conf\nmax_queued_clients = 1000\n{text}\n")
    assert err.line == 3
    assert err.reason.startswith(reason), err.reason
    assert str(err).startswith(f"configuration file syntax error: {PATH}:3: ")


def test_cross_check_points_at_the_later_line() -> None:
    assert error("max_workers = 8\n\nmin_workers = 9").line == 3
    assert error("min_workers = 9\n\nmax_workers = 8").line == 3


def test_syntax_error_line() -> None:
    err = error('max_workers = 8\nlog_filters = "1:qemu\n')
    assert (err.line, err.reason) == (2, "unterminated string")


# ---------------------------------------------------------------------- not-yet keys


def _other_value(key: Key) -> Any:
    """A well-typed value different from the key's default."""
    default = key.default
    if key.kind is Kind.BOOL:
        return 0 if default == 1 else 1
    if key.kind in (Kind.INT, Kind.UINT):
        return (default if isinstance(default, int) else 0) + 1
    if key.kind is Kind.STRING_LIST:
        return ("something-else",)
    return "something-else"


NOT_YET = [key for key in DAEMON_SCHEMA.keys.values() if not key.implemented]


@pytest.mark.parametrize("key", NOT_YET, ids=lambda k: k.name)
def test_not_yet_key_refused_unless_default(key: Key) -> None:
    err = error(f"\n{key.name} = {format_value(_other_value(key))}")
    assert (err.line, err.reason) == (2, f"'{key.name}' is not supported by pyvirtd yet")
    if key.default is not None:
        assert parse(f"{key.name} = {format_value(key.default)}") == DaemonConfig()


def test_not_yet_keys_include_the_tls_sasl_admin_and_audit_families() -> None:
    names = {key.name for key in NOT_YET}
    assert {"key_files", "cert_files", "tls_no_sanity_certificate"} <= names
    assert {"sasl_allowed_username_list", "access_drivers"} <= names
    assert {"audit_level", "audit_logging", "ovs_timeout", "admin_max_workers"} <= names


# ------------------------------------------------------------------------ overrides


def test_with_overrides_validates_like_the_file() -> None:
    cfg = parse("")
    changed = cfg.with_overrides(min_workers=10, max_workers=40, log_filters="1:qemu")
    assert (changed.min_workers, changed.max_workers) == (10, 40)
    assert changed.log_filters == (LogFilter(1, "qemu"),)
    assert cfg.max_workers == 20  # frozen original untouched
    with pytest.raises(InvalidArgError, match="min_workers \\(30\\) must not be greater"):
        cfg.with_overrides(min_workers=30)
    with pytest.raises(InvalidArgError, match="'max_workers' must be greater than 0"):
        cfg.with_overrides(max_workers=0)
    with pytest.raises(InvalidArgError, match="unknown key 'bogus'"):
        cfg.with_overrides(bogus=1)
    with pytest.raises(InvalidArgError, match="not supported by pyvirtd yet"):
        cfg.with_overrides(tls_no_sanity_certificate=1)


def test_tls_keys_have_libvirts_defaults() -> None:
    cfg = parse("")
    assert (cfg.listen_tls, cfg.tls_port, cfg.auth_tls) == (True, 16514, "none")
    assert cfg.cert_file == "/etc/pki/libvirt/servercert.pem"
    assert cfg.key_file == "/etc/pki/libvirt/private/serverkey.pem"
    assert cfg.ca_file == "/etc/pki/CA/cacert.pem"
    assert (cfg.crl_file, cfg.tls_allowed_dn_list) == (None, None)
    assert (cfg.tls_no_verify_certificate, cfg.tls_priority) == (False, "NORMAL")
    custom = parse('tls_allowed_dn_list = [ "C=GB,*" ]\ntls_priority = "@LIBVIRT,SYSTEM"')
    assert custom.tls_allowed_dn_list == ("C=GB,*",)
    assert custom.tls_priority == "@LIBVIRT,SYSTEM"


def test_with_overrides_keeps_other_values() -> None:
    cfg = parse('run_dir = "/tmp/r"\nmax_clients = 30')
    assert cfg.with_overrides(max_anonymous_clients=30).max_clients == 30
    assert cfg.with_overrides(listen_tcp=True).unix_sock_dir == "/tmp/r"


# ------------------------------------------------------------------------- loading


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "pyvirtd.conf"
    path.write_text("listen_tcp = 1\n")
    cfg = load_daemon_config(str(path))
    assert cfg.listen_tcp is True
    assert cfg.qemu_conf == str(tmp_path / "qemu.conf")


def test_load_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.conf")
    with pytest.raises(SystemError_, match="Failed to open file"):
        load_daemon_config(missing)
    assert load_daemon_config(missing, allow_missing=True).qemu_conf == str(tmp_path / "qemu.conf")


def test_load_reports_real_path(tmp_path: Path) -> None:
    path = tmp_path / "pyvirtd.conf"
    path.write_text("\nmax_workers = -1\n")
    with pytest.raises(ConfSyntaxError) as info:
        load_daemon_config(str(path))
    assert (info.value.path, info.value.line) == (str(path), 2)


# ------------------------------------------------------------------------- host UUID


def test_resolve_host_uuid_prefers_the_key(tmp_path: Path) -> None:
    cfg = parse('host_uuid = "2e8d4d6a-1f30-4c4a-9b0b-2f0e6c1d5a01"')
    assert resolve_host_uuid(cfg, str(tmp_path / "x"), str(tmp_path / "y")) == cfg.host_uuid


def test_resolve_host_uuid_from_sources(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("5c3e2a1b9d8f4e7a6b5c4d3e2f1a0b9c\n")
    smbios = tmp_path / "product_uuid"
    smbios.write_text("4C4C4544-0044-3010-8052-B2C04F4E3132\n")
    from_machine_id = "5c3e2a1b-9d8f-4e7a-6b5c-4d3e2f1a0b9c"
    from_smbios = "4c4c4544-0044-3010-8052-b2c04f4e3132"
    smbios_cfg = parse("")
    machine_cfg = parse('host_uuid_source = "machine-id"')
    assert resolve_host_uuid(smbios_cfg, str(machine_id), str(smbios)) == from_smbios
    assert resolve_host_uuid(machine_cfg, str(machine_id), str(smbios)) == from_machine_id
    smbios.write_text("00000000-0000-0000-0000-000000000000\n")  # firmware without one
    assert resolve_host_uuid(smbios_cfg, str(machine_id), str(smbios)) == from_machine_id


def test_resolve_host_uuid_falls_back_to_random(tmp_path: Path) -> None:
    found = resolve_host_uuid(parse(""), str(tmp_path / "a"), str(tmp_path / "b"))
    assert parse_uuid(found) == found


# ------------------------------------------------------------- example file and docs


def test_example_file_parses_to_defaults() -> None:
    assert parse_daemon_config(EXAMPLE.read_text(), PATH) == DaemonConfig()


@pytest.mark.parametrize("key", list(DAEMON_SCHEMA.keys.values()), ids=lambda k: k.name)
def test_example_file_shows_every_key_at_its_default(key: Key) -> None:
    lines = EXAMPLE.read_text().splitlines()
    expected = example_line(key)
    if expected is not None:
        assert expected in lines
    else:
        assert any(line.startswith(f"#{key.name} = ") for line in lines)


def test_example_values_are_valid_when_uncommented() -> None:
    # Uncomment every sample; only host_uuid's all-zero placeholder is meant to fail.
    lines = [
        line[1:]
        for line in EXAMPLE.read_text().splitlines()
        if re.match(r"#[a-z_]+ = ", line) and not line.startswith("#host_uuid ")
    ]
    keep = [line for line in lines if DAEMON_SCHEMA.keys[line.split()[0]].implemented]
    keep += [
        line
        for line in lines
        if (key := DAEMON_SCHEMA.keys[line.split()[0]]).default is not None and not key.implemented
    ]
    parse("\n".join(keep))


@pytest.mark.parametrize("key", list(DAEMON_SCHEMA.keys.values()), ids=lambda k: k.name)
def test_docs_describe_every_key(key: Key) -> None:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith(f"| `{key.name}` |")]
    assert rows, f"docs/config.md has no row for {key.name}"
    status = "yes" if key.implemented else "not yet"
    assert any(f"| {status} |" in row for row in rows)
