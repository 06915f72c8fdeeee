"""Streams: tunnelled-migration style write streams, read streams, errors, backpressure."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from pyvirt.errors import ErrorCode, VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.packet import Header, MessageStatus, MessageType
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_types import RemoteErrorXDR
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.stream import StreamAbortedError
from pyvirt.rpc.testing import TEST, TEST_PROGRAM, RawPeer, TestDispatcher, TestProc, running_server

TIMEOUT = 10.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[RPCServer, TestDispatcher, RPCClient]]:
    async with running_server() as (server, path):
        assert isinstance(server.dispatcher, TestDispatcher)
        client = await RPCClient.connect_unix(path, programs=(TEST, REMOTE))
        try:
            yield server, server.dispatcher, client
        finally:
            await client.close()


async def test_write_stream_finish(served: tuple[RPCServer, TestDispatcher, RPCClient]) -> None:
    server, disp, client = served
    data = os.urandom(3 * 1024 * 1024 + 5)
    stream = await client.open_stream(TEST, TestProc.SINK)
    assert stream.reply is None
    await stream.send(data[:1000])
    await stream.send(memoryview(data)[1000:])
    await asyncio.wait_for(stream.finish(), TIMEOUT)
    assert await asyncio.wait_for(disp.sink_done, TIMEOUT) == "finished"
    assert hashlib.sha256(disp.sunk).digest() == hashlib.sha256(data).digest()
    assert client.streams == {} and server.clients[0].streams == {}
    assert await client.call(TEST, TestProc.ECHO, "after") == "after"


async def test_sink_failure_reaches_the_sender(
    served: tuple[RPCServer, TestDispatcher, RPCClient],
) -> None:
    _, disp, client = served
    disp.sink_fail_after = 1
    stream = await client.open_stream(TEST, TestProc.SINK)
    with pytest.raises(VirtError) as info:
        await stream.send(b"x" * 100_000)
        await asyncio.wait_for(disp.sink_done, TIMEOUT)
        await asyncio.wait_for(stream.finish(), TIMEOUT)
    assert info.value.code == ErrorCode.OPERATION_FAILED
    assert "sink is full" in info.value.message
    with pytest.raises(VirtError):
        await stream.send(b"more")
    assert await client.call(TEST, TestProc.ECHO, "usable") == "usable"


async def test_client_abort(served: tuple[RPCServer, TestDispatcher, RPCClient]) -> None:
    _, disp, client = served
    stream = await client.open_stream(TEST, TestProc.SINK)
    await stream.send(b"partial")
    await asyncio.wait_for(stream.abort(), TIMEOUT)
    assert await asyncio.wait_for(disp.sink_done, TIMEOUT) == StreamAbortedError.__name__
    with pytest.raises(StreamAbortedError):
        await stream.send(b"after abort")
    assert client.streams == {}


async def test_backpressure_pauses_the_server_reader(
    served: tuple[RPCServer, TestDispatcher, RPCClient],
) -> None:
    server, disp, client = served
    disp.sink_pause.clear()  # the sink stops consuming
    stream = await client.open_stream(TEST, TestProc.SINK)
    data = bytes(16 * 1024 * 1024)
    sending = asyncio.create_task(stream.send(data))
    conn = server.clients[0]
    for _ in range(200):
        if conn.is_reading_paused:
            break
        await asyncio.sleep(0.01)
    assert conn.is_reading_paused  # bounded queue full: the socket is no longer read
    assert not sending.done()
    assert len(disp.sunk) < len(data)
    disp.sink_pause.set()
    await asyncio.wait_for(sending, TIMEOUT)
    await asyncio.wait_for(stream.finish(), TIMEOUT)
    assert len(disp.sunk) == len(data)


async def test_read_stream(served: tuple[RPCServer, TestDispatcher, RPCClient]) -> None:
    _, _, client = served
    size = 1_000_003
    stream = await client.open_stream(TEST, TestProc.SOURCE, {"size": size, "chunk": 65536})
    received = bytearray()
    while chunk := await asyncio.wait_for(stream.recv(), TIMEOUT):
        received += chunk
    assert await stream.recv() == b""  # end of data stays end of data
    await asyncio.wait_for(stream.finish(), TIMEOUT)
    assert bytes(received) == (bytes(range(256)) * (size // 256 + 1))[:size]


async def test_failed_opening_call_discards_the_stream() -> None:
    class Refusing(TestDispatcher):
        async def do_sink(self, client: object, args: None) -> None:
            raise VirtError("no tunnel for you", code=ErrorCode.OPERATION_INVALID)

    async with running_server(dispatcher=Refusing()) as (server, path):
        client = await RPCClient.connect_unix(path, programs=(TEST,))
        try:
            with pytest.raises(VirtError, match="no tunnel"):
                await client.open_stream(TEST, TestProc.SINK)
            assert client.streams == {} and server.clients[0].streams == {}
            with pytest.raises(ValueError, match="does not open a stream"):
                await client.open_stream(TEST, TestProc.ECHO, "x")
        finally:
            await client.close()


async def test_stray_stream_packets_ignored() -> None:
    async with running_server() as (_, path):
        peer = await RawPeer.connect_unix(path)
        try:
            stray = Header(TEST_PROGRAM, 1, TestProc.SINK, MessageType.STREAM, 42,
                           MessageStatus.CONTINUE)  # fmt: skip
            await peer.send(stray, b"data for nobody")
            await peer.call(TEST_PROGRAM, TestProc.ECHO, 1, b"\0\0\0\2hi\0\0")
            reply = await peer.recv()
            assert reply is not None and reply.header.serial == 1
            assert reply.payload == b"\0\0\0\2hi\0\0"
        finally:
            await peer.close()


async def test_server_stream_error_on_the_wire() -> None:
    """The sink's failure is a STREAM/ERROR packet carrying remote_error (libvirtd's form)."""
    async with running_server() as (server, path):
        assert isinstance(server.dispatcher, TestDispatcher)
        server.dispatcher.sink_fail_after = 1
        peer = await RawPeer.connect_unix(path)
        try:
            await peer.call(TEST_PROGRAM, TestProc.SINK, 5)
            reply = await peer.recv()
            assert reply is not None and reply.header.type == MessageType.REPLY
            data = Header(TEST_PROGRAM, 1, TestProc.SINK, MessageType.STREAM, 5,
                          MessageStatus.CONTINUE)  # fmt: skip
            await peer.send(data, b"abcd")
            error = await peer.recv()
            assert error is not None
            assert (error.header.type, error.header.status) == (
                MessageType.STREAM,
                MessageStatus.ERROR,
            )
            assert error.header.serial == 5
            assert RemoteErrorXDR.decode(error.payload).message == "operation failed: sink is full"
        finally:
            await peer.close()


async def test_peer_abort_is_confirmed_on_the_wire() -> None:
    async with running_server() as (_, path):
        peer = await RawPeer.connect_unix(path)
        try:
            await peer.call(TEST_PROGRAM, TestProc.SINK, 0)
            assert (await peer.recv()) is not None
            abort = Header(TEST_PROGRAM, 1, TestProc.SINK, MessageType.STREAM, 0,
                           MessageStatus.ERROR)  # fmt: skip
            await peer.send(abort)
            confirm = await peer.recv()
            assert confirm is not None
            assert confirm.header == abort.reply(MessageStatus.OK, MessageType.STREAM)
            assert confirm.payload == b""
        finally:
            await peer.close()


async def test_second_stream_on_the_same_serial_refused() -> None:
    async with running_server() as (server, path):
        peer = await RawPeer.connect_unix(path)
        try:
            for _ in range(2):
                await peer.call(TEST_PROGRAM, TestProc.SINK, 9)
            replies = [await peer.recv(), await peer.recv()]
            by_status = {r.header.status: r for r in replies if r is not None}
            assert set(by_status) == {MessageStatus.OK, MessageStatus.ERROR}
            error = RemoteErrorXDR.decode(by_status[MessageStatus.ERROR].payload)
            assert "already open" in error.message
            assert len(server.clients[0].streams) == 1
        finally:
            await peer.close()


@pytest.mark.parametrize("packet_size", [64 * 1024, 3 * 1024 * 1024])
async def test_incoming_buffer_is_bounded_in_bytes(packet_size: int) -> None:
    limits = ServerLimits(max_stream_queued_bytes=1024 * 1024)
    async with running_server(limits) as (server, path):
        disp = server.dispatcher
        assert isinstance(disp, TestDispatcher)
        disp.sink_pause.clear()  # the sink takes one chunk, then stops consuming
        peer = await RawPeer.connect_unix(path)
        try:
            await peer.call(TEST_PROGRAM, TestProc.SINK, 1)
            assert (await peer.recv()) is not None  # the reply: the stream is open
            header = Header(TEST_PROGRAM, 1, TestProc.SINK, MessageType.STREAM, 1,
                            MessageStatus.CONTINUE)  # fmt: skip
            sending = asyncio.create_task(peer.send(header, bytes(packet_size)))
            more = asyncio.create_task(_send_forever(peer, header, packet_size))
            conn = server.clients[0]
            for _ in range(200):
                if conn.is_reading_paused:
                    break
                await asyncio.sleep(0.01)
            assert conn.is_reading_paused
            (stream,) = conn.streams.values()
            # the bound, or one packet when a single packet is larger than the bound
            assert stream.queued_bytes <= max(1024 * 1024, packet_size)
            more.cancel()
            sending.cancel()
            await asyncio.gather(more, sending, return_exceptions=True)
        finally:
            peer.writer.transport.abort()
            await peer.close()


async def _send_forever(peer: RawPeer, header: Header, size: int) -> None:
    while True:
        await peer.send(header, bytes(size))


async def test_streams_beyond_max_client_streams_are_refused() -> None:
    async with running_server(ServerLimits(max_client_streams=2)) as (_, path):
        client = await RPCClient.connect_unix(path, programs=(TEST,))
        try:
            streams = [await client.open_stream(TEST, TestProc.SINK) for _ in range(2)]
            with pytest.raises(VirtError) as info:
                await client.open_stream(TEST, TestProc.SINK)
            assert info.value.code == ErrorCode.RPC
            assert "max_client_streams = 2" in info.value.message
            await asyncio.wait_for(streams[0].finish(), TIMEOUT)
            third = await client.open_stream(TEST, TestProc.SINK)  # a place came free
            await third.abort()
            await streams[1].abort()
        finally:
            await client.close()


async def test_stream_aborted_before_its_call_runs_is_the_callers_error() -> None:
    # found by the wire fuzzer: the call waited for a worker, the peer aborted its stream
    # meanwhile, and the handler's client.stream() raised an internal error
    limits = ServerLimits(min_workers=1, max_workers=1, prio_workers=0)
    async with running_server(limits) as (server, path):
        disp = server.dispatcher
        assert isinstance(disp, TestDispatcher)
        blocker = await RPCClient.connect_unix(path, programs=(TEST,))
        peer = await RawPeer.connect_unix(path)
        try:
            busy = asyncio.create_task(blocker.call(TEST, TestProc.BLOCK, {"gate": "g"}))
            await asyncio.wait_for(disp.started["g"].wait(), TIMEOUT)
            await peer.call(TEST_PROGRAM, TestProc.SINK, 7)
            await peer.send(Header(TEST_PROGRAM, 1, TestProc.SINK, MessageType.STREAM, 7,
                                   MessageStatus.ERROR))  # fmt: skip
            confirm = await peer.recv()  # the abort is confirmed at once
            assert confirm is not None and confirm.header.status == MessageStatus.OK
            disp.open_gate("g")
            await asyncio.wait_for(busy, TIMEOUT)
            reply = await peer.recv()
            assert reply is not None and reply.header.type == MessageType.REPLY
            assert reply.header.status == MessageStatus.ERROR
            error = RemoteErrorXDR.decode(reply.payload)
            assert "stream aborted by peer" in str(error)
            assert "internal error" not in str(error)
        finally:
            await peer.close()
            await blocker.close()
