"""Peer-to-peer migration: the source daemon drives the destination itself.

The client only calls Perform on the source. The source opens its own connection to the
destination (``dconnuri`` as seen from the source host) and runs the v3 phase driver
(:mod:`pyvirt.client.migrate_v3`) with two ends: :class:`P2PMigration` is both — the local
source (Begin, Perform, Confirm through :class:`OutgoingMigration`) and the remote
destination (Prepare, Finish over the connection)::

    Begin (local) ─► Prepare (remote) ─► Perform (local QEMU) ─► Finish (remote)
                                                                  │ cancelled if Perform failed
    Confirm (local) ◄─────────────────────────────────────────────┘ cancelled if no domain

so the guest ends running on exactly one host whatever fails. While QEMU migrates, a dead
connection (keepalive, as libvirt) or, during a storage copy, a dead incoming QEMU on the
destination aborts Perform. When the link dies during Finish, the destination is asked
again (for OUTCOME_WAIT_S); if nobody can say, the guest stays paused here.
"""

from __future__ import annotations

import asyncio
import logging

from pyvirt.client.aio import AsyncConnection, AsyncDomain
from pyvirt.client.migrate_v3 import Outcome, run_v3
from pyvirt.constants import DomainState, DriverFeature, MigrateFlags, PausedReason
from pyvirt.errors import ErrorCode, OperationFailedError, VirtError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.migration import uris
from pyvirt.qemu.migration.context import MigrationContext
from pyvirt.qemu.migration.cookie import CookieNBD
from pyvirt.qemu.migration.cookie_io import make_cookie, read_prepare_cookie
from pyvirt.qemu.migration.outgoing import OutgoingMigration, confirm
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.qemu.migration.perform import AbortSource, PerformTarget
from pyvirt.rpc.remote_types import TypedParam
from pyvirt.rpc.stream import Stream

log = logging.getLogger(__name__)

#: what a destination must support for this daemon to drive it
P2P_FEATURES = (DriverFeature.MIGRATION_P2P, DriverFeature.MIGRATION_V3,
                DriverFeature.MIGRATION_PARAMS)
#: how long a source waits for a destination that vanished during Finish to come back
OUTCOME_WAIT_S = 60.0
#: while the disks are copied, how often the source asks whether the destination's incoming
#: QEMU still runs (p2p: the source has the connection to ask on)
INCOMING_CHECK_S = 2.0
#: how long the source waits to connect to the destination daemon (name lookup included)
P2P_CONNECT_TIMEOUT_S = 30.0
UNKNOWN_OUTCOME = (
    "lost the destination after the guest moved; its outcome is unknown, so the guest "
    "stays paused on the source (check the destination, then resume or destroy it here)")


async def perform(ctx: MigrationContext, obj: DomainObj, dconnuri: str,
                  request: MigrationRequest) -> None:
    """Perform3 with PEER2PEER: the whole migration, driven from here."""
    migration = P2PMigration(ctx, obj, dconnuri, request)
    try:
        result = await run_v3(migration, migration)
        if result.outcome is Outcome.UNKNOWN:
            migration.keep_paused()
            raise OperationFailedError(UNKNOWN_OUTCOME)
    finally:
        await migration.close()
    if result.outcome is Outcome.ON_SOURCE:
        # the destination's own reason, as libvirt keeps it (orig_err)
        raise result.error or OperationFailedError(
            "migration failed on the destination during Finish")


class P2PMigration:
    """Both ends of the phase driver: this daemon's source, the remote destination."""

    confirms_failed_prepare = True
    #: Perform failing here leaves the job for Confirm (which ends it)
    confirms_failed_perform = True

    def __init__(self, ctx: MigrationContext, obj: DomainObj, dconnuri: str,
                 request: MigrationRequest) -> None:
        self.ctx = ctx
        self.obj = obj
        self.dconnuri = dconnuri
        self.request = request
        self.out: OutgoingMigration | None = None
        self.dconn: AsyncConnection | None = None
        self.stream: Stream | None = None
        self.peer_nbd: CookieNBD | None = None
        self.dflags = int(request.destination_flags) & ~int(MigrateFlags.CHANGE_PROTECTION)
        self.dparams: list[TypedParam] = []

    # -- the source (local) ------------------------------------------------------------------

    async def begin(self) -> tuple[bytes, str]:
        self.out, cookie, xml = await OutgoingMigration.begin(self.ctx, self.obj, self.request)
        if self.out is not None:
            self.out.job.dconnuri = self.dconnuri
            self.out.job.record()
        try:
            self.dconn = await connect(self.ctx, self.dconnuri)
        except BaseException:
            if self.out is not None:
                self.out.end()
            raise
        self.dparams = [p for p in self.request.destination_params()
                        if p.field != "destination_xml"]
        self.dparams.append(TypedParam.of_string("destination_xml", xml))
        return cookie, xml

    async def perform(self, uri_out: str | None, cookie: bytes) -> bytes:
        out, request = self.out, self.request
        if out is None:  # offline: nothing moves
            return make_cookie(self.ctx.driver, self.obj.name, self.obj.uuid)
        if uri_out is not None:  # the peer's answer: never trusted (uris.py)
            uris.check_peer_uri(uri_out, request.migrate_uri)
        # libvirt's source migrates to the URI Prepare answered (it honours uri_in)
        await out.perform(request, PerformTarget(
            uri=uri_out or request.migrate_uri or "", stream=self.stream,
            peer_nbd=self.peer_nbd, watch=self._peer_alive(out)))
        self.ctx.remember_outgoing(self.obj)
        return out.cookie()

    def cookie_after_failed_perform(self) -> bytes:
        self.ctx.remember_outgoing(self.obj)
        if self.out is not None and self.obj.migration is self.out.job:
            return self.out.cookie()
        return make_cookie(self.ctx.driver, self.obj.name, self.obj.uuid)

    async def confirm(self, cookie: bytes, cancelled: bool) -> None:
        await confirm(self.ctx, self.obj, self.request, cancelled)

    def keep_paused(self) -> None:
        """Nobody knows where the guest is: it stays paused here, the job ends."""
        out = self.out
        if out is None:
            return
        if out.job.status.postcopy_started:
            self.ctx.postcopy_failed(self.obj)
        out.end()

    def _peer_alive(self, out: OutgoingMigration) -> AbortSource:
        """A dead connection (keepalive) aborts Perform; during a storage copy, so does a
        dead incoming QEMU on the destination (asked every INCOMING_CHECK_S)."""
        dconn, job, uuid = self._dconn(), out.job, self.obj.uuid
        next_check = 0.0

        async def check() -> None:
            nonlocal next_check
            if not dconn.isAlive():
                raise OperationFailedError("Lost connection to destination host")
            now = asyncio.get_running_loop().time()
            if job.storage is not None and job.storage.nodes and now >= next_check:
                next_check = now + INCOMING_CHECK_S
                await _incoming_alive(dconn, uuid)
        return check

    # -- the destination (remote) ------------------------------------------------------------

    async def prepare(self, cookie: bytes, xml: str) -> tuple[bytes, str | None]:
        dconn = self._dconn()
        if self.request.tunnelled:
            prepared, self.stream = await dconn.migrate_prepare_tunnel3_params(
                self.dparams, cookie, self.dflags)
            return prepared, None
        prepared, uri_out = await dconn.migrate_prepare3_params(self.dparams, cookie,
                                                                self.dflags)
        if self.request.storage_copy:
            peer = await read_prepare_cookie(self.ctx.driver, prepared, self.obj,
                                             self.request)
            self.peer_nbd = peer.nbd if peer is not None else None
        return prepared, uri_out

    async def finish(self, cookie: bytes, cancelled: bool) -> tuple[AsyncDomain | None, bytes]:
        fparams = [p for p in self.dparams if p.field != "listen_address"]
        try:
            return await self._dconn().migrate_finish3_params(fparams, cookie, self.dflags,
                                                              cancelled)
        except VirtError as exc:
            if not cancelled:
                log.error("[dom=%s] Finish on the destination failed: %s", self.obj.name, exc)
            raise

    async def outcome_unanswered(self, error: BaseException) -> bool | None:
        """An error from a live connection is the destination's no; a dead link: ask the
        (possibly restarting) destination daemon."""
        if self._dconn().isAlive():
            return False
        return await destination_outcome(self.dconnuri, self.obj.uuid, OUTCOME_WAIT_S)

    def _dconn(self) -> AsyncConnection:
        assert self.dconn is not None, "Begin connects to the destination"
        return self.dconn

    async def close(self) -> None:
        if self.dconn is not None:
            dconn, self.dconn = self.dconn, None
            await dconn.close()


async def connect(ctx: MigrationContext, dconnuri: str) -> AsyncConnection:
    settings = ctx.driver.settings
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
    for feature in P2P_FEATURES:
        if not await dconn.supports_feature(feature):
            await dconn.close()
            raise OperationFailedError(
                "Destination libvirt does not support peer-to-peer migration protocol")
    return dconn


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
