"""Source side of a migration: Begin, Perform (native TCP) and Confirm.

Begin checks the guest can move (libvirt's safety rule on disks, no other job) and
produces the XML and cookie for the destination. Perform sets the migration
capabilities and parameters, marks the coming pause as "migrating", runs QMP
``migrate`` and follows it to the end. A failure before switchover cancels QEMU's
migration and resumes the guest where it was. Confirm either kills the source QEMU
(success: shut off, migrated; undefined with ``--undefinesource``) or resumes the guest
(cancelled): at no instant do both hosts run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyvirt.conf.domain import DiskDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.constants import (
    DomainState,
    EventStoppedDetail,
    EventUndefinedDetail,
    JobOperation,
    LifecycleEvent,
    MigrateFlags,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import (
    InvalidArgError,
    MigrateUnsafeError,
    OperationFailedError,
    OperationInvalidError,
    VirtError,
)
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import graphics, qemu_ops, storage_src, tunnel, uris
from pyvirt.qemu.migration.abi import check_abi_stable
from pyvirt.qemu.migration.cookie import CookieNBD, CookieStatistics
from pyvirt.qemu.migration.cookie_io import make_cookie, read_prepare_cookie
from pyvirt.qemu.migration.job import MigrationJob, Phase, job_stats
from pyvirt.qemu.migration.params import MigrationRequest, Side
from pyvirt.qemu.migration.qemu_status import (
    FINAL,
    HANDED_OVER,
    PAUSED_BEFORE_SWITCHOVER,
    MigrationStatus,
)
from pyvirt.qemu.monitor import Monitor
from pyvirt.rpc.stream import Stream

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

_SAFE_CACHE = frozenset({"none", "directsync"})
#: after QEMU reports completion, how long the tunnel may take to deliver the last bytes
TUNNEL_DRAIN_S = 60.0


async def begin(engine: MigrationEngine, obj: DomainObj,
                request: MigrationRequest) -> tuple[bytes, str]:
    offline = request.offline
    if offline:
        if not obj.persistent:
            raise OperationInvalidError("cannot migrate a transient domain offline")
    else:
        obj.require_active()
    if obj.migration is not None:
        raise OperationInvalidError(
            f"another migration job is already running for domain '{obj.name}'")
    copied: list[DiskDef] = []
    if not offline and request.storage_copy:
        copied = storage_src.select_disks(obj.current, request,
                                          engine.driver.settings.shared_filesystems)
    if not offline and not request.has(MigrateFlags.UNSAFE):
        check_safe_storage(engine, obj, {d.target_dev for d in copied})
    xml = destination_xml(engine, obj, request)
    job: MigrationJob | None = None
    if not offline:  # claimed before the first await: a concurrent Begin sees it
        job = engine.new_job(obj, JobOperation.MIGRATION_OUT, request, Phase.BEGIN3)
        job.was_running = obj.state == DomainState.RUNNING
    nbd: CookieNBD | None = None
    if copied:
        try:
            nbd = await storage_src.begin_nbd(engine.driver.runner.monitor(obj), obj.current,
                                              copied, request)
        except BaseException:
            if job is not None and obj.migration is job:
                engine.end_job(obj)
            raise
    return make_cookie(engine.driver, obj.name, obj.uuid, nbd=nbd), xml


def check_safe_storage(engine: MigrationEngine, obj: DomainObj,
                       copied: set[str] | frozenset[str] = frozenset()) -> None:
    """libvirt's rule: every writable disk that is not copied (``copied``: their targets)
    must be on shared storage with a safe cache."""
    shared = engine.driver.settings.shared_filesystems
    for disk in obj.current.devices.disks:
        if disk.readonly or disk.device == "cdrom" or not disk.source \
                or disk.target_dev in copied:
            continue
        if not _on_shared_fs(disk, shared):
            raise MigrateUnsafeError("Migration without shared storage is unsafe")
        if disk.cache not in _SAFE_CACHE and not disk.shareable:
            raise MigrateUnsafeError("Migration may lead to data corruption if disks use "
                                     "cache other than none or directsync")


def _on_shared_fs(disk: DiskDef, shared: tuple[str, ...]) -> bool:
    path = os.path.realpath(disk.source or "")
    return any(path == root or path.startswith(root.rstrip("/") + "/")
               for root in (os.path.realpath(r) for r in shared))


def destination_xml(engine: MigrationEngine, obj: DomainObj,
                    request: MigrationRequest) -> str:
    """The definition the destination runs: ours, or the user's host-side variant (--xml)."""
    definition = obj.config if request.offline and obj.config is not None else obj.current
    if request.destination_xml:
        given = engine.driver.parse(request.destination_xml)
        check_abi_stable(definition, given)
        definition = given
    return format_domain_xml(definition, migratable=True)


async def perform(engine: MigrationEngine, obj: DomainObj, request: MigrationRequest,
                  cookie_in: bytes = b"") -> bytes:
    """Normal (client-driven) Perform: migrate to the URI the destination prepared
    (``cookie_in``: the destination's Prepare cookie, with its NBD exports)."""
    job = _job_of(obj)
    if request.offline:
        return make_cookie(engine.driver, obj.name, obj.uuid)
    if not request.migrate_uri:
        engine.end_job(obj)
        raise InvalidArgError("migrate_uri is required")
    try:
        peer = (await read_prepare_cookie(engine.driver, cookie_in, obj, request)
                if request.storage_copy else None)
        await perform_native(engine, obj, job, request.migrate_uri, request,
                             peer_nbd=peer.nbd if peer is not None else None)
    except BaseException:
        engine.end_job(obj)
        raise
    return make_cookie(engine.driver, obj.name, obj.uuid, statistics(job))


async def perform_direct(engine: MigrationEngine, obj: DomainObj,
                         request: MigrationRequest) -> None:
    """pyvirt's --direct: straight to a QEMU listening at ``migrate_uri``, no peer daemon.

    On success the source ends shut off (migrated), as after Confirm; the destination QEMU
    belongs to whoever started it.
    """
    await begin(engine, obj, request)
    job = _job_of(obj)
    assert request.migrate_uri is not None  # parse_request requires it for direct
    try:
        await perform_native(engine, obj, job, request.migrate_uri, request)
    except BaseException:
        engine.end_job(obj)
        raise
    engine.remember_outgoing(obj)
    await confirm(engine, obj, request, cancelled=False)


def statistics(job: MigrationJob) -> CookieStatistics:
    stats = job_stats(job, completed=True)
    known = {f.name for f in dataclasses.fields(CookieStatistics)}
    return CookieStatistics(**{k: v for k, v in stats.items() if k in known})


async def perform_native(engine: MigrationEngine, obj: DomainObj, job: MigrationJob,
                         uri: str, request: MigrationRequest,
                         watch: Callable[[], Awaitable[None]] | None = None,
                         stream: Stream | None = None,
                         peer_nbd: CookieNBD | None = None) -> None:
    """QEMU's migration to ``uri``, or into ``stream`` (tunnelled); ``watch`` raises to
    abort it (e.g. the peer connection is gone). With a storage copy, the disks are
    mirrored to the exports ``peer_nbd`` (the destination's cookie) names first.

    ``uri`` is checked against the allow-list (uris.py) here, the last step before QMP,
    whoever produced it: a client, or a destination's Prepare."""
    address = None if stream is not None else uris.parse_migration_uri(uri)
    target = address.qemu() if address is not None else None
    job.set_phase(Phase.PERFORM3)
    monitor = engine.driver.runner.monitor(obj)
    tick = engine.tick_for(obj, job)

    async def on_tick() -> None:
        await tick()
        if watch is not None:
            await watch()
        if request.abort_on_error and obj.state == DomainState.PAUSED \
                and obj.reason == PausedReason.IOERROR:
            raise OperationFailedError("migration out job: failed due to I/O error")
        if job.tunnel is not None and job.tunnel.done() and job.tunnel.exception():
            raise OperationFailedError(f"tunnel failed: {job.tunnel.exception()}")
        failure = job.storage.failure() if job.storage is not None else None
        if failure is not None:
            raise OperationFailedError(f"migration out job: {failure}")

    try:
        await qemu_ops.apply_plan(monitor, request, Side.SOURCE, obj.migrate_max_speed_mib)
        await graphics.relocate_clients(monitor, obj.current, request.graphics_uri)
        if request.storage_copy:
            await _copy_storage(engine, obj, job, request, address, peer_nbd, on_tick)
        if stream is not None:
            target = await _start_tunnel(monitor, job, stream, obj.name)
        obj.pending_pause_reason = PausedReason.MIGRATION
        if not request.live and obj.state == DomainState.RUNNING:
            await monitor.execute("stop")  # without --live the guest waits while it moves
        await monitor.execute("migrate", {"uri": target})
        # with post-copy the switch to the destination is the end of Perform (as libvirt);
        # the remaining pages follow while the destination already runs the guest
        until = HANDED_OVER if request.postcopy else FINAL
        await qemu_ops.wait_final(monitor, job, on_tick=on_tick,
                                  until=until | PAUSED_BEFORE_SWITCHOVER)
        if job.status.paused_before_switchover:
            await _switchover(monitor, job, on_tick, until)
        if job.status is MigrationStatus.POSTCOPY_ACTIVE:
            obj.set_state(DomainState.PAUSED, PausedReason.POSTCOPY)
        if job.tunnel is not None:
            await asyncio.wait_for(asyncio.shield(job.tunnel), TUNNEL_DRAIN_S)
    except BaseException as exc:
        log.error("[dom=%s job=migration.out phase=perform] %s", obj.name, exc)
        await qemu_ops.cancel(monitor)
        await storage_src.abort(monitor, job)
        if job.tunnel is not None:
            job.tunnel.cancel()
            with contextlib.suppress(VirtError):
                assert stream is not None
                await stream.abort()
        await restore_source(engine, obj, job)
        raise
    job.set_phase(Phase.PERFORM3_DONE)


async def _copy_storage(engine: MigrationEngine, obj: DomainObj, job: MigrationJob,
                        request: MigrationRequest, address: uris.MigrationAddress | None,
                        peer_nbd: CookieNBD | None,
                        on_tick: Callable[[], Awaitable[None]]) -> None:
    """Mirror the copied disks to the destination's exports; return once all are READY."""
    monitor = engine.driver.runner.monitor(obj)
    disks = storage_src.select_disks(obj.current, request,
                                     engine.driver.settings.shared_filesystems)
    storage_src.exported(disks, peer_nbd)
    host = address.host if address is not None else None
    nbd_address = storage_src.server_address(request, peer_nbd, host)
    speed = storage_src.mirror_speed(request, obj.migrate_max_speed_mib)
    await storage_src.start_mirrors(monitor, job, obj.current, request, disks, nbd_address,
                                    speed)
    await storage_src.wait_ready(monitor, job, on_tick)


async def _switchover(monitor: Monitor, job: MigrationJob,
                      on_tick: Callable[[], Awaitable[None]],
                      until: frozenset[MigrationStatus]) -> None:
    """QEMU paused before the switchover (guest stopped): complete the mirrors so the
    destination's disks are consistent, then let QEMU finish."""
    if job.storage is not None:
        await storage_src.complete(monitor, job)
    await monitor.execute("migrate-continue", {"state": MigrationStatus.PRE_SWITCHOVER.value})
    await qemu_ops.wait_final(monitor, job, on_tick=on_tick, until=until)


async def _start_tunnel(monitor: Monitor, job: MigrationJob, stream: Stream,
                        name: str) -> str:
    sock = await tunnel.give_qemu_socket(monitor)
    job.tunnel = asyncio.get_running_loop().create_task(
        tunnel.pump_qemu_to_stream(sock, stream), name=f"tunnel-out-{name}")
    return f"fd:{tunnel.FD_NAME}"


async def restore_source(engine: MigrationEngine, obj: DomainObj, job: MigrationJob) -> None:
    """Put the guest back as it was before the migration (running if it ran).

    Not after a post-copy switchover: the destination holds newer memory, so resuming
    here would lose writes; the guest stays paused (post-copy failed), never silently lost.
    """
    obj.pending_pause_reason = None
    if job.postcopy_started or job.status.postcopy_started:
        engine.postcopy_failed(obj)
        return
    if not obj.active or not job.was_running or obj.state == DomainState.RUNNING:
        return  # never paused: nothing to restore, the reason stays (as libvirt)
    if obj.reason == PausedReason.IOERROR:
        return  # the guest's disk failed: resuming would only repeat the error (as libvirt)
    obj.pending_resume_reason = RunningReason.MIGRATION_CANCELED
    try:
        await engine.driver.runner.monitor(obj).execute("cont")
    except VirtError as exc:
        log.error("[dom=%s] cannot resume after failed migration: %s", obj.name, exc)
        return
    obj.set_state(DomainState.RUNNING, RunningReason.MIGRATION_CANCELED)
    engine.driver.runner.save_status(obj)


async def confirm(engine: MigrationEngine, obj: DomainObj, request: MigrationRequest,
                  cancelled: bool) -> None:
    if request.offline:
        if not cancelled and request.undefine_source:
            undefine_source(engine, obj)
        return
    job = _job_of(obj)
    job.set_phase(Phase.CONFIRM3_CANCELLED if cancelled else Phase.CONFIRM3)
    try:
        if cancelled:
            await restore_source(engine, obj, job)
            return
        await engine.driver.runner.stop(obj, ShutoffReason.MIGRATED,
                                        EventStoppedDetail.MIGRATED)
        if request.undefine_source:
            undefine_source(engine, obj)
    finally:
        engine.end_job(obj)


def undefine_source(engine: MigrationEngine, obj: DomainObj) -> None:
    driver = engine.driver
    if not obj.persistent:
        return
    driver.config_store.remove(obj.name)
    driver.autostart_store.remove(obj.name)
    obj.config = None
    obj.autostart = False
    driver.runner.emit(obj, LifecycleEvent.UNDEFINED, EventUndefinedDetail.REMOVED)
    driver.forget_if_transient(obj)


def _job_of(obj: DomainObj) -> MigrationJob:
    job = obj.migration
    if job is None or not job.outgoing:
        raise OperationInvalidError(f"domain '{obj.name}' is not being migrated out")
    return job
