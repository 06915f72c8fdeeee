"""Destination side of a migration: Prepare and Finish.

Prepare: check the source's cookie (never the same host), build the domain from the
destination XML (renamed by ``destination_name``), start QEMU with ``-incoming defer``
and the migration capabilities both ends need, listen on a port from the migration range
(``migrate-incoming``) and answer ``uri_out`` = ``tcp://HOST:PORT``. Finish: wait for the
incoming stream to complete, then resume the guest (unless ``--suspend``) and make it
persistent if asked; when the migration failed or was cancelled, kill the incoming QEMU
and forget the half-created domain so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from pyvirt.conf.domain import DiskDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.constants import (
    DomainState,
    EventDefinedDetail,
    EventStoppedDetail,
    JobOperation,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import InvalidArgError, OperationFailedError, OperationInvalidError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import qemu_ops, storage_dst, tunnel, uris
from pyvirt.qemu.migration.cookie import CookieNBD, MigrationCookie
from pyvirt.qemu.migration.cookie_io import make_cookie, read_cookie, read_perform_cookie
from pyvirt.qemu.migration.job import MigrationJob, Phase
from pyvirt.qemu.migration.params import MigrationRequest, Side
from pyvirt.qemu.migration.qemu_status import FINAL, HANDED_OVER, MigrationStatus
from pyvirt.rpc.stream import Stream

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

#: how long Finish waits for the incoming stream to complete after Perform returned
FINISH_TIMEOUT_S = 120.0


async def prepare(engine: MigrationEngine, client_id: int | None, request: MigrationRequest,
                  cookie_in: bytes, stream: Stream | None = None) -> tuple[bytes, str | None]:
    """Prepare an incoming migration; with ``stream`` (tunnelled) QEMU reads from it."""
    driver = engine.driver
    if not request.destination_xml:
        raise InvalidArgError("no domain XML passed")
    definition = driver.parse(request.destination_xml)
    cookie = await read_cookie(driver, cookie_in, name=definition.name, uuid=definition.uuid)
    if request.destination_name:
        definition.name = request.destination_name
    obj = engine.claim_incoming(definition)
    if request.offline:
        # Nothing will listen; libvirt's clients still expect a URI from Prepare.
        host = driver.settings.migration_host or socket.gethostname()
        return make_cookie(driver, obj.name, obj.uuid), f"tcp://{host}"
    job = engine.new_job(obj, JobOperation.MIGRATION_IN, request, Phase.PREPARE)
    job.client_id = client_id
    uri_out: str | None = None
    nbd: CookieNBD | None = None
    try:
        if stream is not None:
            await _start_tunnelled(engine, obj, job, definition, request, stream)
        else:
            uri_out, nbd = await _start_incoming(engine, obj, job, definition, request,
                                                 cookie)
    except BaseException:
        await abandon(engine, obj)
        raise
    return make_cookie(driver, obj.name, obj.uuid, nbd=nbd), uri_out


async def _start_incoming(engine: MigrationEngine, obj: DomainObj, job: MigrationJob,
                          definition: Any, request: MigrationRequest,
                          cookie: MigrationCookie | None) -> tuple[str, CookieNBD | None]:
    driver = engine.driver
    listen = request.listen_address or driver.settings.migration_address or "0.0.0.0"
    incoming, uri_out = _incoming_address(engine, job, request, listen)
    disks: list[DiskDef] = []
    if request.storage_copy:  # the images must exist before QEMU opens them
        disks = await storage_dst.prepare_images(job, definition, request, cookie)
    await driver.runner.start(obj, definition, paused=True, incoming="defer")
    monitor = driver.runner.monitor(obj)
    await qemu_ops.apply_plan(monitor, request, Side.DESTINATION)
    nbd: CookieNBD | None = None
    if request.storage_copy:
        assert obj.live is not None
        nbd = await storage_dst.prepare_exports(engine, monitor, obj.live, job, request,
                                                listen, disks, cookie)
    await monitor.execute("migrate-incoming", {"uri": incoming.qemu()})
    return uri_out, nbd


def _incoming_address(engine: MigrationEngine, job: MigrationJob, request: MigrationRequest,
                      listen: str) -> tuple[uris.MigrationAddress, str]:
    """Where QEMU listens and the ``uri_out`` for the source. A client's migrate_uri (uri_in)
    chooses the socket, or the host and port (libvirt keeps uri_in's port; pyvirt takes it
    only inside the migration port range)."""
    wanted = uris.parse_migration_uri(request.migrate_uri) if request.migrate_uri else None
    if wanted is not None and wanted.scheme == "unix":
        return wanted, wanted.libvirt()
    if wanted is not None and wanted.port is not None:
        engine.ports.claim(wanted.port, listen)
        job.port = port = wanted.port
    else:
        job.port = port = engine.ports.allocate(listen)
    settings = engine.driver.settings
    host = (wanted.host if wanted is not None else None) or settings.migration_host \
        or socket.gethostname()
    address = uris.MigrationAddress("tcp", host=uris.check_host(host, "migration host"),
                                    port=port)
    return uris.MigrationAddress("tcp", host=listen, port=port), address.libvirt()


async def _start_tunnelled(engine: MigrationEngine, obj: DomainObj, job: MigrationJob,
                           definition: Any, request: MigrationRequest,
                           stream: Stream) -> None:
    driver = engine.driver
    await driver.runner.start(obj, definition, paused=True, incoming="defer")
    monitor = driver.runner.monitor(obj)
    await qemu_ops.apply_plan(monitor, request, Side.DESTINATION)
    sock = await tunnel.give_qemu_socket(monitor)
    try:
        await monitor.execute("migrate-incoming", {"uri": f"fd:{tunnel.FD_NAME}"})
    except BaseException:
        sock.close()
        raise
    job.tunnel = asyncio.get_running_loop().create_task(
        tunnel.pump_stream_to_qemu(stream, sock), name=f"tunnel-in-{obj.name}")


async def finish(engine: MigrationEngine, request: MigrationRequest, cookie_in: bytes,
                 cancelled: bool) -> tuple[DomainObj | None, bytes]:
    driver = engine.driver
    cookie = await read_perform_cookie(driver, cookie_in, request.destination_name)
    name = request.destination_name or (cookie.name if cookie else None)
    if not name:
        raise InvalidArgError("missing destination name")
    obj = driver.domain_by_name(name)
    if obj is None or (obj.migration is None and not request.offline):
        reason = engine.incoming_errors.pop(name, None)
        if cancelled:
            return None, b""
        raise OperationFailedError(f"migration in job: {reason}" if reason
                                   else f"domain '{name}' is not being migrated in")
    if request.offline:
        return await _finish_offline(engine, obj, request), b""
    job = obj.migration
    if job is None or job.outgoing:
        raise OperationInvalidError("domain is not being migrated in")
    if cancelled:
        await abandon(engine, obj)
        return None, b""
    monitor = driver.runner.monitor(obj)
    try:
        until = HANDED_OVER if request.postcopy else FINAL
        await asyncio.wait_for(qemu_ops.wait_final(monitor, job, incoming=True, until=until),
                               FINISH_TIMEOUT_S)
        job.set_phase(Phase.FINISH3)
        if request.storage_copy and obj.live is not None:
            await storage_dst.stop_server(monitor, obj.live, job)
        await _activate(engine, obj, request)
        storage_dst.forget_created(job)  # the guest runs here: its images stay
    except BaseException:
        if job.status.postcopy_started:
            engine.postcopy_failed(obj)
        else:
            await abandon(engine, obj)
        raise
    if job.status is MigrationStatus.POSTCOPY_ACTIVE:
        await _complete_postcopy(engine, obj, job)
    if cookie is not None and cookie.statistics is not None:
        engine.remember_incoming(obj, cookie.statistics)
    engine.release(obj)
    return obj, make_cookie(driver, obj.name, obj.uuid)


async def _complete_postcopy(engine: MigrationEngine, obj: DomainObj,
                             job: MigrationJob) -> None:
    """The guest runs here while its last pages arrive; wait for them."""
    try:
        await asyncio.wait_for(qemu_ops.wait_final(engine.driver.runner.monitor(obj), job,
                                                   incoming=True), FINISH_TIMEOUT_S)
    except BaseException:
        engine.postcopy_failed(obj)
        raise
    if obj.state == DomainState.RUNNING:
        obj.set_state(DomainState.RUNNING, RunningReason.MIGRATED)
        engine.driver.runner.save_status(obj)


async def _activate(engine: MigrationEngine, obj: DomainObj,
                    request: MigrationRequest) -> None:
    driver = engine.driver
    if request.persist_dest:
        _persist(engine, obj, request.persistent_xml)
    if request.paused:
        obj.set_state(DomainState.PAUSED, PausedReason.USER)
    else:
        postcopy = obj.migration is not None \
            and obj.migration.status is MigrationStatus.POSTCOPY_ACTIVE
        reason = RunningReason.POSTCOPY if postcopy else RunningReason.MIGRATED
        obj.pending_resume_reason = reason
        await driver.runner.monitor(obj).execute("cont")
        if obj.state != DomainState.RUNNING:
            obj.set_state(DomainState.RUNNING, reason)
    driver.runner.save_status(obj)


def _persist(engine: MigrationEngine, obj: DomainObj, xml: str | None) -> None:
    driver = engine.driver
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


async def _finish_offline(engine: MigrationEngine, obj: DomainObj,
                          request: MigrationRequest) -> DomainObj:
    if request.persist_dest:
        _persist(engine, obj, request.persistent_xml or request.destination_xml)
    return obj


async def abandon(engine: MigrationEngine, obj: DomainObj) -> None:
    """A failed or cancelled incoming migration: kill QEMU, forget the domain."""
    driver = engine.driver
    if obj.active:
        try:
            await driver.runner.stop(obj, ShutoffReason.FAILED, EventStoppedDetail.FAILED)
        except Exception as exc:  # keep cleaning up; report the original failure
            log.error("[dom=%s] stopping the incoming QEMU failed: %s", obj.name, exc)
    engine.release(obj)
    driver.forget_if_transient(obj)
