"""One server-side connection: decode CALLs, enforce caps, run them on the worker pool.

Reader path of one incoming packet (in order, nothing here waits on a worker):

1. KEEPALIVE program → answered at once (never behind a cap or a busy pool);
2. STREAM → routed to the call's stream (may pause reading while its queue is full);
3. CALL → resolve program/version/procedure, check status, authentication, read-only,
   decode the arguments; any failure is a REPLY/ERROR and the connection stays open;
4. admission: wait for a per-client slot (``max_client_requests``) and a global one
   (``max_requests``; priority procedures skip the global wait).  While waiting the reader
   does not read: the client's socket is paused, which is libvirt's behaviour too;
5. submit to the worker pool, priority procedures flagged as such.

The worker runs ``Dispatcher.dispatch(client, spec, args)`` and queues the REPLY with the
caller's serial, or the error as ``remote_error``.  Replies go through the connection's
writer task, so concurrent replies never interleave.

A client that does not read its replies costs the others nothing (libvirt's accounting):

* the worker **never waits** for the client: it queues the reply
  (:meth:`~pyvirt.rpc.connection.PacketConnection.send_nowait`), gives back the global
  request slot and takes the next job;
* the call's per-client slot is given back only once its reply has left the queue, so a
  client that stops reading stops being read after ``max_client_requests`` replies: it
  holds that many replies, no worker and no global slot;
* events and keepalive packets are not slotted; the queue's byte bound
  (``max_client_queued_bytes``) drops a client that lets them pile up;
* silence while a client's slots are held by its own unread replies is the client's fault:
  keepalive (when the client enabled it) closes it.

Per-client caps with an error reply (the connection stays open): ``max_client_streams``
open data streams here, ``max_client_event_callbacks`` in the daemon's event code
(:attr:`ClientContext.limits`).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pyvirt.errors import ErrorCode, ErrorDomain, InternalError, RPCError, VirtError
from pyvirt.rpc.connection import ConnectionClosedError, PacketConnection
from pyvirt.rpc.error import error_to_wire, unknown_procedure, unknown_program
from pyvirt.rpc.keepalive import Keepalive
from pyvirt.rpc.packet import (
    KEEPALIVE_PROGRAM,
    Header,
    MessageStatus,
    MessageType,
    Packet,
)
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.stream import Stream
from pyvirt.rpc.xdr import XDRError

if TYPE_CHECKING:
    from pyvirt.rpc.server import RPCServer, ServerLimits

log = logging.getLogger(__name__)

#: libvirtd sends event messages with serial 1 (remoteDispatchObjectEventSend)
EVENT_SERIAL = 1
_FD_COUNT_SIZE = 4

_current_stream: contextvars.ContextVar[Stream | None] = contextvars.ContextVar(
    "pyvirt_rpc_current_stream", default=None
)


class ClientContext(Protocol):
    """What a dispatcher may use of the connection a call came in on."""

    id: int
    peer: str
    readonly: bool
    #: the server's per-client caps (the daemon enforces the ones it owns)
    @property
    def limits(self) -> ServerLimits: ...

    #: free storage for the daemon (its hypervisor connection, event callbacks, ...)
    user_data: dict[str, Any]

    @property
    def opened(self) -> bool: ...

    @property
    def authenticated(self) -> bool: ...

    def mark_opened(self) -> None:
        """CONNECT_OPEN succeeded: the handshake timeout no longer applies."""

    def set_authenticated(self, value: bool = True) -> None: ...

    def enable_keepalive(self) -> bool:
        """Start server pings (SUPPORTS_FEATURE(10)); False when disabled by config."""

    async def send_message(self, program: Program, proc: int, body: Any) -> None:
        """Send an event MESSAGE to this client."""

    def stream(self) -> Stream:
        """The data stream opened by the call being dispatched in this task."""

    def abort(self, reason: str) -> None:
        """Close this connection soon (e.g. after CONNECT_CLOSE)."""


class Dispatcher(Protocol):
    async def dispatch(self, client: ClientContext, spec: ProcSpec, args: Any) -> Any:
        """Serve one call; return the reply value or raise VirtError."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    header: Header
    program: Program
    spec: ProcSpec
    args: Any
    stream: Stream | None


class ServerClient(PacketConnection):
    """The server side of one client connection (implements :class:`ClientContext`)."""

    def __init__(
        self,
        server: RPCServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client_id: int,
        peer: str,
        readonly: bool,
        authenticated: bool = True,
    ) -> None:
        super().__init__(
            reader,
            writer,
            name=f"client {client_id} {peer}{' ro' if readonly else ''}",
            max_packet=server.limits.max_packet,
            max_queued_bytes=server.limits.max_client_queued_bytes,
            max_stream_queued_bytes=server.limits.max_stream_queued_bytes,
            logger=log,
        )
        self.id = client_id
        self.peer = peer
        self.readonly = readonly
        self.user_data: dict[str, Any] = {}
        self.keepalive = Keepalive(self)
        self._server = server
        self._opened = False
        #: a listener with auth "none" authenticates by definition (libvirt's rule)
        self._authenticated = authenticated
        #: counted by the server among the anonymous clients until authenticated
        self.anonymous = not authenticated
        self._inflight = 0  # admitted calls whose reply has not left the queue
        self._running = 0  # admitted calls whose reply is not queued yet
        self._slot_free = asyncio.Event()
        self._waiting_slot = False
        self._stream_cap_logged = False
        self._handshake_timer: asyncio.TimerHandle | None = None

    # -- ClientContext -----------------------------------------------------------------------
    @property
    def opened(self) -> bool:
        return self._opened

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def limits(self) -> ServerLimits:
        return self._server.limits

    def mark_opened(self) -> None:
        if not self._opened:
            self._opened = True
            self._cancel_handshake_timer()

    def set_authenticated(self, value: bool = True) -> None:
        self._authenticated = value
        if value and self.anonymous:
            self.anonymous = False
            self._server.client_authenticated(self)

    def enable_keepalive(self) -> bool:
        limits = self._server.limits
        if limits.keepalive_interval <= 0:
            return False
        if not self.keepalive.active:
            self.keepalive.start(
                limits.keepalive_interval,
                limits.keepalive_count,
                paused=self._silence_is_ours,
            )
        return True

    def _silence_is_ours(self) -> bool:
        """True while the client's silence is caused by us: a cap, a full stream queue, or a
        call of its own still running; not while only its unread replies hold its slots."""
        return self.is_reading_paused and not (self._waiting_slot and self._running == 0)

    async def send_message(self, program: Program, proc: int, body: Any) -> None:
        """Queue an event MESSAGE; never waits (a client over its bound is dropped)."""
        spec = program.get(proc)
        if spec is None or not spec.is_message:
            raise ValueError(f"{program.name}: {proc} is not a message procedure")
        header = Header(program.number, program.version, proc, MessageType.MESSAGE,
                        EVENT_SERIAL, MessageStatus.OK)  # fmt: skip
        self.send_nowait(header, spec.encode_args(body))

    def stream(self) -> Stream:
        stream = _current_stream.get()
        if stream is None:
            raise RuntimeError("no data stream belongs to the call being dispatched")
        if self.streams.get(stream.key) is not stream:
            # closed before the call ran (the peer aborted it, the connection went):
            # the caller's error, reported as such (a VirtError), not an internal one
            stream.check_open("use")
        return stream

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        timeout = self._server.limits.handshake_timeout
        if timeout is not None and timeout > 0:
            self._handshake_timer = asyncio.get_running_loop().call_later(
                timeout, self._handshake_expired
            )

    def _handshake_expired(self) -> None:
        if not self._opened:
            self.log.warning("closing: connection not opened within the handshake timeout")
            self.abort("handshake timeout")

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    async def _on_closed(self) -> None:
        self.keepalive.stop()
        self._cancel_handshake_timer()
        self._server.client_closed(self)

    # -- incoming packets --------------------------------------------------------------------
    async def _handle_packet(self, packet: Packet) -> None:
        hdr = packet.header
        if hdr.prog == KEEPALIVE_PROGRAM:
            await self.keepalive.handle(packet)
        elif hdr.type in (MessageType.STREAM, MessageType.STREAM_HOLE):
            if not await self._route_stream(packet):
                # libvirtd drops data for streams it already closed; so do we
                self.log.debug("ignoring packet for no open stream: %s", hdr.describe())
        elif hdr.type in (MessageType.CALL, MessageType.CALL_WITH_FDS):
            await self._on_call(packet)
        else:
            self.log.debug("ignoring unexpected packet: %s", hdr.describe())

    async def _on_call(self, packet: Packet) -> None:
        try:
            call = self._prepare_call(packet)
        except VirtError as exc:
            self.log.debug("refusing call %s: %s", packet.header.describe(), exc.message)
            self._queue_reply(packet.header.reply(MessageStatus.ERROR), error_to_wire(exc))
            return
        await self._admit(call.spec)
        await self._server.pool.submit(
            functools.partial(self._run_call, call), priority=call.spec.priority
        )

    def _prepare_call(self, packet: Packet) -> _Call:
        hdr = packet.header
        program = self._server.program_for(hdr.prog, hdr.vers)
        if program is None:
            raise unknown_program(hdr.prog, hdr.vers)
        if hdr.status != MessageStatus.OK:
            raise RPCError(f"Unexpected message status {hdr.status}")
        spec = program.get(hdr.proc)
        if spec is None or spec.is_message:
            raise unknown_procedure(hdr.proc)
        if spec.needs_auth and not self._authenticated:
            raise RPCError("authentication required")
        if self.readonly and not spec.readonly:
            raise _read_only_error(spec)
        args = self._decode_args(spec, hdr, packet.payload)
        stream = None
        if spec.stream is not None:
            if (hdr.prog, hdr.proc, hdr.serial) in self.streams:
                raise RPCError(f"a stream is already open for serial {hdr.serial}")
            self._check_stream_cap()
            stream = self.new_stream(hdr)
        return _Call(hdr, program, spec, args, stream)

    def _check_stream_cap(self) -> None:
        cap = self.limits.max_client_streams
        if len(self.streams) < cap:
            return
        if not self._stream_cap_logged:
            self._stream_cap_logged = True  # once per client
            self.log.warning("refusing streams beyond max_client_streams (%d)", cap)
        raise RPCError(f"Too many open streams on this connection (max_client_streams = {cap})")

    def _decode_args(self, spec: ProcSpec, hdr: Header, payload: bytes) -> Any:
        if hdr.type == MessageType.CALL_WITH_FDS:
            # FDs only travel over SCM_RIGHTS, which this transport does not read
            if payload[:_FD_COUNT_SIZE] != b"\0\0\0\0":
                raise RPCError("passing file descriptors is not supported")
            payload = payload[_FD_COUNT_SIZE:]
        try:
            return spec.decode_args(payload)
        except XDRError as exc:
            self.log.debug("undecodable %s arguments: %s", spec.name, exc)
            raise RPCError("Unable to decode message payload") from None

    # -- caps --------------------------------------------------------------------------------
    async def _admit(self, spec: ProcSpec) -> None:
        """Take a per-client and a global request slot; the reader waits meanwhile."""
        while self._inflight >= self._server.limits.max_client_requests:
            self._slot_free.clear()
            self._waiting_slot = True
            try:
                with self.reading_paused():
                    await self._slot_free.wait()
            finally:
                self._waiting_slot = False
        self._inflight += 1
        self._running += 1
        try:
            with self.reading_paused():
                await self._server.acquire_request(priority=spec.priority)
        except BaseException:
            self._running -= 1
            self._release_slot()
            raise

    def _release_slot(self) -> None:
        self._inflight -= 1
        self._slot_free.set()

    async def limits_changed(self) -> None:
        self._slot_free.set()

    # -- running a call ----------------------------------------------------------------------
    async def _run_call(self, call: _Call) -> None:
        """Dispatch, queue the reply, free the worker and the global slot at once; the
        per-client slot follows the reply out of the queue."""
        reply: tuple[Header, bytes] | None = None
        try:
            status, payload = await self._dispatch(call)
            reply = (call.header.reply(status), payload)
        finally:
            self._running -= 1
            self._server.release_request()
            if reply is None or not self._queue_reply(*reply, on_written=self._release_slot):
                self._release_slot()

    async def _dispatch(self, call: _Call) -> tuple[int, bytes]:
        token = _current_stream.set(call.stream)
        try:
            ret = await self._server.dispatcher.dispatch(self, call.spec, call.args)
            return MessageStatus.OK, self._encode_ret(call.spec, ret)
        except VirtError as exc:
            if exc.expected:
                self.log.debug("%s failed: %s", call.spec.name, exc.message)
            else:
                self.log.error("%s failed: %s", call.spec.name, exc.message)
            error: BaseException = exc
        except Exception as exc:
            self.log.error("%s failed unexpectedly: %r", call.spec.name, exc)
            self.log.debug("%s traceback", call.spec.name, exc_info=True)
            error = exc
        finally:
            _current_stream.reset(token)
        if call.stream is not None:
            call.stream.discard("the opening call failed")
        return MessageStatus.ERROR, error_to_wire(error)

    def _encode_ret(self, spec: ProcSpec, ret: Any) -> bytes:
        try:
            return spec.encode_ret(ret)
        except XDRError as exc:
            # the dispatcher returned a value that does not fit the wire type: our bug
            raise InternalError(f"cannot encode the {spec.name} reply: {exc}") from None

    def _queue_reply(self, header: Header, payload: bytes,
                     on_written: Callable[[], None] | None = None) -> bool:
        """Queue a reply without waiting; False when the client is gone (or was dropped)."""
        try:
            self.send_nowait(header, payload, on_written)
        except ConnectionClosedError:
            self.log.debug("client gone, dropping reply %s", header.describe())
            return False
        return True


def _read_only_error(spec: ProcSpec) -> VirtError:
    # libvirt's virCheckReadOnlyGoto: "operation forbidden: read only access prevents X",
    # reported from the API's own module (domain APIs live in libvirt-domain.c)
    domain = ErrorDomain.DOMAIN if spec.api.startswith("virDomain") else ErrorDomain.NONE
    return VirtError(
        f"operation forbidden: read only access prevents {spec.api}",
        code=ErrorCode.OPERATION_DENIED,
        domain=domain,
    )
