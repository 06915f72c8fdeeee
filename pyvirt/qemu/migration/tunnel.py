"""Tunnelled migration: QEMU's stream carried inside the daemons' RPC connection.

No extra port is opened. Each QEMU gets one end of a socketpair as ``fd:NAME``; pyvirtd
moves the bytes between the other end and the RPC stream of PREPARE_TUNNEL3_PARAMS::

    source QEMU ─fd─► pyvirtd ══ RPC stream ══► pyvirtd ─fd─► destination QEMU

This is the one place guest memory passes through Python, so the pumps move big chunks
with no per-byte work, and backpressure is the sockets' own (a full RPC send queue stops
the source pump, a slow destination QEMU stops the destination pump).  What waits in
between is bounded in bytes, not chunks: the source's send queue (1 MiB), the
destination stream's buffer (``max_stream_queued_bytes``, 4 MiB: sixteen of the 256 KiB
packets the source sends), then the destination stops reading the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from pyvirt.errors import OperationFailedError, VirtError
from pyvirt.qemu.monitor import Monitor
from pyvirt.rpc.stream import Stream

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
FD_NAME = "migrate-tunnel"
#: the socketpair's send buffers (see _grow_buffers)
SOCKET_BUFFER = 4 * 1024 * 1024
#: Linux's SO_SNDBUFFORCE (not in Python's socket module)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def _grow_buffers(*socks: socket.socket) -> None:
    """Big send buffers: fewer, larger reads and writes per migrated byte (the default,
    ~200 KiB, is less than one RPC stream packet in flight). A unix stream socket's data
    counts against the sender's buffer; root may exceed net.core.wmem_max (FORCE)."""
    for sock in socks:
        for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                break


async def give_qemu_socket(monitor: Monitor) -> socket.socket:
    """A socketpair: QEMU gets one end as ``fd:migrate-tunnel``, we keep the other."""
    ours, theirs = socket.socketpair()
    _grow_buffers(ours, theirs)
    try:
        await monitor.send_fd(FD_NAME, theirs.fileno())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return ours


async def pump_qemu_to_stream(sock: socket.socket, stream: Stream) -> None:
    """Source side: QEMU's outgoing bytes into the stream, then finish it."""
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(sock, CHUNK):
            await stream.send(data)
        await stream.finish()
    except BaseException:
        with contextlib.suppress(VirtError):
            await stream.abort()
        raise
    finally:
        sock.close()


async def pump_stream_to_qemu(stream: Stream, sock: socket.socket) -> None:
    """Destination side: the stream's bytes into QEMU, then confirm the end of data."""
    loop = asyncio.get_running_loop()
    try:
        while data := await stream.recv():
            await loop.sock_sendall(sock, data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        await stream.finish()
    except VirtError as exc:
        log.warning("tunnelled migration stream ended with an error: %s", exc)
    except OSError as exc:
        await stream.error(OperationFailedError(f"destination QEMU stopped reading: {exc}"))
    except asyncio.CancelledError:
        # the incoming job ended (e.g. its QEMU died): tell the source now, not at its
        # keepalive timeout
        with contextlib.suppress(Exception):
            await stream.error(OperationFailedError(
                "migration in job: the destination QEMU is gone"))
        raise
    finally:
        sock.close()
