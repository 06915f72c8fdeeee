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
from typing import TYPE_CHECKING, Any

from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import MigrateFlags
from pyvirt.errors import OperationFailedError, VirtError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import src

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

FEATURE_P2P, FEATURE_V3, FEATURE_PARAMS = 4, 6, 13
#: flags that only concern the source; the destination does not see them
_SOURCE_ONLY = MigrateFlags.ABORT_ON_ERROR | MigrateFlags.AUTO_CONVERGE \
    | MigrateFlags.CHANGE_PROTECTION


async def perform(engine: MigrationEngine, obj: DomainObj, dconnuri: str, flags: int,
                  params: dict[str, Any]) -> None:
    cookie, xml = await src.begin(engine, obj, flags, params)
    try:
        dconn = await _connect(engine, dconnuri)
    except BaseException:
        obj.migration = None
        raise
    try:
        await _run_phases(engine, obj, dconn, cookie, xml, flags, params)
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
                      cookie: bytes, xml: str, flags: int, params: dict[str, Any]) -> None:
    dflags = flags & ~_SOURCE_ONLY
    dparams = {k: v for k, v in params.items() if k != "migrate_uri"}
    dparams["destination_xml"] = xml
    try:
        _, uri_out = await dconn.migrate_prepare3_params(dparams, cookie, dflags)
    except BaseException:
        await src.confirm(engine, obj, flags, cancelled=True)
        raise
    failure: BaseException | None = None
    if not flags & MigrateFlags.OFFLINE:
        uri = str(params.get("migrate_uri") or uri_out)
        assert obj.migration is not None
        try:
            await src.perform_native(engine, obj, obj.migration, uri, flags, params)
        except BaseException as exc:  # finish the protocol, then report this error
            failure = exc
    finished = await _finish(dconn, dparams, cookie, dflags, failure is not None)
    await src.confirm(engine, obj, flags, cancelled=failure is not None or not finished)
    if failure is not None:
        raise failure
    if not finished:
        raise OperationFailedError("migration failed on the destination during Finish")


async def _finish(dconn: AsyncConnection, dparams: dict[str, Any], cookie: bytes, dflags: int,
                  cancelled: bool) -> bool:
    fparams = {k: v for k, v in dparams.items() if k != "listen_address"}
    try:
        dom, _ = await dconn.migrate_finish3_params(fparams, cookie, dflags, cancelled)
    except VirtError as exc:
        if not cancelled:
            log.error("Finish on the destination failed: %s", exc)
        return False
    return dom is not None and not cancelled
