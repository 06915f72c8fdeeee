"""Transports: unix (default and -ro sockets), TCP on 127.0.0.1, and ssh through a stand-in.

The ssh tests never start sshd: the ssh program is a stand-in script
(:data:`tests.fakes.fake_remote.FAKE_SSH_SCRIPT`) that checks the option layout, then runs
the remote command with ``sh -c`` as sshd would.  That exercises the quoting and the
Python bridge end to end.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import pyvirt.uri
from pyvirt.client import ssh_bridge
from pyvirt.client.aio import AsyncConnection
from pyvirt.client.error import libvirtError
from pyvirt.client.transport import SSH_PROGRAM_ENV, remote_command, ssh_argv
from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.packet import (
    REMOTE_PROGRAM,
    Header,
    MessageStatus,
    MessageType,
    PacketDecoder,
    encode_packet,
)
from pyvirt.uri import parse_uri
from tests.fakes.fake_remote import Served, install_fake_ssh, serve, write_script

FAILING_SSH = """#!/bin/sh
echo "ssh: connect to host nohost port 22: Connection refused" >&2
exit 255
"""


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serve(tcp=True) as s:
        s.fake.add("g1", running=True)
        yield s


@pytest.fixture
def fake_ssh(served: Served, monkeypatch: pytest.MonkeyPatch) -> str:
    return install_fake_ssh(served.dir, monkeypatch.setenv)


def recorded_argv(served: Served) -> list[str]:
    """The argv the stand-in ssh was given (without its own name)."""
    return [part.decode() for part in (Path(served.dir) / "argv").read_bytes().split(b"\0")[:-1]]


def remote_dir_entries(served: Served) -> list[str]:
    return sorted(os.listdir(Path(served.dir) / "remote"))


# -- unix ------------------------------------------------------------------------------------
async def test_default_unix_sockets(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyvirt.uri, "DEFAULT_UNIX_SOCK_DIR", served.dir)
    conn = await AsyncConnection.open("qemu:///system")
    assert conn.transport.description == f"unix:{served.sock}"
    await (await conn.lookupByName("g1")).suspend()  # the rw socket allows writes
    await conn.close()
    ro = await AsyncConnection.open("qemu:///system", readonly=True)
    try:
        assert ro.transport.description == f"unix:{served.sock_ro}"
        dom = await ro.lookupByName("g1")
        with pytest.raises(libvirtError) as info:
            await dom.destroy()  # the daemon enforces the read-only socket
        assert info.value.get_error_code() == ErrorCode.OPERATION_DENIED
    finally:
        await ro.close()


async def test_missing_socket_is_system_error() -> None:
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open("qemu+unix:///system?socket=/nonexistent/pyvirt-sock")
    err = info.value
    assert (err.get_error_code(), err.get_error_domain()) == (38, 7)  # SYSTEM_ERROR, RPC
    assert str(err) == ("Failed to connect socket to '/nonexistent/pyvirt-sock': "
                        "No such file or directory")  # fmt: skip


# -- tcp -------------------------------------------------------------------------------------
async def test_tcp(served: Served) -> None:
    conn = await AsyncConnection.open(f"qemu+tcp://127.0.0.1:{served.tcp_port}/system")
    try:
        assert conn.transport.description == f"tcp:127.0.0.1:{served.tcp_port}"
        assert await conn.getHostname() == "fakehost"
        assert served.fake.last("CONNECT_OPEN")["name"] == "qemu:///system"
    finally:
        await conn.close()


async def test_tcp_refused(served: Served) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open(f"qemu+tcp://127.0.0.1:{port}/system")
    assert info.value.get_error_code() == ErrorCode.SYSTEM_ERROR
    assert str(info.value) == f"unable to connect to server at '127.0.0.1:{port}': " \
                              "Connection refused"  # fmt: skip


def test_tcp_default_port() -> None:
    assert pyvirt.uri.DEFAULT_TCP_PORT == 16509


# -- ssh argv and remote command -------------------------------------------------------------
def test_ssh_argv_full() -> None:
    uri = parse_uri("qemu+ssh://root@host2:2222/system?keyfile=/k/id&no_verify=1&no_tty=1"
                    "&socket=/s/sock")  # fmt: skip
    argv = ssh_argv(uri, False, "ssh")
    assert argv == ["ssh", "-p", "2222", "-l", "root", "-i", "/k/id",
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-T", "-o", "BatchMode=yes", "-e", "none", "host2", "--",
                    remote_command(uri, False)]  # fmt: skip
    assert shlex.split(argv[-1]) == ["python3", "-c", ssh_bridge.BRIDGE_SCRIPT, "/s/sock"]


def test_ssh_argv_minimal_and_readonly_socket() -> None:
    uri = parse_uri("qemu+ssh://host2/system")
    argv = ssh_argv(uri, True, "ssh")
    assert argv[:-1] == ["ssh", "-e", "none", "host2", "--"]
    assert shlex.split(argv[-1])[-1] == "/run/pyvirt/libvirt-sock-ro"


def test_ssh_program_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SSH_PROGRAM_ENV, "/opt/my-ssh")
    assert ssh_argv(parse_uri("qemu+ssh://h/system"), False)[0] == "/opt/my-ssh"
    assert ssh_argv(parse_uri("qemu+ssh://h/system"), False, "/x/ssh")[0] == "/x/ssh"


def test_netcat_remote_command_is_quoted() -> None:
    uri = parse_uri("qemu+ssh://h/system?netcat=/usr/bin/nc%20x;id&socket=/a%20b")
    assert shlex.split(remote_command(uri, False)) == ["/usr/bin/nc x;id", "-U", "/a b"]


@pytest.mark.parametrize("text", [
    "qemu+ssh://-oproxycommand=touch%20x/system",
    "qemu+ssh://-oProxyCommand=x@host/system",
])  # fmt: skip
def test_option_injection_refused(text: str) -> None:
    with pytest.raises(VirtError) as info:
        ssh_argv(parse_uri(text), False, "ssh")
    assert info.value.code == ErrorCode.INVALID_ARG
    assert "refusing ssh" in str(info.value)


def test_command_param_refused() -> None:
    with pytest.raises(VirtError) as info:
        ssh_argv(parse_uri("qemu+ssh://h/system?command=/bin/evil"), False, "ssh")
    assert info.value.code == ErrorCode.NO_SUPPORT


async def test_ssh_option_injection_via_open() -> None:
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open("qemu+ssh://-oproxycommand=x/system")
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG
    assert info.value.get_error_domain() == ErrorDomain.REMOTE


# -- ssh end to end through the stand-in -----------------------------------------------------
async def test_ssh_end_to_end_with_python_bridge(
    served: Served, fake_ssh: str, capfd: pytest.CaptureFixture[str]
) -> None:
    uri = f"qemu+ssh://admin@host2:2200/system?socket={served.sock}&no_verify=1"
    conn = await AsyncConnection.open(uri, ssh_program=fake_ssh)
    try:
        assert await conn.getHostname() == "fakehost"
        assert (await conn.lookupByName("g1")).ID() == 1
        assert served.fake.last("CONNECT_OPEN") == {"name": "qemu:///system", "flags": 0}
        argv = recorded_argv(served)
        assert argv[:4] == ["-p", "2200", "-l", "admin"] and argv[-3:-1] == ["host2", "--"]
        assert shlex.split(argv[-1]) == ["python3", "-c", ssh_bridge.BRIDGE_SCRIPT, served.sock]
    finally:
        await conn.close()
    proc = conn.transport.process
    assert proc is not None and proc.returncode is not None  # reaped
    assert "fake-ssh: pretend prompt" in capfd.readouterr().err  # stderr stays visible


async def test_ssh_readonly_uses_ro_socket(
    served: Served, fake_ssh: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyvirt.uri, "DEFAULT_UNIX_SOCK_DIR", served.dir)
    monkeypatch.setenv(SSH_PROGRAM_ENV, fake_ssh)
    conn = await AsyncConnection.open("qemu+ssh://host2/system", readonly=True)
    try:
        assert served.fake.last("CONNECT_OPEN")["flags"] == 1
        assert shlex.split(recorded_argv(served)[-1])[-1] == served.sock_ro
    finally:
        await conn.close()


async def test_ssh_hostile_socket_path_is_not_executed(served: Served, fake_ssh: str) -> None:
    # a socket that really exists under a name full of shell syntax: the bridge must reach
    # it, and the remote shell must run nothing it contains
    hostile = f"{served.dir}/a b;touch pwned;$(touch pwned2)`touch pwned3`'q\"&|"
    await served.server.listen_unix(hostile)
    quoted = urllib.parse.quote(hostile, safe="/")
    conn = await AsyncConnection.open(f"qemu+ssh://host2/system?socket={quoted}",
                                      ssh_program=fake_ssh)  # fmt: skip
    try:
        assert await conn.getType() == "QEMU"
    finally:
        await conn.close()
    assert remote_dir_entries(served) == []
    assert not any(Path(served.dir, name).exists() for name in ("pwned", "pwned2", "pwned3"))


async def test_ssh_hostile_missing_socket(served: Served, fake_ssh: str) -> None:
    target = f"/tmp/pwned-{uuid.uuid4().hex}"
    path = f"/tmp/a b;touch {target}"
    quoted = urllib.parse.quote(path, safe="/")
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open(f"qemu+ssh://host2/system?socket={quoted}",
                                   ssh_program=fake_ssh)  # fmt: skip
    assert not os.path.exists(target)
    err = info.value
    assert (err.get_error_code(), err.get_error_domain()) == (38, 7)
    assert str(err).startswith("End of file while reading data: ")
    assert f"Failed to connect socket to '{path}': No such file or directory" in str(err)
    assert str(err).endswith(": Input/output error")


async def test_ssh_netcat(served: Served, fake_ssh: str) -> None:
    conn = await AsyncConnection.open(
        f"qemu+ssh://host2/system?socket={served.sock}&netcat=nc", ssh_program=fake_ssh
    )
    try:
        assert await conn.getHostname() == "fakehost"
        assert shlex.split(recorded_argv(served)[-1]) == ["nc", "-U", served.sock]
    finally:
        await conn.close()


async def test_ssh_hostile_netcat_is_one_word(served: Served, fake_ssh: str) -> None:
    quoted = urllib.parse.quote("nc;touch pwned", safe="")
    with pytest.raises(libvirtError):
        await AsyncConnection.open(f"qemu+ssh://host2/system?netcat={quoted}",
                                   ssh_program=fake_ssh)  # fmt: skip
    assert remote_dir_entries(served) == []


async def test_ssh_exiting_early_reports_its_stderr(served: Served) -> None:
    failing = write_script(Path(served.dir) / "failing-ssh", FAILING_SSH)
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open("qemu+ssh://nohost/system", ssh_program=failing)
    assert info.value.get_error_code() == ErrorCode.SYSTEM_ERROR
    assert str(info.value) == ("End of file while reading data: ssh: connect to host nohost "
                               "port 22: Connection refused: Input/output error")  # fmt: skip


async def test_ssh_program_missing() -> None:
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open("qemu+ssh://h/system", ssh_program="/nonexistent/ssh")
    assert info.value.get_error_code() == ErrorCode.SYSTEM_ERROR
    assert str(info.value) == "Cannot run '/nonexistent/ssh': No such file or directory"


# -- the bridge script, run locally ----------------------------------------------------------
def _bridge(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pyvirt.client.ssh_bridge", *args],
                          input=stdin, capture_output=True, timeout=30, check=False)  # fmt: skip


async def test_bridge_main_relays_packets(served: Served) -> None:
    call = encode_packet(Header(REMOTE_PROGRAM, 1, 66, MessageType.CALL, 0, MessageStatus.OK))
    result = await asyncio.to_thread(_bridge, served.sock, stdin=call)
    assert result.returncode == 0, result.stderr
    packets = PacketDecoder().feed(result.stdout)
    assert packets[0].header.proc == 66 and packets[0].header.type == MessageType.REPLY
    assert packets[0].payload == b"\0\0\0\1\0\0\0\0"  # types = [NONE]


def test_bridge_main_errors(tmp_path: Path) -> None:
    result = _bridge(str(tmp_path / "missing"))
    assert result.returncode == 1
    assert b"Failed to connect socket to" in result.stderr
    assert _bridge().returncode == 2


def test_bridge_script_is_what_main_runs() -> None:
    assert callable(ssh_bridge.load_bridge())
    assert 'f"' not in ssh_bridge.BRIDGE_SCRIPT and ":=" not in ssh_bridge.BRIDGE_SCRIPT
