"""The migration journal: each side's phase, on disk before the daemon acts on it.

``state_dir/migration/<uuid>.json`` holds the side (out/in), phase, flags and, for a
peer-to-peer source, the destination URI. A restarted pyvirtd reads it back and resolves
the half-done migration so the guest ends running on exactly one host:

======  ====================  ===================================================
side    phase at the crash    resolution
======  ====================  ===================================================
out     begin3, perform3      cancel QEMU's migration and disk mirrors (removing their
                              NBD client nodes), resume the guest here
out     perform3_done         p2p: ask the destination; running there → shut off
                              here (migrated), else resume here. Client-driven: the
                              outcome is unknown here; leave paused (as libvirt)
out     confirm3              finished: kill the source QEMU (shut off, migrated)
out     confirm3_cancelled    resume the guest here
in      prepare               the guest never ran here: kill the incoming QEMU and
                              remove the disk images Prepare created
in      finish3               resumed here: make sure it runs
======  ====================  ===================================================

A test-only crash point, ``PYVIRT_TEST_CRASH_PHASE=<side>:<phase>`` in the daemon's
environment, makes the daemon exit abruptly (as SIGKILL would) right after journaling that
phase, so the recovery paths are tested at exact points.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pyvirt.qemu.store import atomic_write, remove_file
from pyvirt.safefs import CreatedFile

log = logging.getLogger(__name__)

CRASH_ENV = "PYVIRT_TEST_CRASH_PHASE"


@dataclass(frozen=True)
class JournalEntry:
    uuid: str
    name: str
    #: "out" (source) or "in" (destination)
    side: str
    phase: str
    flags: int
    dconnuri: str | None = None
    #: destination of a storage migration: images Prepare created (removed if it fails)
    images: tuple[CreatedFile, ...] = ()


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, uuid: str) -> Path:
        return self.directory / f"{uuid}.json"

    def record(self, entry: JournalEntry) -> None:
        atomic_write(self._path(entry.uuid), json.dumps(asdict(entry)))
        _maybe_crash(entry)

    def remove(self, uuid: str) -> None:
        remove_file(self._path(uuid))

    def entries(self) -> list[JournalEntry]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                fields = json.loads(path.read_text())
                fields["images"] = _created_files(fields.get("images", ()), path)
                out.append(JournalEntry(**fields))
            except (OSError, ValueError, TypeError) as exc:
                log.error("unreadable migration journal %s: %s", path, exc)
        return out


def _created_files(records: object, path: Path) -> tuple[CreatedFile, ...]:
    files = [CreatedFile.from_json(r) for r in records] if isinstance(records, list) else []
    if None in files:
        log.error("migration journal %s: an image record without identity is ignored (it "
                  "will not be removed)", path)
    return tuple(f for f in files if f is not None)


def _maybe_crash(entry: JournalEntry) -> None:
    if os.environ.get(CRASH_ENV) == f"{entry.side}:{entry.phase}":
        log.critical("test crash point %s:%s reached", entry.side, entry.phase)
        os._exit(137)
