"""The isolated daemon the fuzzer attacks, and the checks around it.

Layout of one run (a fresh temporary root)::

    /tmp/pvf-XXXX/          nothing may appear here but what the harness made
    /tmp/pvf-XXXX/d/        the daemon's root: configs, sockets, state, run, log dirs
    /tmp/pvf-XXXX/fuzzer/   the fuzzer's own files (the watchdog's samples)
    /tmp/pvf-XXXX/canary/   files and directories the daemon must never touch; it is also
                            the daemon's working directory, so a relative path the daemon
                            should not have used lands here and is seen

The canaries (the run's root and everything under ``canary``) are checked at the end:
same entries, types, sizes, contents, modes and mtimes (a directory's mtime also changes
when a file is created in it and removed again).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.functional.daemon_util import (
    DaemonHandle,
    _wait_socket,
    fake_emulator,
    tear_down,
    write_configs,
)
from tests.fuzz.hostile import CANARY_DIRS, CANARY_FILES, SECRET_TOKEN

#: daemon log lines that mean an exception escaped somewhere it should not have
BAD_LOG = re.compile(r"Traceback|failed unexpectedly|packet handler failed|Logging error|"
                     r"Task exception was never retrieved|Exception in callback|"
                     r"Unhandled exception|CRITICAL")
Snapshot = dict[str, tuple[str, int, int, int, str]]


@dataclass
class FuzzTarget:
    root: Path
    canary: Path
    daemon: DaemonHandle
    canary_before: Snapshot

    @property
    def fuzzer_dir(self) -> Path:
        return self.root / "fuzzer"

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None

    def log_files(self) -> list[Path]:
        return [self.daemon.root / "log" / "pyvirtd.log", self.daemon.root / "out.log"]


@contextlib.contextmanager
def fuzz_target(conf: Mapping[str, object] | None = None) -> Iterator[FuzzTarget]:
    """A pyvirtd with the fake QEMU in a fresh root, canaries beside it; everything
    (processes, sockets, files) is gone on exit, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="pvf-", dir="/tmp"))
    daemon_root, canary = root / "d", root / "canary"
    daemon_root.mkdir()
    (root / "fuzzer").mkdir()
    handle: DaemonHandle | None = None
    try:
        populate_canary(canary)
        before = snapshot(root)
        handle = _start(daemon_root, canary, conf or {})
        yield FuzzTarget(root, canary, handle, before)
    finally:
        tear_down(handle, root)


def _start(root: Path, cwd: Path, conf: Mapping[str, object]) -> DaemonHandle:
    config = write_configs(root, {"log_level": 3, **conf}, {"emulator": fake_emulator(root)})
    argv = [sys.executable, "-m", "pyvirt.daemon", "--config", str(config)]
    out = open(root / "out.log", "wb")  # noqa: SIM115 - the daemon owns it while it runs
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)
    out.close()
    handle = DaemonHandle(root, proc)
    _wait_socket(handle)
    return handle


# -- canaries --------------------------------------------------------------------------------
def populate_canary(canary: Path) -> None:
    canary.mkdir()
    for name in CANARY_DIRS:
        (canary / name).mkdir(parents=True, exist_ok=True)
    for name in CANARY_FILES:
        path = canary / name
        path.write_bytes(SECRET_TOKEN + b"\n" + name.encode() + b"\n")
        path.chmod(0o644)
    # a symlink out of the canary: following it would reach the canary's own "secret"
    (canary / "link").symlink_to(canary / "secret")
    # mtimes in the past, so a touch in the same second still shows
    for path in [*sorted(canary.rglob("*"), reverse=True), canary, canary.parent]:
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000),
                 follow_symlinks=False)


#: entries of the run's root whose insides change legitimately (only their presence counts)
_OWN_DIRS = ("d", "fuzzer")


def snapshot(root: Path) -> Snapshot:
    """The run's root and everything under it but the daemon's and the fuzzer's own
    directories (which only must exist), without following symlinks."""
    state: Snapshot = {name: ("dir", 0, 0, 0, "") for name in _OWN_DIRS
                       if (root / name).is_dir()}
    paths = [root, *(p for p in root.iterdir() if p.name not in _OWN_DIRS)]
    for path in [*paths, *(p for top in paths[1:] if top.is_dir() and not top.is_symlink()
                           for p in top.rglob("*"))]:
        info = path.lstat()
        if path.is_symlink():
            kind, digest = "link", os.readlink(path)
        elif path.is_dir():
            kind, digest = "dir", ""
        else:
            kind, digest = "file", hashlib.sha256(path.read_bytes()).hexdigest()
        name = str(path.relative_to(root)) if path != root else "."
        state[name] = (kind, info.st_size, info.st_mtime_ns, info.st_mode, digest)
    return state


def canary_changes(before: Snapshot, after: Snapshot) -> list[str]:
    changes = [f"created: {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"removed: {p}" for p in sorted(before.keys() - after.keys())]
    changes += [f"changed: {p} {before[p]} -> {after[p]}"
                for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return changes


# -- the daemon's health ---------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LogWatch:
    """Reads the daemon's logs as they grow and reports each kind of escaped exception
    once (with its location), counting the repeats."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.offsets = {path: 0 for path in files}
        self.seen: dict[str, int] = {}

    def poll(self) -> list[str]:
        """Descriptions of the kinds of bad lines not seen before."""
        found: list[str] = []
        for path in self.files:
            for summary, key in self._new_bad(path):
                self.seen[key] = self.seen.get(key, 0) + 1
                if self.seen[key] == 1:
                    found.append(f"{path.name}: {summary}")
        return found

    def _new_bad(self, path: Path) -> list[tuple[str, str]]:
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            handle.seek(self.offsets[path])
            chunk = handle.read()
            # whole lines only, and not past a traceback still being written
            raw = chunk[:chunk.rfind(b"\n") + 1].split(b"\n")[:-1]
            summaries, consumed = _summaries([x.decode("utf-8", "replace") for x in raw])
            self.offsets[path] += sum(len(x) + 1 for x in raw[:consumed])
            return summaries
        return []


#: what the daemon logs when it ends a connection on purpose, queued replies discarded
DELIBERATE_DROPS = ("dropping the connection:", "no response from peer for")


def deliberate_drops(files: list[Path]) -> int:
    """How many connections the daemon's logs say it dropped on purpose (a limit)."""
    count = 0
    for path in files:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace")
            count += sum(text.count(marker) for marker in DELIBERATE_DROPS)
    return count


def _summaries(lines: list[str]) -> tuple[list[tuple[str, str]], int]:
    """Bad lines as (one-line summary, kind); a traceback becomes its innermost frame and
    its exception, its kind that frame's function and the exception's type. Returns how
    many lines were consumed (an unfinished traceback waits for the next poll)."""
    out: list[tuple[str, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("Traceback"):
            end = index + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end]):
                end += 1
            if end >= len(lines):
                return out, index
            where = [x.strip() for x in lines[index:end] if x.strip().startswith("File ")]
            place = where[-1] if where else ""
            exc = lines[end].strip()
            out.append((f"Traceback ... {place}: {exc}"[:300],
                        re.sub(r", line \d+", "", place) + "|" + exc.split(":", 1)[0]))
            index = end + 1
            continue
        if BAD_LOG.search(line):
            text = (line.split("] ", 1)[-1] if "] " in line else line)[:300]
            out.append((text, _normalized(text)))
        index += 1
    return out, len(lines)


def _normalized(text: str) -> str:
    """A bad line's kind: the line without its numbers and quoted or bracketed values."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\(.*\)", "…", text)
    return re.sub(r"\d+", "#", text)
