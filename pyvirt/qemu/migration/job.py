"""A domain's migration job, one record per side.

The source holds an :class:`OutgoingJob` (MIGRATION_OUT) from Begin to Confirm, the
destination an :class:`IncomingJob` (MIGRATION_IN) from Prepare to Finish (libvirt's async
jobs). While a job exists the domain refuses other state changes, but queries (job info,
tuning) keep working. A job moves only along its side's table (phases.py), each phase
journalled before the daemon acts on it; QEMU's progress arrives as MIGRATION events
(``on_status``) and ``query-migrate`` answers (``info``); jobstats.py turns those into
libvirt's statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyvirt.constants import JobOperation
from pyvirt.qemu.migration.journal import Journal, JournalEntry
from pyvirt.qemu.migration.phases import DestinationPhase, Phase, SourcePhase, check_move
from pyvirt.qemu.migration.qemu_status import MigrationStatus
from pyvirt.qemu.migration.storage import StorageCopy
from pyvirt.safefs import CreatedFile


@dataclass
class MigrationJob:
    """What both sides' jobs have: QEMU's progress, the phase, the journal entry."""

    operation: ClassVar[JobOperation]
    flags: int = 0
    name: str = ""
    uuid: str = ""
    #: where the phase is written before acting (None: not journalled, e.g. tests)
    journal: Journal | None = None
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    #: the last ``query-migrate`` answer
    info: dict[str, Any] = field(default_factory=dict)
    #: QEMU's migration status, from MIGRATION events and query-migrate
    status: MigrationStatus = MigrationStatus.NONE
    status_changed: asyncio.Event = field(default_factory=asyncio.Event)
    iteration: int = 0
    abort_requested: bool = False
    #: the RPC client driving the migration (cleaned up if it goes away)
    client_id: int | None = None
    #: the task moving a tunnelled migration's bytes (cancelled when the job ends)
    tunnel: asyncio.Task[None] | None = None

    @property
    def phase(self) -> Phase:
        raise NotImplementedError

    @property
    def outgoing(self) -> bool:
        return self.operation == JobOperation.MIGRATION_OUT

    def set_phase(self, phase: Phase) -> None:
        """Move to ``phase`` (only along the side's table), journalled on disk before the
        caller acts on it."""
        check_move(self.phase, phase)
        self._set(phase)
        self.record()

    def _set(self, phase: Phase) -> None:
        raise NotImplementedError

    def record(self) -> None:
        if self.journal is not None:
            self.journal.record(self._journal_entry())

    def _journal_entry(self) -> JournalEntry:
        raise NotImplementedError

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


@dataclass
class OutgoingJob(MigrationJob):
    """The source's job (Begin → Perform → Confirm)."""

    operation: ClassVar[JobOperation] = JobOperation.MIGRATION_OUT
    source_phase: SourcePhase = SourcePhase.BEGIN3
    #: the guest ran before the migration (so a failure resumes it)
    was_running: bool = False
    postcopy_started: bool = False
    #: a peer-to-peer source's destination (recovery asks it what happened)
    dconnuri: str | None = None
    #: a storage migration's mirror jobs and NBD client nodes
    storage: StorageCopy | None = None

    @property
    def phase(self) -> SourcePhase:
        return self.source_phase

    def _set(self, phase: Phase) -> None:
        assert isinstance(phase, SourcePhase)
        self.source_phase = phase

    def _journal_entry(self) -> JournalEntry:
        return JournalEntry(uuid=self.uuid, name=self.name, side="out",
                            phase=self.phase.value, flags=self.flags, dconnuri=self.dconnuri,
                            images=())


@dataclass
class IncomingJob(MigrationJob):
    """The destination's job (Prepare → Finish)."""

    operation: ClassVar[JobOperation] = JobOperation.MIGRATION_IN
    destination_phase: DestinationPhase = DestinationPhase.PREPARE
    #: the migration port QEMU listens on (from the migration range)
    port: int | None = None
    #: a storage migration's NBD server port (from the migration range) and the images
    #: Prepare created (removed unless the migration succeeds)
    nbd_port: int | None = None
    created_images: list[CreatedFile] = field(default_factory=list)
    #: the disks (targets) exported over NBD
    exported: list[str] = field(default_factory=list)

    @property
    def phase(self) -> DestinationPhase:
        return self.destination_phase

    def _set(self, phase: Phase) -> None:
        assert isinstance(phase, DestinationPhase)
        self.destination_phase = phase

    def _journal_entry(self) -> JournalEntry:
        return JournalEntry(uuid=self.uuid, name=self.name, side="in",
                            phase=self.phase.value, flags=self.flags, dconnuri=None,
                            images=tuple(self.created_images))
