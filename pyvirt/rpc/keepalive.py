"""Keepalive, both roles: always answer PING with PONG; optionally ping an idle peer.

libvirt's rule (``virkeepalive.c``, ``reference/libvirt-wire.md`` §7): after ``interval``
seconds without receiving anything, send a PING; keep sending one per interval; when
nothing at all has arrived for ``interval * (count + 1)`` seconds the peer is dead and
the connection is closed.  Any incoming packet counts as a sign of life.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from pyvirt.rpc.connection import ConnectionClosedError, PacketConnection
from pyvirt.rpc.keepalive_protocol import KeepaliveProc, keepalive_header
from pyvirt.rpc.packet import MessageType, Packet


class Keepalive:
    def __init__(self, conn: PacketConnection) -> None:
        self._conn = conn
        self._task: asyncio.Task[None] | None = None
        self.interval = 0.0
        self.count = 0

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    async def handle(self, packet: Packet) -> None:
        """Handle a KEEPALIVE-program packet (called by the reader, before any cap)."""
        hdr = packet.header
        if hdr.type != MessageType.MESSAGE:
            self._conn.log.debug("ignoring keepalive packet %s", hdr.describe())
        elif hdr.proc == KeepaliveProc.PING:
            with contextlib.suppress(ConnectionClosedError):
                # never waits: a peer that pings but does not read is bounded by the queue
                self._conn.send_nowait(keepalive_header(KeepaliveProc.PONG))
        elif hdr.proc != KeepaliveProc.PONG:
            self._conn.log.debug("ignoring unknown keepalive procedure %d", hdr.proc)

    def start(
        self, interval: float, count: int, *, paused: Callable[[], bool] = lambda: False
    ) -> None:
        """Ping an idle peer every ``interval`` s; close after ``count`` unanswered pings.

        ``paused()`` true means *we* are not reading the peer (a request cap): silence is
        then our doing, not the peer's, and does not count towards death.
        """
        if interval <= 0 or count < 0:
            raise ValueError(f"invalid keepalive interval={interval} count={count}")
        self.stop()
        self.interval, self.count = interval, count
        self._task = asyncio.create_task(self._run(paused), name=f"{self._conn.name} keepalive")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self, paused: Callable[[], bool]) -> None:
        conn = self._conn
        while conn.is_running:
            now = time.monotonic()
            if paused():
                conn.last_rx = now
            silence = now - conn.last_rx
            if silence >= self.interval * (self.count + 1):
                conn.log.warning(
                    "no response from peer for %.1fs, closing (keepalive interval=%s count=%d)",
                    silence,
                    self.interval,
                    self.count,
                )
                conn.abort("keepalive timeout")
                return
            if silence >= self.interval:
                with contextlib.suppress(ConnectionClosedError):
                    conn.send_nowait(keepalive_header(KeepaliveProc.PING))
                await asyncio.sleep(self.interval)
            else:
                await asyncio.sleep(self.interval - silence)
