"""Client-driven migration: libvirt's virDomainMigrate3 / virDomainMigrateToURI3 and friends.

The rules are libvirt 9.0's client library (``src/libvirt-domain.c``), checks and their
order included, because the order decides which error a caller sees::

    migrate3(dom, dconn, params, flags)          managed ("normal") migration
      read-only checks; NON_SHARED_DISK/INC exclusive; PEER2PEER refused (use
      migrateToURI3); TUNNELLED refused; OFFLINE needs feature 12 on both ends;
      CHANGE_PROTECTION needs feature 7 on the source, then is masked off;
      MIGRATION_PARAMS (13) on both ends → the five phases below

    Version3Full (the client shuttles XML and cookies between the two daemons):
      SRC feature 7 → protection = CHANGE_PROTECTION if supported
      SRC BEGIN3_PARAMS(params, flags|protection)          → cookie, xml
      SRC GET_STATE → PAUSED added to flags if the guest is paused
      DST PREPARE3_PARAMS(params+destination_xml, cookie, destflags) → cookie, uri_out
          (destflags: flags without ABORT_ON_ERROR and AUTO_CONVERGE)
          fails: Confirm(cancelled=1, empty cookie) if protection, else nothing more
      SRC PERFORM3_PARAMS(NULL, params+migrate_uri, cookie, flags|protection)
          (skipped for OFFLINE; fails: Finish(cancelled=1), no Confirm)
      DST FINISH3_PARAMS(params+destination_name, cookie, destflags, cancelled) → dom, cookie
      SRC CONFIRM3_PARAMS(params, cookie, flags|protection, cancelled = no domain)
      The error reported is the first one (Perform's, not Finish's "migration
      successfully aborted"); a Confirm failure after success is only a warning.

    migrateToURI3(dom, dconnuri, params, flags)  peer-to-peer / direct: the source drives
      read-only check; flag exclusions; OFFLINE needs 12; PEER2PEER needs 4, else DIRECT 5;
      dconnuri required for p2p (ignored otherwise); p2p to "localhost…" refused;
      feature 13 → SRC PERFORM3_PARAMS(dconnuri or NULL, params, no cookie, flags)

The flag rules (which flags exclude or need which, and their words) are data in
:mod:`pyvirt.migrate_flags`, shared with pyvirsh and the daemon; each API's order is here.

Parameters are edited the way virTypedParamsReplaceString does it: a parameter already
given keeps its place and gets the new value, a new one goes at the end.

Deviations (documented): the pre-1.1 non-params procedures (213-218) are not implemented,
so a peer without MIGRATION_PARAMS gets NO_SUPPORT, and ``migrate`` / ``migrateToURI``
(libvirt's older APIs) run over the params procedures with the equivalent parameters.
Direct migration (pyvirtd's extension, feature 5) is PERFORM3_PARAMS without a dconnuri,
where libvirt 9.0's client sends the non-params PERFORM3 (216).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyvirt.client.error import libvirtError
from pyvirt.client.migrate_v3 import PerformNotStarted, run_v3
from pyvirt.client.params import ParamsIn, to_typed_params
from pyvirt.constants import DomainState, DriverFeature, MigrateFlags
from pyvirt.errors import ErrorCode, ErrorDomain
from pyvirt.migrate_flags import (
    LIBRARY_CHECKS,
    SOURCE_ONLY_FLAGS,
    TUNNELLED_NEEDS_P2P,
    Layer,
    first_broken,
)
from pyvirt.rpc.remote_types import TypedParam

if TYPE_CHECKING:
    from pyvirt.client.aio import AsyncConnection, AsyncDomain

log = logging.getLogger(__name__)

F = MigrateFlags
#: the parameters the pre-params protocol could carry (virDomainMigrate3's compatParams)
COMPAT_PARAMS = frozenset({"migrate_uri", "destination_name", "destination_xml", "bandwidth"})


# -- errors as libvirt's client library raises them ------------------------------------------
def _error(message: str, code: ErrorCode) -> libvirtError:
    return libvirtError(message, code=code, domain=ErrorDomain.DOMAIN)


def _invalid_arg(message: str) -> libvirtError:
    """virReportInvalidArg (libvirt 9.0 prints these without a prefix)."""
    return _error(message, ErrorCode.INVALID_ARG)


def _unsupported(message: str) -> libvirtError:
    return _error(f"argument unsupported: {message}", ErrorCode.ARGUMENT_UNSUPPORTED)


def _no_support(function: str) -> libvirtError:
    return _error(f"this function is not supported by the connection driver: {function}",
                  ErrorCode.NO_SUPPORT)  # fmt: skip


def _internal(message: str) -> libvirtError:
    return _error(f"internal error: {message}", ErrorCode.INTERNAL_ERROR)


def _check_writable(conn: AsyncConnection, api: str) -> None:
    if conn.readonly:
        raise _error(f"operation forbidden: read only access prevents {api}",
                     ErrorCode.OPERATION_DENIED)  # fmt: skip


def _check_flag_rules(flags: int, api: str) -> None:
    """libvirt.so's flag rules for ``api`` (pyvirt.migrate_flags), as virReportInvalidArg."""
    broken = first_broken(flags, LIBRARY_CHECKS[api])
    if broken is not None:
        raise _invalid_arg(broken.message_for(Layer.LIBRARY))


async def _supports(conn: AsyncConnection, feature: DriverFeature) -> bool:
    """VIR_DRV_SUPPORTS_FEATURE: libvirt asks the daemon every time (no cache)."""
    return await conn.supports_feature(feature, cached=False)


# -- typed parameter editing -----------------------------------------------------------------
def get_string(params: Sequence[TypedParam], name: str) -> str | None:
    """virTypedParamsGetString: the first value of ``name``, None when absent."""
    for param in params:
        if param.field == name:
            return str(param.value)
    return None


def replace_string(params: Sequence[TypedParam], name: str, value: str) -> list[TypedParam]:
    """virTypedParamsReplaceString: replace in place, or append."""
    out = list(params)
    for index, param in enumerate(out):
        if param.field == name:
            out[index] = TypedParam.of_string(name, value)
            return out
    out.append(TypedParam.of_string(name, value))
    return out


def _check_compat(params: Sequence[TypedParam], message: str) -> None:
    if any(param.field not in COMPAT_PARAMS for param in params):
        raise _unsupported(message)


# -- virDomainMigrate3 -----------------------------------------------------------------------
async def migrate3(dom: AsyncDomain, dconn: AsyncConnection, params: ParamsIn | None,
                   flags: int) -> AsyncDomain:  # fmt: skip
    """Managed migration of ``dom`` to ``dconn``; returns the domain on the destination."""
    typed = to_typed_params(params)  # libvirt-python converts before calling libvirt
    src = dom.connect()
    _check_writable(src, "virDomainMigrate3")
    _check_writable(dconn, "virDomainMigrate3")
    _check_flag_rules(flags, "virDomainMigrate3")
    await _check_offline(src, dconn, flags)
    flags = await _check_protection(src, flags)
    if await _supports(src, DriverFeature.MIGRATION_PARAMS) and \
            await _supports(dconn, DriverFeature.MIGRATION_PARAMS):  # fmt: skip
        return await Version3Full(dom, dconn, typed, flags).run()
    _check_compat(typed, "Migration APIs with extensible parameters are not supported but "
                         "extended parameters were passed")  # fmt: skip
    raise _no_support("virDomainMigrate3")  # the non-params protocols are not implemented


async def _check_offline(src: AsyncConnection, dconn: AsyncConnection, flags: int) -> None:
    if not flags & F.OFFLINE:
        return
    if not await _supports(src, DriverFeature.MIGRATION_OFFLINE):
        raise _unsupported("offline migration is not supported by the source host")
    if not await _supports(dconn, DriverFeature.MIGRATION_OFFLINE):
        raise _unsupported("offline migration is not supported by the destination host")


async def _check_protection(src: AsyncConnection, flags: int) -> int:
    """CHANGE_PROTECTION needs the source's support; then it is masked off (Version3Full
    adds it back for the source only, whenever the source supports it)."""
    if flags & F.CHANGE_PROTECTION and \
            not await _supports(src, DriverFeature.MIGRATE_CHANGE_PROTECTION):  # fmt: skip
        raise _unsupported("cannot enforce change protection")
    return flags & ~F.CHANGE_PROTECTION


class Version3Full:
    """virDomainMigrateVersion3Full with extensible parameters: both ends of the phase
    driver (:func:`pyvirt.client.migrate_v3.run_v3`), the client calling each daemon."""

    #: Confirm after a failed Perform: no, the source already knows (libvirt's client)
    confirms_failed_perform = False

    def __init__(self, dom: AsyncDomain, dconn: AsyncConnection,
                 params: Sequence[TypedParam], flags: int) -> None:  # fmt: skip
        self.dom = dom
        self.dconn = dconn
        self.params = list(params)
        self.flags = flags
        self.protection = 0

    @property
    def src_flags(self) -> int:
        return self.flags | self.protection

    @property
    def dst_flags(self) -> int:
        return self.flags & ~SOURCE_ONLY_FLAGS

    @property
    def confirms_failed_prepare(self) -> bool:
        """With change protection, Begin started a job on the source: Confirm cancels it."""
        return bool(self.protection)

    async def run(self) -> AsyncDomain:
        if await _supports(self.dom.connect(), DriverFeature.MIGRATE_CHANGE_PROTECTION):
            self.protection = F.CHANGE_PROTECTION
        result = await run_v3(self, self)
        if result.domain is None:
            raise result.error or _internal("migration failed")
        return result.domain

    # -- the source's phases -----------------------------------------------------------------
    async def begin(self) -> tuple[bytes, str]:
        cookie, xml = await self.dom.migrate_begin3_params(self.params, self.src_flags)
        if await self._source_paused():
            self.flags |= F.PAUSED
        self.params = replace_string(self.params, "destination_xml", xml)
        return cookie, xml

    async def _source_paused(self) -> bool:
        try:
            state, _reason = await self.dom.state()
        except libvirtError as exc:  # libvirt ignores a failed state query here
            log.debug("state of %s before migration unknown: %s", self.dom.name(), exc)
            return False
        return state == DomainState.PAUSED

    async def perform(self, uri_out: str | None, cookie: bytes) -> bytes:
        """Perform towards ``uri_out`` (or the caller's migrate_uri); nothing offline."""
        if uri_out:
            self.params = replace_string(self.params, "migrate_uri", uri_out)
        elif get_string(self.params, "migrate_uri") is None:
            raise PerformNotStarted(_internal("domainMigratePrepare3 did not set uri"))
        if self.flags & F.OFFLINE:
            return b""
        return await self.dom.migrate_perform3_params(None, self.params, cookie,
                                                      self.src_flags)  # fmt: skip

    def cookie_after_failed_perform(self) -> bytes:
        return b""

    async def confirm(self, cookie: bytes, cancelled: bool) -> None:
        try:
            await self.dom.migrate_confirm3_params(self.params, cookie, self.src_flags,
                                                   cancelled)  # fmt: skip
        except libvirtError as exc:
            log.warning("Guest %s probably left in 'paused' state on source", self.dom.name())
            log.debug("Confirm failed: %s", exc)

    # -- the destination's phases ------------------------------------------------------------
    async def prepare(self, cookie: bytes, xml: str) -> tuple[bytes, str | None]:
        return await self.dconn.migrate_prepare3_params(self.params, cookie, self.dst_flags)

    async def finish(self, cookie: bytes, cancelled: bool) -> tuple[AsyncDomain | None, bytes]:
        if get_string(self.params, "destination_name") is None:
            self.params = replace_string(self.params, "destination_name", self.dom.name())
        return await self.dconn.migrate_finish3_params(self.params, cookie, self.dst_flags,
                                                       cancelled)  # fmt: skip

    async def outcome_unanswered(self, error: BaseException) -> bool | None:
        """libvirt's client takes a failed Finish as "the destination has no guest"."""
        return False


# -- virDomainMigrateToURI3 ------------------------------------------------------------------
async def migrate_to_uri3(dom: AsyncDomain, dconnuri: str | None, params: ParamsIn | None,
                          flags: int) -> None:  # fmt: skip
    """Peer-to-peer (``dconnuri`` = the destination as the source sees it) or direct."""
    typed = to_typed_params(params)
    _check_writable(dom.connect(), "virDomainMigrateToURI3")
    _check_flag_rules(flags, "virDomainMigrateToURI3")
    await _check_unmanaged(dom, flags)
    if flags & F.PEER2PEER:
        if dconnuri is None:
            raise _invalid_arg("dconnuri in virDomainMigrateToURI3 must not be NULL")
    else:
        dconnuri = None
    await _migrate_unmanaged(dom, dconnuri, typed, flags)


async def _check_unmanaged(dom: AsyncDomain, flags: int) -> None:
    """virDomainMigrateUnmanagedCheckCompat (its flag rule ran with the caller's)."""
    src = dom.connect()
    if flags & F.OFFLINE and not await _supports(src, DriverFeature.MIGRATION_OFFLINE):
        raise _unsupported("offline migration is not supported by the source host")
    if flags & F.PEER2PEER:
        if not await _supports(src, DriverFeature.MIGRATION_P2P):
            raise _unsupported("p2p migration is not supported by the source host")
    elif not await _supports(src, DriverFeature.MIGRATION_DIRECT):
        raise _unsupported("direct migration is not supported by the source host")


_URI_SERVER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)")


def check_not_local(dconnuri: str) -> None:
    """virDomainMigrateCheckNotLocal (9.0): refuse a server starting with "localhost"."""
    match = _URI_SERVER.match(dconnuri)
    server = match.group(1) if match else ""
    if server.startswith("localhost"):
        raise _invalid_arg("Attempt to migrate guest to the same host")


async def _migrate_unmanaged(dom: AsyncDomain, dconnuri: str | None,
                             params: list[TypedParam], flags: int) -> None:  # fmt: skip
    """virDomainMigrateUnmanagedParams: one Perform on the source.

    Peer-to-peer: PERFORM3_PARAMS with ``dconnuri``.  Direct (pyvirt's extension): also
    PERFORM3_PARAMS, with no dconnuri and the QEMU URI as ``migrate_uri`` (the source
    checks it is there); libvirt 9.0 would use the non-params PERFORM3 (216) instead.
    """
    src = dom.connect()
    if flags & F.PEER2PEER:
        assert dconnuri is not None
        check_not_local(dconnuri)
    if await _supports(src, DriverFeature.MIGRATION_PARAMS):
        cookie = await dom.migrate_perform3_params(dconnuri, params, b"", flags)
        if cookie:  # the remote driver's check: the caller passed no cookie buffer
            raise libvirtError("internal error: caller ignores cookieout or cookieoutlen",
                               code=ErrorCode.INTERNAL_ERROR,
                               domain=ErrorDomain.REMOTE)  # fmt: skip
        return
    if await _supports(src, DriverFeature.MIGRATION_V3):
        _check_compat(params, "Some parameters are not supported by migration protocol 3")
    # PERFORM3 (216) and PERFORM (v2) are not implemented (see the module docstring)
    raise _no_support("virDomainMigratePerform3")


# -- the older APIs (virDomainMigrate, virDomainMigrateToURI) --------------------------------
def _legacy_params(dname: str | None, uri: str | None, bandwidth: int | None) -> list[TypedParam]:
    """The old APIs' arguments as parameters (virDomainMigrateUnmanaged always passes the
    bandwidth; the managed path passes it only when set)."""
    params = [] if uri is None else [TypedParam.of_string("migrate_uri", uri)]
    if dname is not None:
        params.append(TypedParam.of_string("destination_name", dname))
    if bandwidth is not None:
        params.append(TypedParam.of_ullong("bandwidth", bandwidth))
    return params


async def migrate(dom: AsyncDomain, dconn: AsyncConnection, flags: int, dname: str | None,
                  uri: str | None, bandwidth: int) -> AsyncDomain:  # fmt: skip
    """virDomainMigrate: p2p goes through the source to ``uri`` or dconn's URI and then
    looks the domain up on ``dconn``; otherwise the managed phases (over the params
    procedures, see the module docstring)."""
    src = dom.connect()
    _check_writable(src, "virDomainMigrate")
    _check_writable(dconn, "virDomainMigrate")
    _check_flag_rules(flags, "virDomainMigrate")
    await _check_offline(src, dconn, flags)
    if flags & F.PEER2PEER:
        if not await _supports(src, DriverFeature.MIGRATION_P2P):
            raise _no_support("virDomainMigrate")
        params = _legacy_params(dname, None, bandwidth)
        await _migrate_unmanaged(dom, uri or dconn.getURI(), params, flags)
        return await dconn.lookupByName(dname or dom.name())
    flags = await _check_protection(src, flags)
    if TUNNELLED_NEEDS_P2P.broken(flags):  # on this path, as OPERATION_INVALID
        raise _error("Requested operation is not valid: "
                     f"{TUNNELLED_NEEDS_P2P.message_for(Layer.LIBRARY)}",
                     ErrorCode.OPERATION_INVALID)
    if await _supports(src, DriverFeature.MIGRATION_PARAMS) and \
            await _supports(dconn, DriverFeature.MIGRATION_PARAMS):  # fmt: skip
        params = _legacy_params(dname, uri, bandwidth or None)
        return await Version3Full(dom, dconn, params, flags).run()
    raise _no_support("virDomainMigrate")


async def migrate_to_uri(dom: AsyncDomain, duri: str, flags: int, dname: str | None,
                         bandwidth: int) -> None:  # fmt: skip
    """virDomainMigrateToURI: ``duri`` is the dconnuri (p2p) or the migration URI."""
    _check_writable(dom.connect(), "virDomainMigrateToURI")
    _check_flag_rules(flags, "virDomainMigrateToURI")
    await _check_unmanaged(dom, flags)
    p2p = bool(flags & F.PEER2PEER)
    params = _legacy_params(dname, None if p2p else duri, bandwidth)
    await _migrate_unmanaged(dom, duri if p2p else None, params, flags)
