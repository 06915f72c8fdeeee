"""The migration engine of the QEMU driver: the RPC procedures' entry points.

::

    engine.py      entry points (one per libvirt procedure), QMP events into the jobs,
                   queries and tuning                                 ── builds on ──┐
    context.py     what both sides share: ports, journal, jobs, post-copy failure  ◄──┘
    outgoing.py    the source: Begin, Perform, Confirm (OutgoingMigration)
    perform.py     Perform's steps and abort sources
    incoming.py    the destination: Prepare, Finish (IncomingMigration)
    p2p.py         peer-to-peer: both ends of the v3 phase driver (pyvirt.client.migrate_v3)
    recovery.py    half-done migrations after a daemon restart (journal.py)
    job.py, phases.py, qemu_status.py, jobstats.py   the job records, phase tables,
                   QEMU's statuses, libvirt's statistics

Nothing below the engine imports it: the layers go one way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyvirt.constants import DomainState, JobType, MigrateFlags, PausedReason
from pyvirt.errors import OperationInvalidError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.events import MigrationIterationEvent
from pyvirt.qemu.migration import incoming, outgoing, p2p, qemu_ops
from pyvirt.qemu.migration.context import MigrationContext
from pyvirt.qemu.migration.job import IncomingJob, OutgoingJob
from pyvirt.qemu.migration.jobstats import job_info, job_stats
from pyvirt.qemu.migration.params import MigrationRequest, Side, parse_request
from pyvirt.qemu.migration.phases import SourcePhase
from pyvirt.qemu.migration.qemu_status import MigrationStatus
from pyvirt.rpc.remote_types import TypedParam
from pyvirt.rpc.stream import Stream

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: libvirt's QEMU_DOMAIN_MIG_BANDWIDTH_MAX (MiB/s): what migrate-getspeed says by default
BANDWIDTH_MAX_MIB = (2**63 - 1) // MIB


class MigrationEngine(MigrationContext):
    def __init__(self, driver: QemuDriver) -> None:
        super().__init__(driver)
        driver.runner.qmp_events.listeners.append(self._on_qmp_event)
        driver.runner.stop_listeners.append(self._on_domain_stopped)

    # -- phases --------------------------------------------------------------------------

    async def begin(self, obj: DomainObj, request: MigrationRequest,
                    client_id: int | None = None) -> tuple[bytes, str]:
        out, cookie, xml = await outgoing.OutgoingMigration.begin(self, obj, request)
        if out is not None:
            out.job.client_id = client_id  # the client driving a normal migration
        return cookie, xml

    async def prepare(self, client_id: int | None, request: MigrationRequest,
                      cookie: bytes, stream: Stream | None = None) -> tuple[bytes, str | None]:
        return await incoming.prepare(self, client_id, request, cookie, stream)

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
            await outgoing.perform_direct(self, obj, request)
            return b""
        return await outgoing.perform_client(self, obj, request, cookie)

    async def finish(self, request: MigrationRequest, cookie: bytes,
                     cancelled: bool) -> tuple[DomainObj | None, bytes]:
        return await incoming.finish(self, request, cookie, cancelled)

    async def confirm(self, obj: DomainObj, request: MigrationRequest, cancelled: bool) -> None:
        if not cancelled:
            self.remember_outgoing(obj)
        await outgoing.confirm(self, obj, request, cancelled)

    # -- events ----------------------------------------------------------------------------

    def _on_domain_stopped(self, obj: DomainObj) -> None:
        job = obj.migration
        if isinstance(job, IncomingJob):
            if job.status is not MigrationStatus.COMPLETED:
                self.incoming_errors[obj.name] = "the destination QEMU exited during migration"
            self.release(obj)

    async def client_closed(self, client_id: int) -> None:
        """The client driving a migration is gone (libvirt's ConnectionClosed): drop the
        incoming ones it prepared; end an outgoing job it began, or abort its Perform."""
        for obj in self.driver.list_all():
            job = obj.migration
            if job is None or job.client_id != client_id:
                continue
            log.warning("[dom=%s] migration client went away; cleaning up", obj.name)
            if isinstance(job, IncomingJob) and job.status.postcopy_started:
                # the guest already runs from this side's memory: keep it, reported
                self.postcopy_failed(obj)
            elif isinstance(job, IncomingJob):
                await incoming.abandon(self, obj)
            elif job.phase is SourcePhase.BEGIN3:
                self.end_job(obj)
            elif job.phase is SourcePhase.PERFORM3:
                job.abort_requested = True

    def _on_qmp_event(self, obj: DomainObj, name: str, data: dict[str, Any],
                      when: float) -> None:
        job = obj.migration
        if job is None:
            return
        if name == "MIGRATION":
            job.on_status(MigrationStatus.parse(data.get("status", "")))
            if job.status.postcopy_broken:  # whoever waits on the job ends it
                self.postcopy_failed(obj, keep_job=True)
        elif name.startswith("BLOCK_JOB_") and isinstance(job, OutgoingJob) \
                and job.storage is not None:
            if job.storage.on_event(name, data):
                job.status_changed.set()  # wake whoever waits on the mirrors
        elif name == "MIGRATION_PASS":
            job.iteration = int(data.get("pass", 0))
            if job.outgoing:
                self.driver.events.emit(MigrationIterationEvent(
                    obj.name, obj.uuid, obj.dom_id, job.iteration))

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
        if job is None or job.phase not in (SourcePhase.BEGIN3, SourcePhase.PERFORM3):
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
        if not isinstance(job, OutgoingJob) or job.phase is not SourcePhase.PERFORM3:
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
