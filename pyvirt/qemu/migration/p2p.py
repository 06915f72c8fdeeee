"""Peer-to-peer migration: the source daemon drives the destination itself.

The client only calls Perform on the source. The source opens its own connection to the
destination (``dconnuri`` as seen from the source host), then::

    Begin (local) ─► Prepare (remote) ─► Perform (local QEMU) ─► Finish (remote)
                                                                  │ cancelled if Perform failed
    Confirm (local) ◄─────────────────────────────────────────────┘ cancelled if no domain

so the guest ends running on exactly one host whatever fails.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import MigrateFlags
from pyvirt.errors import OperationFailedError, VirtError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import src
from pyvirt.qemu.migration.cookie_io import make_cookie
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.rpc.remote_types import TypedParam

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

FEATURE_P2P, FEATURE_V3, FEATURE_PARAMS = 4, 6, 13


async def perform(engine: MigrationEngine, obj: DomainObj, dconnuri: str,
                  request: MigrationRequest) -> None:
    cookie, xml = await src.begin(engine, obj, request)
    try:
        dconn = await _connect(engine, dconnuri)
    except BaseException:
        obj.migration = None
        raise
    try:
        await _run_phases(engine, obj, dconn, cookie, xml, request)
    finally:
        await dconn.close()


async def _connect(engine: MigrationEngine, dconnuri: str) -> AsyncConnection:
    settings = engine.driver.settings
    try:
        dconn = await AsyncConnection.open(
            dconnuri, keepalive=(settings.p2p_keepalive_interval, settings.p2p_keepalive_count))
    except VirtError as exc:
        raise OperationFailedError(f"Failed to connect to remote libvirt URI {dconnuri}: "
                                   f"{exc.message}") from exc
    for feature in (FEATURE_P2P, FEATURE_V3, FEATURE_PARAMS):
        if not await dconn.supports_feature(feature):
            await dconn.close()
            raise OperationFailedError(
                "Destination libvirt does not support peer-to-peer migration protocol")
    return dconn


async def _run_phases(engine: MigrationEngine, obj: DomainObj, dconn: AsyncConnection,
                      cookie: bytes, xml: str, request: MigrationRequest) -> None:
    dflags = int(request.destination_flags) & ~int(MigrateFlags.CHANGE_PROTECTION)
    dparams: list[TypedParam] = [p for p in request.destination_params()
                                 if p.field not in ("migrate_uri", "destination_xml")]
    dparams.append(TypedParam.of_string("destination_xml", xml))
    try:
        _, uri_out = await dconn.migrate_prepare3_params(dparams, cookie, dflags)
    except BaseException:
        await src.confirm(engine, obj, request, cancelled=True)
        raise
    failure: BaseException | None = None
    if not request.offline:
        uri = request.migrate_uri or uri_out or ""
        assert obj.migration is not None
        try:
            await src.perform_native(engine, obj, obj.migration, uri, request)
        except BaseException as exc:  # finish the protocol, then report this error
            failure = exc
    stats = src.statistics(obj.migration) if obj.migration is not None else None
    perform_cookie = make_cookie(engine.driver, obj.name, obj.uuid, stats)
    engine.remember_outgoing(obj)
    finished = await _finish(dconn, dparams, perform_cookie, dflags, failure is not None)
    await src.confirm(engine, obj, request, cancelled=failure is not None or not finished)
    if failure is not None:
        raise failure
    if not finished:
        raise OperationFailedError("migration failed on the destination during Finish")


async def _finish(dconn: AsyncConnection, dparams: list[TypedParam], cookie: bytes,
                  dflags: int, cancelled: bool) -> bool:
    fparams = [p for p in dparams if p.field != "listen_address"]
    try:
        dom, _ = await dconn.migrate_finish3_params(fparams, cookie, dflags, cancelled)
    except VirtError as exc:
        if not cancelled:
            log.error("Finish on the destination failed: %s", exc)
        return False
    return dom is not None and not cancelled
