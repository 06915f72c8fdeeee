"""Resolving migrations a previous pyvirtd left half done (see journal.py for the table)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyvirt.constants import (
    DomainState,
    EventStoppedDetail,
    MigrateFlags,
    RunningReason,
    ShutoffReason,
)
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import images, p2p, qemu_ops, storage_src
from pyvirt.qemu.migration.journal import JournalEntry
from pyvirt.qemu.migration.qemu_status import MigrationStatus

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)


async def recover_all(engine: MigrationEngine) -> None:
    for entry in engine.journal.entries():
        obj = engine.driver.domain_by_uuid(entry.uuid)
        try:
            if obj is not None and obj.active:
                if entry.side == "out":
                    await _recover_out(engine, obj, entry)
                else:
                    await _recover_in(engine, obj, entry)
        except Exception as exc:  # one bad entry must not stop the daemon
            log.error("[dom=%s] recovering migration (%s %s) failed: %s",
                      entry.name, entry.side, entry.phase, exc)
        if entry.side == "in" and entry.phase == "prepare" and entry.images \
                and (obj is None or not obj.active):
            images.remove(entry.images)  # the copy never completed: drop what Prepare made
        engine.journal.remove(entry.uuid)


async def _recover_out(engine: MigrationEngine, obj: DomainObj, entry: JournalEntry) -> None:
    log.warning("[dom=%s job=migration.out phase=%s] resolving after a daemon restart",
                obj.name, entry.phase)
    monitor = engine.driver.runner.monitor(obj)
    info = await monitor.execute("query-migrate")
    if MigrationStatus.parse(info.get("status", "none")).precopy_running:
        await qemu_ops.cancel(monitor)
    await storage_src.remove_leftovers(monitor)  # mirrors and NBD clients of a storage copy
    if entry.phase == "confirm3":
        await _finish_source(engine, obj, entry)
    elif entry.phase == "perform3_done":
        if entry.dconnuri and await p2p.destination_outcome(entry.dconnuri, entry.uuid, 0):
            await _finish_source(engine, obj, entry)
        elif entry.dconnuri:
            await _resume(engine, obj)
        else:
            log.warning("[dom=%s] migration outcome unknown (client-driven); left paused",
                        obj.name)
    else:
        await _resume(engine, obj)


async def _finish_source(engine: MigrationEngine, obj: DomainObj, entry: JournalEntry) -> None:
    from pyvirt.qemu.migration import src

    await engine.driver.runner.stop(obj, ShutoffReason.MIGRATED, EventStoppedDetail.MIGRATED)
    if entry.flags & MigrateFlags.UNDEFINE_SOURCE:
        src.undefine_source(engine, obj)


async def _resume(engine: MigrationEngine, obj: DomainObj) -> None:
    if obj.state == DomainState.RUNNING:
        return
    obj.pending_resume_reason = RunningReason.MIGRATION_CANCELED
    await engine.driver.runner.monitor(obj).execute("cont")
    obj.set_state(DomainState.RUNNING, RunningReason.MIGRATION_CANCELED)
    engine.driver.runner.save_status(obj)


async def _recover_in(engine: MigrationEngine, obj: DomainObj, entry: JournalEntry) -> None:
    log.warning("[dom=%s job=migration.in phase=%s] resolving after a daemon restart",
                obj.name, entry.phase)
    if entry.phase == "prepare":
        from pyvirt.qemu.migration import dst

        info = await engine.driver.runner.monitor(obj).execute("query-migrate")
        if MigrationStatus.parse(info.get("status", "none")).postcopy_started:
            engine.postcopy_failed(obj)  # the guest already ran here: never discard it
        else:
            await dst.abandon(engine, obj)
    elif not entry.flags & MigrateFlags.PAUSED and obj.state != DomainState.RUNNING:
        obj.pending_resume_reason = RunningReason.MIGRATED
        await engine.driver.runner.monitor(obj).execute("cont")
        obj.set_state(DomainState.RUNNING, RunningReason.MIGRATED)
        engine.driver.runner.save_status(obj)
