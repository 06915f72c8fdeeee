"""pyvirt-lab up/down/status/exec on this machine, with a stand-in for pyvirtd.

The stand-in (``python -m http.server`` on each host's address and the daemon's port) lets
these tests check the lab itself: namespaces, bridge, mounts, sshd, process handling and
teardown, without depending on the daemon. Needs root, iproute2, util-linux and openssh.
The tests run in file order: failures from a clean machine first, then one lab shared by
the module, then ``down``, which must leave nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.lab import hosts, sshd
from pyvirt.lab.hosts import (
    LabHost,
    host_exec_argv,
    lab_down,
    lab_leftovers,
    lab_ssh_key,
    lab_status,
    lab_up,
)

STAND_IN = "{python} -m http.server {port} --bind {address} --directory {hostdir}"
TOOLS = ("ip", "nsenter", "unshare", "setsid", "ssh", "ssh-keygen")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS) or not any(
            p.is_file() for p in sshd.SSHD_CANDIDATES),
        reason="needs iproute2, util-linux and openssh",
    ),
    pytest.mark.timeout(120),
]


def cli(*args: str, daemon: str | None = STAND_IN) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(hosts.DAEMON_ENV, None)
    if daemon is not None:
        env[hosts.DAEMON_ENV] = daemon
    return subprocess.run(
        [sys.executable, "-m", "pyvirt.lab.hosts", *args],
        capture_output=True, text=True, env=env, timeout=90,
    )


def on_host(host: LabHost, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(host_exec_argv(host, list(argv)), capture_output=True, text=True,
                          timeout=30)


def ssh(host: LabHost, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sshd.ssh_argv(lab_ssh_key(), host.address, list(argv)),
                          capture_output=True, text=True, timeout=30)


def port_open(address: str, port: int = hosts.DAEMON_PORT) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def pids() -> dict[str, tuple[int | None, int | None]]:
    return {s.host.name: (s.daemon_pid, s.sshd_pid) for s in lab_status()}


# ------------------------------------------------------------ failures from a clean machine


@pytest.fixture
def clean_machine() -> None:
    if lab_leftovers():
        pytest.skip(f"a lab is already up on this machine: {lab_leftovers()}")


@pytest.mark.usefixtures("clean_machine")
def test_up_with_a_missing_daemon_fails_before_creating_anything() -> None:
    done = cli("up", daemon="/nonexistent/pyvirtd")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "error: daemon command not found or not executable: /nonexistent/pyvirtd\n"
    )
    assert lab_leftovers() == []


@pytest.mark.usefixtures("clean_machine")
def test_up_whose_daemon_dies_reports_its_log_and_rolls_back() -> None:
    dies = "{python} -c 'import sys; print(\"boom\"); sys.exit(3)'"
    done = cli("up", "--hosts", "1", daemon=dies)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: host1: pyvirtd exited during start-up; last lines of")
    assert "boom" in done.stderr
    assert "Traceback" not in done.stderr
    assert lab_leftovers() == []


# ----------------------------------------------------------------------- one shared lab


@pytest.fixture(scope="module")
def lab() -> Iterator[list[LabHost]]:
    try:
        yield lab_up(2, daemon_argv=STAND_IN.split())
    finally:
        lab_down()


def test_up_returns_the_hosts(lab: list[LabHost]) -> None:
    assert [(h.name, h.address, h.uri) for h in lab] == [
        ("host1", "10.77.0.1", "qemu+tcp://10.77.0.1/system"),
        ("host2", "10.77.0.2", "qemu+tcp://10.77.0.2/system"),
    ]
    for host in lab:
        assert host.pyvirtd_conf.is_file() and host.qemu_conf.is_file()
        assert f'host_uuid = "{host.host_uuid}"' in host.pyvirtd_conf.read_text()
    assert all(s.healthy for s in lab_status())


def test_root_namespace_reaches_every_host(lab: list[LabHost]) -> None:
    for host in lab:
        assert port_open(host.address), host.name


def test_hosts_reach_each_other(lab: list[LabHost]) -> None:
    probe = "import socket; socket.create_connection(('10.77.0.2', 16509), timeout=5).close()"
    done = on_host(lab[0], sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr


def test_each_host_has_its_own_address(lab: list[LabHost]) -> None:
    for host in lab:
        done = on_host(host, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        assert f"inet {host.address}/24" in done.stdout
        others = [h.address for h in lab if h is not host]
        assert not any(f"inet {a}/" in done.stdout for a in others)


def test_images_are_per_host_and_shared_is_common(lab: list[LabHost]) -> None:
    host1, host2 = lab
    assert on_host(host1, "sh", "-c", "echo one > /var/lib/pyvirt/images/only-on-1").returncode == 0
    assert on_host(host1, "sh", "-c", "echo both > /var/lib/pyvirt/shared/common").returncode == 0
    assert on_host(host1, "cat", "/var/lib/pyvirt/images/only-on-1").stdout == "one\n"
    assert on_host(host2, "test", "-e", "/var/lib/pyvirt/images/only-on-1").returncode == 1
    assert on_host(host2, "cat", "/var/lib/pyvirt/shared/common").stdout == "both\n"
    assert (host1.images_dir / "only-on-1").is_file()
    assert not (host2.images_dir / "only-on-1").exists()
    # The root namespace's view is untouched: the binds live in the hosts' namespaces.
    assert not Path("/var/lib/pyvirt/images/only-on-1").exists()


def test_exec_passes_exit_codes_through(lab: list[LabHost]) -> None:
    assert on_host(lab[0], "sh", "-c", "exit 7").returncode == 7
    assert cli("exec", "host1", "--", "sh", "-c", "exit 7").returncode == 7
    assert cli("exec", "2", "--", "true").returncode == 0
    assert cli("exec", "host1", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    done = cli("exec", "host2", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert "inet 10.77.0.2/24" in done.stdout


def test_exec_refuses_a_host_that_is_not_up(lab: list[LabHost]) -> None:
    done = cli("exec", "host9", "--", "true")
    assert (done.returncode, done.stderr) == (1, "error: host9 is not up (run: pyvirt-lab up)\n")


def test_ssh_with_the_lab_key_lands_in_the_host(lab: list[LabHost]) -> None:
    host1, host2 = lab
    assert on_host(host2, "sh", "-c", "echo two > /var/lib/pyvirt/images/only-on-2").returncode == 0
    done = ssh(host2, "ip -4 -o addr show dev eth0; cat /var/lib/pyvirt/images/only-on-2")
    assert done.returncode == 0, done.stderr
    assert "inet 10.77.0.2/24" in done.stdout
    assert done.stdout.endswith("two\n")
    assert ssh(host1, "test", "-e", "/var/lib/pyvirt/images/only-on-2").returncode == 1
    assert ssh(host1, "exit", "5").returncode == 5


def test_up_again_is_idempotent(lab: list[LabHost]) -> None:
    before = pids()
    first, second = cli("up", "--hosts", "2"), cli("up", "--hosts", "2")
    expected = "host1 10.77.0.1 qemu+tcp://10.77.0.1/system\nhost2 10.77.0.2 qemu+tcp://10.77.0.2/system\n"
    assert (first.returncode, first.stdout, first.stderr) == (0, expected, "")
    assert (second.returncode, second.stdout, second.stderr) == (0, expected, "")
    assert pids() == before  # healthy daemons and sshds are kept, not restarted


def test_status_lists_every_host(lab: list[LabHost]) -> None:
    done = cli("status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line, host in zip(lines, lab, strict=True):
        pattern = (rf"{host.name} {re.escape(host.address)} {re.escape(host.uri)} net=up "
                   r"pyvirtd=running:\d+ sshd=running:\d+")
        assert re.fullmatch(pattern, line), line


def test_a_killed_daemon_is_restarted_by_up(lab: list[LabHost]) -> None:
    before = pids()
    dead = before["host1"][0]
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while port_open(lab[0].address) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = cli("status")
    assert status.returncode == 1 and "host1 10.77.0.1" in status.stdout
    assert "pyvirtd=down" in status.stdout.splitlines()[0]
    assert status.stderr == "error: not healthy: host1 (repair with: pyvirt-lab up)\n"
    lab_up(2, daemon_argv=STAND_IN.split())
    after = pids()
    assert after["host1"][0] not in (None, dead)
    assert after["host2"] == before["host2"]
    assert port_open(lab[0].address)


def test_a_lost_network_is_repaired_by_up(lab: list[LabHost]) -> None:
    subprocess.run(["ip", "link", "del", lab[1].veth], check=True)
    assert not port_open(lab[1].address)
    lab_up(2, daemon_argv=STAND_IN.split())
    assert port_open(lab[1].address)
    assert ssh(lab[1], "true").returncode == 0
    done = on_host(lab[0], sys.executable, "-c",
                   "import socket; socket.create_connection(('10.77.0.2', 16509), 5).close()")
    assert done.returncode == 0, done.stderr


def test_down_stops_everything_and_leaves_nothing(lab: list[LabHost]) -> None:
    # A process started inside a host, like a QEMU the daemon would start.
    guest = subprocess.Popen(host_exec_argv(lab[0], ["sleep", "600"]), start_new_session=True)
    netns = os.stat(lab[0].netns_path).st_ino
    deadline = time.monotonic() + 5
    while os.stat(f"/proc/{guest.pid}/ns/net").st_ino != netns:  # nsenter has not run yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = [p for pair in pids().values() for p in pair if p is not None]
    assert len(started) == 4
    lab_down()
    guest.wait(timeout=5)  # down reaps it (it is our child), so its exit status is lost
    assert lab_leftovers() == []
    assert all(_gone(pid) for pid in [*started, guest.pid])
    # (No connection attempt now: without the bridge 10.77.0.x would route off this machine.)
    assert "pvlab" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True).stdout
    assert "pvlab" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert "pyvirt-lab" not in Path("/proc/self/mountinfo").read_text()
    assert not hosts.LAB_ROOT.exists()
    lab_down()  # twice is fine
    done = cli("down")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert lab_leftovers() == []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True
