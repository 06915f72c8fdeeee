"""Resolving migrations a previous pyvirtd left half done (see journal.py for the table)."""

from __future__ import annotations

import logging

from pyvirt.constants import (
    DomainState,
    EventStoppedDetail,
    MigrateFlags,
    RunningReason,
    ShutoffReason,
)
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import images, incoming, qemu_ops, storage_src
from pyvirt.qemu.migration.context import MigrationContext
from pyvirt.qemu.migration.journal import JournalEntry
from pyvirt.qemu.migration.outgoing import undefine_source
from pyvirt.qemu.migration.p2p import destination_outcome
from pyvirt.qemu.migration.phases import DestinationPhase, SourcePhase, phase_of
from pyvirt.qemu.migration.qemu_status import MigrationStatus

log = logging.getLogger(__name__)


async def recover_all(ctx: MigrationContext) -> None:
    for entry in ctx.journal.entries():
        obj = ctx.driver.domain_by_uuid(entry.uuid)
        outgoing = entry.side == "out"
        try:
            phase = phase_of(outgoing, entry.phase)
            if obj is not None and obj.active:
                if isinstance(phase, SourcePhase):
                    await _recover_out(ctx, obj, entry, phase)
                else:
                    await _recover_in(ctx, obj, entry, phase)
        except Exception as exc:  # one bad entry must not stop the daemon
            log.error("[dom=%s] recovering migration (%s %s) failed: %s",
                      entry.name, entry.side, entry.phase, exc)
        if not outgoing and entry.phase == DestinationPhase.PREPARE.value and entry.images \
                and (obj is None or not obj.active):
            images.remove(entry.images)  # the copy never completed: drop what Prepare made
        ctx.journal.remove(entry.uuid)


async def _recover_out(ctx: MigrationContext, obj: DomainObj, entry: JournalEntry,
                       phase: SourcePhase) -> None:
    log.warning("[dom=%s job=migration.out phase=%s] resolving after a daemon restart",
                obj.name, entry.phase)
    monitor = ctx.driver.runner.monitor(obj)
    info = await monitor.execute("query-migrate")
    if MigrationStatus.parse(info.get("status", "none")).precopy_running:
        await qemu_ops.cancel(monitor)
    await storage_src.remove_leftovers(monitor)  # mirrors and NBD clients of a storage copy
    if phase is SourcePhase.CONFIRM3:
        await _finish_source(ctx, obj, entry)
    elif phase is SourcePhase.PERFORM3_DONE:
        if entry.dconnuri and await destination_outcome(entry.dconnuri, entry.uuid, 0):
            await _finish_source(ctx, obj, entry)
        elif entry.dconnuri:
            await _resume(ctx, obj)
        else:
            log.warning("[dom=%s] migration outcome unknown (client-driven); left paused",
                        obj.name)
    else:
        await _resume(ctx, obj)


async def _finish_source(ctx: MigrationContext, obj: DomainObj, entry: JournalEntry) -> None:
    await ctx.driver.runner.stop(obj, ShutoffReason.MIGRATED, EventStoppedDetail.MIGRATED)
    if entry.flags & MigrateFlags.UNDEFINE_SOURCE:
        undefine_source(ctx, obj)


async def _resume(ctx: MigrationContext, obj: DomainObj) -> None:
    if obj.state == DomainState.RUNNING:
        return
    obj.pending_resume_reason = RunningReason.MIGRATION_CANCELED
    await ctx.driver.runner.monitor(obj).execute("cont")
    obj.set_state(DomainState.RUNNING, RunningReason.MIGRATION_CANCELED)
    ctx.driver.runner.save_status(obj)


async def _recover_in(ctx: MigrationContext, obj: DomainObj, entry: JournalEntry,
                      phase: DestinationPhase) -> None:
    log.warning("[dom=%s job=migration.in phase=%s] resolving after a daemon restart",
                obj.name, entry.phase)
    if phase is DestinationPhase.PREPARE:
        info = await ctx.driver.runner.monitor(obj).execute("query-migrate")
        if MigrationStatus.parse(info.get("status", "none")).postcopy_started:
            ctx.postcopy_failed(obj)  # the guest already ran here: never discard it
        else:
            await incoming.abandon(ctx, obj)
    elif not entry.flags & MigrateFlags.PAUSED and obj.state != DomainState.RUNNING:
        obj.pending_resume_reason = RunningReason.MIGRATED
        await ctx.driver.runner.monitor(obj).execute("cont")
        obj.set_state(DomainState.RUNNING, RunningReason.MIGRATED)
        ctx.driver.runner.save_status(obj)
