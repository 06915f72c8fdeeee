"""What both sides of a migration share on one host: the driver, the migration ports, the
journal, the last jobs' statistics, and the one post-copy-failure path.

The side objects (outgoing.py, incoming.py) and p2p/recovery work against this, never
against the engine (engine.py builds on it and adds the RPC entry points), so nothing in
``qemu/migration`` imports the engine: the layers go one way.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, TypeVar

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_validate import validate_domain_name
from pyvirt.constants import (
    DomainState,
    EventSuspendedDetail,
    JobOperation,
    JobType,
    LifecycleEvent,
    PausedReason,
)
from pyvirt.errors import OperationFailedError, OperationInvalidError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import storage_dst
from pyvirt.qemu.migration.cookie import CookieStatistics
from pyvirt.qemu.migration.job import IncomingJob, MigrationJob, OutgoingJob
from pyvirt.qemu.migration.jobstats import job_stats
from pyvirt.qemu.migration.journal import Journal
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.qemu.resources import PortAllocator

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver

log = logging.getLogger(__name__)

J = TypeVar("J", bound=MigrationJob)


class MigrationContext:
    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        settings = driver.settings
        self.ports = PortAllocator(settings.migration_port_min, settings.migration_port_max,
                                   "migration")
        #: the statistics of the last finished job, per domain uuid (domjobinfo --completed)
        self.completed: dict[str, dict[str, int]] = {}
        #: why an incoming migration died before Finish (reported by Finish), per name
        self.incoming_errors: dict[str, str] = {}
        self.journal = Journal(settings.state_dir / "migration")

    # -- jobs --------------------------------------------------------------------------------

    def new_outgoing_job(self, obj: DomainObj, request: MigrationRequest) -> OutgoingJob:
        job = OutgoingJob(flags=int(request.flags), journal=self.journal, name=obj.name,
                          uuid=obj.uuid, was_running=obj.state == DomainState.RUNNING)
        return self._hold(obj, job)

    def new_incoming_job(self, obj: DomainObj, request: MigrationRequest,
                         client_id: int | None) -> IncomingJob:
        job = IncomingJob(flags=int(request.flags), journal=self.journal, name=obj.name,
                          uuid=obj.uuid, client_id=client_id)
        return self._hold(obj, job)

    def _hold(self, obj: DomainObj, job: J) -> J:
        obj.migration = job
        job.record()
        return job

    def end_job(self, obj: DomainObj) -> None:
        if obj.migration is not None:
            obj.migration.end()
        obj.migration = None

    def release(self, obj: DomainObj) -> None:
        """End an incoming job: its ports go back; the disk images its Prepare created go
        too unless Finish kept them (the migration succeeded)."""
        job = obj.migration
        if isinstance(job, IncomingJob):
            for port in (job.port, job.nbd_port):
                if port is not None:
                    self.ports.release(port)
            storage_dst.remove_created(job)
        self.end_job(obj)

    def claim_incoming(self, definition: DomainDef) -> DomainObj:
        """The domain object an incoming migration fills (refusing clashes). The name may
        come from ``destination_name``: checked again here, before any object exists."""
        validate_domain_name(definition.name)
        driver = self.driver
        for existing in driver.list_all():
            if existing.name == definition.name and existing.uuid != definition.uuid:
                raise OperationFailedError(f"domain '{definition.name}' already exists "
                                           f"with uuid {existing.uuid}")
        obj = driver.domain_by_uuid(str(definition.uuid))
        if obj is not None:
            if obj.active:
                raise OperationInvalidError(f"domain '{obj.name}' is already active")
            if obj.name != definition.name:
                raise OperationFailedError(f"domain '{obj.name}' is already defined with "
                                           f"uuid {obj.uuid}")
            return obj
        obj = DomainObj(uuid=str(definition.uuid), name=definition.name, config=None)
        driver.add_domain(obj)
        return obj

    # -- post-copy -------------------------------------------------------------------------

    def postcopy_failed(self, obj: DomainObj, *, keep_job: bool = False) -> None:
        """Post-copy broke after the switchover: part of the guest is on each host, so
        neither side may resume or discard it. Every path that notices calls this.

        The guest (with its QEMU) stays, paused (post-copy failed): set, saved and announced
        (SUSPENDED/POSTCOPY_FAILED) once, however many paths notice. An incoming job ends
        here and gives its migration and NBD ports back, unless ``keep_job``: a phase still
        waits on it (the QMP event came while Finish waits), which calls again when it gives
        up. An outgoing job is ended by the phase that owns it (Confirm, or p2p).
        """
        already = obj.state == DomainState.PAUSED and obj.reason == PausedReason.POSTCOPY_FAILED
        if obj.active and not already:
            log.error("[dom=%s] post-copy migration failed; guest paused (post-copy failed)",
                      obj.name)
            obj.set_state(DomainState.PAUSED, PausedReason.POSTCOPY_FAILED)
            self.driver.runner.save_status(obj)
            self.driver.runner.emit(obj, LifecycleEvent.SUSPENDED,
                                    EventSuspendedDetail.POSTCOPY_FAILED)
        job = obj.migration
        if isinstance(job, IncomingJob) and not keep_job:
            storage_dst.forget_created(job)  # its QEMU runs on them: never removed here
            self.release(obj)

    # -- statistics of finished jobs -------------------------------------------------------

    def remember_outgoing(self, obj: DomainObj) -> None:
        """Keep the finished job's statistics for ``domjobinfo --completed``."""
        job = obj.migration
        if isinstance(job, OutgoingJob) and job.info:
            stats = job_stats(job, completed=True)
            self.completed[obj.uuid] = {"type": JobType.COMPLETED, **stats}

    def remember_incoming(self, obj: DomainObj, statistics: CookieStatistics) -> None:
        """The destination learns the job's statistics from the source's cookie."""
        stats = {k: v for k, v in dataclasses.asdict(statistics).items() if v is not None}
        for source_only in ("started", "stopped", "sent", "delta"):
            stats.pop(source_only, None)
        self.completed[obj.uuid] = {"type": JobType.COMPLETED,
                                    "operation": int(JobOperation.MIGRATION_IN), **stats}
