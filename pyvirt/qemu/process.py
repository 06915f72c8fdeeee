"""Launching and stopping QEMU processes.

QEMU runs in its own session with stdout/stderr appended to the domain's log file (a file,
not a pipe, so QEMU keeps logging after the daemon exits), which lets pyvirtd stop and
restart without disturbing guests. A process is identified by pid *and* by its command line
carrying the domain's UUID, so a recycled pid is never mistaken for the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyvirt.errors import OperationFailedError

#: how often liveness is polled while waiting for an exit
_POLL_S = 0.02


@dataclass
class QemuProcess:
    pid: int
    uuid: str
    #: set when this daemon spawned QEMU (so it must reap it); None after a reattach
    child: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        _reap(self.pid)
        return process_matches(self.pid, self.uuid)

    async def wait_exit(self, timeout: float) -> bool:
        """Wait until the process is gone; False if it is still alive after ``timeout``.

        The exit wakes us through a pidfd at once: a migration's Confirm stops the source
        QEMU while the client waits (polling cost up to a whole poll period).
        """
        if not self.alive():
            return True
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # gone meanwhile, or a kernel without pidfds
            return await self._poll_exit(timeout)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            if self.alive():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(exited, timeout)
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return not self.alive()

    async def _poll_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    async def terminate(self, grace_s: float, graceful_only: bool = False) -> bool:
        """SIGTERM, wait ``grace_s``, then SIGKILL (unless ``graceful_only``).

        Returns True when the process is gone.
        """
        if not self.alive():
            return True
        self._signal(signal.SIGTERM)
        if await self.wait_exit(grace_s):
            return True
        if graceful_only:
            return False
        self._signal(signal.SIGKILL)
        return await self.wait_exit(5.0)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)


def _reap(pid: int) -> None:
    """Reap ``pid`` if it happens to be our child (adopted after an in-process restart)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_matches(pid: int, uuid: str) -> bool:
    """True when ``pid`` is a live (non-zombie) process whose argv names ``uuid``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # Field 3 (after the parenthesised comm, which may contain spaces) is the state.
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return uuid.encode() in cmdline.split(b"\0")


def spawn(argv: list[str], log_path: Path, env: dict[str, str], uuid: str) -> QemuProcess:
    """Start QEMU detached from our session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        header = time.strftime("%Y-%m-%d %H:%M:%S%z") + ": starting up\n"
        log.write(header.encode() + _render_cmdline(argv, env).encode() + b"\n")
        log.flush()
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd="/", close_fds=True, start_new_session=True,
            )
        except OSError as exc:
            raise OperationFailedError(f"cannot execute '{argv[0]}': {exc.strerror}") from exc
    return QemuProcess(pid=child.pid, uuid=uuid, child=child)


def _render_cmdline(argv: list[str], env: dict[str, str]) -> str:
    # shell-quoted so the logged line can be pasted back into a shell
    env_part = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return f"{env_part} {shlex.join(argv)}"


def qemu_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment for QEMU, as libvirt gives it (no daemon variables leak in)."""
    env = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/"}
    env.update(extra)
    return env


def log_tail(log_path: Path, limit: int = 4000) -> str:
    """What QEMU printed since the last start of this domain (for start-up errors)."""
    try:
        data = log_path.read_bytes()[-limit:]
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    # Our header is two lines: "<time>: starting up" and the command line.
    starts = [i for i, line in enumerate(lines) if line.endswith(": starting up")]
    if starts:
        lines = lines[starts[-1] + 2:]
    useful = [line for line in lines if line.strip() and "char device redirected" not in line]
    return "\n".join(useful[-5:])
