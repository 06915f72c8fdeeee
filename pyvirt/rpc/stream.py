"""Data streams tied to one call (prog, proc, serial): tunnelled migration's data path.

Wire rules (``reference/libvirt-wire.md`` §12, ``remote_daemon_stream.c``)::

    data      STREAM  status CONTINUE  payload = raw bytes (any size up to the payload max)
    finish    STREAM  status OK        empty; the other side answers STREAM OK empty
    abort     STREAM  status ERROR     empty; the other side answers STREAM OK empty
    failure   STREAM  status ERROR     payload = remote_error (libvirtd sends this type;
                                       a REPLY/ERROR for the serial is accepted too)

For a write stream (PREPARE_TUNNEL3_PARAMS) the client sends the CALL, the server
REPLYs, then the client sends data, then finishes; the server confirms once its sink has
taken everything, or answers with an error.

One class serves both sides and both directions.  :meth:`Stream.finish` sends OK and
waits for the peer's OK unless the peer already sent its own (end of data); receiving
an OK we did not ask for is end-of-data for :meth:`Stream.recv`.

Flow control is TCP backpressure only: the incoming queue is bounded in **bytes**
(``max_queued_bytes``, pyvirtd's ``max_stream_queued_bytes``), and while it is full the
connection's reader stops reading the socket.  A chunk that finds the queue empty is always
taken, so any packet size works and the buffer never holds more than
``max(max_queued_bytes, one packet)``; a peer sending 32 MiB packets no longer gets
16 of them buffered.  Data is moved as whole chunks (memoryview slices on the way out),
never byte by byte.

Control packets (finish, abort, errors, confirmations) use the connection's
non-waiting :meth:`~pyvirt.rpc.connection.PacketConnection.send_nowait`; only data waits
for room in the send queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.error import error_from_wire, error_to_wire
from pyvirt.rpc.packet import STREAM_CHUNK_MAX, Header, MessageStatus, MessageType, Packet

if TYPE_CHECKING:
    from pyvirt.rpc.connection import PacketConnection

log = logging.getLogger(__name__)

StreamKey = tuple[int, int, int]  # (prog, proc, serial)

#: bytes buffered per incoming stream before the reader stops reading the socket: 16 of
#: the 256 KiB packets libvirt and pyvirt send, enough to keep a tunnelled migration busy
STREAM_QUEUED_BYTES = 4 << 20
ABORT_CONFIRM_TIMEOUT = 5.0
_WAKE = b""  # queued to wake a blocked recv() after an error; never returned as data
_EOF = None


class StreamError(VirtError):
    code = ErrorCode.RPC
    domain = ErrorDomain.STREAMS


class StreamAbortedError(StreamError):
    code = ErrorCode.OPERATION_ABORTED


class Stream:
    """One side of a call's data stream."""

    def __init__(
        self,
        conn: PacketConnection,
        call: Header,
        *,
        on_done: Callable[[Stream], None],
        chunk_size: int = STREAM_CHUNK_MAX,
        max_queued_bytes: int = STREAM_QUEUED_BYTES,
    ) -> None:
        self.key: StreamKey = (call.prog, call.proc, call.serial)
        self.reply: Any = None  # client side: the decoded REPLY of the opening call
        self._conn = conn
        self._call = call
        self._on_done = on_done
        self._chunk_size = chunk_size
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._error: VirtError | None = None
        self._peer_finished = False
        self._local_finished = False
        self._eof_seen = False
        self._confirm: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.add_done_callback(_consume_exception)
        self.closed = False

    def __repr__(self) -> str:
        prog, proc, serial = self.key
        return f"<Stream prog={prog:#x} proc={proc} serial={serial}>"

    def _header(self, status: int) -> Header:
        return Header(self._call.prog, self._call.vers, self._call.proc, MessageType.STREAM,
                      self._call.serial, status)  # fmt: skip

    # -- outgoing ----------------------------------------------------------------------------
    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send data; waits while the connection's send queue is full (backpressure)."""
        self.check_open("send")
        if self._local_finished:
            raise StreamError("stream already finished")
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._chunk_size):
            if self._error is not None:
                raise self._error
            await self._conn.send(self._header(MessageStatus.CONTINUE),
                                  view[start : start + self._chunk_size])  # fmt: skip

    async def finish(self) -> None:
        """End of our data: send OK, then wait for the peer's confirmation (or error)."""
        self.check_open("finish")
        self._local_finished = True
        self._conn.send_nowait(self._header(MessageStatus.OK))
        if self._peer_finished:
            self._done()
            return
        await asyncio.shield(self._confirm)

    async def abort(self) -> None:
        """Abandon the stream: send an empty ERROR, wait briefly for the peer's OK."""
        if self.closed:
            return
        self._local_finished = True
        try:
            self._conn.send_nowait(self._header(MessageStatus.ERROR))
            await asyncio.wait_for(asyncio.shield(self._confirm), ABORT_CONFIRM_TIMEOUT)
        except (TimeoutError, VirtError) as exc:
            log.debug("%r: abort not confirmed: %s", self, exc)
        finally:
            self._fail(StreamAbortedError("stream aborted"))

    async def error(self, exc: BaseException) -> None:
        """Report a local failure (e.g. the sink failed) to the peer and close."""
        if self.closed:
            return
        with contextlib.suppress(VirtError):
            self._conn.send_nowait(self._header(MessageStatus.ERROR), error_to_wire(exc))
        self._fail(exc if isinstance(exc, VirtError) else StreamError(f"stream failed: {exc}"))

    # -- incoming ----------------------------------------------------------------------------
    async def recv(self) -> bytes:
        """Next chunk of data; ``b""`` once the peer has finished.  Raises on abort/error."""
        while True:
            if self._error is not None:
                raise self._error
            if self._eof_seen:
                return b""
            item = await self._incoming.get()
            if item is _EOF:
                self._eof_seen = True
            elif item is not _WAKE:  # the wake token only follows an error: loop to raise it
                self._queued_bytes -= len(item)
                self._room.set()
                return item

    async def on_packet(self, packet: Packet) -> None:
        """Route one STREAM (or REPLY/ERROR) packet for this stream; called by the reader."""
        hdr = packet.header
        if self.closed:
            return
        if hdr.type == MessageType.STREAM_HOLE:
            # holes exist only for sparse volume streams, which pyvirt never opens
            log.debug("%r: ignoring STREAM_HOLE", self)
        elif hdr.type == MessageType.REPLY or hdr.status == MessageStatus.ERROR:
            await self._on_error(packet)
        elif hdr.status == MessageStatus.CONTINUE:
            if not self._peer_finished and packet.payload:
                await self._put(packet.payload)
        elif hdr.status == MessageStatus.OK:
            if self._local_finished:
                self._done()  # the confirmation of our finish/abort
            elif not self._peer_finished:
                self._peer_finished = True
                await self._put(_EOF)
        else:
            log.debug("%r: ignoring packet with status %d", self, hdr.status)

    async def _on_error(self, packet: Packet) -> None:
        if packet.header.status != MessageStatus.ERROR:
            return  # a dummy REPLY/OK for a stray stream packet
        if packet.payload:
            self._fail(error_from_wire(packet.payload))
        elif self._local_finished:
            self._fail(StreamAbortedError("stream aborted"))
        else:
            # the peer aborted: confirm, as libvirtd does, then fail local users
            with contextlib.suppress(VirtError):
                self._conn.send_nowait(self._header(MessageStatus.OK))
            self._fail(StreamAbortedError("stream aborted by peer"))

    async def _put(self, item: bytes | None) -> None:
        size = len(item) if item is not None else 0
        if self._queued_bytes and self._queued_bytes + size > self._max_queued_bytes:
            with self._conn.reading_paused():
                while self._queued_bytes and \
                        self._queued_bytes + size > self._max_queued_bytes:
                    self._room.clear()
                    await self._room.wait()
        if self.closed:
            return
        self._queued_bytes += size
        self._incoming.put_nowait(item)

    @property
    def queued_bytes(self) -> int:
        """Incoming bytes buffered and not yet taken by :meth:`recv`."""
        return self._queued_bytes

    # -- ending ------------------------------------------------------------------------------
    def check_open(self, what: str) -> None:
        """Raise why the stream cannot be used (its error, or closed) if it cannot."""
        if self._error is not None:
            raise self._error
        if self.closed:
            raise StreamError(f"cannot {what}: stream is closed")

    def _done(self) -> None:
        if not self._confirm.done():
            self._confirm.set_result(None)
        self._close()

    def _fail(self, exc: VirtError) -> None:
        if self._error is None:
            self._error = exc
        if not self._confirm.done():
            self._confirm.set_exception(exc)
        # wake a blocked recv(); unblock a reader stuck on a full queue
        while not self._incoming.empty():
            self._incoming.get_nowait()
        self._queued_bytes = 0
        self._room.set()
        self._incoming.put_nowait(_WAKE)
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_done(self)

    def discard(self, reason: str) -> None:
        """Close without telling the peer (connection gone, or the opening call failed)."""
        self._fail(StreamError(f"stream closed: connection lost ({reason})"))


def _consume_exception(fut: asyncio.Future[None]) -> None:
    # nobody may be waiting for a confirmation; do not log "exception never retrieved"
    if not fut.cancelled():
        fut.exception()
