"""Helpers of the real-QEMU migration tests between lab hosts.

The successful-migration worker, ``migrate_and_check``, checks:
  - the guest's heartbeat counter continues on the destination from where it stopped on
    the source (same boot: no restart), and no CORRUPT line ever appears;
  - at every ~100 ms sample during the migration at most one host runs the guest
    (``RunnerSampler``).
Failure cases use ``assert_still_on_source``: the guest keeps running on the source and the
destination holds no trace of it (no domain, no QEMU).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyvirt
from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LabHost, host_exec_argv, lab_up
from tests.functional.daemon_util import run
from tests.functional.guestlog import SerialLog
from tests.functional.labutil import serial


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


def start_guest(host: LabHost, name: str, tmp: Path, persistent: bool = False,
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


def migrate_and_check(hosts: list[LabHost], tmp: Path, name: str, *options: str,
             persistent: bool = False) -> tuple[LabHost, LabHost]:
    src, dst = hosts
    src_log = start_guest(src, name, tmp, persistent)
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


def cleanup(host: LabHost, name: str) -> None:
    virsh(host.uri, "destroy", name)
    virsh(host.uri, "undefine", name)


def assert_still_on_source(src: LabHost, dst: LabHost, name: str) -> None:
    assert virsh(src.uri, "domstate", name)[1] == "running\n\n"
    log = serial(src, name)
    last = log.last()
    assert last is not None and beat(log, above=last.n) > last.n
    assert virsh(dst.uri, "dominfo", name)[0] == 1  # no half-created domain
    assert not qemu_pids(dst, name)


def qemu_pids(host: LabHost, name: str) -> list[int]:
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


class SlowMigration(threading.Thread):
    """``virsh migrate --live --bandwidth 1`` in a thread, both hosts sampled for one
    runner until :meth:`finish`."""

    def __init__(self, src: LabHost, dst: LabHost, name: str, extra: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.argv = (src.uri, "migrate", "--live", "--bandwidth", "1", *extra, name, dst.uri)
        self.result: tuple[int, str, str] | None = None
        self.sampler = RunnerSampler([src.uri, dst.uri], name).__enter__()

    def run(self) -> None:
        self.result = virsh(*self.argv)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """Wait for ``virsh migrate`` to end; its (rc, stdout, stderr)."""
        self.join(timeout)
        self.sampler.__exit__(None, None, None)
        assert self.result is not None, "virsh migrate did not end"
        return self.result


def slow_migration(src: LabHost, dst: LabHost, name: str, tmp: Path,
                   *extra: str) -> SlowMigration:
    """Start a guest dirtying 64 MiB and migrate it at 1 MiB/s; return once the
    destination's QEMU runs (the migration is under way)."""
    start_guest(src, name, tmp, dirty_mb=64)
    migration = SlowMigration(src, dst, name, extra)
    migration.start()
    wait_qemu(dst, name)
    time.sleep(1.0)
    return migration


def stop_daemon(host: LabHost, sig: int = signal.SIGTERM) -> None:
    pid = int(host.daemon_pidfile.read_text())
    os.kill(pid, sig)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def restart_daemon(host: LabHost, crash_at: str | None = None) -> None:
    """Restart ``host``'s pyvirtd, optionally with a test crash point armed."""
    if host.daemon_pidfile.exists():
        stop_daemon(host)
    if crash_at:
        os.environ["PYVIRT_TEST_CRASH_PHASE"] = crash_at
    try:
        lab_up(2)
    finally:
        os.environ.pop("PYVIRT_TEST_CRASH_PHASE", None)


def wait_daemon_gone(host: LabHost, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while host.daemon_pidfile.exists():
        pid = int(host.daemon_pidfile.read_text() or 0)
        if not Path(f"/proc/{pid}").exists():
            return
        assert time.monotonic() < deadline, "daemon did not exit"
        time.sleep(0.1)


def source_argv(host: LabHost, name: str, tmp: Path) -> list[str]:
    """The source QEMU's argv (from its log), made runnable elsewhere: own run paths, no -S."""

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
        if word in ("-pidfile", "-mon", "-add-fd") or (
                word == "-chardev" and "charmonitor" in argv[i + 1]):
            skip = 1  # -add-fd: the log writer's pipes exist only in the daemon's QEMU
            continue
        out.append(_log_file_instead_of_fdset(word, host, name))
    return out


def _log_file_instead_of_fdset(word: str, host: LabHost, name: str) -> str:
    """``id=charserial0,...,logfile=/dev/fdset/N`` → the serial log file, as QEMU would
    write it itself (stdio_handler = "file")."""
    match = re.search(r"(?:^|,)id=char([a-z0-9]+)", word)
    if match is None or "logfile=/dev/fdset/" not in word:
        return word
    path = host.dir / "log" / "qemu" / f"{name}-{match.group(1)}.log"
    return re.sub(r"logfile=/dev/fdset/\d+", f"logfile={path}", word)


def qmp_socket(path: Path | str, command: str) -> Any:
    """One QMP command straight to a QEMU monitor socket (no daemon in between)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        reader = sock.makefile("rb")
        reader.readline()  # the greeting
        for request in ({"execute": "qmp_capabilities"}, {"execute": command}):
            sock.sendall(json.dumps(request).encode())
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply or "error" in reply:
                    break
        assert "return" in reply, reply
        return reply["return"]


def qmp_status(path: Path) -> str:
    return str(qmp_socket(path, "query-status")["status"])


def qmp(host: LabHost, name: str, command: str, **args: Any) -> Any:
    """A QMP command to the guest's QEMU through the daemon (virsh qemu-monitor-command)."""
    request: dict[str, Any] = {"execute": command}
    if args:
        request["arguments"] = args
    rc, out, err = virsh(host.uri, "qemu-monitor-command", name, json.dumps(request))
    assert rc == 0, err
    return json.loads(out)["return"]


def migration_capabilities(host: LabHost, name: str) -> dict[str, bool]:
    return {c["capability"]: c["state"] for c in qmp(host, name, "query-migrate-capabilities")}


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


def admin(host: LabHost, *args: str) -> str:
    admin = f"libvirtd:///system?socket={host.dir}/run/sock/libvirt-admin-sock"
    proc = run(["virt-admin", "-c", admin, *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def migrate_in_thread(src: LabHost, dst: LabHost, name: str,
                       *extra: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def go() -> None:
        began = time.monotonic()
        result["r"] = virsh(src.uri, "migrate", "--live", "--p2p", *extra, name, dst.uri)
        result["s"] = time.monotonic() - began

    thread = threading.Thread(target=go)
    thread.start()
    return thread, result


def wait_qemu(host: LabHost, name: str, timeout: float = 30) -> None:
    """Until ``host`` runs a QEMU for ``name`` (e.g. the destination's, once Prepare ran)."""
    deadline = time.monotonic() + timeout
    while not qemu_pids(host, name):
        assert time.monotonic() < deadline, f"no QEMU for {name} on {host.name}"
        time.sleep(0.1)


def wait_query_migrate(host: LabHost, name: str, done: Callable[[dict[str, Any]], bool],
                       timeout: float = 60) -> dict[str, Any]:
    """Poll the guest's QMP ``query-migrate`` until ``done`` accepts it; return it."""
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = qmp(host, name, "query-migrate")
        if done(info):
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.2)


def host_run(host: LabHost, *argv: str, check: bool = True) -> str:
    """Run ``argv`` inside ``host``'s namespaces; its stdout."""
    proc = run(host_exec_argv(host, list(argv)))
    assert proc.returncode == 0 or not check, (argv, proc.stderr)
    return proc.stdout


@contextlib.contextmanager
def small_filesystem(host: LabHost, mountpoint: str, size_mib: int) -> Iterator[str]:
    """An ext4 of ``size_mib`` on a loop device, mounted at ``mountpoint`` in ``host``'s
    mount namespace only (ext4, not tmpfs: QEMU opens cache='none' disks with O_DIRECT);
    unmounted and removed afterwards, whatever happened."""
    backing = f"{mountpoint}.fs"
    host_run(host, "mkdir", "-p", mountpoint)
    host_run(host, "truncate", "-s", f"{size_mib}M", backing)
    host_run(host, "mkfs.ext4", "-q", "-F", backing)
    host_run(host, "mount", "-o", "loop", backing, mountpoint)
    try:
        yield mountpoint
    finally:
        host_run(host, "umount", "-d", mountpoint, check=False)
        leftover = host_run(host, "losetup", "-j", backing, check=False)
        host_run(host, "rm", "-rf", mountpoint, backing, check=False)
        assert not leftover.strip(), f"loop device left: {leftover}"


def fill_filesystem(host: LabHost, directory: str) -> None:
    """Write a file until the filesystem is full (dd stops at ENOSPC)."""
    host_run(host, "dd", "if=/dev/zero", f"of={directory}/filler", "bs=1M", check=False)
    host_run(host, "sync")
