"""The migration engine of the QEMU driver: phase entry points, jobs, tuning.

The daemon's RPC handlers call these (one per libvirt procedure); the phases themselves
live in :mod:`src` (Begin/Perform/Confirm), :mod:`dst` (Prepare/Finish) and :mod:`p2p`.
QMP ``MIGRATION``/``MIGRATION_PASS`` events are routed here into the domain's job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_validate import validate_domain_name
from pyvirt.constants import (
    DomainState,
    EventSuspendedDetail,
    JobOperation,
    JobType,
    LifecycleEvent,
    MigrateFlags,
    PausedReason,
)
from pyvirt.errors import OperationFailedError, OperationInvalidError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.events import MigrationIterationEvent
from pyvirt.qemu.migration import dst, p2p, qemu_ops, src, storage_dst
from pyvirt.qemu.migration.cookie import CookieStatistics
from pyvirt.qemu.migration.job import MigrationJob, Phase, job_info, job_stats
from pyvirt.qemu.migration.journal import Journal
from pyvirt.qemu.migration.params import MigrationRequest, Side, parse_request
from pyvirt.qemu.migration.qemu_status import MigrationStatus
from pyvirt.qemu.resources import PortAllocator
from pyvirt.rpc.remote_types import TypedParam
from pyvirt.rpc.stream import Stream

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: libvirt's QEMU_DOMAIN_MIG_BANDWIDTH_MAX (MiB/s): what migrate-getspeed says by default
BANDWIDTH_MAX_MIB = (2**63 - 1) // MIB


class MigrationEngine:
    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        settings = driver.settings
        self.ports = PortAllocator(settings.migration_port_min, settings.migration_port_max,
                                   "migration")
        #: the statistics of the last finished job, per domain uuid (domjobinfo --completed)
        self.completed: dict[str, dict[str, int]] = {}
        driver.runner.qmp_events.listeners.append(self._on_qmp_event)
        driver.runner.stop_listeners.append(self._on_domain_stopped)
        #: why an incoming migration died before Finish (reported by Finish), per name
        self.incoming_errors: dict[str, str] = {}
        self.journal = Journal(settings.state_dir / "migration")

    # -- phases --------------------------------------------------------------------------

    async def begin(self, obj: DomainObj, request: MigrationRequest,
                    client_id: int | None = None) -> tuple[bytes, str]:
        cookie, xml = await src.begin(self, obj, request)
        if obj.migration is not None:
            obj.migration.client_id = client_id  # the client driving a normal migration
        return cookie, xml

    async def prepare(self, client_id: int | None, request: MigrationRequest,
                      cookie: bytes, stream: Stream | None = None) -> tuple[bytes, str | None]:
        return await dst.prepare(self, client_id, request, cookie, stream)

    async def perform(self, obj: DomainObj, dconnuri: str | None, flags: int,
                      params: Sequence[TypedParam], cookie: bytes) -> bytes:
        """Perform3 on the source: peer-to-peer, normal (after Begin), or pyvirt's direct
        mode (``--direct``: no PEER2PEER and no Begin before it, so no job yet)."""
        direct = not flags & MigrateFlags.PEER2PEER and obj.migration is None \
            and not flags & MigrateFlags.OFFLINE
        request = parse_request(flags, params, side=Side.SOURCE, direct=direct,
                                api="qemuDomainMigratePerform3Params")
        if request.peer2peer:
            if not dconnuri:
                raise OperationInvalidError("peer-to-peer migration needs a destination URI")
            await p2p.perform(self, obj, dconnuri, request)
            return b""
        if request.direct:
            await src.perform_direct(self, obj, request)
            return b""
        return await src.perform(self, obj, request, cookie)

    async def finish(self, request: MigrationRequest, cookie: bytes,
                     cancelled: bool) -> tuple[DomainObj | None, bytes]:
        return await dst.finish(self, request, cookie, cancelled)

    async def confirm(self, obj: DomainObj, request: MigrationRequest, cancelled: bool) -> None:
        if not cancelled:
            self.remember_outgoing(obj)
        await src.confirm(self, obj, request, cancelled)

    # -- bookkeeping ---------------------------------------------------------------------

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

    def new_job(self, obj: DomainObj, operation: JobOperation, request: MigrationRequest,
                phase: Phase) -> MigrationJob:
        job = MigrationJob(operation, int(request.flags), phase, journal=self.journal,
                           name=obj.name, uuid=obj.uuid)
        obj.migration = job
        job.record()
        return job

    def end_job(self, obj: DomainObj) -> None:
        if obj.migration is not None:
            obj.migration.end()
        obj.migration = None

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
        if job is not None and not job.outgoing and not keep_job:
            storage_dst.forget_created(job)  # its QEMU runs on them: never removed here
            self.release(obj)

    def _on_domain_stopped(self, obj: DomainObj) -> None:
        job = obj.migration
        if job is not None and not job.outgoing:
            if job.status is not MigrationStatus.COMPLETED:
                self.incoming_errors[obj.name] = "the destination QEMU exited during migration"
            self.release(obj)

    def release(self, obj: DomainObj) -> None:
        """End an incoming job: its ports go back; the disk images its Prepare created go
        too unless Finish kept them (the migration succeeded)."""
        job = obj.migration
        if job is not None:
            for port in (job.port, job.nbd_port):
                if port is not None:
                    self.ports.release(port)
            if not job.outgoing:
                storage_dst.remove_created(job)
        self.end_job(obj)

    async def client_closed(self, client_id: int) -> None:
        """The client driving a migration is gone (libvirt's ConnectionClosed): drop the
        incoming ones it prepared; end an outgoing job it began, or abort its Perform."""
        for obj in self.driver.list_all():
            job = obj.migration
            if job is None or job.client_id != client_id:
                continue
            log.warning("[dom=%s] migration client went away; cleaning up", obj.name)
            if not job.outgoing and job.status.postcopy_started:
                # the guest already runs from this side's memory: keep it, reported
                self.postcopy_failed(obj)
            elif not job.outgoing:
                await dst.abandon(self, obj)
            elif job.phase == Phase.BEGIN3:
                self.end_job(obj)
            elif job.phase == Phase.PERFORM3:
                job.abort_requested = True

    def tick_for(self, obj: DomainObj, job: MigrationJob) -> Callable[[], Awaitable[None]]:
        async def tick() -> None:
            if job.abort_requested and not job.status.is_final:
                await qemu_ops.cancel(self.driver.runner.monitor(obj))
        return tick

    def _on_qmp_event(self, obj: DomainObj, name: str, data: dict[str, Any],
                      when: float) -> None:
        job = obj.migration
        if job is None:
            return
        if name == "MIGRATION":
            job.on_status(MigrationStatus.parse(data.get("status", "")))
            if job.status.postcopy_broken:  # whoever waits on the job ends it
                self.postcopy_failed(obj, keep_job=True)
        elif name.startswith("BLOCK_JOB_") and job.storage is not None:
            if job.storage.on_event(name, data):
                job.status_changed.set()  # wake whoever waits on the mirrors
        elif name == "MIGRATION_PASS":
            job.iteration = int(data.get("pass", 0))
            if job.outgoing:
                self.driver.events.emit(MigrationIterationEvent(
                    obj.name, obj.uuid, obj.dom_id, job.iteration))

    def remember_outgoing(self, obj: DomainObj) -> None:
        """Keep the finished job's statistics for ``domjobinfo --completed``."""
        job = obj.migration
        if job is not None and job.outgoing and job.info:
            stats = job_stats(job, completed=True)
            self.completed[obj.uuid] = {"type": JobType.COMPLETED, **stats}

    def remember_incoming(self, obj: DomainObj, statistics: CookieStatistics) -> None:
        """The destination learns the job's statistics from the source's cookie."""
        stats = {k: v for k, v in dataclasses.asdict(statistics).items() if v is not None}
        stats.pop("started", None)
        stats.pop("stopped", None)
        stats.pop("sent", None)
        stats.pop("delta", None)
        self.completed[obj.uuid] = {"type": JobType.COMPLETED,
                                    "operation": int(JobOperation.MIGRATION_IN), **stats}

    # -- queries and tuning ----------------------------------------------------------------

    async def job_info(self, obj: DomainObj) -> dict[str, int]:
        job = obj.migration
        if job is not None and job.outgoing and obj.monitor is not None:
            await qemu_ops.refresh(obj.monitor, job)
        return job_info(job)

    async def job_stats(self, obj: DomainObj, completed: bool) -> tuple[int, dict[str, int]]:
        if completed:
            stats = dict(self.completed.get(obj.uuid, {}))
            job_type = stats.pop("type", JobType.NONE)
            return job_type, stats
        job = obj.migration
        if job is None:
            return JobType.NONE, {}
        if job.outgoing and obj.monitor is not None:
            await qemu_ops.refresh(obj.monitor, job)
        return JobType.UNBOUNDED, job_stats(job, completed=False)

    async def abort(self, obj: DomainObj) -> None:
        obj.require_active()
        job = obj.migration
        if job is None or job.phase.value not in ("begin3", "perform3"):
            raise OperationInvalidError("no job is active on the domain")
        job.abort_requested = True
        await qemu_ops.cancel(self.driver.runner.monitor(obj))

    async def pause_postcopy(self, obj: DomainObj) -> None:
        """``domjobabort --postcopy`` (VIR_DOMAIN_ABORT_JOB_POSTCOPY): interrupt an outgoing
        migration in post-copy (QMP ``migrate-pause``). Neither host has the whole guest
        then: both halves stay, paused (post-copy failed), as after a broken link."""
        obj.require_active()
        job = obj.migration
        in_postcopy = obj.state == DomainState.PAUSED and obj.reason == PausedReason.POSTCOPY
        if job is None or not job.outgoing or not in_postcopy:
            raise OperationInvalidError("current job is not outgoing migration in post-copy "
                                        "mode")
        await self.driver.runner.monitor(obj).execute("migrate-pause")

    async def start_postcopy(self, obj: DomainObj) -> None:
        """Switch a running pre-copy migration to post-copy (virsh migrate-postcopy)."""
        obj.require_active()
        job = obj.migration
        if job is None or not job.outgoing or job.phase.value != "perform3":
            raise OperationInvalidError("domain is not being migrated")
        if not job.flags & MigrateFlags.POSTCOPY:
            raise OperationInvalidError("switching to post-copy requires migration to be "
                                        "started with VIR_MIGRATE_POSTCOPY flag")
        if job.postcopy_started:
            raise OperationInvalidError("post-copy already started")
        await self.driver.runner.monitor(obj).execute("migrate-start-postcopy")
        job.postcopy_started = True

    async def set_max_downtime(self, obj: DomainObj, downtime_ms: int) -> None:
        obj.require_active()
        await self.driver.runner.monitor(obj).execute(
            "migrate-set-parameters", {"downtime-limit": downtime_ms})

    async def get_max_downtime(self, obj: DomainObj) -> int:
        obj.require_active()
        params = await self.driver.runner.monitor(obj).execute("query-migrate-parameters")
        return int(params["downtime-limit"])

    async def set_max_speed(self, obj: DomainObj, mib_per_s: int) -> None:
        if mib_per_s > BANDWIDTH_MAX_MIB:
            raise OperationInvalidError(f"bandwidth must be less than {BANDWIDTH_MAX_MIB + 1}")
        obj.migrate_max_speed_mib = mib_per_s
        if obj.active:
            await self.driver.runner.monitor(obj).execute(
                "migrate-set-parameters", {"max-bandwidth": mib_per_s * MIB})

    def get_max_speed(self, obj: DomainObj) -> int:
        speed = obj.migrate_max_speed_mib
        return BANDWIDTH_MAX_MIB if speed is None else speed

    async def set_compression_cache(self, obj: DomainObj, size: int) -> None:
        obj.require_active()
        await self.driver.runner.monitor(obj).execute(
            "migrate-set-parameters", {"xbzrle-cache-size": size})

    async def get_compression_cache(self, obj: DomainObj) -> int:
        obj.require_active()
        params = await self.driver.runner.monitor(obj).execute("query-migrate-parameters")
        return int(params["xbzrle-cache-size"])
