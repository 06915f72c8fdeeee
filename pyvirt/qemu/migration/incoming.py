"""The destination side of a migration: Prepare and Finish, as one object per job.

Prepare: check the source's cookie (never the same host), build the domain from the
destination XML (renamed by ``destination_name``), start QEMU with ``-incoming defer``
and the migration capabilities both ends need, listen on a port from the migration range
(``migrate-incoming``) and answer ``uri_out`` = ``tcp://HOST:PORT``. Finish: wait for the
incoming stream to complete, then resume the guest (unless ``--suspend``) and make it
persistent if asked; when the migration failed or was cancelled, kill the incoming QEMU
and forget the half-created domain so nothing is left behind.

An :class:`IncomingMigration` owns its job, its ports (migration and NBD) and the images
its Prepare created, from Prepare to Finish: whatever ends the migration gives them back
(:meth:`abandon` on failure, the context's ``release`` after success).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from pyvirt.conf.domain import DiskDef, DomainDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.constants import (
    DomainState,
    EventDefinedDetail,
    EventStoppedDetail,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import InvalidArgError, OperationFailedError, OperationInvalidError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import qemu_ops, storage_dst, tunnel, uris
from pyvirt.qemu.migration.context import MigrationContext
from pyvirt.qemu.migration.cookie import CookieNBD, MigrationCookie
from pyvirt.qemu.migration.cookie_io import make_cookie, read_cookie, read_perform_cookie
from pyvirt.qemu.migration.job import IncomingJob
from pyvirt.qemu.migration.params import MigrationRequest, Side
from pyvirt.qemu.migration.phases import DestinationPhase
from pyvirt.qemu.migration.qemu_status import FINAL, HANDED_OVER, MigrationStatus
from pyvirt.rpc.stream import Stream

log = logging.getLogger(__name__)

#: how long Finish waits for the incoming stream to complete after Perform returned
FINISH_TIMEOUT_S = 120.0


class IncomingMigration:
    """The destination's half of one migration, holding its job (``obj.migration``)."""

    def __init__(self, ctx: MigrationContext, obj: DomainObj, job: IncomingJob) -> None:
        self.ctx = ctx
        self.obj = obj
        self.job = job

    @classmethod
    def of(cls, ctx: MigrationContext, obj: DomainObj) -> IncomingMigration:
        job = obj.migration
        if not isinstance(job, IncomingJob):
            raise OperationInvalidError("domain is not being migrated in")
        return cls(ctx, obj, job)

    # -- Prepare -----------------------------------------------------------------------------

    async def start(self, definition: DomainDef, request: MigrationRequest,
                    cookie: MigrationCookie | None,
                    stream: Stream | None) -> tuple[str | None, CookieNBD | None]:
        """QEMU waiting for the stream: (uri_out, NBD exports). On failure everything
        Prepare took is given back before the error goes up."""
        try:
            if stream is not None:
                await self._start_tunnelled(definition, request, stream)
                return None, None
            return await self._start_listening(definition, request, cookie)
        except BaseException:
            await self.abandon()
            raise

    async def _start_listening(self, definition: DomainDef, request: MigrationRequest,
                               cookie: MigrationCookie | None,
                               ) -> tuple[str, CookieNBD | None]:
        driver, obj, job = self.ctx.driver, self.obj, self.job
        listen = request.listen_address or driver.settings.migration_address or "0.0.0.0"
        incoming, uri_out = self._incoming_address(request, listen)
        disks: list[DiskDef] = []
        if request.storage_copy:  # the images must exist before QEMU opens them
            disks = await storage_dst.prepare_images(job, definition, request, cookie)
        await driver.runner.start(obj, definition, paused=True, incoming="defer")
        monitor = driver.runner.monitor(obj)
        await qemu_ops.apply_plan(monitor, request, Side.DESTINATION)
        nbd: CookieNBD | None = None
        if request.storage_copy:
            assert obj.live is not None
            nbd = await storage_dst.prepare_exports(self.ctx.ports, monitor, obj.live, job,
                                                    request, listen, disks, cookie)
        await monitor.execute("migrate-incoming", {"uri": incoming.qemu()})
        return uri_out, nbd

    def _incoming_address(self, request: MigrationRequest,
                          listen: str) -> tuple[uris.MigrationAddress, str]:
        """Where QEMU listens and the ``uri_out`` for the source. A client's migrate_uri
        (uri_in) chooses the socket, or the host and port (libvirt keeps uri_in's port;
        pyvirt takes it only inside the migration port range)."""
        wanted = uris.parse_migration_uri(request.migrate_uri) if request.migrate_uri \
            else None
        if wanted is not None and wanted.scheme == "unix":
            return wanted, wanted.libvirt()
        ports = self.ctx.ports
        if wanted is not None and wanted.port is not None:
            ports.claim(wanted.port, listen)
            self.job.port = port = wanted.port
        else:
            self.job.port = port = ports.allocate(listen)
        settings = self.ctx.driver.settings
        host = (wanted.host if wanted is not None else None) or settings.migration_host \
            or socket.gethostname()
        address = uris.MigrationAddress("tcp", host=uris.check_host(host, "migration host"),
                                        port=port)
        return uris.MigrationAddress("tcp", host=listen, port=port), address.libvirt()

    async def _start_tunnelled(self, definition: DomainDef, request: MigrationRequest,
                               stream: Stream) -> None:
        driver, obj = self.ctx.driver, self.obj
        await driver.runner.start(obj, definition, paused=True, incoming="defer")
        monitor = driver.runner.monitor(obj)
        await qemu_ops.apply_plan(monitor, request, Side.DESTINATION)
        sock = await tunnel.give_qemu_socket(monitor)
        try:
            await monitor.execute("migrate-incoming", {"uri": f"fd:{tunnel.FD_NAME}"})
        except BaseException:
            sock.close()
            raise
        self.job.tunnel = asyncio.get_running_loop().create_task(
            tunnel.pump_stream_to_qemu(stream, sock), name=f"tunnel-in-{obj.name}")

    # -- Finish ------------------------------------------------------------------------------

    async def finish(self, request: MigrationRequest,
                     cookie: MigrationCookie | None) -> bytes:
        """Wait for the guest, activate it; Finish's cookie. On failure the incoming QEMU
        goes (or stays, paused, when post-copy already switched)."""
        ctx, obj, job = self.ctx, self.obj, self.job
        monitor = ctx.driver.runner.monitor(obj)
        try:
            until = HANDED_OVER if request.postcopy else FINAL
            await asyncio.wait_for(qemu_ops.wait_final(monitor, job, incoming=True,
                                                       until=until), FINISH_TIMEOUT_S)
            job.set_phase(DestinationPhase.FINISH3)
            if request.storage_copy and obj.live is not None:
                await storage_dst.stop_server(monitor, obj.live, job)
            await self._activate(request)
            storage_dst.forget_created(job)  # the guest runs here: its images stay
        except BaseException:
            if job.status.postcopy_started:
                ctx.postcopy_failed(obj)
            else:
                await self.abandon()
            raise
        if job.status is MigrationStatus.POSTCOPY_ACTIVE:
            await self._complete_postcopy()
        if cookie is not None and cookie.statistics is not None:
            ctx.remember_incoming(obj, cookie.statistics)
        ctx.release(obj)
        return make_cookie(ctx.driver, obj.name, obj.uuid)

    async def _complete_postcopy(self) -> None:
        """The guest runs here while its last pages arrive; wait for them."""
        ctx, obj = self.ctx, self.obj
        try:
            await asyncio.wait_for(qemu_ops.wait_final(ctx.driver.runner.monitor(obj),
                                                       self.job, incoming=True),
                                   FINISH_TIMEOUT_S)
        except BaseException:
            ctx.postcopy_failed(obj)
            raise
        if obj.state == DomainState.RUNNING:
            obj.set_state(DomainState.RUNNING, RunningReason.MIGRATED)
            ctx.driver.runner.save_status(obj)

    async def _activate(self, request: MigrationRequest) -> None:
        driver, obj = self.ctx.driver, self.obj
        if request.persist_dest:
            persist(self.ctx, obj, request.persistent_xml)
        if request.paused:
            obj.set_state(DomainState.PAUSED, PausedReason.USER)
        else:
            postcopy = self.job.status is MigrationStatus.POSTCOPY_ACTIVE
            reason = RunningReason.POSTCOPY if postcopy else RunningReason.MIGRATED
            obj.pending_resume_reason = reason
            await driver.runner.monitor(obj).execute("cont")
            if obj.state != DomainState.RUNNING:
                obj.set_state(DomainState.RUNNING, reason)
        driver.runner.save_status(obj)

    async def abandon(self) -> None:
        await abandon(self.ctx, self.obj)


async def abandon(ctx: MigrationContext, obj: DomainObj) -> None:
    """A failed or cancelled incoming migration: kill QEMU, give the ports and images
    back, forget the domain."""
    driver = ctx.driver
    if obj.active:
        try:
            await driver.runner.stop(obj, ShutoffReason.FAILED, EventStoppedDetail.FAILED)
        except Exception as exc:  # keep cleaning up; report the original failure
            log.error("[dom=%s] stopping the incoming QEMU failed: %s", obj.name, exc)
    ctx.release(obj)
    driver.forget_if_transient(obj)


# -- the destination's phases as the engine's entry points call them --------------------------


async def prepare(ctx: MigrationContext, client_id: int | None, request: MigrationRequest,
                  cookie_in: bytes, stream: Stream | None = None) -> tuple[bytes, str | None]:
    """Prepare an incoming migration; with ``stream`` (tunnelled) QEMU reads from it."""
    driver = ctx.driver
    if not request.destination_xml:
        raise InvalidArgError("no domain XML passed")
    definition = driver.parse(request.destination_xml)
    cookie = await read_cookie(driver, cookie_in, name=definition.name, uuid=definition.uuid)
    if request.destination_name:
        definition.name = request.destination_name
    obj = ctx.claim_incoming(definition)
    if request.offline:
        # Nothing will listen; libvirt's clients still expect a URI from Prepare.
        host = driver.settings.migration_host or socket.gethostname()
        return make_cookie(driver, obj.name, obj.uuid), f"tcp://{host}"
    incoming = IncomingMigration(ctx, obj, ctx.new_incoming_job(obj, request, client_id))
    uri_out, nbd = await incoming.start(definition, request, cookie, stream)
    return make_cookie(driver, obj.name, obj.uuid, nbd=nbd), uri_out


async def finish(ctx: MigrationContext, request: MigrationRequest, cookie_in: bytes,
                 cancelled: bool) -> tuple[DomainObj | None, bytes]:
    driver = ctx.driver
    cookie = await read_perform_cookie(driver, cookie_in, request.destination_name)
    name = request.destination_name or (cookie.name if cookie else None)
    if not name:
        raise InvalidArgError("missing destination name")
    obj = driver.domain_by_name(name)
    if obj is None or (obj.migration is None and not request.offline):
        reason = ctx.incoming_errors.pop(name, None)
        if cancelled:
            return None, b""
        raise OperationFailedError(f"migration in job: {reason}" if reason
                                   else f"domain '{name}' is not being migrated in")
    if request.offline:
        if request.persist_dest:
            persist(ctx, obj, request.persistent_xml or request.destination_xml)
        return obj, b""
    incoming = IncomingMigration.of(ctx, obj)
    if cancelled:
        await incoming.abandon()
        return None, b""
    return obj, await incoming.finish(request, cookie)


def persist(ctx: MigrationContext, obj: DomainObj, xml: str | None) -> None:
    """Make the migrated domain persistent here (--persistent)."""
    driver = ctx.driver
    if not xml:
        if obj.live is None:
            raise InvalidArgError("no persistent definition to keep")
        xml = format_domain_xml(obj.live, migratable=True)
    definition = driver.parse(str(xml))
    existed = obj.persistent
    driver.config_store.write(obj.name, format_domain_xml(definition))
    obj.config = definition
    detail = EventDefinedDetail.UPDATED if existed else EventDefinedDetail.ADDED
    driver.runner.emit(obj, LifecycleEvent.DEFINED, detail)
