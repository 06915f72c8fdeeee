"""Run a real pyvirtd process in a temporary directory, for tests.

The daemon uses either the real QEMU or the fake one (``tests/fakes/fake_qemu.py``)
through a small wrapper script that sets the fake's fault-injection environment, since
pyvirtd gives QEMU a clean environment of its own. The wrapper also points the fake at a
faults file (:meth:`DaemonHandle.set_faults`: what the *next* QEMU started does) and a
journal of the QMP commands it ran (:meth:`DaemonHandle.journal_entries`).

:func:`running_daemon_pair` runs two daemons on this machine as migration peers: distinct
host UUIDs, sockets and migration port ranges, and ``migration_host`` set to a non-loopback
address of this machine (qemu.conf refuses loopback ones, as libvirt does); without such an
address the host name is advertised, as with libvirt's default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvirt.daemon.loopwatch import LAG_MESSAGE_PREFIX
from tests.conftest import fake_runs_as_root

FAKE_QEMU = Path(__file__).resolve().parent.parent / "fakes" / "fake_qemu.py"
REAL_QEMU = "/usr/bin/qemu-system-x86_64"
HOST_UUID = "8b3f2e94-7c1d-4a5e-9f60-2d4c8a1b3e77"
PEER_HOST_UUID = "3e1c9a57-2b8d-4f06-a1c4-7d5e9b2f8a13"
#: migration ports per daemon of a pair, and where pairs look for a free block of them
PAIR_PORTS = 16
PAIR_PORT_AREA = range(40000, 48000, 128)


@dataclass
class DaemonHandle:
    root: Path
    proc: subprocess.Popen[bytes]
    #: the daemon's migration port range (qemu.conf), when the test chose it
    migration_ports: range | None = None

    @property
    def sock(self) -> Path:
        return self.root / "sock" / "libvirt-sock"

    @property
    def ro_sock(self) -> Path:
        return self.root / "sock" / "libvirt-sock-ro"

    @property
    def admin_sock(self) -> Path:
        return self.root / "sock" / "libvirt-admin-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.sock}"

    @property
    def ro_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.ro_sock}"

    @property
    def admin_uri(self) -> str:
        return f"libvirtd:///system?socket={self.admin_sock}"

    def log(self) -> str:
        try:
            return (self.root / "out.log").read_text()
        except OSError:
            return ""

    def daemon_log(self) -> str:
        """The daemon's own log file (``log_dir/pyvirtd.log``; ``log()`` is its stdout)."""
        try:
            return (self.root / "log" / "pyvirtd.log").read_text(errors="replace")
        except OSError:
            return ""

    def lag_lines(self) -> list[str]:
        """The lag monitor's warnings (a tick of the event loop late by > 100 ms)."""
        return [line for line in self.daemon_log().splitlines() if LAG_MESSAGE_PREFIX in line]

    def serial_log(self, name: str) -> Path:
        return self.root / "log" / "qemu" / f"{name}-serial0.log"

    @property
    def faults_file(self) -> Path:
        return self.root / "fake-faults.json"

    @property
    def journal(self) -> Path:
        return self.root / "fake-journal.jsonl"

    def set_faults(self, faults: dict[str, Any] | None) -> None:
        """Faults of the fake QEMUs this daemon starts from now on (merged over its own)."""
        self.faults_file.write_text(json.dumps(faults or {}))

    def control(self, uuid: str, order: dict[str, Any]) -> None:
        """Send an order to the control socket of this daemon's fake QEMU for ``uuid``
        (daemons of :func:`running_daemon_pair` only)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.root / f"ctl.{uuid}"))
            sock.sendall(json.dumps(order).encode() + b"\n")
            assert sock.recv(16) == b"ok\n"

    def journal_mark(self) -> int:
        """A position in the journal: :meth:`journal_entries` after it."""
        try:
            return self.journal.stat().st_size
        except FileNotFoundError:
            return 0

    def journal_entries(self, since: int = 0, name: str | None = None) -> list[dict[str, Any]]:
        """The QMP commands the fake QEMUs ran (all but queries), oldest first."""
        try:
            with open(self.journal, "rb") as handle:
                handle.seek(since)
                lines = handle.read().decode().splitlines()
        except FileNotFoundError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if name is None or e["name"] == name]


def write_configs(root: Path, conf: dict[str, Any], qemu_conf: dict[str, Any]) -> Path:
    base: dict[str, Any] = {
        "unix_sock_dir": str(root / "sock"), "state_dir": str(root / "state"),
        "run_dir": str(root / "run"), "log_dir": str(root / "log"),
        "host_uuid": HOST_UUID, "qemu_conf": str(root / "qemu.conf"),
    }
    base.update(conf)
    emulator = qemu_conf.get("emulator", REAL_QEMU)
    (root / "pyvirtd.conf").write_text(_render(base))
    (root / "qemu.conf").write_text(_render({**fake_runs_as_root(emulator), **qemu_conf}))
    return root / "pyvirtd.conf"


def _render(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = [ " + ", ".join(f'"{v}"' for v in value) + " ]")
        else:
            lines.append(f"{key} = {int(value)}")
    return "\n".join(lines) + "\n"


def fake_emulator(root: Path, faults: dict[str, Any] | None = None) -> str:
    wrapper = root / "fake-qemu.sh"
    env = (f"export FAKE_QEMU_FAULTS={shlex.quote(json.dumps(faults or {}))}\n"
           f"export FAKE_QEMU_FAULTS_FILE={shlex.quote(str(root / 'fake-faults.json'))}\n"
           f"export FAKE_QEMU_JOURNAL={shlex.quote(str(root / 'fake-journal.jsonl'))}\n")
    wrapper.write_text(f"#!/bin/sh\n{env}exec {sys.executable} {FAKE_QEMU} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def start_daemon(root: Path, *, emulator: str = REAL_QEMU, conf: dict[str, Any] | None = None,
                 qemu_conf: dict[str, Any] | None = None, listen: bool = False,
                 wrapper: tuple[str, ...] = ()) -> DaemonHandle:
    """``wrapper``: a command that execs the daemon's argv (appended), e.g. ``unshare``."""
    if listen:
        # libvirtd's --listen default is TLS only; tests that listen say what they want, and
        # plain TCP (listen_tcp) stays explicit too
        conf = {"listen_tls": 0, **(conf or {})}
    config = write_configs(root, conf or {}, {"emulator": emulator, **(qemu_conf or {})})
    argv = [*wrapper, sys.executable, "-m", "pyvirt.daemon", "--config", str(config)]
    if listen:
        argv.append("--listen")
    out = open(root / "out.log", "wb")  # noqa: SIM115 - the daemon owns it while it runs
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    handle = DaemonHandle(root, proc)
    _wait_socket(handle)
    return handle


def _wait_socket(handle: DaemonHandle, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.proc.poll() is not None:
            raise AssertionError(f"pyvirtd exited: {handle.log()}")
        if handle.admin_sock.exists():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(handle.sock))
                return
        time.sleep(0.05)
    raise AssertionError(f"pyvirtd did not come up: {handle.log()}")


def stop_daemon(handle: DaemonHandle, kill_guests: bool = True) -> None:
    if handle.proc.poll() is None:
        handle.proc.send_signal(signal.SIGTERM)
        try:
            handle.proc.wait(15)
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait(5)
    if kill_guests:
        kill_processes_mentioning(handle.root)


def real_qemu_pids(root: Path, name: str | None = None) -> list[int]:
    """Live real QEMUs whose command line names ``root`` (the daemon's directories), and
    guest ``name`` when given."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv)
        if argv[0] == REAL_QEMU.encode() and str(root).encode() in line and (
                name is None or f"guest={name},".encode() in line):
            found.append(int(entry.name))
    return found


def kill_processes_mentioning(root: Path) -> list[int]:
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed


@contextlib.contextmanager
def running_daemon(**kwargs: Any) -> Iterator[DaemonHandle]:
    root = Path(tempfile.mkdtemp(prefix="pvd-", dir="/tmp"))
    root.chmod(0o711)  # QEMU's user passes through to its run directory
    handle = None
    try:
        if kwargs.get("emulator") == "fake":
            kwargs["emulator"] = fake_emulator(root, kwargs.pop("faults", None))
        handle = start_daemon(root, **kwargs)
        yield handle
    finally:
        tear_down(handle, root)


def tear_down(handle: DaemonHandle | None, root: Path) -> None:
    """Stop the daemon, kill whatever still mentions ``root`` (QEMUs, log writers), remove
    ``root``; fail if a process outlived SIGKILL."""
    if handle is not None:
        stop_daemon(handle)
    survivors = _wait_gone(kill_processes_mentioning(root))
    shutil.rmtree(root, ignore_errors=True)
    assert not survivors, f"processes survived SIGKILL: {survivors}"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def run(argv: list[str], timeout: float = 60, check: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check,
                          env=env)


# -- two daemons as migration peers ------------------------------------------------------------
def listening_tcp_ports() -> set[int]:
    """TCP ports something on this machine listens on (/proc/net/tcp and tcp6)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def local_address() -> str | None:
    """A non-loopback IPv4 address of this machine (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def free_port_block(size: int) -> int:
    """The first port of ``size`` consecutive ports nothing listens on (per-process start)."""
    busy = listening_tcp_ports()
    start = os.getpid() % len(PAIR_PORT_AREA)
    for index in range(len(PAIR_PORT_AREA)):
        base = PAIR_PORT_AREA[(start + index) % len(PAIR_PORT_AREA)]
        if not busy & set(range(base, base + size)):
            return base
    raise AssertionError("no free block of migration ports")


def pair_emulator(wrapper: Path, roots: list[Path]) -> None:
    """One fake QEMU for both daemons of a pair: the destination runs the ``<emulator>`` of
    the migrated XML, i.e. the source's, as with libvirt. The wrapper tells which daemon
    started it by that daemon's directory in its arguments (pidfile, monitor socket), and
    uses that daemon's faults file and journal."""
    cases = "".join(f'  *{shlex.quote(str(root) + "/")}*) host={shlex.quote(str(root))} ;;\n'
                    for root in roots)
    script = (f'#!/bin/sh\nhost=\ncase "$*" in\n{cases}esac\n'
              'if [ -n "$host" ]; then\n'
              '  export FAKE_QEMU_FAULTS_FILE="$host/fake-faults.json"\n'
              '  export FAKE_QEMU_JOURNAL="$host/fake-journal.jsonl"\n'
              '  export FAKE_QEMU_CONTROL="$host/ctl"\n'
              f'fi\nexec {sys.executable} {FAKE_QEMU} "$@"\n')
    temporary = wrapper.with_suffix(".new")
    temporary.write_text(script)
    temporary.chmod(0o755)
    temporary.replace(wrapper)


@contextlib.contextmanager
def running_daemon_pair(conf: dict[str, Any] | None = None,
                        qemu_conf: dict[str, Any] | None = None, ports: int = PAIR_PORTS,
                        ) -> Iterator[tuple[DaemonHandle, DaemonHandle]]:
    """Two pyvirtd processes with fake QEMUs: (source, destination) migration peers, each
    with ``ports`` migration ports."""
    base = free_port_block(2 * ports)
    address = local_address()
    host = {"migration_host": address} if address else {}
    shared = Path(tempfile.mkdtemp(prefix="pvp-", dir="/tmp"))
    wrapper = shared / "fake-qemu.sh"
    pair_emulator(wrapper, [])
    try:
        with contextlib.ExitStack() as stack:
            handles = []
            for index, host_uuid in enumerate((HOST_UUID, PEER_HOST_UUID)):
                block = range(base + index * ports, base + (index + 1) * ports)
                settings = {"migration_port_min": block[0], "migration_port_max": block[-1],
                            **host, **(qemu_conf or {})}
                handle = stack.enter_context(running_daemon(
                    emulator=str(wrapper), conf={"host_uuid": host_uuid, **(conf or {})},
                    qemu_conf=settings))
                handle.migration_ports = block
                handles.append(handle)
            pair_emulator(wrapper, [handle.root for handle in handles])
            yield handles[0], handles[1]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
