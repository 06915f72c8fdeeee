"""pyvirt's log writer: one small process per QEMU, writing its logs with virtlogd's rotation.

QEMU's stdout/stderr and the log of each character device (serial ports) go into pipes
instead of files; this program reads the pipes and appends to the files, so a guest cannot
fill the disk::

    QEMU  stdout+stderr ──pipe──┐
          serial0 log   ──pipe──┼──► logwriter ──► NAME.log        (+ .0 .1 .2)
          serial1 log   ──pipe──┘                  NAME-serial0.log (+ .0 .1 .2) ...

Rotation is virtlogd's (``virRotatingFileWriter``): a file never grows past ``max_size``
bytes; a write that would cross it is cut after its last newline when it holds one (else at
``max_size`` exactly), the file is renamed ``PATH.0`` (``.0`` → ``.1`` ..., the oldest of
``max_backups`` dropped) and a new one started; ``max_backups = 0`` truncates in place.
Readers of the current file (``log_tail``, the tests' serial readers) keep working: they
see the newest bytes.

Why a process, and why this one: QEMU must outlive the daemon (pyvirtd restarts and
re-attaches), so whatever drains QEMU's pipes cannot live in the daemon, as libvirt's
virtlogd does not. The writer starts before QEMU, in its own session, and exits when every
pipe reaches end of file, i.e. when QEMU (the only other holder) exits; a daemon restart
does not concern it. It runs ``python -I -S`` on this file (standard library only).

The only Python on the data path is one ``read`` of up to :data:`CHUNK` bytes per pipe and
pass: after a pass that found little the writer sleeps :data:`BATCH_S`, so a guest printing
a byte at a time costs at most ``1 / BATCH_S`` passes a second, not one per byte; a pass
that found :data:`FLOOD_BYTES` or more goes on at once, so a flood is read in big chunks at
full speed. The pipes are enlarged (``F_SETPIPE_SZ``, by the daemon) so QEMU does not wait
during a pause.

Only regular files are written, opened without following a symlink (rotation renames
files: a ``<log file='/dev/null'>`` must not move /dev/null); any other log is drained and
dropped, with a note in QEMU's own log. A failing disk drops data, never blocks QEMU.

Two writers never interleave in one file: each holds an exclusive ``flock`` on the file it
writes (the previous instance of a domain may still be draining when the next one starts);
the wait for it is bounded (:data:`LOCK_WAIT_S`) so that QEMU never stalls on a full pipe.

Usage::

    logwriter.py --max-size N --max-backups N [--domain-uuid U] FD:MODE:PATH ...

``FD`` is the pipe's read end (inherited), ``MODE`` ``a`` (append) or ``t`` (truncate at
start).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import select
import stat
import sys
import time
from typing import Protocol

#: most bytes read from one pipe in one pass
CHUNK = 1024 * 1024
#: pause after each pass, so that many small writes are read together
BATCH_S = 0.02
#: a read this big means the pipe is filling up: read again at once, no pause
FLOOD_BYTES = 16 * 1024
#: how long a writer waits for the previous writer of the same file to exit
LOCK_WAIT_S = 5.0
_LOCK_POLL_S = 0.02
#: virtlogd.conf's defaults
DEFAULT_MAX_SIZE = 2 * 1024 * 1024
DEFAULT_MAX_BACKUPS = 3


class RotatingFile:
    """One log file kept under ``max_size`` bytes, with ``max_backups`` rotated copies."""

    def __init__(self, path: str, max_size: int, max_backups: int,
                 truncate: bool = False) -> None:
        if max_size < 1 or max_backups < 0:
            raise ValueError(f"{path}: max_size must be >= 1 and max_backups >= 0")
        self.path = path
        self.max_size = max_size
        self.max_backups = max_backups
        #: bytes that could not be written (full or failing disk), reported once it works
        self.dropped = 0
        self._error = ""
        self._fd = _open_locked(path)
        if truncate:
            os.ftruncate(self._fd, 0)
        self._size = os.fstat(self._fd).st_size
        if self._size >= max_size:
            self._rotate()

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating as virtlogd does; a failing disk drops data, never blocks."""
        view = memoryview(data)
        while view:
            room = self.max_size - self._size
            if room <= 0:  # only after a rotation failed (or another writer grew the file)
                self._rotate()
                if self._size >= self.max_size:
                    self.dropped += len(view)
                    self._error = "cannot rotate the log"
                    return
                continue
            chunk = view[:room]
            cut = len(view) > room
            if cut:  # keep lines whole when the chunk holds a line end
                newline = bytes(chunk).rfind(b"\n")
                if newline >= 0:
                    chunk = chunk[:newline + 1]
            if not self._write_all(chunk):
                self.dropped += len(view) - len(chunk)
                return
            view = view[len(chunk):]
            if cut or self._size >= self.max_size:
                self._rotate()

    def _write_all(self, chunk: memoryview) -> bool:
        if self.dropped and not self._note_dropped():
            self.dropped += len(chunk)
            return False
        done = 0
        try:
            while done < len(chunk):
                done += os.write(self._fd, chunk[done:])
        except OSError as exc:
            self.dropped += len(chunk) - done
            self._error = os.strerror(exc.errno or errno.EIO)
            return False
        finally:
            self._size += done
        return True

    def _note_dropped(self) -> bool:
        """Tell the reader of the log what was lost, once the disk takes writes again."""
        note = (f"pyvirt log writer: {self.dropped} bytes dropped ({self._error})\n").encode()
        if self._size + len(note) > self.max_size:
            self._rotate()
        try:
            os.write(self._fd, note)
        except OSError:
            return False
        self._size += len(note)
        self.dropped = 0
        return True

    def _rotate(self) -> None:
        try:
            if self.max_backups > 0:
                self._roll_over()
                return
        except OSError:
            pass  # cannot rename or create: truncating still keeps the cap
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            return
        self._size = 0

    def _roll_over(self) -> None:
        for index in range(self.max_backups - 1, 0, -1):
            _rename_if_exists(f"{self.path}.{index - 1}", f"{self.path}.{index}")
        _rename_if_exists(self.path, f"{self.path}.0")
        # the new file is locked before the old one is let go: a writer waiting for the old
        # one then finds the path moved on and queues behind us again
        fresh = _open_locked(self.path)
        os.close(self._fd)
        self._fd = fresh
        self._size = os.fstat(fresh).st_size

    def close(self) -> None:
        os.close(self._fd)


def _rename_if_exists(old: str, new: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.rename(old, new)


def _open_locked(path: str) -> int:
    """Open ``path`` for appending, holding its exclusive lock (waited for, boundedly)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        # O_NONBLOCK: a FIFO there fails at once instead of waiting for a reader
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                     | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            # rotating renames the file: never /dev/null, a FIFO, a terminal...
            os.close(fd)
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        if not _lock(fd, deadline):
            return fd  # the other writer is stuck: write anyway rather than stall QEMU
        try:
            held, current = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder rotated it away meanwhile: lock the new file


def _lock(fd: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(_LOCK_POLL_S)


class LogSink(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def pump(sources: dict[int, LogSink]) -> None:
    """Copy every pipe to its file until all of them reach end of file."""
    poller = select.poll()
    for fd in sources:
        poller.register(fd, select.POLLIN)
    while sources:
        flooded = False
        for fd, _events in poller.poll():
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                data = b""
            if data:
                sources[fd].write(data)
                flooded = flooded or len(data) >= FLOOD_BYTES
                continue
            poller.unregister(fd)
            os.close(fd)
            sources.pop(fd).close()
        if not flooded:
            time.sleep(BATCH_S)


def _source(spec: str) -> tuple[int, bool, str]:
    fd, mode, path = spec.split(":", 2)
    if mode not in ("a", "t") or not path.startswith("/"):
        raise ValueError(f"bad log source '{spec}'")
    return int(fd), mode == "t", path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="logwriter")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE)
    parser.add_argument("--max-backups", type=int, default=DEFAULT_MAX_BACKUPS)
    parser.add_argument("--domain-uuid", default="", help="for ps: whose logs these are")
    parser.add_argument("sources", nargs="+", metavar="FD:MODE:PATH")
    args = parser.parse_args(argv)
    sources: dict[int, LogSink] = {}
    failures: list[str] = []
    for spec in args.sources:
        fd, truncate, path = _source(spec)
        try:
            sources[fd] = RotatingFile(path, args.max_size, args.max_backups, truncate)
        except (OSError, ValueError) as exc:
            # keep draining the pipe so that QEMU never blocks on it, writing nowhere
            failures.append(f"pyvirt log writer: cannot write {path}: {exc}\n")
            sources[fd] = _Discard(path)
    first = sources[_source(args.sources[0])[0]]  # QEMU's own log: tell its reader
    for failure in failures:
        first.write(failure.encode())
    pump(sources)
    return 0


class _Discard:
    """A log that could not be opened: its pipe is drained and the bytes dropped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dropped = 0

    def write(self, data: bytes) -> None:
        self.dropped += len(data)

    def close(self) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
