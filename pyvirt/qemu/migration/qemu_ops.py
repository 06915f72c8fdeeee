"""QMP commands of a migration, and waiting for QEMU to reach a migration state.

Progress comes from QMP ``MIGRATION`` events (routed into the job by the driver's event
handler), with ``query-migrate`` for statistics; waits are bounded by timeouts.
"""

from __future__ import annotations

import logging
from typing import Any

from pyvirt.errors import OperationAbortedError, OperationFailedError
from pyvirt.qemu.migration.capabilities import plan
from pyvirt.qemu.migration.job import MigrationJob
from pyvirt.qemu.migration.params import MigrationRequest, Side
from pyvirt.qemu.migration.qemu_status import FINAL, MigrationStatus
from pyvirt.qemu.monitor import Monitor

log = logging.getLogger(__name__)

#: how often statistics are refreshed while waiting (events wake us earlier)
TICK_S = 0.5


async def apply_plan(monitor: Monitor, request: MigrationRequest, side: Side,
                     max_speed_mib: int | None = None) -> None:
    """Program this QEMU's migration capabilities and parameters for ``request``.

    The plan is checked against what this QEMU offers before anything is set, so an
    option it cannot do fails before anything moves.
    """
    caps = await monitor.execute("query-migrate-capabilities")
    params = await monitor.execute("query-migrate-parameters")
    setup = plan(request, side, {c["capability"] for c in caps}, set(params),
                 max_speed_mib=max_speed_mib)
    for command, args in setup.qmp_commands():
        await monitor.execute(command, args)


async def refresh(monitor: Monitor, job: MigrationJob) -> dict[str, Any]:
    before = job.status
    info: dict[str, Any] = await monitor.execute("query-migrate")
    job.info = info
    # A MIGRATION event that arrived while the query was out is newer than its answer
    # (QEMU's migration thread emits it while the main loop answers): keep the event's.
    # Overwriting "completed" with a stale "active" cost a whole TICK_S (seen: +500 ms).
    if "status" in info and job.status == before:
        job.status = MigrationStatus.parse(info["status"])
    return info


class PostcopyFailedError(OperationFailedError):
    """Post-copy broke after the switchover: neither side may resume or be discarded."""


async def wait_final(monitor: Monitor, job: MigrationJob, *, incoming: bool = False,
                     on_tick: Any = None, until: frozenset[MigrationStatus] = FINAL) -> None:
    """Wait until QEMU's migration reaches one of ``until`` (default: its end); raise with
    QEMU's reason unless it completed (or reached a non-final state asked for)."""
    while job.status not in until and not job.status.is_final:
        if job.status.postcopy_broken:
            raise PostcopyFailedError(
                f"post-copy migration failed: the guest is paused on both hosts "
                f"(QEMU status {job.status}); recovery (--postcopy-resume) is not supported yet")
        if on_tick is not None:
            seen = job.status
            await on_tick()
            if job.status != seen:
                continue  # an event came during the tick: act on it now, not a TICK_S later
        await job.wait_status_change(TICK_S)
        if not incoming:
            await refresh(monitor, job)
    if not incoming:
        await refresh(monitor, job)
    asked_for = job.status in until and not job.status.is_final  # e.g. postcopy-active
    if job.status is MigrationStatus.COMPLETED or asked_for:
        return
    if job.status is MigrationStatus.CANCELLED or job.abort_requested:
        raise OperationAbortedError("migration out: canceled by client"
                                    if not incoming else "migration in: canceled")
    reason = job.info.get("error-desc", "unexpectedly failed")
    side = "in" if incoming else "out"
    raise OperationFailedError(f"migration {side} job: {reason}")


async def cancel(monitor: Monitor) -> None:
    try:
        await monitor.execute("migrate_cancel")
    except OperationFailedError as exc:
        log.warning("migrate_cancel failed: %s", exc)
