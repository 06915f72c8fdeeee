"""Bridged interfaces with an unprivileged QEMU: the daemon opens the tap, QEMU inherits it.

``/dev/net/tun`` is root's only, and QEMU runs as ``pyvirt-qemu``: QEMU must get a queue of
its tap as a file descriptor (``-netdev tap,fd=N``), never open the device itself. Each test
runs pyvirtd in a network and mount namespace of its own with a bridge the test creates
there, so no interface of this machine is touched; the namespace (bridge, taps and all)
goes away with the last process in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.qemu.identity import DEFAULT_QEMU_USER
from tests.conftest import UNPRIVILEGED_PYTHON
from tests.functional.daemon_util import REAL_QEMU, DaemonHandle, run, running_daemon

BRIDGE = "pvt-br0"
GUEST_MAC = "52:54:00:7a:70:01"
#: the daemon in its own network and mount namespaces, with a bridge of its own; sysfs is
#: mounted again so that /sys/class/net shows that namespace (the daemon checks bridges there)
NETNS_WRAPPER = (
    "unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
    "mount -t sysfs sysfs /sys && ip link set lo up"
    f" && ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up && exec \"$@\"",
    "netns-daemon",
)
#: iPXE (the NIC's option ROM) asks for DHCP on a network boot: proof frames flow
SNIFFER = textwrap.dedent("""
    import socket, sys, time
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    sock.bind((sys.argv[1], 0))
    sock.settimeout(1)
    mac = bytes.fromhex(sys.argv[2].replace(":", ""))
    deadline = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(4096)
        except TimeoutError:
            continue
        if frame[6:12] == mac:
            sys.exit(0)
    sys.exit(1)
""")
_TUNGETIFF = 0x800454D2
_IFF_VNET_HDR = 0x4000
_SYS_PIDFD_GETFD = 438

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("virsh") is None
    or not os.path.exists("/dev/net/tun"), reason="needs root, unshare, virsh and tun")


def domain_xml(name: str, interfaces: list[str], domain_type: str = "qemu") -> str:
    # the first NIC boots the guest: its option ROM (iPXE) then sends DHCP requests
    boot = ["<boot order='1'/>", *[""] * (len(interfaces) - 1)]
    nics = "".join(
        f"<interface type='bridge'><mac address='52:54:00:7a:70:{i + 1:02x}'/>"
        f"<source bridge='{bridge}'/><model type='virtio'/>{boot[i]}</interface>"
        for i, bridge in enumerate(interfaces))
    return (f"<domain type='{domain_type}'><name>{name}</name>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{nics}<memballoon model='none'/></devices></domain>")


@contextlib.contextmanager
def netns_daemon(emulator: str) -> Iterator[DaemonHandle]:
    with running_daemon(emulator=emulator, wrapper=NETNS_WRAPPER) as daemon:
        yield daemon


def virsh(daemon: DaemonHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["virsh", "-c", daemon.uri, *args])


def in_netns(daemon: DaemonHandle, *argv: str, timeout: float = 30,
             ) -> subprocess.CompletedProcess[str]:
    return run(["nsenter", f"--net=/proc/{daemon.proc.pid}/ns/net", *argv], timeout=timeout)


def links(daemon: DaemonHandle) -> dict[str, dict[str, object]]:
    out = in_netns(daemon, "ip", "-j", "-d", "link", "show").stdout
    return {link["ifname"]: link for link in json.loads(out)}


def tun_fds(pid: int) -> list[int]:
    """The fds of ``pid`` that are open on /dev/net/tun."""
    found = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry) == "/dev/net/tun":
                found.append(int(entry.name))
    return found


def qemu_pid(daemon: DaemonHandle) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0] == REAL_QEMU.encode() and str(daemon.root).encode() in b" ".join(argv):
                return int(entry.name)
    raise AssertionError("no QEMU of this daemon")


def netdev_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("-netdev") + 1]


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def tap_flags_of(pid: int, fd: int) -> tuple[str, int]:
    """Name and flags of the tap behind QEMU's ``fd`` (a copy taken with pidfd_getfd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        assert copy >= 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(pidfd)
    try:
        got = fcntl.ioctl(copy, _TUNGETIFF, bytes(40))
    finally:
        os.close(copy)
    return got[:16].rstrip(b"\0").decode(), struct.unpack_from("H", got, 16)[0]


def qemu_user_may_open_tun() -> bool:
    """Whether QEMU's user could open /dev/net/tun itself (it must not need to)."""
    probe = subprocess.run(
        [*UNPRIVILEGED_PYTHON, "-c", "open('/dev/net/tun', 'rb')"], user=DEFAULT_QEMU_USER,
        group=DEFAULT_QEMU_USER, extra_groups=[], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.qemu
@pytest.mark.skipif(not os.path.exists(REAL_QEMU), reason="QEMU not installed")
def test_unprivileged_qemu_gets_its_tap_as_an_fd(tmp_path: Path) -> None:
    # Checks: a bridged guest starts with QEMU as pyvirt-qemu, which cannot open
    # /dev/net/tun: its argv says fd=N, that fd is a queue of the tap the daemon enslaved to
    # the bridge (with the virtio-net header, virtio NIC), the daemon kept no copy, the guest's
    # frames (iPXE's DHCP) reach the bridge, and the tap is gone once the guest is destroyed.
    assert not qemu_user_may_open_tun()
    with netns_daemon(REAL_QEMU) as daemon:
        xml = tmp_path / "tapguest.xml"
        xml.write_text(domain_xml("tapguest", [BRIDGE]))
        started = virsh(daemon, "create", str(xml))
        assert started.returncode == 0, started.stderr + daemon.log()
        pid = qemu_pid(daemon)
        assert uid_of(pid) == pwd.getpwnam(DEFAULT_QEMU_USER).pw_uid
        netdev = netdev_of(pid)
        assert netdev.startswith("tap,id=hostnet0,fd=") and "ifname" not in netdev, netdev
        fd = int(netdev.rsplit("fd=", 1)[1])
        assert tun_fds(pid) == [fd]
        name, flags = tap_flags_of(pid, fd)
        assert flags & _IFF_VNET_HDR
        assert f"<target dev='{name}'/>" in virsh(daemon, "dumpxml", "tapguest").stdout
        assert links(daemon)[name].get("master") == BRIDGE
        assert tun_fds(daemon.proc.pid) == []
        sniffed = in_netns(daemon, sys.executable, "-c", SNIFFER, BRIDGE, GUEST_MAC, "60",
                           timeout=90)
        assert sniffed.returncode == 0, "no frame from the guest reached the bridge"
        assert virsh(daemon, "destroy", "tapguest").returncode == 0
        assert name not in links(daemon)


def test_failed_starts_leave_no_tap_and_no_fd(tmp_path: Path) -> None:
    # Checks: a start that fails after the first tap and its queue exist (the second
    # interface's bridge is missing), and one whose QEMU exits before its monitor is up
    # (the queue was handed over), leave no tap in the namespace and no tun fd in the daemon.
    with netns_daemon("fake") as daemon:
        xml = tmp_path / "two.xml"
        xml.write_text(domain_xml("two", [BRIDGE, "pvt-missing"]))
        failed = virsh(daemon, "create", str(xml))
        assert failed.returncode != 0 and "pvt-missing" in failed.stderr, failed.stderr
        assert set(links(daemon)) == {"lo", BRIDGE}
        assert tun_fds(daemon.proc.pid) == []

        daemon.set_faults({"exit_before_monitor": 1})
        xml.write_text(domain_xml("dies", [BRIDGE]))
        failed = virsh(daemon, "create", str(xml))
        assert failed.returncode != 0, failed.stdout
        assert set(links(daemon)) == {"lo", BRIDGE}
        assert tun_fds(daemon.proc.pid) == []

        daemon.set_faults(None)  # and a start after them works, reusing the name
        xml.write_text(domain_xml("works", [BRIDGE]))
        assert virsh(daemon, "create", str(xml)).returncode == 0
        assert set(links(daemon)) == {"lo", BRIDGE, "vnet0"}
        assert virsh(daemon, "destroy", "works").returncode == 0
        assert set(links(daemon)) == {"lo", BRIDGE}
