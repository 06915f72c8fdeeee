"""The core shared by client and server connections: one byte stream, two tasks.

::

    peer ──bytes──▶ reader task ──Packet──▶ _handle_packet()   (subclass: route by type)
    peer ◀──bytes── writer task ◀──queue─── send()             (any task; serialised here)

* The **reader task** reads whole packets (length checked before allocation) and hands
  each to :meth:`PacketConnection._handle_packet`, one at a time.  A handler that awaits
  (a full stream queue, a request cap) pauses reading: that is how TCP backpressure
  reaches the peer.  Buffered packets are handled without suspending, so the reader
  yields to the loop every ``READ_SLICE_S``: a flood of cheap packets costs its sender's
  turn, never everyone's.
* The **writer task** is the only writer of the socket, so packets from concurrent
  calls never interleave.  Two ways in, one queue:

  - :meth:`send` (stream data) waits while ``SEND_QUEUE_BYTES`` are queued: a peer that
    stops reading slows the producer down, which is what a data stream wants;
  - :meth:`send_nowait` (replies, events, keepalive, stream control) never waits, so a
    worker that answers a call is never held by the peer.  Its bound is in bytes
    (``max_queued_bytes``): a packet that finds more than that already queued drops the
    connection, with one log line, instead of growing the queue.  One packet always fits
    (the bound is checked before adding), so any reply up to the packet maximum goes out.

* A framing error, EOF or I/O error starts an orderly close: stop reading, flush what is
  queued (bounded in time), close the transport, then :meth:`_on_closed` (fail pending
  calls, abort streams).  A dropped connection is not flushed: its peer is not reading.
  A transport that still holds unsent bytes after the flush timeout is aborted, so a
  peer that never reads cannot keep the socket open.

Runstate: IDLE → RUNNING → DISCONNECTING → CLOSED; never backwards (a connection object
is used once, like a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.packet import PACKET_MAX, FramingError, Header, Packet, encode_prefix, read_packet
from pyvirt.rpc.stream import STREAM_QUEUED_BYTES, Stream, StreamKey

log = logging.getLogger(__name__)

#: how long close() waits for queued packets to reach the peer
FLUSH_TIMEOUT = 2.0
#: bytes queued for the writer before send() waits (one packet always fits)
SEND_QUEUE_BYTES = 1 << 20
#: longest a reader (or writer) works through buffered packets before letting the loop
#: run other work
READ_SLICE_S = 0.002

#: called by the writer once a packet has been handed to the transport
OnWritten = Callable[[], None]
_Item = tuple[bytes, bytes | memoryview, OnWritten | None]


class Runstate(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DISCONNECTING = "disconnecting"
    CLOSED = "closed"


class ConnectionClosedError(VirtError):
    """The connection is gone (EOF, I/O error, keepalive timeout or local close)."""

    code = ErrorCode.SYSTEM_ERROR
    domain = ErrorDomain.RPC


class ContextLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the connection's context, e.g. ``[client 3 unix ro]``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"[{self.extra['ctx'] if self.extra else '?'}] {msg}", kwargs


class PacketConnection:
    """Reader and writer tasks around a stream pair; subclasses route the packets."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str,
        max_packet: int = PACKET_MAX,
        max_queued_bytes: int | None = None,
        max_stream_queued_bytes: int = STREAM_QUEUED_BYTES,
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self.log = ContextLog(logger, {"ctx": name})
        self.runstate = Runstate.IDLE
        #: monotonic time of the last packet received (any packet proves the peer alive)
        self.last_rx = time.monotonic()
        self.close_reason: str | None = None
        self._reader = reader
        self._writer = writer
        self._max_packet = max_packet
        #: send_nowait()'s bound; None: unbounded (our own peers, e.g. a client's server)
        self._max_queued_bytes = max_queued_bytes
        self._max_stream_queued_bytes = max_stream_queued_bytes
        self._outq: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._queued_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._close_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._paused = 0
        #: open data streams of this connection, by (prog, proc, serial)
        self.streams: dict[StreamKey, Stream] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.runstate is not Runstate.IDLE:
            raise RuntimeError(f"{self.name}: start() in state {self.runstate.value}")
        self.runstate = Runstate.RUNNING
        self._tasks = [
            asyncio.create_task(self._reader_loop(), name=f"{self.name} reader"),
            asyncio.create_task(self._writer_loop(), name=f"{self.name} writer"),
        ]

    @property
    def is_running(self) -> bool:
        return self.runstate is Runstate.RUNNING

    def abort(self, reason: str, *, flush: bool = True) -> None:
        """Start closing without waiting; safe from any task, including the reader.
        ``flush=False``: discard what is queued (the peer is not reading it)."""
        if self.runstate in (Runstate.DISCONNECTING, Runstate.CLOSED):
            return
        if self.runstate is Runstate.IDLE:
            self.runstate = Runstate.CLOSED
            self.close_reason = reason
            self._closed.set()
            return
        self.runstate = Runstate.DISCONNECTING
        self.close_reason = reason
        self._close_task = asyncio.create_task(self._shutdown(flush),
                                               name=f"{self.name} close")

    async def close(self, reason: str = "closed locally") -> None:
        """Close and wait until done.  Do not await this from a packet handler."""
        self.abort(reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _shutdown(self, flush: bool) -> None:
        reader_task, writer_task = self._tasks
        reader_task.cancel()
        self._room.set()  # wake blocked senders: they see the state and raise
        self._outq.put_nowait(None)  # writer: flush the queue, then stop
        done, _ = await asyncio.wait([writer_task], timeout=FLUSH_TIMEOUT if flush else 0)
        if not done:
            writer_task.cancel()
        await asyncio.gather(reader_task, writer_task, return_exceptions=True)
        await self._close_transport(flush)
        self.runstate = Runstate.CLOSED
        self.log.debug("closed: %s", self.close_reason)
        for stream in list(self.streams.values()):
            stream.discard(self.close_reason or "closed")
        try:
            await self._on_closed()
        finally:
            self._closed.set()

    async def _close_transport(self, flush: bool) -> None:
        transport = self._writer.transport
        if not flush:
            transport.abort()
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), FLUSH_TIMEOUT)
        except TimeoutError:
            transport.abort()  # the peer reads nothing: do not keep its socket open
        except OSError:
            pass

    # -- sending -----------------------------------------------------------------------------
    async def send(self, header: Header, payload: bytes | memoryview = b"") -> None:
        """Queue one packet for the writer task; waits while too many bytes are queued."""
        prefix = encode_prefix(header, len(payload))
        while True:
            self._check_running()
            if self._queued_bytes < SEND_QUEUE_BYTES:
                break
            self._room.clear()
            await self._room.wait()
        self._enqueue(prefix, payload, None)

    def send_nowait(self, header: Header, payload: bytes | memoryview = b"",
                    on_written: OnWritten | None = None) -> None:
        """Queue one packet without waiting.  Over ``max_queued_bytes`` the connection is
        dropped and ConnectionClosedError raised; ``on_written`` runs once the writer has
        handed the packet to the transport (never, if the connection closes first)."""
        self._check_running()
        bound = self._max_queued_bytes
        if bound is not None and self._queued_bytes > bound:
            self.log.warning("dropping the connection: %d bytes of replies and events not "
                             "read by the peer (limit %d)", self._queued_bytes, bound)
            self.abort("not reading its replies", flush=False)
            self._check_running()
        self._enqueue(encode_prefix(header, len(payload)), payload, on_written)

    def _check_running(self) -> None:
        if self.runstate is not Runstate.RUNNING:
            raise ConnectionClosedError(f"connection closed: {self.close_reason or 'not open'}")

    def _enqueue(self, prefix: bytes, payload: bytes | memoryview,
                 on_written: OnWritten | None) -> None:
        self._queued_bytes += len(prefix) + len(payload)
        self._outq.put_nowait((prefix, payload, on_written))

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for the peer and not yet handed to the transport."""
        return self._queued_bytes

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + READ_SLICE_S
        try:
            while (item := await self._outq.get()) is not None:
                prefix, payload, on_written = item
                self._writer.write(prefix)
                if payload:
                    self._writer.write(payload)
                await self._writer.drain()
                self._queued_bytes -= len(prefix) + len(payload)
                if self._queued_bytes < SEND_QUEUE_BYTES:
                    self._room.set()
                if on_written is not None:
                    on_written()
                if loop.time() >= slice_end:  # a long queue is written in slices too
                    await asyncio.sleep(0)
                    slice_end = loop.time() + READ_SLICE_S
        except (ConnectionError, OSError) as exc:
            self.abort(f"write failed: {exc}")

    # -- receiving ---------------------------------------------------------------------------
    async def _reader_loop(self) -> None:
        reason = "end of stream"
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + READ_SLICE_S
        try:
            while (packet := await read_packet(self._reader, self._max_packet)) is not None:
                self.last_rx = time.monotonic()
                await self._handle_packet(packet)
                if self.runstate is not Runstate.RUNNING:
                    return  # closing: what is still buffered is not for us to serve
                if loop.time() >= slice_end:
                    # packets already buffered are read and handled without suspending:
                    # a peer that floods cheap packets (pings, refused calls) would
                    # otherwise hold the loop for its whole buffer
                    await asyncio.sleep(0)
                    slice_end = loop.time() + READ_SLICE_S
        except FramingError as exc:
            self.log.warning("malformed packet, closing: %s", exc)
            reason = f"framing error: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"read failed: {exc}"
        except Exception as exc:  # a bug in a handler must not leave the peer hanging
            self.log.error("packet handler failed, closing: %s", exc)
            self.log.debug("packet handler traceback", exc_info=True)
            reason = f"internal error: {exc}"
        self.abort(reason)

    @contextlib.contextmanager
    def reading_paused(self) -> Iterator[None]:
        """Mark that the reader is deliberately not reading (a cap or a full stream)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @property
    def is_reading_paused(self) -> bool:
        return self._paused > 0

    async def _handle_packet(self, packet: Packet) -> None:
        raise NotImplementedError

    # -- streams -----------------------------------------------------------------------------
    def new_stream(self, call: Header) -> Stream:
        """Register a stream for ``call`` (before the call's packets can arrive)."""
        stream = Stream(self, call, on_done=self._forget_stream,
                        max_queued_bytes=self._max_stream_queued_bytes)
        if stream.key in self.streams:
            raise RuntimeError(f"{self.name}: duplicate stream {stream!r}")
        self.streams[stream.key] = stream
        return stream

    def _forget_stream(self, stream: Stream) -> None:
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]

    async def _route_stream(self, packet: Packet) -> bool:
        hdr = packet.header
        stream = self.streams.get((hdr.prog, hdr.proc, hdr.serial))
        if stream is None:
            return False
        await stream.on_packet(packet)
        return True

    async def _on_closed(self) -> None:
        """Called once, after the transport is closed."""
