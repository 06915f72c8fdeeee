"""Perform on the source: QEMU's migration in four steps, watched by a list of abort sources.

::

    setup       migration capabilities and parameters, graphics clients told where to go,
                the storage copy (mirrors until READY), the tunnel
    start       the coming pause is "migrating"; without --live the guest stops; QMP migrate
    watch       until QEMU completes, hands the guest over (post-copy) or pauses before the
                switchover; every tick runs the abort sources
    switchover  paused before it: the mirrors complete, QEMU continues; handed over in
                post-copy: the source is paused (post-copy); a tunnel drains its last bytes

An abort source is an async callable that every tick of the waits runs (storage copy and
migration alike): it raises to abort the migration (the peer is gone, the guest's disk
failed, the tunnel or a mirror broke) or acts (a client asked to abort: QEMU's migration
is cancelled, and QEMU's "cancelled" ends the wait). A convergence policy is one more.

On any failure :meth:`PerformRun.undo` cancels QEMU's migration and mirrors and closes the
tunnel; putting the guest back as it was is the caller's (outgoing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pyvirt.constants import DomainState, PausedReason
from pyvirt.errors import OperationFailedError, VirtError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import graphics, qemu_ops, storage_src, tunnel, uris
from pyvirt.qemu.migration.context import MigrationContext
from pyvirt.qemu.migration.cookie import CookieNBD
from pyvirt.qemu.migration.job import OutgoingJob
from pyvirt.qemu.migration.params import MigrationRequest, Side
from pyvirt.qemu.migration.qemu_status import (
    FINAL,
    HANDED_OVER,
    PAUSED_BEFORE_SWITCHOVER,
    MigrationStatus,
)
from pyvirt.qemu.monitor import Monitor
from pyvirt.rpc.stream import Stream

log = logging.getLogger(__name__)

#: after QEMU reports completion, how long the tunnel may take to deliver the last bytes
TUNNEL_DRAIN_S = 60.0

AbortSource = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class PerformTarget:
    """Where the migration goes: a URI (checked against the allow-list here, whoever
    produced it: a client or a destination's Prepare), or a tunnel's stream."""

    uri: str = ""
    stream: Stream | None = None
    #: the destination's NBD exports (its Prepare cookie), for a storage copy
    peer_nbd: CookieNBD | None = None
    #: p2p: raises when the destination is gone (an abort source)
    watch: AbortSource | None = None


@dataclass
class PerformRun:
    ctx: MigrationContext
    obj: DomainObj
    job: OutgoingJob
    request: MigrationRequest
    target: PerformTarget
    monitor: Monitor
    address: uris.MigrationAddress | None = None
    sources: list[AbortSource] = field(default_factory=list)

    @classmethod
    def plan(cls, ctx: MigrationContext, obj: DomainObj, job: OutgoingJob,
             request: MigrationRequest, target: PerformTarget) -> PerformRun:
        address = None if target.stream is not None else uris.parse_migration_uri(target.uri)
        run = cls(ctx, obj, job, request, target, ctx.driver.runner.monitor(obj), address)
        run.sources = abort_sources(run)
        return run

    async def run(self) -> None:
        """The four steps; on failure the caller undoes (:meth:`undo`) and restores."""
        qemu_uri = await self.setup()
        await self.start(qemu_uri)
        until = HANDED_OVER if self.request.postcopy else FINAL
        await self.watch(until | PAUSED_BEFORE_SWITCHOVER)
        await self.switchover(until)

    async def tick(self) -> None:
        for source in self.sources:
            await source()

    async def setup(self) -> str:
        """Everything before QMP migrate; the URI QEMU migrates to."""
        obj, request = self.obj, self.request
        await qemu_ops.apply_plan(self.monitor, request, Side.SOURCE, obj.migrate_max_speed_mib)
        await graphics.relocate_clients(self.monitor, obj.current, request.graphics_uri)
        if request.storage_copy:
            await self._copy_storage()
        if self.target.stream is not None:
            return await self._start_tunnel(self.target.stream)
        assert self.address is not None
        return self.address.qemu()

    async def start(self, qemu_uri: str) -> None:
        obj = self.obj
        obj.pending_pause_reason = PausedReason.MIGRATION
        if not self.request.live and obj.state == DomainState.RUNNING:
            await self.monitor.execute("stop")  # without --live the guest waits while it moves
        await self.monitor.execute("migrate", {"uri": qemu_uri})

    async def watch(self, until: frozenset[MigrationStatus]) -> None:
        await qemu_ops.wait_final(self.monitor, self.job, on_tick=self.tick, until=until)

    async def switchover(self, until: frozenset[MigrationStatus]) -> None:
        """With post-copy the hand-over is the end of Perform (as libvirt): the remaining
        pages follow while the destination already runs the guest."""
        job = self.job
        if job.status.paused_before_switchover:
            if job.storage is not None:  # the destination's disks consistent first
                await storage_src.complete(self.monitor, job)
            await self.monitor.execute("migrate-continue",
                                       {"state": MigrationStatus.PRE_SWITCHOVER.value})
            await self.watch(until)
        if job.status is MigrationStatus.POSTCOPY_ACTIVE:
            self.obj.set_state(DomainState.PAUSED, PausedReason.POSTCOPY)
        if job.tunnel is not None:
            await asyncio.wait_for(asyncio.shield(job.tunnel), TUNNEL_DRAIN_S)

    async def undo(self) -> None:
        """QEMU's migration and mirrors cancelled, the tunnel closed."""
        job = self.job
        await qemu_ops.cancel(self.monitor)
        await storage_src.abort(self.monitor, job)
        if job.tunnel is not None:
            job.tunnel.cancel()
            if self.target.stream is not None:
                with contextlib.suppress(VirtError):
                    await self.target.stream.abort()

    async def _copy_storage(self) -> None:
        """Mirror the copied disks to the destination's exports; return once all are READY."""
        obj, request, peer_nbd = self.obj, self.request, self.target.peer_nbd
        disks = storage_src.select_disks(obj.current, request,
                                         self.ctx.driver.settings.shared_filesystems)
        storage_src.exported(disks, peer_nbd)
        host = self.address.host if self.address is not None else None
        nbd_address = storage_src.server_address(request, peer_nbd, host)
        speed = storage_src.mirror_speed(request, obj.migrate_max_speed_mib)
        await storage_src.start_mirrors(self.monitor, self.job, obj.current, request, disks,
                                        nbd_address, speed)
        await storage_src.wait_ready(self.monitor, self.job, self.tick)

    async def _start_tunnel(self, stream: Stream) -> str:
        sock = await tunnel.give_qemu_socket(self.monitor)
        self.job.tunnel = asyncio.get_running_loop().create_task(
            tunnel.pump_qemu_to_stream(sock, stream), name=f"tunnel-out-{self.obj.name}")
        return f"fd:{tunnel.FD_NAME}"


# -- abort sources ---------------------------------------------------------------------------


def abort_sources(run: PerformRun) -> list[AbortSource]:
    """What can end a Perform early, in the order each tick asks."""
    sources = [_client_abort(run)]
    if run.target.watch is not None:
        sources.append(run.target.watch)
    if run.request.abort_on_error:
        sources.append(_guest_io_error(run.obj))
    sources += [_tunnel_broken(run.job), _mirror_failed(run.job)]
    return sources


def _client_abort(run: PerformRun) -> AbortSource:
    """domjobabort, or the driving client gone: QEMU's migration is cancelled (QEMU's
    "cancelled" then ends the wait with libvirt's "canceled by client")."""
    async def check() -> None:
        if run.job.abort_requested and not run.job.status.is_final:
            await qemu_ops.cancel(run.monitor)
    return check


def _guest_io_error(obj: DomainObj) -> AbortSource:
    async def check() -> None:
        if obj.state == DomainState.PAUSED and obj.reason == PausedReason.IOERROR:
            raise OperationFailedError("migration out job: failed due to I/O error")
    return check


def _tunnel_broken(job: OutgoingJob) -> AbortSource:
    async def check() -> None:
        if job.tunnel is not None and job.tunnel.done() and job.tunnel.exception():
            raise OperationFailedError(f"tunnel failed: {job.tunnel.exception()}")
    return check


def _mirror_failed(job: OutgoingJob) -> AbortSource:
    async def check() -> None:
        failure = job.storage.failure() if job.storage is not None else None
        if failure is not None:
            raise OperationFailedError(f"migration out job: {failure}")
    return check
