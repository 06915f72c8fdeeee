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

from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.constants import (
    DomainState,
    EventDefinedDetail,
    EventStoppedDetail,
    JobOperation,
    LifecycleEvent,
    MigrateFlags,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import InvalidArgError, OperationFailedError, OperationInvalidError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import qemu_ops
from pyvirt.qemu.migration.cookie_io import make_cookie, read_cookie
from pyvirt.qemu.migration.job import MigrationJob, Phase
from pyvirt.qemu.migration.setup import destination_setup

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

#: how long Finish waits for the incoming stream to complete after Perform returned
FINISH_TIMEOUT_S = 120.0


async def prepare(engine: MigrationEngine, client_id: int | None, flags: int,
                  params: dict[str, Any], cookie_in: bytes) -> tuple[bytes, str | None]:
    driver = engine.driver
    cookie = read_cookie(cookie_in, driver.settings.host_uuid)
    xml = params.get("destination_xml")
    if not xml:
        raise InvalidArgError("no domain XML passed")
    definition = driver.parse(str(xml))
    if cookie is not None and cookie.uuid != definition.uuid:
        raise OperationFailedError("Incoming cookie data had unexpected UUID "
                                   f"{cookie.uuid} vs {definition.uuid}")
    if params.get("destination_name"):
        definition.name = str(params["destination_name"])
    obj = engine.claim_incoming(definition)
    if flags & MigrateFlags.OFFLINE:
        # Nothing will listen; libvirt's clients still expect a URI from Prepare.
        host = driver.settings.migration_host or socket.gethostname()
        return make_cookie(driver, obj.name, obj.uuid).to_bytes(), f"tcp://{host}"
    job = MigrationJob(JobOperation.MIGRATION_IN, flags, Phase.PREPARE, client_id=client_id)
    obj.migration = job
    try:
        uri_out = await _start_incoming(engine, obj, job, definition, flags, params)
    except BaseException:
        await abandon(engine, obj)
        raise
    return make_cookie(driver, obj.name, obj.uuid).to_bytes(), uri_out


async def _start_incoming(engine: MigrationEngine, obj: DomainObj, job: MigrationJob,
                          definition: Any, flags: int, params: dict[str, Any]) -> str:
    driver = engine.driver
    listen = str(params.get("listen_address") or driver.settings.migration_address or "0.0.0.0")
    job.port = engine.ports.allocate(listen)
    await driver.runner.start(obj, definition, paused=True, incoming="defer")
    monitor = driver.runner.monitor(obj)
    caps, qemu_params = destination_setup(flags, params)
    await qemu_ops.apply_setup(monitor, caps, qemu_params)
    bind = f"[{listen}]" if ":" in listen else listen
    await monitor.execute("migrate-incoming", {"uri": f"tcp:{bind}:{job.port}"})
    host = driver.settings.migration_host or socket.gethostname()
    return f"tcp://{host}:{job.port}"


async def finish(engine: MigrationEngine, flags: int, params: dict[str, Any],
                 cookie_in: bytes, cancelled: bool) -> tuple[DomainObj | None, bytes]:
    driver = engine.driver
    cookie = read_cookie(cookie_in, driver.settings.host_uuid)
    name = params.get("destination_name") or (cookie.name if cookie else None)
    if not name:
        raise InvalidArgError("missing destination name")
    obj = driver.lookup_by_name(str(name))
    if flags & MigrateFlags.OFFLINE:
        return await _finish_offline(engine, obj, flags, params), b""
    job = obj.migration
    if job is None or job.outgoing:
        raise OperationInvalidError("domain is not being migrated in")
    if cancelled:
        await abandon(engine, obj)
        return None, b""
    try:
        await asyncio.wait_for(qemu_ops.wait_final(driver.runner.monitor(obj), job,
                                                   incoming=True), FINISH_TIMEOUT_S)
        job.set_phase(Phase.FINISH3)
        await _activate(engine, obj, flags, params)
    except BaseException:
        await abandon(engine, obj)
        raise
    engine.release(obj)
    return obj, make_cookie(driver, obj.name, obj.uuid).to_bytes()


async def _activate(engine: MigrationEngine, obj: DomainObj, flags: int,
                    params: dict[str, Any]) -> None:
    driver = engine.driver
    if flags & MigrateFlags.PERSIST_DEST:
        _persist(engine, obj, params)
    if flags & MigrateFlags.PAUSED:
        obj.set_state(DomainState.PAUSED, PausedReason.USER)
    else:
        obj.pending_resume_reason = RunningReason.MIGRATED
        await driver.runner.monitor(obj).execute("cont")
        if obj.state != DomainState.RUNNING:
            obj.set_state(DomainState.RUNNING, RunningReason.MIGRATED)
    driver.runner.save_status(obj)


def _persist(engine: MigrationEngine, obj: DomainObj, params: dict[str, Any]) -> None:
    driver = engine.driver
    xml = params.get("persistent_xml")
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


async def _finish_offline(engine: MigrationEngine, obj: DomainObj, flags: int,
                          params: dict[str, Any]) -> DomainObj:
    if flags & MigrateFlags.PERSIST_DEST:
        _persist(engine, obj, {"persistent_xml": params.get("persistent_xml")
                               or params.get("destination_xml")})
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
