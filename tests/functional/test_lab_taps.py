"""A bridged guest between lab hosts, its QEMU unprivileged: taps reach QEMU as fds.

Each lab host gets a guest bridge in its own network namespace (created here, removed at the
end). The guest's QEMU (``pyvirt-qemu``, which may not open ``/dev/net/tun``) holds a queue
of the tap its daemon made, on the source, on the migration destination (started through the
same path) and after the destination's daemon restarted (it reattaches without needing the
fd: QEMU holds it). Every tap goes when its QEMU does.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LabHost
from pyvirt.qemu.identity import DEFAULT_QEMU_USER
from tests.functional.labutil import serial, two_hosts
from tests.functional.migrationutil import (
    beat,
    cleanup,
    host_run,
    qemu_pids,
    restart_daemon,
    virsh,
)

pytestmark = [pytest.mark.qemu, pytest.mark.lab]

GUEST_BRIDGE = "pvg-br0"
NIC = ("<interface type='bridge'><mac address='52:54:00:7a:71:01'/>"
       f"<source bridge='{GUEST_BRIDGE}'/><model type='virtio'/></interface>\n    ")


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


@pytest.fixture
def guest_bridges(hosts: list[LabHost]) -> Iterator[None]:
    try:
        for host in hosts:
            host_run(host, "ip", "link", "add", GUEST_BRIDGE, "type", "bridge")
            host_run(host, "ip", "link", "set", GUEST_BRIDGE, "up")
        yield
    finally:
        for host in hosts:
            host_run(host, "ip", "link", "del", GUEST_BRIDGE, check=False)


def links(host: LabHost) -> dict[str, dict[str, object]]:
    return {link["ifname"]: link
            for link in json.loads(host_run(host, "ip", "-j", "link", "show"))}


def tun_fds(pid: int) -> dict[int, str]:
    """fd → tap name, for every fd of ``pid`` open on /dev/net/tun."""
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        if os.readlink(entry) == "/dev/net/tun":
            info = Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text()
            iff = [line.split()[1] for line in info.splitlines() if line.startswith("iff:")]
            found[int(entry.name)] = iff[0] if iff else ""
    return found


def daemon_pid(host: LabHost) -> int:
    return int(host.daemon_pidfile.read_text())


def check_guest_tap(host: LabHost, name: str) -> tuple[int, str]:
    """The guest's QEMU on ``host`` runs unprivileged and holds its tap, which is on the
    guest bridge; the daemon holds none. Returns (QEMU pid, tap name)."""
    (pid,) = qemu_pids(host, name)
    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(DEFAULT_QEMU_USER).pw_uid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.startswith("tap,id=hostnet0,fd=") and "ifname" not in netdev, netdev
    fd = int(netdev.rsplit("fd=", 1)[1])
    held = tun_fds(pid)
    assert list(held) == [fd], held
    tap = held[fd]
    assert links(host)[tap].get("master") == GUEST_BRIDGE
    assert f"<target dev='{tap}'/>" in virsh(host.uri, "dumpxml", name)[1]
    assert tun_fds(daemon_pid(host)) == {}
    return pid, tap


@pytest.mark.usefixtures("guest_bridges")
def test_bridged_guest_migrates_and_survives_a_restart(hosts: list[LabHost],
                                                       tmp_path: Path) -> None:
    # Checks: source, destination and reattached destination each have QEMU hold its tap
    # as an inherited fd (argv fd=N, no ifname), on the guest bridge; the source's tap goes
    # with the source QEMU, the destination's with destroy; the heartbeat continues.
    src, dst = hosts
    name = "tapmig"
    xml = tmp_path / f"{name}.xml"
    xml.write_text(domain_xml(name).replace("<memballoon", NIC + "<memballoon", 1))
    try:
        rc, _, err = virsh(src.uri, "create", str(xml))
        assert rc == 0, err
        last = beat(serial(src, name), above=2)
        _, src_tap = check_guest_tap(src, name)

        rc, _, err = virsh(src.uri, "migrate", "--live", name, dst.uri)
        assert rc == 0, err
        assert beat(serial(dst, name), above=last) > last
        dst_pid, dst_tap = check_guest_tap(dst, name)
        assert src_tap not in links(src)

        restart_daemon(dst)  # reattach: the new daemon never had the fd, QEMU keeps it
        assert virsh(dst.uri, "domstate", name)[1] == "running\n\n"
        assert check_guest_tap(dst, name) == (dst_pid, dst_tap)

        assert virsh(dst.uri, "destroy", name)[0] == 0
        assert dst_tap not in links(dst)
    finally:
        for host in hosts:
            cleanup(host, name)
