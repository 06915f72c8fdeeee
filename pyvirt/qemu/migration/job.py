"""A domain's migration job: its side, phase, QEMU progress and statistics.

The source holds a MIGRATION_OUT job from Begin to Confirm, the destination a
MIGRATION_IN job from Prepare to Finish (libvirt's async jobs). While a job exists the
domain refuses other state changes, but queries (job info, tuning) keep working::

    source:       begin3 ──► perform3 ──► perform3_done ──► confirm3 | confirm3_cancelled
    destination:  prepare ──► finish3

Phases never go backwards. Statistics come from QMP ``query-migrate`` and are turned
into libvirt's job info (``virDomainGetJobInfo``) and typed job stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from pyvirt.constants import JobOperation, JobType
from pyvirt.errors import InternalError
from pyvirt.qemu.migration.journal import Journal, JournalEntry
from pyvirt.qemu.migration.qemu_status import MigrationStatus
from pyvirt.qemu.migration.storage import StorageCopy, disk_stats
from pyvirt.safefs import CreatedFile

NS_PER_MS = 1_000_000


class Phase(enum.Enum):
    BEGIN3 = "begin3"
    PERFORM3 = "perform3"
    PERFORM3_DONE = "perform3_done"
    CONFIRM3_CANCELLED = "confirm3_cancelled"
    CONFIRM3 = "confirm3"
    PREPARE = "prepare"
    FINISH3 = "finish3"


_ORDER = {phase: index for index, phase in enumerate(Phase)}


@dataclass
class MigrationJob:
    #: MIGRATION_OUT (source) or MIGRATION_IN (destination)
    operation: JobOperation
    flags: int
    phase: Phase
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    #: the last ``query-migrate`` answer
    info: dict[str, Any] = field(default_factory=dict)
    #: QEMU's migration status, from MIGRATION events and query-migrate
    status: MigrationStatus = MigrationStatus.NONE
    status_changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: the guest ran before the migration (so a failure resumes it)
    was_running: bool = False
    #: the RPC client that prepared an incoming migration (cleaned up if it goes away)
    client_id: int | None = None
    #: migration port held by an incoming migration
    port: int | None = None
    iteration: int = 0
    abort_requested: bool = False
    postcopy_started: bool = False
    #: where the phase is written before acting (None: not journalled, e.g. tests)
    journal: Journal | None = None
    name: str = ""
    uuid: str = ""
    #: a peer-to-peer source's destination (recovery asks it what happened)
    dconnuri: str | None = None
    #: the task moving a tunnelled migration's bytes (cancelled when the job ends)
    tunnel: asyncio.Task[None] | None = None
    #: source of a storage migration: the mirror jobs and NBD client nodes
    storage: StorageCopy | None = None
    #: destination of a storage migration: the NBD server's port (from the migration
    #: range) and the images Prepare created (removed unless the migration succeeds)
    nbd_port: int | None = None
    created_images: list[CreatedFile] = field(default_factory=list)
    #: destination: the disks (targets) exported over NBD
    exported: list[str] = field(default_factory=list)

    @property
    def outgoing(self) -> bool:
        return self.operation == JobOperation.MIGRATION_OUT

    def set_phase(self, phase: Phase) -> None:
        """Move to ``phase``, journalled on disk before the caller acts on it."""
        if _ORDER[phase] < _ORDER[self.phase]:
            raise InternalError(f"migration phase cannot go back from {self.phase.value} "
                                f"to {phase.value}")
        self.phase = phase
        self.record()

    def record(self) -> None:
        if self.journal is not None:
            self.journal.record(JournalEntry(
                uuid=self.uuid, name=self.name, side="out" if self.outgoing else "in",
                phase=self.phase.value, flags=self.flags, dconnuri=self.dconnuri,
                images=tuple(self.created_images)))

    def end(self) -> None:
        if self.tunnel is not None and not self.tunnel.done():
            self.tunnel.cancel()
        if self.journal is not None:
            self.journal.remove(self.uuid)

    def on_status(self, status: MigrationStatus) -> None:
        self.status = status
        self.status_changed.set()

    async def wait_status_change(self, timeout: float) -> None:
        self.status_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.status_changed.wait(), timeout)

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


def job_info(job: MigrationJob | None) -> dict[str, int]:
    """virDomainGetJobInfo's fields (bytes and milliseconds) for an active job."""
    fields = {name: 0 for name in _INFO_FIELDS}
    if job is None:
        return {"type": JobType.NONE, **fields}
    ram = job.info.get("ram", {})
    total, remaining = int(ram.get("total", 0)), int(ram.get("remaining", 0))
    processed = int(ram.get("transferred", 0))
    disk = disk_stats(job.storage, completed=False)
    file_total, file_processed = disk.get("disk_total", 0), disk.get("disk_processed", 0)
    file_remaining = disk.get("disk_remaining", 0)
    fields.update(time_elapsed=job.elapsed_ms(), data_total=total + file_total,
                  data_processed=processed + file_processed,
                  data_remaining=remaining + file_remaining, mem_total=total,
                  mem_processed=processed, mem_remaining=remaining, file_total=file_total,
                  file_processed=file_processed, file_remaining=file_remaining)
    return {"type": JobType.UNBOUNDED, **fields}


_INFO_FIELDS = ("time_elapsed", "time_remaining", "data_total", "data_processed",
                "data_remaining", "mem_total", "mem_processed", "mem_remaining", "file_total",
                "file_processed", "file_remaining")

#: query-migrate "ram" fields → libvirt's VIR_DOMAIN_JOB_* stats
_RAM_STATS = {
    "total": "memory_total", "transferred": "memory_processed",
    "remaining": "memory_remaining", "duplicate": "memory_constant",
    "normal": "memory_normal", "normal-bytes": "memory_normal_bytes",
    "mbps": "memory_bps", "dirty-pages-rate": "memory_dirty_rate",
    "dirty-sync-count": "memory_iteration", "postcopy-requests": "memory_postcopy_requests",
    "page-size": "memory_page_size",
}
_XBZRLE_STATS = {
    "cache-size": "compression_cache", "bytes": "compression_bytes",
    "pages": "compression_pages", "cache-miss": "compression_cache_misses",
    "overflow": "compression_overflow",
}


def job_stats(job: MigrationJob, *, completed: bool) -> dict[str, int]:
    """libvirt's typed job statistics (all ULLONG but ``operation``) from query-migrate."""
    info = job.info
    ram = info.get("ram", {})
    stats: dict[str, int] = {"operation": int(job.operation)}
    elapsed = int(info.get("total-time", job.elapsed_ms())) if completed else job.elapsed_ms()
    stats["time_elapsed"] = elapsed
    for qemu_key, name in _RAM_STATS.items():
        if qemu_key in ram:
            value = float(ram[qemu_key])
            # QEMU reports mbps in megabits/s; libvirt reports bytes/s
            stats[name] = int(value * 1_000_000 / 8) if qemu_key == "mbps" else int(value)
    stats.update(disk_stats(job.storage, completed=completed))
    for part in ("total", "processed", "remaining"):  # libvirt: data = memory + disk
        stats[f"data_{part}"] = stats.get(f"memory_{part}", 0) + stats.get(f"disk_{part}", 0)
    for key, name in (("downtime", "downtime"), ("setup-time", "setup_time")):
        if key in info:
            stats[name] = int(info[key])
    if not completed and "expected-downtime" in info:
        stats["downtime"] = int(info["expected-downtime"])
    for qemu_key, name in _XBZRLE_STATS.items():
        if qemu_key in info.get("xbzrle-cache", {}):
            stats[name] = int(info["xbzrle-cache"][qemu_key])
    if "cpu-throttle-percentage" in info:
        stats["auto_converge_throttle"] = int(info["cpu-throttle-percentage"])
    return stats
