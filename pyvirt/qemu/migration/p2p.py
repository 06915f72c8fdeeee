"""Peer-to-peer migration: the source daemon drives the destination itself.

The client only calls Perform on the source. The source opens its own connection to the
destination (``dconnuri`` as seen from the source host), then::

    Begin (local) ─► Prepare (remote) ─► Perform (local QEMU) ─► Finish (remote)
                                                                  │ cancelled if Perform failed
    Confirm (local) ◄─────────────────────────────────────────────┘ cancelled if no domain

so the guest ends running on exactly one host whatever fails.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import DomainState, DriverFeature, MigrateFlags, PausedReason
from pyvirt.errors import ErrorCode, OperationFailedError, VirtError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import src, uris
from pyvirt.qemu.migration.cookie import CookieNBD, MigrationCookie
from pyvirt.qemu.migration.cookie_io import make_cookie, read_prepare_cookie
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.rpc.remote_types import TypedParam
from pyvirt.rpc.stream import Stream

if TYPE_CHECKING:
    from pyvirt.qemu.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

FEATURE_P2P, FEATURE_V3, FEATURE_PARAMS = (
    DriverFeature.MIGRATION_P2P, DriverFeature.MIGRATION_V3, DriverFeature.MIGRATION_PARAMS)
#: how long a source waits for a destination that vanished during Finish to come back
OUTCOME_WAIT_S = 60.0
#: while the disks are copied, how often the source asks whether the destination's incoming
#: QEMU still runs (p2p: the source has the connection to ask on)
INCOMING_CHECK_S = 2.0
#: how long the source waits to connect to the destination daemon (name lookup included)
P2P_CONNECT_TIMEOUT_S = 30.0


async def perform(engine: MigrationEngine, obj: DomainObj, dconnuri: str,
                  request: MigrationRequest) -> None:
    cookie, xml = await src.begin(engine, obj, request)
    if obj.migration is not None:
        obj.migration.dconnuri = dconnuri
        obj.migration.record()
    try:
        dconn = await _connect(engine, dconnuri)
    except BaseException:
        engine.end_job(obj)
        raise
    try:
        await _run_phases(engine, obj, dconn, cookie, xml, request)
    finally:
        await dconn.close()


async def _connect(engine: MigrationEngine, dconnuri: str) -> AsyncConnection:
    settings = engine.driver.settings
    try:
        # bounded: a black-holed address or a resolver that never answers must not hold
        # the migration job (and the client's call) for the kernel's connect timeout
        async with asyncio.timeout(P2P_CONNECT_TIMEOUT_S):
            dconn = await AsyncConnection.open(
                dconnuri,
                keepalive=(settings.p2p_keepalive_interval, settings.p2p_keepalive_count))
    except VirtError as exc:
        raise OperationFailedError(f"Failed to connect to remote libvirt URI {dconnuri}: "
                                   f"{exc.message}") from exc
    except TimeoutError:
        raise OperationFailedError(f"Failed to connect to remote libvirt URI {dconnuri}: "
                                   f"no answer within {P2P_CONNECT_TIMEOUT_S:g} s") from None
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
                                 if p.field != "destination_xml"]
    dparams.append(TypedParam.of_string("destination_xml", xml))
    stream: Stream | None = None
    uri_out: str | None = None
    peer: MigrationCookie | None = None
    try:
        if request.tunnelled:
            _, stream = await dconn.migrate_prepare_tunnel3_params(dparams, cookie, dflags)
        else:
            prepared, uri_out = await dconn.migrate_prepare3_params(dparams, cookie, dflags)
            peer = (await read_prepare_cookie(engine.driver, prepared, obj, request)
                    if request.storage_copy else None)
    except BaseException:
        await src.confirm(engine, obj, request, cancelled=True)
        raise
    failure = await _perform(engine, obj, dconn, request, uri_out, stream,
                             peer.nbd if peer is not None else None)
    job = obj.migration
    stats = src.statistics(job) if job is not None else None
    perform_cookie = make_cookie(engine.driver, obj.name, obj.uuid, stats)
    engine.remember_outgoing(obj)
    outcome, finish_error = await _finish(engine, obj, dconn, dparams, perform_cookie,
                                          dflags, failure is not None)
    if outcome is None:
        if job is not None and job.status.postcopy_started:
            engine.postcopy_failed(obj)
        engine.end_job(obj)
        raise OperationFailedError(
            "lost the destination after the guest moved; its outcome is unknown, so the "
            "guest stays paused on the source (check the destination, then resume or "
            "destroy it here)")
    await src.confirm(engine, obj, request, cancelled=failure is not None or not outcome)
    if failure is not None:
        raise failure
    if not outcome:
        # the destination's own reason, as libvirt keeps it (orig_err)
        raise finish_error or OperationFailedError(
            "migration failed on the destination during Finish")


async def _perform(engine: MigrationEngine, obj: DomainObj, dconn: AsyncConnection,
                   request: MigrationRequest, uri_out: str | None,
                   stream: Stream | None,
                   peer_nbd: CookieNBD | None = None) -> BaseException | None:
    """Run QEMU's migration; a dead peer connection cancels it (keepalive, as libvirt)."""
    if request.offline:
        return None
    job = obj.migration
    assert job is not None

    next_check = 0.0

    async def peer_alive() -> None:
        nonlocal next_check
        if not dconn.isAlive():
            raise OperationFailedError("Lost connection to destination host")
        now = asyncio.get_running_loop().time()
        if job.storage is not None and job.storage.nodes and now >= next_check:
            next_check = now + INCOMING_CHECK_S
            await _incoming_alive(dconn, obj.uuid)

    try:
        if uri_out is not None:  # the peer's answer: never trusted (uris.py)
            uris.check_peer_uri(uri_out, request.migrate_uri)
        # libvirt's source migrates to the URI Prepare answered (it honours uri_in)
        await src.perform_native(engine, obj, job, uri_out or request.migrate_uri or "",
                                 request, watch=peer_alive, stream=stream, peer_nbd=peer_nbd)
    except BaseException as exc:  # finish the protocol, then report this error
        return exc
    return None


async def _incoming_alive(dconn: AsyncConnection, uuid: str) -> None:
    """While the disks are copied: the destination's incoming QEMU still runs. A rate-limited
    mirror notices a dead NBD target only at its next write (seconds later at 1 MiB/s);
    the destination daemon knows at once, and the mirror must not wait for that write."""
    try:
        async with asyncio.timeout(INCOMING_CHECK_S):
            dom = await dconn.lookupByUUIDString(uuid)
            active = bool(await dom.isActive())
    except TimeoutError:
        return  # a busy or dying connection: keepalive decides
    except VirtError as exc:
        if exc.code != ErrorCode.NO_DOMAIN:
            return  # not an answer about the domain; keepalive watches the connection
        active = False
    if not active:
        raise OperationFailedError("the destination QEMU exited during migration (while the "
                                   "disks were copied)")


async def _finish(engine: MigrationEngine, obj: DomainObj, dconn: AsyncConnection,
                  dparams: list[TypedParam], cookie: bytes, dflags: int,
                  cancelled: bool) -> tuple[bool | None, VirtError | None]:
    """Finish on the destination: (True, None) when the guest runs there, (False, error)
    when not, (None, error) when that cannot be known (the destination stayed away)."""
    fparams = [p for p in dparams if p.field != "listen_address"]
    try:
        dom, _ = await dconn.migrate_finish3_params(fparams, cookie, dflags, cancelled)
    except VirtError as exc:
        if cancelled:
            return False, None
        log.error("[dom=%s] Finish on the destination failed: %s", obj.name, exc)
        if dconn.isAlive():
            return False, exc  # the destination answered: it did not take the guest
        return await _ask_destination(engine, obj), exc
    return dom is not None and not cancelled, None


async def _ask_destination(engine: MigrationEngine, obj: DomainObj) -> bool | None:
    """The link broke during Finish: ask the (possibly restarting) destination daemon."""
    job = obj.migration
    if job is None or job.dconnuri is None:
        return None
    return await destination_outcome(job.dconnuri, obj.uuid, OUTCOME_WAIT_S)


async def destination_outcome(dconnuri: str, uuid: str, wait_s: float) -> bool | None:
    """Does the destination run the guest? True/False, or None when it cannot be known
    (unreachable for ``wait_s`` seconds, or post-copy broke between the hosts)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            dconn = await AsyncConnection.open(dconnuri)
        except VirtError:
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(1.0)
            continue
        try:
            dom = await dconn.lookupByUUIDString(uuid)
            state, reason = await dom.state()
        except VirtError:
            return False
        finally:
            await dconn.close()
        if state == DomainState.PAUSED and reason == PausedReason.POSTCOPY_FAILED:
            return None  # split between the hosts: neither side may be discarded
        return state in (DomainState.RUNNING, DomainState.PAUSED)
