"""pyvirt-lab hosts: the pure parts (names, UUIDs, config files, argv building, output)."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import pytest

from pyvirt.conf.daemon_conf import parse_daemon_config, parse_uuid
from pyvirt.conf.qemu_conf import parse_qemu_config
from pyvirt.lab import hosts, netns, sshd
from pyvirt.lab.hosts import (
    LAB_ROOT,
    HostStatus,
    daemon_template,
    expand_argv,
    host_exec_argv,
    host_line,
    lab_host,
    parse_host,
    render_pyvirtd_conf,
    render_qemu_conf,
)
from pyvirt.lab.netns import LabError

# ------------------------------------------------------------------------ naming


def test_lab_host_names_addresses_and_paths() -> None:
    host = lab_host(3)
    assert (host.name, host.index, host.address) == ("host3", 3, "10.77.0.3")
    assert host.uri == "qemu+tcp://10.77.0.3/system"
    assert host.netns == "pvlab-host3"
    assert host.netns_path == Path("/run/netns/pvlab-host3")
    assert host.veth == "pvlab-h3"
    assert host.mount_ns == LAB_ROOT / "mntns" / "host3"
    assert host.dir == LAB_ROOT / "host3"
    assert host.pyvirtd_conf == LAB_ROOT / "host3" / "etc" / "pyvirtd.conf"
    assert host.qemu_conf == LAB_ROOT / "host3" / "etc" / "qemu.conf"
    assert host.daemon_pidfile == LAB_ROOT / "host3" / "run" / "pyvirtd.pid"


def test_interface_names_fit_the_kernel_limit() -> None:
    # IFNAMSIZ is 16 with the NUL: 15 characters at most.
    assert len(netns.veth_name(hosts.MAX_HOSTS)) <= 15
    assert len(netns.BRIDGE) <= 15


def test_macs_are_fixed_per_host_and_locally_administered() -> None:
    assert netns.host_mac(1) == "02:70:76:00:00:01"
    assert netns.host_mac(32) == "02:70:76:00:00:20"
    assert len({netns.host_mac(i) for i in range(1, hosts.MAX_HOSTS + 1)}) == hosts.MAX_HOSTS
    assert netns.BRIDGE_MAC not in {netns.host_mac(i) for i in range(1, hosts.MAX_HOSTS + 1)}


@pytest.mark.parametrize(("spec", "index"), [("host1", 1), ("2", 2), ("host12", 12)])
def test_parse_host(spec: str, index: int) -> None:
    assert parse_host(spec) == index


@pytest.mark.parametrize("spec", ["host0", "0", "hostx", "", "host-1", "host99", "h1"])
def test_parse_host_refuses(spec: str) -> None:
    with pytest.raises(LabError, match="unknown host"):
        parse_host(spec)


# ------------------------------------------------------------------------ host UUID


def test_host_uuid_is_deterministic_and_distinct() -> None:
    uuids = [hosts.host_uuid(i) for i in range(1, hosts.MAX_HOSTS + 1)]
    assert uuids == [hosts.host_uuid(i) for i in range(1, hosts.MAX_HOSTS + 1)]
    assert len(set(uuids)) == len(uuids)
    assert uuids[0] == str(uuid.uuid5(hosts.LAB_UUID_NAMESPACE, "host1"))


def test_host_uuids_pass_libvirts_rules() -> None:
    for index in range(1, hosts.MAX_HOSTS + 1):
        value = hosts.host_uuid(index)
        assert parse_uuid(value) == value  # valid, canonical, not all digits equal


# ------------------------------------------------------------------------ config files


def test_pyvirtd_conf_parses_with_the_daemon_parser() -> None:
    host = lab_host(2)
    cfg = parse_daemon_config(render_pyvirtd_conf(host), str(host.pyvirtd_conf))
    assert cfg.listen_tcp is True
    assert cfg.listen_addr == "10.77.0.2"
    assert cfg.tcp_port == 16509
    assert cfg.auth_tcp == "none"
    assert cfg.unix_sock_dir == str(host.dir / "run" / "sock")
    assert cfg.host_uuid == hosts.host_uuid(2)
    assert cfg.state_dir == str(host.dir / "state")
    assert cfg.run_dir == str(host.dir / "run")
    assert cfg.log_dir == str(host.dir / "log")
    assert (cfg.keepalive_interval, cfg.keepalive_count) == (1, 3)
    assert cfg.qemu_conf == str(host.qemu_conf)  # found next to pyvirtd.conf


def test_qemu_conf_parses_with_the_driver_parser() -> None:
    host = lab_host(1)
    daemon = parse_daemon_config(render_pyvirtd_conf(host), str(host.pyvirtd_conf))
    cfg = parse_qemu_config(render_qemu_conf(host), str(host.qemu_conf), daemon)
    assert cfg.migration_address == "10.77.0.1"
    assert cfg.migration_host == "10.77.0.1"
    assert cfg.shared_filesystems == ("/var/lib/pyvirt/shared",)
    assert (cfg.keepalive_interval, cfg.keepalive_count) == (1, 3)
    assert cfg.state_dir == str(host.dir / "state" / "qemu")


def test_config_files_differ_only_by_host() -> None:
    one, two = render_pyvirtd_conf(lab_host(1)), render_pyvirtd_conf(lab_host(2))
    assert one != two
    assert one.replace("host1", "host2").replace("10.77.0.1", "10.77.0.2").replace(
        hosts.host_uuid(1), hosts.host_uuid(2)) == two


def test_sshd_config() -> None:
    text = sshd.render_sshd_config(
        "10.77.0.4", Path("/lab/host4/ssh/key"), Path("/lab/host4/run/sshd.pid"),
        Path("/lab/ssh/authorized_keys"),
    )
    lines = set(text.splitlines())
    assert {"ListenAddress 10.77.0.4:22", "HostKey /lab/host4/ssh/key",
            "PidFile /lab/host4/run/sshd.pid", "AuthorizedKeysFile /lab/ssh/authorized_keys",
            "PermitRootLogin yes", "StrictModes no", "UsePAM no",
            "PasswordAuthentication no"} <= lines


# ------------------------------------------------------------------------ argv


def test_host_exec_argv_enters_both_namespaces() -> None:
    host = lab_host(2)
    assert host_exec_argv(host, ["ip", "addr"]) == [
        "nsenter", "--net=/run/netns/pvlab-host2", f"--mount={LAB_ROOT}/mntns/host2",
        "--", "ip", "addr",
    ]
    assert host_exec_argv(host, ["pwd"], cwd="/tmp")[3] == "--wd=/tmp"


def test_default_daemon_is_pyvirtd_from_this_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hosts.DAEMON_ENV, raising=False)
    host = lab_host(1)
    assert expand_argv(daemon_template(), host) == [
        sys.executable, "-m", "pyvirt.daemon", "--listen", "--config", str(host.pyvirtd_conf),
    ]


def test_daemon_template_from_env_is_split_and_substituted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        hosts.DAEMON_ENV,
        "{python} -m http.server {port} --bind {address} --directory '{hostdir}/x y'",
    )
    host = lab_host(2)
    assert expand_argv(daemon_template(), host) == [
        sys.executable, "-m", "http.server", "16509", "--bind", "10.77.0.2",
        "--directory", f"{host.dir}/x y",
    ]


def test_explicit_daemon_argv_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hosts.DAEMON_ENV, "from-env")
    assert daemon_template(["explicit", "{host}"]) == ["explicit", "{host}"]


def test_expand_leaves_other_braces_alone() -> None:
    argv = expand_argv(["x{host}y", "{unknown}", "{", "{index}{index}", "{config"], lab_host(5))
    assert argv == ["xhost5y", "{unknown}", "{", "55", "{config"]


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_env_means_the_default(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(hosts.DAEMON_ENV, value)
    assert daemon_template() == hosts.default_daemon_template()


def test_unbalanced_quote_in_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hosts.DAEMON_ENV, "python3 -c 'oops")
    with pytest.raises(LabError, match="PYVIRT_LAB_DAEMON"):
        daemon_template()


def test_missing_daemon_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LabError, match=r"pyvirtd daemon is missing .*pyvirt\.daemon\.__main__"):
        hosts.check_daemon_available(hosts.default_daemon_template())


def test_missing_daemon_program_is_a_clear_error() -> None:
    with pytest.raises(LabError, match="not found or not executable: /nonexistent/pyvirtd"):
        hosts.check_daemon_available(["/nonexistent/pyvirtd", "--config", "{config}"])


def test_ssh_argv() -> None:
    argv = sshd.ssh_argv(Path("/k"), "10.77.0.1", ["true"])
    assert argv[:3] == ["ssh", "-i", "/k"]
    assert argv[-2:] == ["root@10.77.0.1", "true"]
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv


# ------------------------------------------------------------------------ output


def test_up_line_format() -> None:
    assert host_line(lab_host(1)) == "host1 10.77.0.1 qemu+tcp://10.77.0.1/system"


def test_status_line_format() -> None:
    up = HostStatus(lab_host(1), True, True, 101, 102)
    assert up.line() == (
        "host1 10.77.0.1 qemu+tcp://10.77.0.1/system net=up pyvirtd=running:101 sshd=running:102"
    )
    assert up.healthy
    down = HostStatus(lab_host(2), False, True, None, 7)
    assert down.line().endswith("net=down pyvirtd=down sshd=running:7")
    assert not down.healthy


def test_mountinfo_parsing_unescapes() -> None:
    info = (
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "90 27 0:4 mnt:[1] /var/lib/a\\040b rw - nsfs nsfs rw\n"
    )
    assert netns.mount_points(info) == ["/", "/var/lib/a b"]


# ------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyvirt-lab")
    hosts.register_commands(parser.add_subparsers(dest="cmd", required=True))
    return parser


def test_cli_registers_the_four_commands() -> None:
    parser = _parser()
    args = parser.parse_args(["up", "--hosts", "3", "-v"])
    assert (args.hosts, args.lab_verbose, callable(args.func)) == (3, True, True)
    assert parser.parse_args(["up"]).hosts == 2
    for name in ("down", "status"):
        assert callable(parser.parse_args([name]).func)
    args = parser.parse_args(["exec", "host2", "--", "ls", "-l"])
    assert args.host == "host2"
    assert [w for w in args.exec_argv if w != "--"] == ["ls", "-l"]


def test_cli_does_not_clobber_a_parent_dest_named_command() -> None:
    parser = argparse.ArgumentParser(prog="pyvirt-lab")
    hosts.register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["exec", "host1", "--", "true"])
    assert args.command == "exec"
    assert args.handler is args.func  # pyvirt.lab.cli dispatches on ``handler``


def test_cli_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["exec", "hostx", "--", "true"])
    assert args.func(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: unknown host 'hostx'")


def test_up_refuses_a_bad_host_count(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    args = _parser().parse_args(["up", "--hosts", "0"])
    assert args.func(args) == 1
    assert capsys.readouterr().err.startswith("error: --hosts must be between 1 and 32")
