"""The RPC client: calls routed by serial, events, keepalive, streams.

::

    client = await RPCClient.connect_unix("/run/pyvirt/libvirt-sock")
    await client.call(REMOTE, RemoteProc.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0})
    state = await client.call(REMOTE, RemoteProc.DOMAIN_GET_STATE, {"dom": dom, "flags": 0})
    await client.close()

Calls are numbered from serial 0 and may be issued concurrently on one connection; each
caller waits on its own future, resolved by the reader when the REPLY with its serial
arrives (replies may come back in any order).  A REPLY/ERROR becomes a
:class:`~pyvirt.errors.VirtError` with the server's code/domain/message ("unknown
procedure" becoming NO_SUPPORT, as libvirt's client does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from pyvirt.errors import RPCError, VirtError
from pyvirt.rpc.connection import ConnectionClosedError, PacketConnection
from pyvirt.rpc.error import error_from_wire
from pyvirt.rpc.keepalive import Keepalive
from pyvirt.rpc.packet import (
    KEEPALIVE_PROGRAM,
    PACKET_MAX,
    READER_LIMIT,
    Header,
    MessageStatus,
    MessageType,
    Packet,
)
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.stream import Stream
from pyvirt.rpc.xdr import XDRError

#: called for each event MESSAGE: (program, procedure spec, decoded body); may return an
#: awaitable, which is run as a task (handlers must not block the reader)
EventHandler = Callable[[Program, ProcSpec, Any], object]

log = logging.getLogger(__name__)

_FD_COUNT_SIZE = 4
_client_ids = itertools.count(1)


@dataclasses.dataclass(slots=True)
class _Pending:
    prog: int
    proc: int
    future: asyncio.Future[bytes]


class RPCClient(PacketConnection):
    """A client connection.  Build with :meth:`connect_unix`, :meth:`connect_tcp` or
    :meth:`from_streams`; it is running when returned."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        programs: Iterable[Program] = (REMOTE,),
        name: str = "",
        max_packet: int = PACKET_MAX,
    ) -> None:
        super().__init__(
            reader,
            writer,
            name=name or f"rpc-client {next(_client_ids)}",
            max_packet=max_packet,
            logger=log,
        )
        self._programs = {(p.number, p.version): p for p in programs}
        self._serials = itertools.count(0)
        self._pending: dict[int, _Pending] = {}
        self._handlers: list[EventHandler] = []
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self.keepalive = Keepalive(self)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    async def connect_unix(cls, path: str, **kwargs: Any) -> RPCClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=READER_LIMIT)
        return await cls.from_streams(reader, writer, **kwargs)

    @classmethod
    async def connect_tcp(cls, host: str, port: int, **kwargs: Any) -> RPCClient:
        reader, writer = await asyncio.open_connection(host, port, limit=READER_LIMIT)
        return await cls.from_streams(reader, writer, **kwargs)

    @classmethod
    async def from_streams(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **kwargs: Any
    ) -> RPCClient:
        client = cls(reader, writer, **kwargs)
        client.start()
        return client

    # -- calls -------------------------------------------------------------------------------
    async def call(
        self, program: Program, proc: int, args: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Call ``proc`` of ``program``; returns the decoded reply or raises VirtError."""
        spec = self._spec(program, proc)
        payload = await self.call_raw(
            program.number, program.version, proc, spec.encode_args(args), timeout=timeout
        )
        return self._decode_ret(spec, payload)

    async def call_raw(
        self,
        prog: int,
        vers: int,
        proc: int,
        payload: bytes = b"",
        *,
        timeout: float | None = None,
        on_serial: Callable[[Header], None] | None = None,
    ) -> bytes:
        """Send a CALL with an already-encoded payload; return the raw REPLY payload."""
        serial = next(self._serials) & 0xFFFFFFFF
        header = Header(prog, vers, proc, MessageType.CALL, serial, MessageStatus.OK)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[serial] = _Pending(prog, proc, future)
        try:
            if on_serial is not None:
                on_serial(header)
            await self.send(header, payload)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(serial, None)

    async def open_stream(
        self, program: Program, proc: int, args: Any = None, *, timeout: float | None = None
    ) -> Stream:
        """Call a stream-opening procedure; return its stream (the reply is ``.reply``)."""
        spec = self._spec(program, proc)
        if spec.stream is None:
            raise ValueError(f"{spec.name} does not open a stream")
        opened: list[Stream] = []

        def register(header: Header) -> None:
            # registered before the CALL leaves, so no stream packet can arrive unrouted
            opened.append(self.new_stream(header))

        try:
            payload = await self.call_raw(program.number, program.version, proc,
                                          spec.encode_args(args), timeout=timeout,
                                          on_serial=register)  # fmt: skip
        except BaseException:
            if opened:
                opened[0].discard("the opening call failed")
            raise
        stream = opened[0]
        stream.reply = self._decode_ret(spec, payload)
        return stream

    def _spec(self, program: Program, proc: int) -> ProcSpec:
        spec = program.get(proc)
        if spec is None or spec.is_message:
            raise ValueError(f"{program.name}: no callable procedure {proc}")
        return spec

    @staticmethod
    def _decode_ret(spec: ProcSpec, payload: bytes) -> Any:
        try:
            return spec.decode_ret(payload)
        except XDRError as exc:
            raise RPCError(f"Unable to decode {spec.name} reply: {exc}") from None

    # -- events and keepalive ----------------------------------------------------------------
    def add_event_handler(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def remove_event_handler(self, handler: EventHandler) -> None:
        self._handlers.remove(handler)

    def start_keepalive(self, interval: float, count: int) -> None:
        """Ping the server when idle; close after ``count`` unanswered pings."""
        self.keepalive.start(interval, count, paused=lambda: self.is_reading_paused)

    # -- incoming packets --------------------------------------------------------------------
    async def _handle_packet(self, packet: Packet) -> None:
        hdr = packet.header
        if hdr.prog == KEEPALIVE_PROGRAM:
            await self.keepalive.handle(packet)
        elif hdr.type in (MessageType.REPLY, MessageType.REPLY_WITH_FDS):
            await self._on_reply(packet)
        elif hdr.type == MessageType.MESSAGE:
            self._on_message(packet)
        elif hdr.type == MessageType.STREAM:
            if not await self._route_stream(packet):
                self.log.debug("stray stream packet: %s", hdr.describe())
        else:
            self.log.debug("ignoring unexpected packet: %s", hdr.describe())

    async def _on_reply(self, packet: Packet) -> None:
        hdr = packet.header
        pending = self._pending.pop(hdr.serial, None)
        if pending is None:
            # an error for a stream whose call already completed, or a late reply
            if not await self._route_stream(packet):
                self.log.debug("reply for no pending call: %s", hdr.describe())
            return
        if pending.future.done():
            return  # the caller timed out or was cancelled
        if (hdr.prog, hdr.proc) != (pending.prog, pending.proc):
            pending.future.set_exception(
                RPCError(f"reply does not match its call (proc {hdr.proc} != {pending.proc})")
            )
            return
        payload = packet.payload
        if hdr.type == MessageType.REPLY_WITH_FDS:
            # we never pass FDs; skip the count so the payload still decodes
            payload = payload[_FD_COUNT_SIZE:]
        if hdr.status == MessageStatus.OK:
            pending.future.set_result(payload)
        elif hdr.status == MessageStatus.ERROR:
            pending.future.set_exception(error_from_wire(payload))
        else:
            pending.future.set_exception(RPCError(f"Unexpected message status {hdr.status}"))

    def _on_message(self, packet: Packet) -> None:
        hdr = packet.header
        program = self._programs.get((hdr.prog, hdr.vers))
        spec = program.get(hdr.proc) if program is not None else None
        if program is None or spec is None or not spec.is_message:
            self.log.debug("ignoring unknown message: %s", hdr.describe())
            return
        try:
            body = spec.decode_args(packet.payload)
        except XDRError as exc:
            self.log.warning("undecodable %s message: %s", spec.name, exc)
            return
        for handler in list(self._handlers):
            try:
                result = handler(program, spec, body)
            except Exception as exc:
                self.log.error("event handler for %s failed: %s", spec.name, exc)
                self.log.debug("event handler traceback", exc_info=True)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_tasks.discard)

    async def _on_closed(self) -> None:
        self.keepalive.stop()
        error = ConnectionClosedError(f"connection closed: {self.close_reason}")
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        for task in list(self._handler_tasks):
            task.cancel()


__all__ = ["EventHandler", "RPCClient", "VirtError"]
