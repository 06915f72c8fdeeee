"""The async core of the client library: :class:`AsyncConnection` and :class:`AsyncDomain`.

::

    conn = await AsyncConnection.open("qemu+tcp://10.77.0.1/system")
    dom = await conn.lookupByName("g1")
    state, reason = await dom.state()
    await conn.close()

Method names and semantics are libvirt-python's (``lookupByName``, ``jobStats``, ...), only
``async``; the blocking facade in :mod:`pyvirt.client.sync` wraps each one.  Helpers that
are not libvirt API (the migration phase procedures the migration engine drives, feature
probes) have PEP 8 names.  Every error a call raises is a
:class:`~pyvirt.client.error.libvirtError` with libvirt's code, domain and message.

Opening follows libvirt's remote driver (``reference/libvirt-wire.md`` §11.1)::

    AUTH_LIST → SUPPORTS_FEATURE(10) → CONNECT_OPEN(name, flags) → SUPPORTS_FEATURE(14)
    → SUPPORTS_FEATURE(15) → REGISTER_CLOSE_CALLBACK (if 15) ; keepalive starts (if 10)

and closing is ``UNREGISTER_CLOSE_CALLBACK`` (if registered) then ``CONNECT_CLOSE``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyvirt.client import migrate as _migrate
from pyvirt.client.error import libvirtError
from pyvirt.client.events import DomainEventCallback, EventTable
from pyvirt.client.names import CloseReason
from pyvirt.client.params import ParamsIn, from_typed_params, to_typed_params
from pyvirt.client.transport import Transport, open_transport
from pyvirt.constants import ConnectFlags, DriverFeature
from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.connection import ConnectionClosedError
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain
from pyvirt.rpc.stream import Stream
from pyvirt.rpc.xdr import XDRError
from pyvirt.uri import ConnectURI, parse_uri, resolve_default_uri

log = logging.getLogger(__name__)

RP = RemoteProc
T = TypeVar("T")

#: virsh's keepalive (tools/virsh.c): ping after 5 s idle, give up after 6 unanswered
VIRSH_KEEPALIVE = (5.0, 6)
#: how long close() waits for each goodbye call before closing anyway
CLOSE_CALL_TIMEOUT = 5.0

#: ``cb(conn, reason, opaque)``, libvirt-python's close callback
CloseCallback = Callable[["AsyncConnection", int, object], object]


class RemoteAuth(enum.IntEnum):
    """remote_auth_type (§8)."""

    NONE = 0
    SASL = 1
    POLKIT = 2


class ConnectionLostError(libvirtError):
    """The connection to the daemon is gone (EOF, I/O error, keepalive timeout)."""


_ERRNO_TEXT = re.compile(r"^\[Errno \d+\] (.*)$")


def _errno_text(detail: str) -> str:
    match = _ERRNO_TEXT.match(detail)
    return match.group(1) if match else detail


def _close_reason(reason: str | None) -> CloseReason:
    if reason == "keepalive timeout":
        return CloseReason.KEEPALIVE
    if reason == "end of stream":
        return CloseReason.EOF
    return CloseReason.ERROR


def _auth_name(kind: int) -> str:
    try:
        return RemoteAuth(kind).name
    except ValueError:
        return f"type {kind}"


def _api(proc: RemoteProc) -> str:
    spec = REMOTE.get(proc)
    return spec.api if spec is not None else proc.name


class AsyncConnection:
    """An open connection to a libvirt-speaking daemon (pyvirtd or libvirtd)."""

    def __init__(self, uri_text: str, uri: ConnectURI, rpc: RPCClient, transport: Transport,
                 *, readonly: bool) -> None:  # fmt: skip
        self.uri = uri
        self.readonly = readonly
        #: the RPC client (the migration engine uses its streams directly)
        self.rpc = rpc
        self.transport = transport
        self._uri_text = uri_text
        self._features: dict[int, bool] = {}
        self._events = EventTable(self)
        self._close_cb: tuple[CloseCallback, object] | None = None
        self._close_fired = False
        self._server_close_cb = False
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        rpc.add_event_handler(self._on_message)

    def __repr__(self) -> str:
        return f"<AsyncConnection {self._uri_text} {self.transport.description}>"

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        uri: str | None = None,
        readonly: bool = False,
        *,
        flags: int = 0,
        keepalive: tuple[float, int] | None = VIRSH_KEEPALIVE,
        ssh_program: str | None = None,
    ) -> AsyncConnection:
        """Connect and run libvirt's open sequence.

        ``uri`` None or empty: $PYVIRT_DEFAULT_URI, $LIBVIRT_DEFAULT_URI, qemu:///system.
        ``flags``: CONNECT_OPEN flags (VIR_CONNECT_RO is added when ``readonly``).
        ``keepalive``: (interval, count), or None to not negotiate it (libvirt-python
        without an event loop); the p2p source uses qemu.conf's values.
        """
        text = resolve_default_uri(uri)
        if readonly:
            flags |= ConnectFlags.RO
        try:
            parsed = parse_uri(text)
            transport = await open_transport(parsed, bool(flags & ConnectFlags.RO),
                                             ssh_program=ssh_program)  # fmt: skip
        except VirtError as exc:
            raise libvirtError.from_exception(exc) from None
        rpc = await RPCClient.from_streams(
            transport.reader, transport.writer, programs=(REMOTE,),
            name=f"pyvirt-client {transport.description}",
        )  # fmt: skip
        conn = cls(text, parsed, rpc, transport, readonly=bool(flags & ConnectFlags.RO))
        try:
            await conn._handshake(flags, keepalive)
        except BaseException as exc:
            await conn._abandon()
            if isinstance(exc, ConnectionLostError):
                raise conn._lost_error() from None  # again: ssh's stderr is complete now
            raise
        conn._spawn(conn._watch_closed())
        return conn

    async def _handshake(self, flags: int, keepalive: tuple[float, int] | None) -> None:
        await self._authenticate()
        keepalive_ok = keepalive is not None and await self.supports_feature(
            DriverFeature.PROGRAM_KEEPALIVE
        )
        await self.call(RP.CONNECT_OPEN, {"name": self.uri.open_name, "flags": flags})
        await self.supports_feature(DriverFeature.REMOTE_EVENT_CALLBACK)
        if await self.supports_feature(DriverFeature.REMOTE_CLOSE_CALLBACK):
            await self.call(RP.CONNECT_REGISTER_CLOSE_CALLBACK)
            self._server_close_cb = True
        if keepalive_ok and keepalive is not None:
            self.rpc.start_keepalive(*keepalive)

    async def _authenticate(self) -> None:
        try:
            ret = await self.call(RP.AUTH_LIST)
        except libvirtError as exc:
            if exc.code == ErrorCode.NO_SUPPORT:
                return  # a daemon without AUTH_LIST needs no authentication (§8)
            raise
        types: list[int] = ret["types"]
        if not types or types[0] == RemoteAuth.NONE:
            return
        if types[0] == RemoteAuth.POLKIT:
            # libvirt's remoteAuthPolkit: the daemon asks polkit about our peer credentials
            await self.call(RP.AUTH_POLKIT)
            return
        raise libvirtError(
            f"authentication unavailable: the daemon requires {_auth_name(types[0])} "
            "authentication, which "
            "pyvirt does not implement (use qemu+ssh://, a unix socket, or auth_tcp = \"none\")",
            code=ErrorCode.AUTH_UNAVAILABLE, domain=ErrorDomain.REMOTE,
        )  # fmt: skip

    async def supports_feature(self, feature: int, *, cached: bool = True) -> bool:
        """CONNECT_SUPPORTS_FEATURE; an error reply counts as "no" (as in libvirt)."""
        if cached and feature in self._features:
            return self._features[feature]
        try:
            ret = await self.call(RP.CONNECT_SUPPORTS_FEATURE, {"feature": int(feature)})
            supported = bool(ret["supported"])
        except ConnectionLostError:
            raise
        except libvirtError as exc:
            log.debug("feature %d probe failed, taking it as unsupported: %s", feature, exc)
            supported = False
        self._features[feature] = supported
        return supported

    # -- calls and errors --------------------------------------------------------------------
    async def call(self, proc: RemoteProc, args: Any = None, *,
                   timeout: float | None = None) -> Any:  # fmt: skip
        """One REMOTE call; every failure is a libvirtError."""
        return await self._guard(proc, lambda: self.rpc.call(REMOTE, proc, args, timeout=timeout))

    async def open_stream(self, proc: RemoteProc, args: Any = None) -> Stream:
        """A stream-opening call (PREPARE_TUNNEL3_PARAMS); the reply is ``stream.reply``."""
        return await self._guard(proc, lambda: self.rpc.open_stream(REMOTE, proc, args))

    async def _guard(self, proc: RemoteProc, op: Callable[[], Awaitable[T]]) -> T:
        if self._closing:
            raise libvirtError(f"invalid connection pointer in {_api(proc)}",
                               code=ErrorCode.INVALID_CONN, domain=ErrorDomain.NONE)  # fmt: skip
        try:
            return await op()
        except ConnectionClosedError:
            raise self._lost_error() from None
        except VirtError as exc:
            raise libvirtError.from_exception(exc) from None
        except XDRError as exc:  # an argument that does not fit its wire type
            raise libvirtError(f"invalid argument: {_api(proc)}: {exc}",
                               code=ErrorCode.INVALID_ARG,
                               domain=ErrorDomain.RPC) from None  # fmt: skip
        except TimeoutError:
            raise libvirtError(f"Timed out during operation: no reply to {_api(proc)}",
                               code=ErrorCode.OPERATION_TIMEOUT,
                               domain=ErrorDomain.RPC) from None  # fmt: skip

    def _lost_error(self) -> ConnectionLostError:
        """libvirt's wording for why the connection died (virnetsocket.c, virnetclient.c)."""
        reason = self.rpc.close_reason or ""
        kind, _, detail = reason.partition(": ")
        tail = self.transport.stderr_tail()
        code = ErrorCode.SYSTEM_ERROR
        if reason == "closed locally":
            message, code = "internal error: client socket is closed", ErrorCode.INTERNAL_ERROR
        elif reason == "keepalive timeout":
            message = "internal error: connection closed due to keepalive timeout"
            code = ErrorCode.INTERNAL_ERROR
        elif kind == "framing error":
            message, code = f"RPC error: {detail}", ErrorCode.RPC
        elif kind in ("read failed", "write failed") and not tail:
            verb = "recv" if kind == "read failed" else "write"
            message = f"Cannot {verb} data: {_errno_text(detail)}"
        else:
            # EOF; or ssh died and a pipe broke first: its stderr says why (libvirt does this)
            message = f"End of file while reading data: {tail + ': ' if tail else ''}" \
                      "Input/output error"  # fmt: skip
        return ConnectionLostError(message, code=code, domain=ErrorDomain.RPC)

    # -- closing -----------------------------------------------------------------------------
    async def close(self) -> int:
        """Say goodbye (361 if registered, then 2) and close; never raises for a dead peer."""
        if self._closing:
            await self.rpc.wait_closed()
            return 0
        self._closing = True
        if self.rpc.is_running:
            goodbye = [RP.CONNECT_UNREGISTER_CLOSE_CALLBACK] if self._server_close_cb else []
            for proc in [*goodbye, RP.CONNECT_CLOSE]:
                try:
                    await self.rpc.call(REMOTE, proc, timeout=CLOSE_CALL_TIMEOUT)
                except (TimeoutError, VirtError) as exc:
                    log.debug("%s while closing failed: %s", proc.name, exc)
                    break
        await self.rpc.close()
        await self.transport.aclose()
        for task in list(self._tasks):
            task.cancel()
        return 0

    async def _abandon(self) -> None:
        """A failed open: drop everything without the goodbye calls."""
        self._closing = True
        await self.rpc.close("open failed")
        await self.transport.aclose(settle_timeout=1.0)  # ssh's last words: the message

    async def _watch_closed(self) -> None:
        await self.rpc.wait_closed()
        if not self._closing:
            log.debug("%r lost: %s", self, self.rpc.close_reason)
            self._fire_close(_close_reason(self.rpc.close_reason))
            await self.transport.aclose()  # reap ssh

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def isAlive(self) -> int:
        return int(self.rpc.is_running and not self._closing)

    # -- close callback and events -----------------------------------------------------------
    def registerCloseCallback(self, cb: CloseCallback, opaque: object = None) -> int:
        if self._close_cb is not None:
            raise libvirtError("Requested operation is not valid: A close callback is already "
                               "registered", code=ErrorCode.OPERATION_INVALID,
                               domain=ErrorDomain.NONE)  # fmt: skip
        self._close_cb = (cb, opaque)
        return 0

    def unregisterCloseCallback(self) -> int:
        if self._close_cb is None:
            raise libvirtError("Requested operation is not valid: A different callback was "
                               "requested", code=ErrorCode.OPERATION_INVALID,
                               domain=ErrorDomain.NONE)  # fmt: skip
        self._close_cb = None
        return 0

    def _fire_close(self, reason: int) -> None:
        if self._close_fired or self._close_cb is None:
            return
        self._close_fired = True
        cb, opaque = self._close_cb
        try:
            result = cb(self, reason, opaque)
        except Exception as exc:
            log.error("close callback failed: %s", exc)
            log.debug("close callback traceback", exc_info=True)
            return
        if isinstance(result, Awaitable):
            self._spawn(result)

    def _on_message(self, program: Program, spec: ProcSpec, body: Any) -> object:
        if program is REMOTE and spec.number == RP.CONNECT_EVENT_CONNECTION_CLOSED:
            self._fire_close(body["reason"])
            return None
        return self._events.on_message(program, spec, body)

    async def domainEventRegisterAny(
        self, dom: AsyncDomain | None, eventID: int, cb: DomainEventCallback,
        opaque: object = None,
    ) -> int:  # fmt: skip
        """Register ``cb(conn, dom, ..., opaque)`` for ``eventID``; returns the callback ID."""
        return await self._events.register(dom.handle if dom is not None else None,
                                           eventID, cb, opaque)  # fmt: skip

    async def domainEventDeregisterAny(self, callbackID: int) -> int:
        await self._events.deregister(callbackID)
        return 0

    async def setKeepAlive(self, interval: float, count: int) -> int:
        """0 on success, 1 if the daemon does not support keepalive (libvirt's contract)."""
        if interval <= 0:
            self.rpc.keepalive.stop()
            return 0
        if not await self.supports_feature(DriverFeature.PROGRAM_KEEPALIVE):
            return 1
        self.rpc.start_keepalive(interval, count)
        return 0

    # -- connection and host -----------------------------------------------------------------
    def getURI(self) -> str:
        """The URI the caller opened (after default resolution), as libvirt-python returns."""
        return self._uri_text

    async def getType(self) -> str:
        return str((await self.call(RP.CONNECT_GET_TYPE))["type"])

    async def getVersion(self) -> int:
        return int((await self.call(RP.CONNECT_GET_VERSION))["hv_ver"])

    async def getLibVersion(self) -> int:
        return int((await self.call(RP.CONNECT_GET_LIB_VERSION))["lib_ver"])

    async def getHostname(self) -> str:
        return str((await self.call(RP.CONNECT_GET_HOSTNAME))["hostname"])

    async def getCapabilities(self) -> str:
        return str((await self.call(RP.CONNECT_GET_CAPABILITIES))["capabilities"])

    async def getMaxVcpus(self, type: str | None = None) -> int:
        return int((await self.call(RP.CONNECT_GET_MAX_VCPUS, {"type": type}))["max_vcpus"])

    async def getInfo(self) -> list[Any]:
        """[model, memory MiB, cpus, mhz, nodes, sockets, cores, threads] (libvirt-python)."""
        ret = await self.call(RP.NODE_GET_INFO)
        model = bytes(ret["model"]).split(b"\0", 1)[0].decode("utf-8", "replace")
        return [model, ret["memory"] >> 10, ret["cpus"], ret["mhz"], ret["nodes"],
                ret["sockets"], ret["cores"], ret["threads"]]  # fmt: skip

    # -- domains -----------------------------------------------------------------------------
    def domain_for(self, handle: NonnullDomain) -> AsyncDomain:
        return AsyncDomain(self, handle)

    async def _domain_call(self, proc: RemoteProc, args: Any) -> AsyncDomain:
        return self.domain_for((await self.call(proc, args))["dom"])

    async def listAllDomains(self, flags: int = 0) -> list[AsyncDomain]:
        ret = await self.call(RP.CONNECT_LIST_ALL_DOMAINS, {"need_results": 1, "flags": flags})
        return [self.domain_for(handle) for handle in ret["domains"]]

    async def listDomainsID(self) -> list[int]:
        num = (await self.call(RP.CONNECT_NUM_OF_DOMAINS))["num"]
        if num == 0:
            return []
        return list((await self.call(RP.CONNECT_LIST_DOMAINS, {"maxids": num}))["ids"])

    async def listDefinedDomains(self) -> list[str]:
        num = (await self.call(RP.CONNECT_NUM_OF_DEFINED_DOMAINS))["num"]
        if num == 0:
            return []
        ret = await self.call(RP.CONNECT_LIST_DEFINED_DOMAINS, {"maxnames": num})
        return list(ret["names"])

    async def numOfDomains(self) -> int:
        return int((await self.call(RP.CONNECT_NUM_OF_DOMAINS))["num"])

    async def numOfDefinedDomains(self) -> int:
        return int((await self.call(RP.CONNECT_NUM_OF_DEFINED_DOMAINS))["num"])

    async def lookupByName(self, name: str) -> AsyncDomain:
        return await self._domain_call(RP.DOMAIN_LOOKUP_BY_NAME, {"name": name})

    async def lookupByID(self, id: int) -> AsyncDomain:
        return await self._domain_call(RP.DOMAIN_LOOKUP_BY_ID, {"id": id})

    async def lookupByUUID(self, uuid: bytes) -> AsyncDomain:
        if not isinstance(uuid, bytes | bytearray) or len(uuid) != 16:
            raise libvirtError("invalid argument: uuid in virDomainLookupByUUID must be 16 bytes",
                               code=ErrorCode.INVALID_ARG, domain=ErrorDomain.DOMAIN)  # fmt: skip
        return await self._domain_call(RP.DOMAIN_LOOKUP_BY_UUID, {"uuid": bytes(uuid)})

    async def lookupByUUIDString(self, uuidstr: str) -> AsyncDomain:
        try:
            raw = uuid.UUID(uuidstr).bytes
        except (ValueError, TypeError, AttributeError):
            raise libvirtError(f"invalid argument: uuidstr in virDomainLookupByUUIDString must "
                               f"be a valid UUID, got {uuidstr!r}", code=ErrorCode.INVALID_ARG,
                               domain=ErrorDomain.DOMAIN) from None  # fmt: skip
        return await self._domain_call(RP.DOMAIN_LOOKUP_BY_UUID, {"uuid": raw})

    async def defineXML(self, xml: str) -> AsyncDomain:
        return await self._domain_call(RP.DOMAIN_DEFINE_XML, {"xml": xml})

    async def defineXMLFlags(self, xml: str, flags: int = 0) -> AsyncDomain:
        return await self._domain_call(RP.DOMAIN_DEFINE_XML_FLAGS, {"xml": xml, "flags": flags})

    async def createXML(self, xmlDesc: str, flags: int = 0) -> AsyncDomain:
        return await self._domain_call(RP.DOMAIN_CREATE_XML, {"xml_desc": xmlDesc, "flags": flags})

    # -- migration, destination side (driven by the migration engine) -------------------------
    async def migrate_prepare3_params(self, params: ParamsIn | None, cookie_in: bytes = b"",
                                      flags: int = 0) -> tuple[bytes, str | None]:  # fmt: skip
        """PREPARE3_PARAMS → (cookie_out, uri_out)."""
        ret = await self.call(RP.DOMAIN_MIGRATE_PREPARE3_PARAMS,
                              {"params": to_typed_params(params), "cookie_in": cookie_in,
                               "flags": flags})  # fmt: skip
        return ret["cookie_out"], ret["uri_out"]

    async def migrate_prepare_tunnel3_params(self, params: ParamsIn | None,
                                             cookie_in: bytes = b"",
                                             flags: int = 0) -> tuple[bytes, Stream]:  # fmt: skip
        """PREPARE_TUNNEL3_PARAMS → (cookie_out, the write stream for QEMU's data)."""
        stream = await self.open_stream(RP.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS,
                                        {"params": to_typed_params(params),
                                         "cookie_in": cookie_in, "flags": flags})  # fmt: skip
        return stream.reply["cookie_out"], stream

    async def migrate_finish3_params(
        self, params: ParamsIn | None, cookie_in: bytes, flags: int, cancelled: bool
    ) -> tuple[AsyncDomain, bytes]:
        """FINISH3_PARAMS → (the domain on this host, cookie_out)."""
        ret = await self.call(RP.DOMAIN_MIGRATE_FINISH3_PARAMS,
                              {"params": to_typed_params(params), "cookie_in": cookie_in,
                               "flags": flags, "cancelled": int(cancelled)})  # fmt: skip
        return self.domain_for(ret["dom"]), ret["cookie_out"]


_JOB_INFO_FIELDS = (
    "time_elapsed", "time_remaining", "data_total", "data_processed", "data_remaining",
    "mem_total", "mem_processed", "mem_remaining", "file_total", "file_processed",
    "file_remaining",
)  # fmt: skip


class AsyncDomain:
    """A domain handle (name, uuid, id) on a connection; libvirt-python's virDomain."""

    def __init__(self, conn: AsyncConnection, handle: NonnullDomain) -> None:
        self._conn = conn
        self._handle = handle

    def __repr__(self) -> str:
        return f"<AsyncDomain {self._handle.name} id={self._handle.id}>"

    @property
    def handle(self) -> NonnullDomain:
        return self._handle

    def connect(self) -> AsyncConnection:
        return self._conn

    def name(self) -> str:
        return self._handle.name

    def UUID(self) -> bytes:
        return self._handle.uuid

    def UUIDString(self) -> str:
        return str(uuid.UUID(bytes=self._handle.uuid))

    def ID(self) -> int:
        """The id from the last lookup/start (-1 when inactive); no RPC, as in libvirt."""
        return self._handle.id

    def _set_id(self, dom_id: int) -> None:
        self._handle = NonnullDomain(self._handle.name, self._handle.uuid, dom_id)

    async def _call(self, proc: RemoteProc, **extra: Any) -> Any:
        return await self._conn.call(proc, {"dom": self._handle, **extra})

    # -- information -------------------------------------------------------------------------
    async def OSType(self) -> str:
        return str((await self._call(RP.DOMAIN_GET_OS_TYPE))["type"])

    async def info(self) -> list[int]:
        """[state, maxMem KiB, memory KiB, nrVirtCpu, cpuTime ns]."""
        ret = await self._call(RP.DOMAIN_GET_INFO)
        return [ret["state"], ret["max_mem"], ret["memory"], ret["nr_virt_cpu"], ret["cpu_time"]]

    async def state(self, flags: int = 0) -> list[int]:
        """[state, reason]."""
        ret = await self._call(RP.DOMAIN_GET_STATE, flags=flags)
        return [ret["state"], ret["reason"]]

    async def controlInfo(self, flags: int = 0) -> list[int]:
        ret = await self._call(RP.DOMAIN_GET_CONTROL_INFO, flags=flags)
        return [ret["state"], ret["details"], ret["state_time"]]

    async def XMLDesc(self, flags: int = 0) -> str:
        return str((await self._call(RP.DOMAIN_GET_XML_DESC, flags=flags))["xml"])

    async def isActive(self) -> int:
        return int((await self._call(RP.DOMAIN_IS_ACTIVE))["active"])

    async def isPersistent(self) -> int:
        return int((await self._call(RP.DOMAIN_IS_PERSISTENT))["persistent"])

    async def autostart(self) -> int:
        return int((await self._call(RP.DOMAIN_GET_AUTOSTART))["autostart"])

    async def setAutostart(self, autostart: int) -> int:
        await self._call(RP.DOMAIN_SET_AUTOSTART, autostart=int(autostart))
        return 0

    async def hasManagedSaveImage(self, flags: int = 0) -> int:
        return int((await self._call(RP.DOMAIN_HAS_MANAGED_SAVE_IMAGE, flags=flags))["result"])

    # -- lifecycle ---------------------------------------------------------------------------
    async def create(self) -> int:
        await self._call(RP.DOMAIN_CREATE)
        # DOMAIN_CREATE returns no domain, so libvirt's remote driver looks the id up (§10.4)
        ret = await self._conn.call(RP.DOMAIN_LOOKUP_BY_UUID, {"uuid": self._handle.uuid})
        self._set_id(ret["dom"].id)
        return 0

    async def createWithFlags(self, flags: int = 0) -> int:
        ret = await self._call(RP.DOMAIN_CREATE_WITH_FLAGS, flags=flags)
        self._set_id(ret["dom"].id)
        return 0

    async def destroy(self) -> int:
        await self._call(RP.DOMAIN_DESTROY)
        self._set_id(-1)  # as libvirt's remoteDomainDestroy does
        return 0

    async def destroyFlags(self, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_DESTROY_FLAGS, flags=flags)
        self._set_id(-1)
        return 0

    async def shutdown(self) -> int:
        await self._call(RP.DOMAIN_SHUTDOWN)
        return 0

    async def shutdownFlags(self, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_SHUTDOWN_FLAGS, flags=flags)
        return 0

    async def reboot(self, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_REBOOT, flags=flags)
        return 0

    async def suspend(self) -> int:
        await self._call(RP.DOMAIN_SUSPEND)
        return 0

    async def resume(self) -> int:
        await self._call(RP.DOMAIN_RESUME)
        return 0

    async def undefine(self) -> int:
        await self._call(RP.DOMAIN_UNDEFINE)
        return 0

    async def undefineFlags(self, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_UNDEFINE_FLAGS, flags=flags)
        return 0

    # -- jobs and migration tuning -----------------------------------------------------------
    async def jobInfo(self) -> list[int]:
        """[type, timeElapsed, timeRemaining, dataTotal, dataProcessed, dataRemaining,
        memTotal, memProcessed, memRemaining, fileTotal, fileProcessed, fileRemaining]."""
        ret = await self._call(RP.DOMAIN_GET_JOB_INFO)
        return [ret["type"], *(ret[field] for field in _JOB_INFO_FIELDS)]

    async def jobStats(self, flags: int = 0) -> dict[str, Any]:
        """The job's typed parameters as a dict, plus ``"type"`` (libvirt-python)."""
        ret = await self._call(RP.DOMAIN_GET_JOB_STATS, flags=flags)
        return {"type": ret["type"], **from_typed_params(ret["params"])}

    async def abortJob(self) -> int:
        await self._call(RP.DOMAIN_ABORT_JOB)
        return 0

    async def abortJobFlags(self, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_ABORT_JOB_FLAGS, flags=flags)
        return 0

    async def migrateSetMaxDowntime(self, downtime: int, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_MIGRATE_SET_MAX_DOWNTIME, downtime=downtime, flags=flags)
        return 0

    async def migrateGetMaxDowntime(self, flags: int = 0) -> int:
        return int((await self._call(RP.DOMAIN_MIGRATE_GET_MAX_DOWNTIME, flags=flags))["downtime"])

    async def migrateSetMaxSpeed(self, bandwidth: int, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_MIGRATE_SET_MAX_SPEED, bandwidth=bandwidth, flags=flags)
        return 0

    async def migrateGetMaxSpeed(self, flags: int = 0) -> int:
        return int((await self._call(RP.DOMAIN_MIGRATE_GET_MAX_SPEED, flags=flags))["bandwidth"])

    async def migrateSetCompressionCache(self, cacheSize: int, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_MIGRATE_SET_COMPRESSION_CACHE, cache_size=cacheSize, flags=flags)
        return 0

    async def migrateGetCompressionCache(self, flags: int = 0) -> int:
        ret = await self._call(RP.DOMAIN_MIGRATE_GET_COMPRESSION_CACHE, flags=flags)
        return int(ret["cache_size"])

    async def migrateStartPostCopy(self, flags: int = 0) -> int:
        await self._call(RP.DOMAIN_MIGRATE_START_POST_COPY, flags=flags)
        return 0

    # -- migration (libvirt's client-side orchestration: pyvirt.client.migrate) --------------
    async def migrate3(self, dconn: AsyncConnection, params: ParamsIn | None = None,
                       flags: int = 0) -> AsyncDomain:  # fmt: skip
        """virDomainMigrate3: the client runs the five phases; the domain on ``dconn``."""
        return await _migrate.migrate3(self, dconn, params, flags)

    async def migrateToURI3(self, dconnuri: str | None, params: ParamsIn | None = None,
                            flags: int = 0) -> int:  # fmt: skip
        """virDomainMigrateToURI3: peer-to-peer (or direct), driven by the source."""
        await _migrate.migrate_to_uri3(self, dconnuri, params, flags)
        return 0

    async def migrate(self, dconn: AsyncConnection, flags: int = 0, dname: str | None = None,
                      uri: str | None = None, bandwidth: int = 0) -> AsyncDomain:  # fmt: skip
        """virDomainMigrate (the older API)."""
        return await _migrate.migrate(self, dconn, flags, dname, uri, bandwidth)

    async def migrateToURI(self, duri: str, flags: int = 0, dname: str | None = None,
                           bandwidth: int = 0) -> int:  # fmt: skip
        """virDomainMigrateToURI (the older API)."""
        await _migrate.migrate_to_uri(self, duri, flags, dname, bandwidth)
        return 0

    # -- migration, source side (driven by the migration engine) -----------------------------
    async def migrate_begin3_params(self, params: ParamsIn | None,
                                    flags: int = 0) -> tuple[bytes, str]:  # fmt: skip
        """BEGIN3_PARAMS → (cookie_out, domain XML for the destination)."""
        ret = await self._call(RP.DOMAIN_MIGRATE_BEGIN3_PARAMS, params=to_typed_params(params),
                               flags=flags)  # fmt: skip
        return ret["cookie_out"], ret["xml"]

    async def migrate_perform3_params(self, dconnuri: str | None, params: ParamsIn | None,
                                      cookie_in: bytes = b"", flags: int = 0) -> bytes:  # fmt: skip
        """PERFORM3_PARAMS → cookie_out (``dconnuri`` only for peer-to-peer)."""
        ret = await self._call(RP.DOMAIN_MIGRATE_PERFORM3_PARAMS, dconnuri=dconnuri,
                               params=to_typed_params(params), cookie_in=cookie_in,
                               flags=flags)  # fmt: skip
        return bytes(ret["cookie_out"])

    async def migrate_confirm3_params(self, params: ParamsIn | None, cookie_in: bytes,
                                      flags: int, cancelled: bool) -> None:  # fmt: skip
        """CONFIRM3_PARAMS (void)."""
        await self._call(RP.DOMAIN_MIGRATE_CONFIRM3_PARAMS, params=to_typed_params(params),
                         cookie_in=cookie_in, flags=flags, cancelled=int(cancelled))  # fmt: skip


__all__ = ["VIRSH_KEEPALIVE", "AsyncConnection", "AsyncDomain", "ConnectionLostError",
           "RemoteAuth"]  # fmt: skip
