"""Where a starting QEMU's output goes: its log file directly, or pipes to a log writer.

qemu.conf's ``stdio_handler`` chooses, with libvirt's words:

* ``"logd"`` (the default, as in libvirt): QEMU's stdout/stderr and every character
  device log (serial ports) are pipes drained by a log writer process
  (:mod:`pyvirt.qemu.logwriter`, pyvirt's virtlogd) that caps each file at ``max_size``
  bytes and keeps ``max_backups`` rotated copies. A chardev log reaches QEMU as an fd in an
  fdset (``-add-fd set=N,fd=N`` + ``logfile=/dev/fdset/N``), as libvirt passes virtlogd's
  pipes; the fd keeps its number in QEMU, so the argv can name it before QEMU starts.
* ``"file"``: QEMU appends to the files itself, without a size limit (libvirt's ``file``).

Daemon side only: the pipes are made and the writer started here, then QEMU is spawned
with the write ends (:mod:`pyvirt.qemu.process`), then :meth:`LogPipes.close_qemu_ends`
drops the daemon's copies, so the writer sees end of file exactly when QEMU exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pyvirt.errors import OperationFailedError
from pyvirt.qemu import logwriter
from pyvirt.qemu.argv_chardev import ChardevLog

#: pipe capacity asked for (``F_SETPIPE_SZ``; the kernel's pipe-max-size is 1 MiB): a
#: guest's bursts fill this while the writer sleeps between passes, not QEMU's wait
PIPE_SIZE = 1024 * 1024
#: the writer's program: this file's sibling, run without site-packages
WRITER = Path(logwriter.__file__).resolve()


@dataclass(frozen=True)
class LogRotation:
    """virtlogd's ``max_size`` (bytes per file) and ``max_backups`` (rotated copies)."""

    max_size: int = logwriter.DEFAULT_MAX_SIZE
    max_backups: int = logwriter.DEFAULT_MAX_BACKUPS


@dataclass
class LogPipes:
    """The write ends QEMU gets and the writer process draining the read ends."""

    #: QEMU's stdout and stderr
    stdio_fd: int
    #: chardev log path → write end, passed to QEMU under the same number
    chardev_fds: dict[str, int]
    writer: subprocess.Popen[bytes]
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, qemu_log: Path, chardev_logs: list[ChardevLog], rotation: LogRotation,
              uuid: str) -> LogPipes:
        """Make one pipe per log and start the writer on their read ends."""
        ends: list[tuple[int, int]] = []
        try:
            for _ in range(1 + len(chardev_logs)):
                ends.append(_pipe())
            specs = [f"{ends[0][0]}:a:{qemu_log}"]
            specs += [f"{r}:{'a' if log.append else 't'}:{log.path}"
                      for (r, _w), log in zip(ends[1:], chardev_logs, strict=True)]
            writer = _start_writer(specs, [r for r, _w in ends], rotation, uuid)
        except BaseException:
            for read_end, write_end in ends:
                os.close(read_end)
                os.close(write_end)
            raise
        for read_end, _w in ends:
            os.close(read_end)  # the writer has them now
        return cls(stdio_fd=ends[0][1],
                   chardev_fds={log.path: w for (_r, w), log in zip(ends[1:], chardev_logs,
                                                                     strict=True)},
                   writer=writer)

    def write_header(self, text: bytes) -> None:
        """Our "starting up" lines, before QEMU writes anything (the pipe is still empty,
        and far bigger than the header, so this cannot block)."""
        limit = PIPE_SIZE // 16
        data = text if len(text) <= limit else text[:limit - 5] + b"...\n"
        os.write(self.stdio_fd, data)

    def close_qemu_ends(self) -> None:
        """Drop the daemon's write ends (after QEMU has its copies, or when it failed)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self.stdio_fd, *self.chardev_fds.values()):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_chardev_logs(chardev_logs: list[ChardevLog]) -> dict[str, int]:
    """``stdio_handler = "file"``: the daemon opens the chardev logs in its log directory
    (QEMU's user cannot) and QEMU gets the descriptors, as with the writer's pipes."""
    fds: dict[str, int] = {}
    try:
        for log in chardev_logs:
            flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
                     | (0 if log.append else os.O_TRUNC))
            fds[log.path] = os.open(log.path, flags, 0o600)
    except OSError as exc:
        close_fds(fds.values())
        raise OperationFailedError(
            f"cannot open log file '{exc.filename}': {exc.strerror}") from exc
    return fds


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only makes bursts wait sooner
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


def _start_writer(specs: list[str], read_ends: list[int], rotation: LogRotation,
                  uuid: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-I", "-S", str(WRITER), "--max-size", str(rotation.max_size),
            "--max-backups", str(rotation.max_backups), f"--domain-uuid={uuid}", *specs]
    try:
        # its own session: a signal to the daemon's process group does not reach it, and it
        # outlives a daemon restart together with its QEMU
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=read_ends, cwd="/",
                                start_new_session=True)
    except OSError as exc:
        raise OperationFailedError(f"cannot start the QEMU log writer: {exc.strerror}") \
            from exc
