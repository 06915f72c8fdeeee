"""pyvirtd on lab hosts (network + mount namespaces) with real QEMU guests.

Clients run from the root namespace over TCP, as an operator would: the stock virsh,
Debian's python3-libvirt, and pyvirt's own client. The guest's serial heartbeat is the
oracle that the guest really runs (and was not restarted).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LabHost, lab_ssh_key, lab_up
from tests.functional.daemon_util import run
from tests.functional.guestlog import SerialLog
from tests.functional.labutil import serial, two_hosts

pytestmark = [pytest.mark.qemu, pytest.mark.lab]


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


def virsh(host: LabHost, *args: str) -> tuple[int, str, str]:
    proc = run(["virsh", "-c", host.uri, *args], timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def wait_heartbeat(log: SerialLog, above: int = -1, timeout: float = 60) -> int:
    beat = asyncio.run(log.wait_heartbeat(above=above, timeout=timeout))
    return beat.n


def test_stock_virsh_lifecycle_over_tcp(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: define/start/suspend/resume/destroy/undefine through the stock virsh over TCP
    # with a real guest; heartbeats run, stop while paused and continue after resume.
    host = hosts[0]
    xml = tmp_path / "lab1.xml"
    xml.write_text(domain_xml("lab1", dirty_mb=8))
    assert virsh(host, "define", str(xml))[0] == 0
    assert virsh(host, "start", "lab1") == (0, "Domain 'lab1' started\n\n", "")
    log = serial(host, "lab1")
    first = wait_heartbeat(log, above=1)
    rc, out, _ = virsh(host, "list", "--all")
    assert rc == 0 and "lab1   running" in out
    assert virsh(host, "suspend", "lab1")[0] == 0
    paused = wait_heartbeat(log)
    time.sleep(1.0)
    assert wait_heartbeat(log) <= paused + 1
    assert virsh(host, "resume", "lab1")[0] == 0
    assert wait_heartbeat(log, above=paused + 1) > first
    assert log.corrupt_lines() == []
    assert virsh(host, "destroy", "lab1")[0] == 0
    assert virsh(host, "domstate", "--reason", "lab1")[1] == "shut off (destroyed)\n\n"
    assert virsh(host, "undefine", "lab1")[0] == 0


def test_python_libvirt_over_tcp(hosts: list[LabHost]) -> None:
    host = hosts[1]
    script = textwrap.dedent(f"""
        import libvirt
        c = libvirt.open({host.uri!r})
        d = c.createXML({domain_xml("lab2")!r}, 0)
        assert d.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert d.info()[1] == 256 * 1024
        assert [x.name() for x in c.listAllDomains()] == ["lab2"]
        d.destroy()
        assert c.listAllDomains() == []
        print("OK")
        """)
    proc = run(["/usr/bin/python3", "-c", script], timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_sigterm_keeps_guests_and_restart_reattaches(hosts: list[LabHost],
                                                     tmp_path: Path) -> None:
    # Checks: SIGTERM stops pyvirtd but not its guest; a new pyvirtd re-attaches it with
    # the same id and state, and the guest's counter never restarted.
    host = hosts[0]
    xml = tmp_path / "keep.xml"
    xml.write_text(domain_xml("keep"))
    assert virsh(host, "create", str(xml))[0] == 0
    log = serial(host, "keep")
    before = wait_heartbeat(log, above=1)
    _, ids_before, _ = virsh(host, "list")
    pid = int(host.daemon_pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    during = wait_heartbeat(log, above=before + 2)  # the guest keeps running alone
    lab_up(2)  # restarts the missing daemon
    _, ids_after, _ = virsh(host, "list")
    assert ids_after == ids_before
    after = wait_heartbeat(log, above=during)
    assert after > during > before
    assert virsh(host, "destroy", "keep")[0] == 0


def pyvirsh(uri: str, *args: str) -> tuple[int, str, str]:
    proc = run([str(Path(sys.executable).parent / "pyvirsh"), "-c", uri, *args], timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _without_cpu_time(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("CPU time:"))


def test_pyvirsh_prints_what_the_stock_virsh_prints(hosts: list[LabHost],
                                                     tmp_path: Path) -> None:
    # Checks: the same commands through pyvirsh and the installed virsh, same daemon, same
    # bytes (CPU time aside, which moves between the two calls).
    host = hosts[1]
    xml = tmp_path / "same.xml"
    xml.write_text(domain_xml("same"))
    assert pyvirsh(host.uri, "define", str(xml))[0] == 0
    for state in ("inactive", "running", "paused"):
        if state == "running":
            assert pyvirsh(host.uri, "start", "same")[1] == "Domain 'same' started\n\n"
        if state == "paused":
            assert pyvirsh(host.uri, "suspend", "same")[1] == "Domain 'same' suspended\n\n"
        for command in (["list", "--all"], ["list", "--name"], ["list", "--uuid"],
                        ["domstate", "--reason", "same"], ["domid", "same"],
                        ["domuuid", "same"], ["dumpxml", "same"], ["dumpxml", "--inactive",
                                                                   "same"],
                        ["dominfo", "same"], ["dominfo", "nosuch"], ["uri"], ["hostname"]):
            ours, theirs = pyvirsh(host.uri, *command), virsh(host, *command)
            assert ours[0] == theirs[0], command
            assert _without_cpu_time(ours[1]) == _without_cpu_time(theirs[1]), command
            assert ours[2] == theirs[2], command
    assert pyvirsh(host.uri, "destroy", "same")[1] == "Domain 'same' destroyed\n\n"
    assert pyvirsh(host.uri, "undefine", "same")[1] == "Domain 'same' has been undefined\n\n"


@pytest.mark.parametrize("transport", ["tcp", "unix", "ssh"])
def test_pyvirsh_lifecycle_over_each_transport(hosts: list[LabHost], tmp_path: Path,
                                               transport: str) -> None:
    # Checks: pyvirsh drives a real guest through its whole life over TCP, the daemon's
    # unix socket, and qemu+ssh (ssh into the host's namespaces, then the unix socket).
    host = hosts[0]
    sock = host.dir / "run" / "sock" / "libvirt-sock"
    uri = {
        "tcp": host.uri,
        "unix": f"qemu+unix:///system?socket={sock}",
        "ssh": f"qemu+ssh://root@{host.address}/system?keyfile={lab_ssh_key()}"
               f"&no_verify=1&socket={sock}",
    }[transport]
    name = f"t-{transport}"
    xml = tmp_path / f"{name}.xml"
    xml.write_text(domain_xml(name))
    rc, out, err = pyvirsh(uri, "define", str(xml))
    assert (rc, out) == (0, f"Domain '{name}' defined from {xml}\n\n")
    assert "error" not in err  # ssh may warn about the host key it adds (no_verify=1)
    assert pyvirsh(uri, "start", name)[1] == f"Domain '{name}' started\n\n"
    log = serial(host, name)
    beat = wait_heartbeat(log, above=0)
    assert pyvirsh(uri, "suspend", name)[1] == f"Domain '{name}' suspended\n\n"
    assert pyvirsh(uri, "domstate", "--reason", name)[1] == "paused (user)\n\n"
    assert pyvirsh(uri, "resume", name)[1] == f"Domain '{name}' resumed\n\n"
    assert wait_heartbeat(log, above=beat) > beat
    assert pyvirsh(uri, "shutdown", name)[1] == f"Domain '{name}' is being shutdown\n\n"
    deadline = time.monotonic() + 60
    while pyvirsh(uri, "domstate", name)[1] != "shut off\n\n":
        assert time.monotonic() < deadline, "guest did not shut down"
        time.sleep(0.3)
    assert pyvirsh(uri, "domstate", "--reason", name)[1] == "shut off (shutdown)\n\n"
    assert pyvirsh(uri, "undefine", name)[1] == f"Domain '{name}' has been undefined\n\n"
    rc, _, err = pyvirsh(uri, "dominfo", name)
    assert rc == 1 and "error: failed to get domain" in err
