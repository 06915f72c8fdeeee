"""QEMU and serial logs are capped and rotated, across a daemon restart (live pyvirtd).

The emulator is the fake QEMU behind a wrapper that starts a "guest" spewing numbered lines
into QEMU's stderr and into the serial port's log fd (the one ``-add-fd ...,opaque=serial0-log``
names, as real QEMU would write it), many times ``max_size``; it writes a first burst, waits
for the test's go, then a second burst. Between the bursts the daemon is stopped (guests
keep running) and started again: the log writer belongs to QEMU, not to the daemon.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyvirt.client.aio import AsyncConnection
from tests.functional.daemon_util import (
    DaemonHandle,
    fake_emulator,
    kill_processes_mentioning,
    start_daemon,
    stop_daemon,
)

MAX_SIZE = 256 * 1024
MAX_BACKUPS = 2
#: lines per burst and stream: 40000 x 64 bytes = 2.5 MiB, ten times MAX_SIZE
BURST_LINES = 40_000
UUID = "6c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
XML = f"""<domain type='qemu'><name>spew</name><uuid>{UUID}</uuid>
<memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><serial type='pty'><target port='0'/></serial>
<memballoon model='none'/></devices></domain>"""

SPEWER = '''
import os, sys, time
root, args = sys.argv[1], sys.argv[2:]
serial = next(int(a.split(",")[1].split("=")[1]) for a in args
              if a.startswith("set=") and "opaque=serial0-log" in a)

def burst(tag):
    for i in range({lines}):
        line = f"{{tag}} {{i:08d}} ".encode().ljust(63, b"x") + b"\\n"
        os.write(2, line)
        os.write(serial, line)
    open(os.path.join(root, "spewed-" + tag), "w").close()

burst("before")
deadline = time.monotonic() + 120
while not os.path.exists(os.path.join(root, "go")) and time.monotonic() < deadline:
    time.sleep(0.05)
burst("after")
'''


def spewing_emulator(root: Path) -> str:
    fake = fake_emulator(root)
    spewer = root / "spewer.py"
    spewer.write_text(SPEWER.format(lines=BURST_LINES))
    wrapper = root / "spewing-qemu.sh"
    wrapper.write_text(f'#!/bin/sh\n{sys.executable} {spewer} {root} "$@" &\nexec {fake} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pvlog-", dir="/tmp"))
    try:
        yield path
    finally:
        kill_processes_mentioning(path)
        shutil.rmtree(path, ignore_errors=True)


def start(root: Path, emulator: str) -> DaemonHandle:
    return start_daemon(root, emulator=emulator,
                        qemu_conf={"max_size": MAX_SIZE, "max_backups": MAX_BACKUPS})


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def log_set(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.parent.glob(path.name + "*")}


def last_line(path: Path) -> str:
    lines = path.read_bytes().splitlines()
    return lines[-1].decode() if lines else ""


def writer_pids() -> list[int]:
    found = []
    marker = f"--domain-uuid={UUID}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or marker not in (entry / "cmdline").read_bytes():
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def check_capped(path: Path, tag: str) -> None:
    """At most max_size per file, exactly max_backups backups, the burst's end in the file."""
    last = f"{tag} {BURST_LINES - 1:08d} "
    wait_for(lambda: path.exists() and last_line(path).startswith(last))
    sizes = log_set(path)
    assert sorted(sizes) == sorted([path.name] + [f"{path.name}.{i}" for i in
                                                  range(MAX_BACKUPS)]), sizes
    assert max(sizes.values()) <= MAX_SIZE, sizes
    # whole lines only: every rotated file ends where a line ends
    for name in sizes:
        data = (path.parent / name).read_bytes()
        assert not data or data.endswith(b"\n"), name


async def test_logs_are_capped_and_the_writer_outlives_a_daemon_restart(root: Path) -> None:
    emulator = spewing_emulator(root)
    daemon = start(root, emulator)
    try:
        conn = await AsyncConnection.open(daemon.uri)
        await conn.createXML(XML, 0)
        await conn.close()
        qemu_log = root / "log" / "qemu" / "spew.log"
        serial_log = root / "log" / "qemu" / "spew-serial0.log"
        wait_for(lambda: (root / "spewed-before").exists())
        check_capped(qemu_log, "before")
        check_capped(serial_log, "before")
        writers = writer_pids()
        assert len(writers) == 1
        stop_daemon(daemon, kill_guests=False)
        daemon = start(root, emulator)  # re-attaches to the running (fake) QEMU
        assert writer_pids() == writers
        (root / "go").touch()
        wait_for(lambda: (root / "spewed-after").exists())
        check_capped(qemu_log, "after")
        check_capped(serial_log, "after")
        conn = await AsyncConnection.open(daemon.uri)
        dom = await conn.lookupByName("spew")
        await dom.destroy()
        await conn.close()
        wait_for(lambda: writer_pids() == [], timeout=10)  # QEMU gone: the writer follows
    finally:
        stop_daemon(daemon)
