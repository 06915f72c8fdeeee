"""Run a real pyvirtd process in a temporary directory, for tests.

The daemon uses either the real QEMU or the fake one (``tests/fakes/fake_qemu.py``)
through a small wrapper script that sets the fake's fault-injection environment, since
pyvirtd gives QEMU a clean environment of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
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

FAKE_QEMU = Path(__file__).resolve().parent.parent / "fakes" / "fake_qemu.py"
REAL_QEMU = "/usr/bin/qemu-system-x86_64"
HOST_UUID = "8b3f2e94-7c1d-4a5e-9f60-2d4c8a1b3e77"


@dataclass
class DaemonHandle:
    root: Path
    proc: subprocess.Popen[bytes]

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

    def serial_log(self, name: str) -> Path:
        return self.root / "log" / "qemu" / f"{name}-serial0.log"


def write_configs(root: Path, conf: dict[str, Any], qemu_conf: dict[str, Any]) -> Path:
    base: dict[str, Any] = {
        "unix_sock_dir": str(root / "sock"), "state_dir": str(root / "state"),
        "run_dir": str(root / "run"), "log_dir": str(root / "log"),
        "host_uuid": HOST_UUID, "qemu_conf": str(root / "qemu.conf"),
    }
    base.update(conf)
    (root / "pyvirtd.conf").write_text(_render(base))
    (root / "qemu.conf").write_text(_render(qemu_conf))
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
    env = f"export FAKE_QEMU_FAULTS={shlex.quote(json.dumps(faults or {}))}\n"
    wrapper.write_text(f"#!/bin/sh\n{env}exec {sys.executable} {FAKE_QEMU} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def start_daemon(root: Path, *, emulator: str = REAL_QEMU, conf: dict[str, Any] | None = None,
                 qemu_conf: dict[str, Any] | None = None, listen: bool = False) -> DaemonHandle:
    config = write_configs(root, conf or {}, {"emulator": emulator, **(qemu_conf or {})})
    argv = [sys.executable, "-m", "pyvirt.daemon", "--config", str(config)]
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
    handle = None
    try:
        if kwargs.get("emulator") == "fake":
            kwargs["emulator"] = fake_emulator(root, kwargs.pop("faults", None))
        handle = start_daemon(root, **kwargs)
        yield handle
    finally:
        if handle is not None:
            stop_daemon(handle)
        survivors = _wait_gone(kill_processes_mentioning(root))
        import shutil
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
