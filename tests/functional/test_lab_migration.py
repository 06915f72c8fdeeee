"""Live migration of real guests between two lab hosts, driven by the stock virsh.

One worker, ``_migrate``, runs every successful case. Its checks:
  - the guest's heartbeat counter continues on the destination from where it stopped on
    the source (same boot: no restart), and no CORRUPT line ever appears;
  - at every ~100 ms sample during the migration at most one host runs the guest;
  - states and reasons end as libvirt's: destination running (migrated) or paused with
    --suspend, source shut off (migrated) or gone when undefined;
  - persistent definitions follow --persistent / --undefinesource;
  - nothing is left behind: no QEMU for the guest on the source, no migration job.
Failure cases check that the guest keeps running on the source and the destination
holds no trace of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pyvirt
from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LabHost, lab_up
from tests.functional.daemon_util import run
from tests.functional.guestlog import SerialLog
from tests.functional.labutil import serial, two_hosts

pytestmark = [pytest.mark.qemu, pytest.mark.lab]


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


def virsh(uri: str, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    proc = run(["virsh", "-c", uri, *args], timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def beat(log: SerialLog, above: int = -1, timeout: float = 60) -> int:
    return asyncio.run(log.wait_heartbeat(above=above, timeout=timeout)).n


@dataclass
class RunnerSampler:
    """Samples both hosts' view of the guest every ~100 ms (oracle: one runner)."""

    uris: list[str]
    name: str
    samples: list[list[str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RunnerSampler:
        self._conns = [pyvirt.open(uri) for uri in self.uris]
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            row = []
            for conn in self._conns:
                try:
                    row.append("running" if conn.lookupByName(self.name).state()[0] == 1
                               else "other")
                except pyvirt.libvirtError:
                    row.append("absent")
            self.samples.append(row)
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self._conns:
            conn.close()
        assert self.samples, "no samples taken"
        both = [row for row in self.samples if row.count("running") > 1]
        assert not both, f"two hosts ran the guest: {both[:3]}"


def _start_guest(host: LabHost, name: str, tmp: Path, persistent: bool = False,
                 dirty_mb: int = 16) -> SerialLog:
    xml = tmp / f"{name}.xml"
    xml.write_text(domain_xml(name, dirty_mb=dirty_mb))
    if persistent:
        assert virsh(host.uri, "define", str(xml))[0] == 0
        assert virsh(host.uri, "start", name)[0] == 0
    else:
        assert virsh(host.uri, "create", str(xml))[0] == 0
    log = serial(host, name)
    beat(log, above=2)
    return log


def _migrate(hosts: list[LabHost], tmp: Path, name: str, *options: str,
             persistent: bool = False) -> tuple[LabHost, LabHost]:
    src, dst = hosts
    src_log = _start_guest(src, name, tmp, persistent)
    with RunnerSampler([src.uri, dst.uri], name):
        rc, _, err = virsh(src.uri, "migrate", *options, name, dst.uri)
    assert rc == 0, err
    last_on_src = src_log.last()
    assert last_on_src is not None
    dst_log = serial(dst, name)
    first = beat(dst_log, above=last_on_src.n)  # the counter continues: same boot
    assert first > last_on_src.n
    first_beat = dst_log.heartbeats()[0]
    assert first_beat.n >= last_on_src.n and first_beat.t_ms >= last_on_src.t_ms
    assert src_log.corrupt_lines() == [] and dst_log.corrupt_lines() == []
    return src, dst


def _cleanup(host: LabHost, name: str) -> None:
    virsh(host.uri, "destroy", name)
    virsh(host.uri, "undefine", name)


def test_migrate_live_normal(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = _migrate(hosts, tmp_path, "m-normal", "--live", "--verbose")
    assert virsh(dst.uri, "domstate", "--reason", "m-normal")[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", "m-normal")[0] == 1  # transient: gone from the source
    _cleanup(dst, "m-normal")


def test_migrate_live_p2p_and_back(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = _migrate(hosts, tmp_path, "m-p2p", "--live", "--p2p")
    assert virsh(dst.uri, "domstate", "--reason", "m-p2p")[1] == "running (migrated)\n\n"
    rc, _, err = virsh(dst.uri, "migrate", "--live", "--p2p", "m-p2p", src.uri)
    assert rc == 0, err
    log = serial(src, "m-p2p")
    assert beat(log, above=(log.last().n if log.last() else 0)) > 0  # type: ignore[union-attr]
    assert virsh(src.uri, "domstate", "--reason", "m-p2p")[1] == "running (migrated)\n\n"
    _cleanup(src, "m-p2p")


def test_migrate_persistent_undefinesource(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = _migrate(hosts, tmp_path, "m-pers", "--live", "--persistent",
                        "--undefinesource", persistent=True)
    rc, out, _ = virsh(dst.uri, "dominfo", "m-pers")
    assert rc == 0 and "Persistent:     yes" in out
    assert virsh(src.uri, "dominfo", "m-pers")[0] == 1  # undefined on the source
    _cleanup(dst, "m-pers")


def test_migrate_keeps_source_definition(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = _migrate(hosts, tmp_path, "m-keep", "--live", persistent=True)
    assert virsh(src.uri, "domstate", "--reason", "m-keep")[1] == "shut off (migrated)\n\n"
    out = virsh(dst.uri, "dominfo", "m-keep")[1]
    assert "Persistent:     no" in out  # no --persistent: transient on the destination
    stats = virsh(src.uri, "domjobinfo", "--completed", "m-keep")[1]
    assert "Completed" in stats and "Outgoing migration" in stats
    assert "Memory total:     256" in stats  # the guest's RAM, as QEMU counted it
    _cleanup(dst, "m-keep")
    _cleanup(src, "m-keep")


def test_migrate_suspend_leaves_destination_paused(hosts: list[LabHost],
                                                   tmp_path: Path) -> None:
    src, dst = hosts
    _start_guest(src, "m-susp", tmp_path)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--suspend", "m-susp", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-susp")[1] == "paused\n\n"
    assert virsh(dst.uri, "resume", "m-susp")[0] == 0
    log = serial(dst, "m-susp")
    beat(log, above=log.last().n if log.last() else 0)  # type: ignore[union-attr]
    _cleanup(dst, "m-susp")


def test_migrate_offline_moves_definition(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    xml = tmp_path / "m-off.xml"
    xml.write_text(domain_xml("m-off"))
    assert virsh(src.uri, "define", str(xml))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--offline", "--persistent", "m-off", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-off")[1] == "shut off\n\n"
    assert virsh(src.uri, "domstate", "m-off")[1] == "shut off\n\n"
    _cleanup(dst, "m-off")
    _cleanup(src, "m-off")


def _assert_still_on_source(src: LabHost, dst: LabHost, name: str) -> None:
    assert virsh(src.uri, "domstate", name)[1] == "running\n\n"
    log = serial(src, name)
    last = log.last()
    assert last is not None and beat(log, above=last.n) > last.n
    assert virsh(dst.uri, "dominfo", name)[0] == 1  # no half-created domain
    assert not _qemu_pids(dst, name)


def _qemu_pids(host: LabHost, name: str) -> list[int]:
    pids = []
    netns = os.stat(host.netns_path).st_ino
    for entry in Path("/proc").iterdir():
        try:
            if os.stat(entry / "ns" / "net").st_ino != netns:
                continue
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and f"guest={name},".encode() in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("mode", [[], ["--p2p"]])
def test_refused_same_host(hosts: list[LabHost], tmp_path: Path, mode: list[str]) -> None:
    src = hosts[0]
    _start_guest(src, "m-same", tmp_path)
    other_uri = f"qemu+unix:///system?socket={src.dir}/run/sock/libvirt-sock"
    rc, _, err = virsh(src.uri, "migrate", "--live", *mode, "m-same", other_uri)
    assert rc == 1 and "Attempt to migrate guest to the same host" in err, err
    assert virsh(src.uri, "domstate", "m-same")[1] == "running\n\n"
    _cleanup(src, "m-same")


def test_refused_destination_unreachable(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    _start_guest(src, "m-unreach", tmp_path)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--p2p", "m-unreach",
                       "qemu+tcp://10.77.0.1:1/system")
    assert rc == 1 and "error:" in err
    _assert_still_on_source(src, dst, "m-unreach")
    _cleanup(src, "m-unreach")


def test_refused_name_clash_on_destination(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    _start_guest(src, "m-clash", tmp_path)
    other = tmp_path / "other.xml"
    other.write_text(domain_xml("m-clash"))  # same name, another uuid
    assert virsh(dst.uri, "define", str(other))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--live", "m-clash", dst.uri)
    assert rc == 1 and "already exists" in err, err
    assert virsh(src.uri, "domstate", "m-clash")[1] == "running\n\n"
    assert virsh(dst.uri, "domstate", "m-clash")[1] == "shut off\n\n"
    _cleanup(dst, "m-clash")
    _cleanup(src, "m-clash")


def _slow_migration(src: LabHost, dst: LabHost, name: str, tmp: Path,
                    *extra: str) -> threading.Thread:
    _start_guest(src, name, tmp, dirty_mb=64)
    result: dict[str, tuple[int, str, str]] = {}

    def go() -> None:
        result["r"] = virsh(src.uri, "migrate", "--live", "--bandwidth", "1", *extra, name,
                            dst.uri)

    thread = threading.Thread(target=go)
    thread.result = result  # type: ignore[attr-defined]
    thread.start()
    deadline = time.monotonic() + 30
    while not _qemu_pids(dst, name):
        assert time.monotonic() < deadline, "destination QEMU never started"
        time.sleep(0.1)
    time.sleep(1.0)
    return thread


def test_destination_qemu_killed_mid_migration(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-kill", tmp_path)
    for pid in _qemu_pids(dst, "m-kill"):
        os.kill(pid, signal.SIGKILL)
    thread.join(120)
    rc, _, err = thread.result["r"]  # type: ignore[attr-defined]
    assert rc == 1 and "error:" in err
    _assert_still_on_source(src, dst, "m-kill")
    _cleanup(src, "m-kill")


def test_domjobabort_cancels(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-abort", tmp_path, "--p2p")
    rc, out, _ = virsh(src.uri, "domjobinfo", "m-abort")
    assert rc == 0 and "Unbounded" in out and "Outgoing migration" in out
    assert virsh(src.uri, "domjobabort", "m-abort")[0] == 0
    thread.join(120)
    rc, _, err = thread.result["r"]  # type: ignore[attr-defined]
    assert rc == 1 and "cancel" in err.lower(), err
    _assert_still_on_source(src, dst, "m-abort")
    # never paused before the abort: the reason stays what it was (as libvirt)
    assert virsh(src.uri, "domstate", "--reason", "m-abort")[1] == "running (booted)\n\n"
    _cleanup(src, "m-abort")


def test_python_libvirt_migrate_to_uri3_p2p(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    _start_guest(src, "m-py", tmp_path)
    script = (
        "import libvirt\n"
        f"c = libvirt.open({src.uri!r})\n"
        "d = c.lookupByName('m-py')\n"
        f"d.migrateToURI3({dst.uri!r}, {{}}, "
        "libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)\n"
        "print('OK')\n")
    proc = run(["/usr/bin/python3", "-c", script], timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    assert virsh(dst.uri, "domstate", "--reason", "m-py")[1] == "running (migrated)\n\n"
    _cleanup(dst, "m-py")


def test_unsafe_local_disk_refused(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    image = Path("/var/lib/pyvirt/images/m-disk.qcow2")
    create = ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"]
    from pyvirt.lab.hosts import host_exec_argv
    assert run(host_exec_argv(src, create)).returncode == 0
    xml = tmp_path / "m-disk.xml"
    xml.write_text(domain_xml("m-disk", disk=image, disk_format="qcow2"))
    assert virsh(src.uri, "create", str(xml))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--live", "m-disk", dst.uri)
    assert rc == 1 and "Migration without shared storage is unsafe" in err, err
    assert virsh(src.uri, "domstate", "m-disk")[1] == "running\n\n"
    _cleanup(src, "m-disk")
    run(host_exec_argv(src, ["rm", "-f", str(image)]))


def test_tuning_commands_reach_qemu(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: migrate-setmaxdowntime / -compcache change QEMU's own parameters (read back
    # from QEMU by the get commands); migrate-setspeed is kept for the next migration.
    src = hosts[0]
    _start_guest(src, "m-tune", tmp_path)
    assert virsh(src.uri, "migrate-getmaxdowntime", "m-tune")[1] == "300\n\n"  # QEMU's
    assert virsh(src.uri, "migrate-setmaxdowntime", "m-tune", "1234")[0] == 0
    assert virsh(src.uri, "migrate-getmaxdowntime", "m-tune")[1] == "1234\n\n"
    assert virsh(src.uri, "migrate-compcache", "m-tune", "--size", "1048576")[0] == 0
    rc, out, _ = virsh(src.uri, "migrate-compcache", "m-tune")
    assert rc == 0 and "1.000 MiB" in out, out
    assert virsh(src.uri, "migrate-getspeed", "m-tune")[1] == "8796093022207\n\n"
    assert virsh(src.uri, "migrate-setspeed", "m-tune", "5")[0] == 0
    assert virsh(src.uri, "migrate-getspeed", "m-tune")[1] == "5\n\n"
    _cleanup(src, "m-tune")


def test_bandwidth_limits_the_transfer(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --bandwidth 1 reaches QEMU: the job's measured bandwidth stays near 1 MiB/s.
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-bw", tmp_path)
    time.sleep(2)
    out = virsh(src.uri, "domjobinfo", "m-bw")[1]
    line = next(ln for ln in out.splitlines() if ln.startswith("Memory bandwidth:"))
    value, unit = line.split()[2], line.split()[3]
    assert unit in ("KiB/s", "MiB/s") and (unit == "KiB/s" or float(value) < 2.5), line
    assert virsh(src.uri, "domjobabort", "m-bw")[0] == 0
    thread.join(120)
    _assert_still_on_source(src, dst, "m-bw")
    _cleanup(src, "m-bw")


# -- daemons dying mid-migration: the journal is read back ------------------------------------

def _stop_daemon(host: LabHost, sig: int = signal.SIGTERM) -> None:
    pid = int(host.daemon_pidfile.read_text())
    os.kill(pid, sig)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _restart_daemon(host: LabHost, crash_at: str | None = None) -> None:
    """Restart ``host``'s pyvirtd, optionally with a test crash point armed."""
    if host.daemon_pidfile.exists():
        _stop_daemon(host)
    if crash_at:
        os.environ["PYVIRT_TEST_CRASH_PHASE"] = crash_at
    try:
        lab_up(2)
    finally:
        os.environ.pop("PYVIRT_TEST_CRASH_PHASE", None)


def _wait_daemon_gone(host: LabHost, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while host.daemon_pidfile.exists():
        pid = int(host.daemon_pidfile.read_text() or 0)
        if not Path(f"/proc/{pid}").exists():
            return
        assert time.monotonic() < deadline, "daemon did not exit"
        time.sleep(0.1)


def test_source_daemon_killed_during_perform(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: SIGKILL of the source pyvirtd mid-migration; after its restart the guest
    # runs only on the source and the destination holds nothing.
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-srckill", tmp_path, "--p2p")
    _stop_daemon(src, signal.SIGKILL)
    thread.join(120)
    assert thread.result["r"][0] == 1  # type: ignore[attr-defined]
    lab_up(2)
    _assert_still_on_source(src, dst, "m-srckill")
    _cleanup(src, "m-srckill")


def test_destination_daemon_killed_during_perform(hosts: list[LabHost],
                                                  tmp_path: Path) -> None:
    # Checks: SIGKILL of the destination pyvirtd mid-migration; the source notices the dead
    # link, cancels and keeps the guest; the restarted destination cleans up its QEMU.
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-dstkill", tmp_path, "--p2p")
    _stop_daemon(dst, signal.SIGKILL)
    thread.join(120)
    rc, _, err = thread.result["r"]  # type: ignore[attr-defined]
    assert rc == 1, err
    lab_up(2)
    _assert_still_on_source(src, dst, "m-dstkill")
    _cleanup(src, "m-dstkill")


def test_source_daemon_dies_after_finish(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: the source pyvirtd dies right after journaling Confirm (the destination has
    # finished); after restart the source QEMU is stopped, the guest runs only on the
    # destination and its heartbeat continues there.
    src, dst = hosts
    _restart_daemon(src, crash_at="out:confirm3")
    log = _start_guest(src, "m-late", tmp_path)
    rc, _, _ = virsh(src.uri, "migrate", "--live", "--p2p", "m-late", dst.uri)
    assert rc == 1  # the daemon vanished under virsh
    _wait_daemon_gone(src)
    lab_up(2)
    assert virsh(dst.uri, "domstate", "--reason", "m-late")[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", "m-late")[0] == 1
    assert not _qemu_pids(src, "m-late")
    last = log.last()
    assert last is not None
    assert beat(serial(dst, "m-late"), above=last.n) > last.n
    _cleanup(dst, "m-late")


def test_destination_daemon_dies_in_finish(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: the destination pyvirtd dies in Finish (guest received, not yet resumed);
    # the source waits for it, the restarted destination resumes the guest, the source
    # learns it and shuts its copy off: one runner, on the destination.
    src, dst = hosts
    _restart_daemon(dst, crash_at="in:finish3")
    _start_guest(src, "m-fin", tmp_path)
    result: dict[str, tuple[int, str, str]] = {}
    thread = threading.Thread(target=lambda: result.update(
        r=virsh(src.uri, "migrate", "--live", "--p2p", "m-fin", dst.uri)))
    with RunnerSampler([src.uri], "m-fin"):
        thread.start()
        _wait_daemon_gone(dst)
        lab_up(2)
        thread.join(120)
    rc, _, err = result["r"]
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "--reason", "m-fin")[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", "m-fin")[0] == 1
    assert not _qemu_pids(src, "m-fin")
    _cleanup(dst, "m-fin")


def test_migrate_p2p_tunnelled(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks (besides _migrate's): no migration port is opened on the destination; the
    # data went through the daemons' RPC connection.
    _, dst = _migrate(hosts, tmp_path, "m-tun", "--live", "--p2p", "--tunnelled",
                      "--verbose")
    assert virsh(dst.uri, "domstate", "--reason", "m-tun")[1] == "running (migrated)\n\n"
    _cleanup(dst, "m-tun")


def test_pyvirsh_migrate_modes(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: pyvirsh itself migrates normal, p2p and p2p+tunnelled, back and forth.
    src, dst = hosts
    log = _start_guest(src, "m-pv", tmp_path)
    pyvirsh = str(Path(sys.executable).parent / "pyvirsh")
    route = [(src, dst, []), (dst, src, ["--p2p"]), (src, dst, ["--p2p", "--tunnelled"])]
    for frm, to, extra in route:
        proc = run([pyvirsh, "-c", frm.uri, "migrate", "--live", "--verbose", *extra, "m-pv",
                    to.uri], timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "Migration: [100 %]" in proc.stderr
        assert virsh(to.uri, "domstate", "--reason", "m-pv")[1] == "running (migrated)\n\n"
        assert virsh(frm.uri, "dominfo", "m-pv")[0] == 1
    assert log.corrupt_lines() == [] and serial(dst, "m-pv").corrupt_lines() == []
    _cleanup(dst, "m-pv")


def test_pyvirsh_direct_to_a_plain_qemu(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks pyvirt's --direct extension: the source migrates straight to a QEMU someone
    # started with -incoming (no daemon there); the source ends shut off, the destination
    # QEMU reports running, and the guest's counter continues there.
    from pyvirt.lab.hosts import host_exec_argv

    src, dst = hosts
    log = _start_guest(src, "m-dir", tmp_path)
    argv = _source_argv(src, "m-dir", tmp_path)
    qmp = tmp_path / "dst-qmp.sock"
    dst_log = tmp_path / "dst-serial.log"
    argv = [a.replace(str(src.dir / "log" / "qemu" / "m-dir-serial0.log"), str(dst_log))
            for a in argv]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off", "-incoming", "tcp:10.77.0.2:49999"]
    errors = open(tmp_path / "dst-qemu.err", "wb")  # noqa: SIM115 - QEMU writes it
    dest = subprocess.Popen(host_exec_argv(dst, argv), stdout=subprocess.DEVNULL,
                            stderr=errors)
    try:
        deadline = time.monotonic() + 20
        while not qmp.exists():
            assert time.monotonic() < deadline and dest.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        assert dest.poll() is None, (tmp_path / "dst-qemu.err").read_text()
        assert _qmp_status(qmp) == "inmigrate"  # QEMU is up and listening
        pyvirsh = str(Path(sys.executable).parent / "pyvirsh")
        proc = run([pyvirsh, "-c", src.uri, "migrate", "--live", "--direct", "m-dir",
                    "qemu+tcp://unused/system", "--migrateuri", "tcp:10.77.0.2:49999"])
        assert proc.returncode == 0, proc.stderr
        assert virsh(src.uri, "dominfo", "m-dir")[0] == 1  # transient: gone, migrated
        assert _qmp_status(qmp) == "running"
        last = log.last()
        assert last is not None
        assert beat(SerialLog(dst_log), above=last.n) > last.n
    finally:
        dest.kill()
        dest.wait()
        errors.close()


def _source_argv(host: LabHost, name: str, tmp: Path) -> list[str]:
    """The source QEMU's argv (from its log), made runnable elsewhere: own run paths, no -S."""
    import shlex

    lines = (host.dir / "log" / "qemu" / f"{name}.log").read_text().splitlines()
    line = [ln for ln in lines if "qemu-system-x86_64 " in ln][-1]
    words = shlex.split(line)
    argv = words[words.index("/usr/bin/qemu-system-x86_64"):]
    out: list[str] = []
    skip = 0
    for i, word in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if word in ("-S",):
            continue
        if word in ("-pidfile", "-mon") or (word == "-chardev" and "charmonitor" in argv[i + 1]):
            skip = 1
            continue
        out.append(word)
    return out


def _qmp_status(path: Path) -> str:
    import json
    import socket as sk

    with sk.socket(sk.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b'{"execute": "qmp_capabilities"}')
        while b"return" not in reader.readline():
            pass
        sock.sendall(b'{"execute": "query-status"}')
        while True:
            reply = json.loads(reader.readline())
            if "return" in reply:
                return str(reply["return"]["status"])


# -- every option shows its effect on the QEMUs ------------------------------------------------

def qmp(host: LabHost, name: str, command: str) -> Any:
    """Ask the guest's QEMU through the daemon (virsh qemu-monitor-command, QMP)."""
    import json

    rc, out, err = virsh(host.uri, "qemu-monitor-command", name,
                         json.dumps({"execute": command}))
    assert rc == 0, err
    return json.loads(out)["return"]


def _capabilities(host: LabHost, name: str) -> dict[str, bool]:
    return {c["capability"]: c["state"] for c in qmp(host, name, "query-migrate-capabilities")}


@pytest.mark.parametrize(("options", "both", "source_only", "params"), [
    (["--compressed"], {"xbzrle": True}, {}, {}),
    (["--comp-methods", "xbzrle", "--comp-xbzrle-cache", "8388608"], {"xbzrle": True}, {},
     {"xbzrle-cache-size": 8388608}),
    (["--auto-converge", "--auto-converge-initial", "30", "--auto-converge-increment", "15"],
     {}, {"auto-converge": True}, {"cpu-throttle-initial": 30, "cpu-throttle-increment": 15}),
    (["--parallel", "--parallel-connections", "4"], {"multifd": True}, {},
     {"multifd-channels": 4}),
    (["--parallel", "--comp-methods", "zstd"], {"multifd": True}, {},
     {"multifd-compression": "zstd"}),
    (["--postcopy"], {"postcopy-ram": True}, {}, {}),
], ids=["compressed", "xbzrle-cache", "auto-converge", "parallel", "parallel-zstd",
        "postcopy"])
def test_option_reaches_qemu(hosts: list[LabHost], tmp_path: Path, options: list[str],
                             both: dict[str, bool], source_only: dict[str, bool],
                             params: dict[str, Any]) -> None:
    # Checks: while the migration runs, each QEMU has exactly the capabilities and the
    # source the parameters the option implies (asked over QMP through the daemons);
    # migrate-setspeed during the migration lifts the 1 MiB/s limit at once; the guest
    # arrives and runs.
    src, dst = hosts
    name = "m-opt"
    thread = _slow_migration(src, dst, name, tmp_path, "--p2p", *options)
    src_caps, dst_caps = _capabilities(src, name), _capabilities(dst, name)
    for cap, state in {**both, **source_only}.items():
        assert src_caps[cap] is state, (cap, src_caps)
    for cap, state in both.items():
        assert dst_caps[cap] is state, (cap, dst_caps)
    for cap in source_only:
        assert dst_caps[cap] is False
    src_params = qmp(src, name, "query-migrate-parameters")
    assert src_params["max-bandwidth"] == 1024 * 1024
    for key, value in params.items():
        assert src_params[key] == value, (key, src_params[key])
    assert virsh(src.uri, "migrate-setspeed", name, "100000")[0] == 0
    assert qmp(src, name, "query-migrate-parameters")["max-bandwidth"] == 100000 * 1024 * 1024
    thread.join(180)
    rc, _, err = thread.result["r"]  # type: ignore[attr-defined]
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    _cleanup(dst, name)


@pytest.mark.parametrize("client", ["virsh", "pyvirsh"])
def test_timeout_suspends_a_guest_that_dirties_too_fast(hosts: list[LabHost], tmp_path: Path,
                                                        client: str) -> None:
    # Checks: a guest dirtying faster than --bandwidth allows never converges; --timeout 3
    # suspends it on the source, the migration then completes, and the guest runs on the
    # destination (it was running when the migration began).
    src, dst = hosts
    name = f"m-to-{client}"
    _start_guest(src, name, tmp_path, dirty_mb=96)
    program = "virsh" if client == "virsh" else str(Path(sys.executable).parent / "pyvirsh")
    began = time.monotonic()
    proc = run([program, "-c", src.uri, "migrate", "--live", "--timeout", "3", "--bandwidth",
                "40", name, dst.uri], timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began > 3  # it did not converge before the timeout
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", name)[0] == 1
    _cleanup(dst, name)


class ResumeEvents:
    """Records the destination's RESUMED lifecycle events (detail 3 = post-copy)."""

    def __init__(self, uri: str, name: str) -> None:
        self.details: list[int] = []
        self._conn = pyvirt.open(uri)
        self._name = name

        def callback(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            if dom.name() == self._name and event == 4:  # RESUMED
                self.details.append(detail)

        self._handle = self._conn.domainEventRegisterAny(None, 0, callback, None)

    def close(self) -> None:
        self._conn.domainEventDeregisterAny(self._handle)
        self._conn.close()


@pytest.mark.parametrize("how", ["after-precopy", "migrate-postcopy"])
def test_postcopy_switch(hosts: list[LabHost], tmp_path: Path, how: str) -> None:
    # Checks: a guest that cannot converge within --bandwidth moves by post-copy, switched
    # either by --postcopy-after-precopy (virsh reacts to the iteration event) or by
    # `virsh migrate-postcopy` while it runs; the destination resumes it in post-copy mode,
    # the heartbeat continues there, no CORRUPT line, and one runner at every sample.
    src, dst = hosts
    name = f"m-pc-{how}"
    log = _start_guest(src, name, tmp_path, dirty_mb=96)
    events = ResumeEvents(dst.uri, name)
    extra = ["--postcopy-after-precopy"] if how == "after-precopy" else []
    result: dict[str, tuple[int, str, str]] = {}
    thread = threading.Thread(target=lambda: result.update(r=virsh(
        src.uri, "migrate", "--live", "--postcopy", "--bandwidth", "40", *extra, name,
        dst.uri)))
    with RunnerSampler([src.uri, dst.uri], name):
        thread.start()
        if how == "migrate-postcopy":
            time.sleep(2)
            assert virsh(src.uri, "migrate-postcopy", name)[0] == 0
        thread.join(180)
    events.close()
    rc, _, err = result["r"]
    assert rc == 0, err
    assert 3 in events.details, events.details  # RESUMED_POSTCOPY on the destination
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    last = log.last()
    assert last is not None
    dst_log = serial(dst, name)
    assert beat(dst_log, above=last.n) > last.n
    assert log.corrupt_lines() == [] and dst_log.corrupt_lines() == []
    _cleanup(dst, name)


def test_migrate_postcopy_refused_without_flag(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-nopc", tmp_path)
    rc, _, err = virsh(src.uri, "migrate-postcopy", "m-nopc")
    assert rc == 1 and "VIR_MIGRATE_POSTCOPY" in err, err
    assert virsh(src.uri, "domjobabort", "m-nopc")[0] == 0
    thread.join(120)
    _assert_still_on_source(src, dst, "m-nopc")
    _cleanup(src, "m-nopc")


def test_dname_listen_address_migrateuri(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --dname renames on arrival; --listen-address and --migrateuri choose where the
    # destination QEMU listens and where the source sends (the migration works through them).
    src, dst = hosts
    _start_guest(src, "m-name", tmp_path)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--dname", "m-renamed",
                       "--listen-address", "10.77.0.2", "--migrateuri", "tcp://10.77.0.2:49300",
                       "m-name", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "--reason", "m-renamed")[1] == "running (migrated)\n\n"
    assert virsh(dst.uri, "dominfo", "m-name")[0] == 1
    _cleanup(dst, "m-renamed")


def test_xml_host_side_change_accepted_abi_change_refused(hosts: list[LabHost],
                                                          tmp_path: Path) -> None:
    src, dst = hosts
    _start_guest(src, "m-xml", tmp_path)
    live = virsh(src.uri, "dumpxml", "--migratable", "m-xml")[1]
    titled = tmp_path / "titled.xml"
    titled.write_text(live.replace("</name>", "</name>\n  <title>moved</title>", 1))
    bigger = tmp_path / "bigger.xml"
    bigger.write_text(live.replace("<vcpu placement='static'>1</vcpu>",
                                   "<vcpu placement='static'>2</vcpu>"))
    rc, _, err = virsh(src.uri, "migrate", "--live", "--xml", str(bigger), "m-xml", dst.uri)
    assert rc == 1 and "guest ABI" in err, err
    assert virsh(src.uri, "domstate", "m-xml")[1] == "running\n\n"
    rc, _, err = virsh(src.uri, "migrate", "--live", "--xml", str(titled), "m-xml", dst.uri)
    assert rc == 0, err
    assert "<title>moved</title>" in virsh(dst.uri, "dumpxml", "m-xml")[1]
    _cleanup(dst, "m-xml")


def test_persistent_xml(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    _start_guest(src, "m-pxml", tmp_path)
    inactive = virsh(src.uri, "dumpxml", "--migratable", "m-pxml")[1]
    pxml = tmp_path / "persistent.xml"
    pxml.write_text(inactive.replace("</name>", "</name>\n  <description>kept</description>",
                                     1))
    rc, _, err = virsh(src.uri, "migrate", "--live", "--persistent", "--persistent-xml",
                       str(pxml), "m-pxml", dst.uri)
    assert rc == 0, err
    assert "<description>kept</description>" in \
        virsh(dst.uri, "dumpxml", "--inactive", "m-pxml")[1]
    assert "<description>kept</description>" not in virsh(dst.uri, "dumpxml", "m-pxml")[1]
    _cleanup(dst, "m-pxml")


def test_change_protection_refuses_redefinition(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    thread = _slow_migration(src, dst, "m-prot", tmp_path, "--change-protection")
    xml = tmp_path / "redefine.xml"
    xml.write_text(virsh(src.uri, "dumpxml", "--inactive", "m-prot")[1])
    rc, _, err = virsh(src.uri, "define", str(xml))
    assert rc == 1 and "migration job" in err, err
    assert virsh(src.uri, "domjobabort", "m-prot")[0] == 0
    thread.join(120)
    _assert_still_on_source(src, dst, "m-prot")
    _cleanup(src, "m-prot")


def test_unsafe_cache_on_shared_storage(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks libvirt's safety rule: a disk on shared storage with cache=writeback is
    # refused without --unsafe; with --unsafe the migration proceeds and the guest arrives.
    from pyvirt.lab.hosts import host_exec_argv

    src, dst = hosts
    image = Path("/var/lib/pyvirt/shared/m-cache.qcow2")
    create = ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"]
    assert run(host_exec_argv(src, create)).returncode == 0
    xml = tmp_path / "m-cache.xml"
    xml.write_text(domain_xml("m-cache", disk=image, disk_format="qcow2")
                   .replace("cache='none'", "cache='writeback'"))
    assert virsh(src.uri, "create", str(xml))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--live", "m-cache", dst.uri)
    assert rc == 1 and "cache other than none or directsync" in err, err
    rc, _, err = virsh(src.uri, "migrate", "--live", "--unsafe", "m-cache", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-cache")[1] == "running\n\n"
    _cleanup(dst, "m-cache")
    run(host_exec_argv(src, ["rm", "-f", str(image)]))


def _admin(host: LabHost, *args: str) -> str:
    admin = f"libvirtd:///system?socket={host.dir}/run/sock/libvirt-admin-sock"
    proc = run(["virt-admin", "-c", admin, *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _migrate_in_thread(src: LabHost, dst: LabHost, name: str,
                       *extra: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def go() -> None:
        began = time.monotonic()
        result["r"] = virsh(src.uri, "migrate", "--live", "--p2p", *extra, name, dst.uri)
        result["s"] = time.monotonic() - began

    thread = threading.Thread(target=go)
    thread.start()
    return thread, result


def test_concurrent_migrations_and_max_workers(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks the spec's concurrency rule: a migration holds one source worker during
    # Perform. With the default pool two guests migrate at the same time; with
    # max_workers = 1 (set at run time with virt-admin) the second waits its turn and
    # then succeeds instead of failing.
    src, dst = hosts
    for name in ("m-c1", "m-c2"):
        _start_guest(src, name, tmp_path, dirty_mb=8)
    first, r1 = _migrate_in_thread(src, dst, "m-c1", "--bandwidth", "30")
    second, r2 = _migrate_in_thread(src, dst, "m-c2", "--bandwidth", "30")
    deadline = time.monotonic() + 30
    while not (_qemu_pids(dst, "m-c1") and _qemu_pids(dst, "m-c2")):
        assert time.monotonic() < deadline, "the two migrations did not run at once"
        time.sleep(0.05)
    first.join(180)
    second.join(180)
    assert r1["r"][0] == 0 and r2["r"][0] == 0, (r1, r2)
    for name in ("m-c1", "m-c2"):  # back to the source with a one-worker pool there
        _cleanup(dst, name)
        _start_guest(src, name, tmp_path, dirty_mb=8)
    _admin(src, "srv-threadpool-set", "libvirtd", "--min-workers", "1", "--max-workers", "1")
    try:
        first, r1 = _migrate_in_thread(src, dst, "m-c1", "--bandwidth", "30")
        time.sleep(1.0)
        second, r2 = _migrate_in_thread(src, dst, "m-c2", "--bandwidth", "30")
        time.sleep(1.0)
        assert not _qemu_pids(dst, "m-c2")  # waiting for the only worker, not failing
        first.join(180)
        second.join(180)
        assert r1["r"][0] == 0 and r2["r"][0] == 0, (r1, r2)
    finally:
        _admin(src, "srv-threadpool-set", "libvirtd", "--max-workers", "20",
               "--min-workers", "5")
    for name in ("m-c1", "m-c2"):
        assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
        _cleanup(dst, name)


def test_graphicsuri(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --graphicsuri reaches QEMU's client_migrate_info for a SPICE guest (QEMU
    # accepts it and the guest moves); an unknown scheme is refused before anything moves.
    src, dst = hosts
    xml = tmp_path / "m-gfx.xml"
    xml.write_text(domain_xml("m-gfx").replace(
        "<memballoon", "<graphics type='spice' autoport='yes'/>\n    <memballoon"))
    assert virsh(src.uri, "create", str(xml))[0] == 0
    beat(serial(src, "m-gfx"), above=1)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--graphicsuri", "ftp://10.77.0.2",
                       "m-gfx", dst.uri)
    assert rc == 1 and "unknown graphics type ftp" in err, err
    assert virsh(src.uri, "domstate", "m-gfx")[1] == "running\n\n"
    rc, _, err = virsh(src.uri, "migrate", "--live", "--graphicsuri",
                       "spice://10.77.0.2:5900", "m-gfx", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-gfx")[1] == "running\n\n"
    _cleanup(dst, "m-gfx")


def test_postcopy_link_lost_leaves_both_sides_paused(hosts: list[LabHost],
                                                     tmp_path: Path) -> None:
    # Checks: the link breaks after the post-copy switchover; neither host discards or
    # resumes its part of the guest: both report paused (post-copy failed), both QEMUs
    # still exist, and the migration command reports the failure.
    src, dst = hosts
    name = "m-pcfail"
    _start_guest(src, name, tmp_path, dirty_mb=96)
    result: dict[str, tuple[int, str, str]] = {}
    thread = threading.Thread(target=lambda: result.update(r=virsh(
        src.uri, "migrate", "--live", "--p2p", "--postcopy", "--bandwidth", "5",
        "--postcopy-bandwidth", "1", name,
        dst.uri, timeout=240)))
    thread.start()
    deadline = time.monotonic() + 30
    while not _qemu_pids(dst, name):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    assert virsh(src.uri, "migrate-postcopy", name)[0] == 0
    time.sleep(1.5)
    link = f"pvlab-h{dst.index}"
    assert run(["ip", "link", "set", link, "down"]).returncode == 0
    try:
        thread.join(200)
    finally:
        run(["ip", "link", "set", link, "up"])
    rc, _, err = result["r"]
    assert rc == 1, err
    time.sleep(6)  # the destination notices the dead client by keepalive
    for host in (src, dst):
        state = virsh(host.uri, "domstate", "--reason", name)[1]
        assert state == "paused (post-copy failed)\n\n", (host.name, state)
        assert _qemu_pids(host, name), host.name
    _cleanup(src, name)
    _cleanup(dst, name)
