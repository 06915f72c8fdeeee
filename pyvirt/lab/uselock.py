"""One user of the lab at a time: test runs and benchmarks bring hosts up and tear them down.

``lab up``/``lab down`` serialise themselves, but a whole test module or benchmark needs the
lab for minutes and ends with ``lab down``; two such users on one machine would tear each
other's hosts away. Each holds this lock for as long as it uses the lab; the second waits.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

USE_LOCK_FILE = Path("/run/lock/pyvirt-lab-use.lock")

_held: int | None = None


def acquire_lab(note: str = "") -> None:
    """Block until this process is the lab's only user (re-entrant within the process)."""
    global _held
    if _held is not None:
        return
    USE_LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(USE_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        print(f"waiting for the lab (in use by: {holder or 'unknown'})", file=sys.stderr)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} {note} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
    _held = fd


def release_lab() -> None:
    """Give the lab up (the lock also goes when the process exits)."""
    global _held
    if _held is not None:
        os.close(_held)
        _held = None
