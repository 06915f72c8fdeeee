"""The source side of a migration: Begin, Perform, Confirm, as one object per job.

Begin checks the guest can move (libvirt's safety rule on disks, no other job), claims
the job and produces the XML and cookie for the destination. Perform runs QEMU's migration
(perform.py). A failure before the switchover cancels it and puts the guest back where it
was. Confirm either kills the source QEMU (success: shut off, migrated; undefined with
``--undefinesource``) or resumes the guest (cancelled): at no instant do both hosts run it.

An :class:`OutgoingMigration` owns its job from Begin to Confirm: phases move only along
the source's table (phases.py), and whatever ends the migration ends the job. Used as
``async with`` (p2p, direct), an exception leaving the block ends the job too.
"""

from __future__ import annotations

import dataclasses
import logging
from types import TracebackType

from pyvirt.conf.domain import DiskDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.constants import (
    DomainState,
    EventStoppedDetail,
    EventUndefinedDetail,
    LifecycleEvent,
    MigrateFlags,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import (
    InvalidArgError,
    MigrateUnsafeError,
    OperationInvalidError,
    VirtError,
)
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import storage_src
from pyvirt.qemu.migration.abi import check_abi_stable
from pyvirt.qemu.migration.context import MigrationContext
from pyvirt.qemu.migration.cookie import CookieStatistics
from pyvirt.qemu.migration.cookie_io import make_cookie, read_prepare_cookie
from pyvirt.qemu.migration.job import OutgoingJob
from pyvirt.qemu.migration.jobstats import job_stats
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.qemu.migration.perform import PerformRun, PerformTarget
from pyvirt.qemu.migration.phases import SourcePhase
from pyvirt.qemu.migration.storage import under_shared_filesystems

log = logging.getLogger(__name__)

_SAFE_CACHE = frozenset({"none", "directsync"})


class OutgoingMigration:
    """The source's half of one migration, holding its job (``obj.migration``)."""

    def __init__(self, ctx: MigrationContext, obj: DomainObj, job: OutgoingJob) -> None:
        self.ctx = ctx
        self.obj = obj
        self.job = job

    @classmethod
    def of(cls, ctx: MigrationContext, obj: DomainObj) -> OutgoingMigration:
        """The migration Begin started (Perform and Confirm arrive as separate calls)."""
        job = obj.migration
        if not isinstance(job, OutgoingJob):
            raise OperationInvalidError(f"domain '{obj.name}' is not being migrated out")
        return cls(ctx, obj, job)

    @classmethod
    async def begin(cls, ctx: MigrationContext, obj: DomainObj, request: MigrationRequest,
                    ) -> tuple[OutgoingMigration | None, bytes, str]:
        """Begin: the migration (None offline: no job), the cookie and the XML."""
        copied = _check_can_move(ctx, obj, request)
        xml = destination_xml(ctx, obj, request)
        cookie = make_cookie(ctx.driver, obj.name, obj.uuid)
        if request.offline:
            return None, cookie, xml
        # claimed before the first await: a concurrent Begin sees it
        out = cls(ctx, obj, ctx.new_outgoing_job(obj, request))
        if copied:
            try:
                nbd = await storage_src.begin_nbd(ctx.driver.runner.monitor(obj),
                                                  obj.current, copied, request)
            except BaseException:
                out.end()
                raise
            cookie = make_cookie(ctx.driver, obj.name, obj.uuid, nbd=nbd)
        return out, cookie, xml

    async def __aenter__(self) -> OutgoingMigration:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None:
            self.end()

    def end(self) -> None:
        """The job ends (unless something else already ended it)."""
        if self.obj.migration is self.job:
            self.ctx.end_job(self.obj)

    # -- Perform -----------------------------------------------------------------------------

    async def perform(self, request: MigrationRequest, target: PerformTarget) -> None:
        """QEMU's migration to ``target``; on failure the guest is back as it was and the
        error raised (the job stays for Confirm)."""
        run = PerformRun.plan(self.ctx, self.obj, self.job, request, target)
        self.job.set_phase(SourcePhase.PERFORM3)
        try:
            await run.run()
        except BaseException as exc:
            log.error("[dom=%s job=migration.out phase=perform] %s", self.obj.name, exc)
            await run.undo()
            await self.restore_source()
            raise
        self.job.set_phase(SourcePhase.PERFORM3_DONE)

    def statistics(self) -> CookieStatistics:
        stats = job_stats(self.job, completed=True)
        known = {f.name for f in dataclasses.fields(CookieStatistics)}
        return CookieStatistics(**{k: v for k, v in stats.items() if k in known})

    def cookie(self) -> bytes:
        """Perform's cookie: ours, with the job's statistics."""
        return make_cookie(self.ctx.driver, self.obj.name, self.obj.uuid, self.statistics())

    async def restore_source(self) -> None:
        """Put the guest back as it was before the migration (running if it ran).

        Not after a post-copy switchover: the destination holds newer memory, so resuming
        here would lose writes; the guest stays paused (post-copy failed), never lost.
        """
        obj, job = self.obj, self.job
        obj.pending_pause_reason = None
        if job.postcopy_started or job.status.postcopy_started:
            self.ctx.postcopy_failed(obj)
            return
        if not obj.active or not job.was_running or obj.state == DomainState.RUNNING:
            return  # never paused: nothing to restore, the reason stays (as libvirt)
        if obj.reason == PausedReason.IOERROR:
            return  # the guest's disk failed: resuming would only repeat the error
        obj.pending_resume_reason = RunningReason.MIGRATION_CANCELED
        try:
            await self.ctx.driver.runner.monitor(obj).execute("cont")
        except VirtError as exc:
            log.error("[dom=%s] cannot resume after failed migration: %s", obj.name, exc)
            return
        obj.set_state(DomainState.RUNNING, RunningReason.MIGRATION_CANCELED)
        self.ctx.driver.runner.save_status(obj)

    # -- Confirm -----------------------------------------------------------------------------

    async def confirm(self, request: MigrationRequest, cancelled: bool) -> None:
        self.job.set_phase(SourcePhase.CONFIRM3_CANCELLED if cancelled
                           else SourcePhase.CONFIRM3)
        try:
            if cancelled:
                await self.restore_source()
                return
            await self.ctx.driver.runner.stop(self.obj, ShutoffReason.MIGRATED,
                                              EventStoppedDetail.MIGRATED)
            if request.undefine_source:
                undefine_source(self.ctx, self.obj)
        finally:
            self.end()


# -- the source's phases as the engine's entry points call them ---------------------------------


async def perform_client(ctx: MigrationContext, obj: DomainObj, request: MigrationRequest,
                         cookie_in: bytes = b"") -> bytes:
    """Normal (client-driven) Perform: migrate to the URI the destination prepared
    (``cookie_in``: the destination's Prepare cookie, with its NBD exports)."""
    out = OutgoingMigration.of(ctx, obj)
    if request.offline:
        return make_cookie(ctx.driver, obj.name, obj.uuid)
    async with out:
        if not request.migrate_uri:
            raise InvalidArgError("migrate_uri is required")
        peer = (await read_prepare_cookie(ctx.driver, cookie_in, obj, request)
                if request.storage_copy else None)
        await out.perform(request, PerformTarget(
            uri=request.migrate_uri, peer_nbd=peer.nbd if peer is not None else None))
    return out.cookie()


async def perform_direct(ctx: MigrationContext, obj: DomainObj,
                         request: MigrationRequest) -> None:
    """pyvirt's --direct: straight to a QEMU listening at ``migrate_uri``, no peer daemon.

    On success the source ends shut off (migrated), as after Confirm; the destination QEMU
    belongs to whoever started it.
    """
    out, _cookie, _xml = await OutgoingMigration.begin(ctx, obj, request)
    assert out is not None and request.migrate_uri is not None  # parse_request's rules
    async with out:
        await out.perform(request, PerformTarget(uri=request.migrate_uri))
    ctx.remember_outgoing(obj)
    await out.confirm(request, cancelled=False)


async def confirm(ctx: MigrationContext, obj: DomainObj, request: MigrationRequest,
                  cancelled: bool) -> None:
    if request.offline:
        if not cancelled and request.undefine_source:
            undefine_source(ctx, obj)
        return
    await OutgoingMigration.of(ctx, obj).confirm(request, cancelled)


# -- rules -----------------------------------------------------------------------------------


def _check_can_move(ctx: MigrationContext, obj: DomainObj,
                    request: MigrationRequest) -> list[DiskDef]:
    """Begin's checks; the disks a storage copy will mirror."""
    if request.offline:
        if not obj.persistent:
            raise OperationInvalidError("cannot migrate a transient domain offline")
    else:
        obj.require_active()
    if obj.migration is not None:
        raise OperationInvalidError(
            f"another migration job is already running for domain '{obj.name}'")
    if request.offline:
        return []
    copied: list[DiskDef] = []
    if request.storage_copy:
        copied = storage_src.select_disks(obj.current, request,
                                          ctx.driver.settings.shared_filesystems)
    if not request.has(MigrateFlags.UNSAFE):
        check_safe_storage(ctx, obj, {d.target_dev for d in copied})
    return copied


def check_safe_storage(ctx: MigrationContext, obj: DomainObj,
                       copied: set[str] | frozenset[str] = frozenset()) -> None:
    """libvirt's rule: every writable disk that is not copied (``copied``: their targets)
    must be on shared storage with a safe cache."""
    shared = ctx.driver.settings.shared_filesystems
    for disk in obj.current.devices.disks:
        if disk.readonly or disk.device == "cdrom" or not disk.source \
                or disk.target_dev in copied:
            continue
        if not under_shared_filesystems(disk.source or "", shared):
            raise MigrateUnsafeError("Migration without shared storage is unsafe")
        if disk.cache not in _SAFE_CACHE and not disk.shareable:
            raise MigrateUnsafeError("Migration may lead to data corruption if disks use "
                                     "cache other than none or directsync")


def destination_xml(ctx: MigrationContext, obj: DomainObj, request: MigrationRequest) -> str:
    """The definition the destination runs: ours, or the user's host-side variant (--xml)."""
    definition = obj.config if request.offline and obj.config is not None else obj.current
    if request.destination_xml:
        given = ctx.driver.parse(request.destination_xml)
        check_abi_stable(definition, given)
        definition = given
    return format_domain_xml(definition, migratable=True)


def undefine_source(ctx: MigrationContext, obj: DomainObj) -> None:
    driver = ctx.driver
    if not obj.persistent:
        return
    driver.config_store.remove(obj.name)
    driver.autostart_store.remove(obj.name)
    obj.config = None
    obj.autostart = False
    driver.runner.emit(obj, LifecycleEvent.UNDEFINED, EventUndefinedDetail.REMOVED)
    driver.forget_if_transient(obj)

