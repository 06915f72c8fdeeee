"""Launching and stopping QEMU processes.

QEMU runs in its own session with stdout/stderr going to the domain's log: pipes to its log
writer (``stdio_handler = "logd"``, see :mod:`pyvirt.qemu.logpipes`) or the file itself
(``"file"``). Neither depends on the daemon, so pyvirtd can stop and restart without
disturbing guests. A process is identified by pid *and* by its command line carrying the
domain's UUID, so a recycled pid is never mistaken for the guest.

Nothing here blocks the event loop: exits are awaited through pidfds, never ``wait()``ed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyvirt.errors import OperationFailedError
from pyvirt.qemu.identity import QemuIdentity
from pyvirt.qemu.logpipes import LogPipes

#: how often liveness is polled while waiting for an exit
_POLL_S = 0.02


@dataclass
class QemuProcess:
    pid: int
    uuid: str
    #: set when this daemon spawned QEMU (so it must reap it); None after a reattach
    child: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: the log writer this daemon started with QEMU (None: "file" handler, or a reattach)
    log_writer: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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
        return await wait_pid_exit(self.pid, self.alive, timeout)

    async def wait_logs_written(self, timeout: float) -> bool:
        """After QEMU exited: wait until its log writer wrote everything and exited (and
        reap it). True when there is no writer of ours left."""
        writer = self.log_writer
        if writer is None:
            return True
        if await wait_pid_exit(writer.pid, lambda: writer.poll() is None, timeout):
            self.log_writer = None
            return True
        return False

    def reap(self) -> None:
        """Collect exit statuses that are ready; never waits."""
        for child in (self.child, self.log_writer):
            if child is not None:
                child.poll()

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


async def wait_pid_exit(pid: int, alive: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``alive()`` turns False, woken by a pidfd of ``pid``; False on timeout."""
    if not alive():
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone meanwhile, or a kernel without pidfds
        return await _poll_exit(alive, timeout)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        if alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited, timeout)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return not alive()


async def _poll_exit(alive: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


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


def spawn(argv: list[str], output: Path | LogPipes, env: dict[str, str],
          uuid: str, identity: QemuIdentity, pass_fds: list[int]) -> QemuProcess:
    """Start QEMU detached from our session as ``identity`` (switched before exec) with
    ``pass_fds`` inherited; its output goes to ``output``: the log file itself (appended,
    opened here), or the stdio pipe of a log writer (the caller closes our ends)."""
    header = (time.strftime("%Y-%m-%d %H:%M:%S%z") + ": starting up\n"
              + _render_cmdline(argv, env) + "\n").encode(errors="backslashreplace")
    if isinstance(output, LogPipes):
        output.write_header(header)
        child = _popen(argv, output.stdio_fd, pass_fds, env, identity)
        return QemuProcess(pid=child.pid, uuid=uuid, child=child, log_writer=output.writer)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as log:
        log.write(header)
        log.flush()
        child = _popen(argv, log.fileno(), pass_fds, env, identity)
    return QemuProcess(pid=child.pid, uuid=uuid, child=child)


def _popen(argv: list[str], output: int, pass_fds: list[int],
           env: dict[str, str], identity: QemuIdentity) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=env,
            cwd="/", close_fds=True, pass_fds=pass_fds, start_new_session=True,
            **identity.popen_kwargs(),
        )
    except OSError as exc:
        raise OperationFailedError(f"cannot execute '{argv[0]}': {exc.strerror}") from exc


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
        # only the end: a "file"-handled log has no size limit
        with open(log_path, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - limit))
            data = log.read(limit)
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    # Our header is two lines: "<time>: starting up" and the command line.
    starts = [i for i, line in enumerate(lines) if line.endswith(": starting up")]
    if starts:
        lines = lines[starts[-1] + 2:]
    useful = [line for line in lines if line.strip() and "char device redirected" not in line]
    return "\n".join(useful[-5:])
