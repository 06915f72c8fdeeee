"""Client ↔ server over a unix socket: calls, errors, events, keepalive, framing."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.connection import ConnectionClosedError, Runstate
from pyvirt.rpc.keepalive_protocol import KeepaliveProc, keepalive_header
from pyvirt.rpc.packet import (
    KEEPALIVE_PROGRAM,
    REMOTE_PROGRAM,
    Header,
    MessageStatus,
    MessageType,
    Packet,
    PacketDecoder,
    encode_packet,
)
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain, RemoteError, RemoteErrorXDR
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.testing import TEST, TEST_PROGRAM, RawPeer, TestDispatcher, TestProc, running_server
from pyvirt.rpc.types import String

TIMEOUT = 5.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[RPCServer, str]]:
    async with running_server() as pair:
        yield pair


@pytest.fixture
async def client(served: tuple[RPCServer, str]) -> AsyncIterator[RPCClient]:
    c = await RPCClient.connect_unix(served[1], programs=(TEST, REMOTE))
    yield c
    await c.close()


def dispatcher_of(server: RPCServer) -> TestDispatcher:
    assert isinstance(server.dispatcher, TestDispatcher)
    return server.dispatcher


async def test_echo(client: RPCClient) -> None:
    assert await client.call(TEST, TestProc.ECHO, "hello") == "hello"
    assert client.runstate is Runstate.RUNNING


async def test_long_call_does_not_block_another(
    served: tuple[RPCServer, str], client: RPCClient
) -> None:
    disp = dispatcher_of(served[0])
    slow = asyncio.create_task(client.call(TEST, TestProc.BLOCK, {"gate": "g"}))
    await asyncio.wait_for(disp.started["g"].wait(), TIMEOUT)
    assert await asyncio.wait_for(client.call(TEST, TestProc.ECHO, "quick"), TIMEOUT) == "quick"
    assert not slow.done()
    disp.open_gate("g")
    assert await asyncio.wait_for(slow, TIMEOUT) is None


async def test_many_concurrent_calls(client: RPCClient) -> None:
    words = [f"w{i}" for i in range(50)]
    results = await asyncio.gather(*(client.call(TEST, TestProc.ECHO, w) for w in words))
    assert results == words


async def test_dispatcher_error_keeps_libvirt_numbers(client: RPCClient) -> None:
    with pytest.raises(VirtError) as info:
        await client.call(TEST, TestProc.FAIL)
    assert info.value.code == ErrorCode.NO_DOMAIN
    assert info.value.domain == ErrorDomain.QEMU
    assert info.value.message == "Domain not found: no domain with matching name 'nosuchdomain'"
    assert await client.call(TEST, TestProc.ECHO, "still open") == "still open"


@pytest.mark.parametrize("proc", [TestProc.BAD_RET, TestProc.CRASH])
async def test_internal_failures_are_internal_errors(client: RPCClient, proc: TestProc) -> None:
    with pytest.raises(VirtError) as info:
        await client.call(TEST, proc)
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert "internal detail" not in info.value.message
    assert await client.call(TEST, TestProc.ECHO, "ok") == "ok"


async def test_unknown_procedure_on_the_wire(served: tuple[RPCServer, str]) -> None:
    peer = await RawPeer.connect_unix(served[1])
    try:
        await peer.call(REMOTE_PROGRAM, 9999, serial=7)
        reply = await peer.recv()
    finally:
        await peer.close()
    assert reply is not None
    assert reply.header == Header(
        REMOTE_PROGRAM, 1, 9999, MessageType.REPLY, 7, MessageStatus.ERROR
    )
    err: RemoteError = RemoteErrorXDR.decode(reply.payload)
    assert (err.code, err.domain, err.message) == (39, 7, "unknown procedure: 9999")


async def test_unknown_procedure_becomes_no_support(client: RPCClient) -> None:
    with pytest.raises(VirtError) as info:
        await client.call_raw(REMOTE_PROGRAM, 1, 9999)
    assert info.value.code == ErrorCode.NO_SUPPORT
    assert info.value.domain == ErrorDomain.RPC


@pytest.mark.parametrize(("prog", "vers"), [(0x12345678, 1), (TEST_PROGRAM, 2)])
async def test_unknown_program_or_version(client: RPCClient, prog: int, vers: int) -> None:
    with pytest.raises(VirtError) as info:
        await client.call_raw(prog, vers, 1)
    assert info.value.code == ErrorCode.RPC
    assert info.value.message == f"Cannot find program {prog} version {vers}"


async def test_undecodable_args_get_an_error_reply(client: RPCClient) -> None:
    with pytest.raises(VirtError, match="Unable to decode message payload") as info:
        await client.call_raw(TEST_PROGRAM, 1, TestProc.ECHO, b"\0\0\0\x09abc")
    assert info.value.code == ErrorCode.RPC
    # trailing bytes are refused too
    with pytest.raises(VirtError, match="Unable to decode"):
        await client.call_raw(TEST_PROGRAM, 1, TestProc.ECHO, String().encode("x") + b"\0" * 4)
    assert await client.call(TEST, TestProc.ECHO, "fine") == "fine"


async def test_call_with_bad_status_refused(served: tuple[RPCServer, str]) -> None:
    peer = await RawPeer.connect_unix(served[1])
    try:
        header = Header(TEST_PROGRAM, 1, TestProc.ECHO, MessageType.CALL, 3, MessageStatus.ERROR)
        await peer.send(header, String().encode("x"))
        reply = await peer.recv()
    finally:
        await peer.close()
    assert reply is not None and reply.header.status == MessageStatus.ERROR
    assert RemoteErrorXDR.decode(reply.payload).message == "Unexpected message status 1"


async def test_malformed_frame_closes_only_that_connection(
    served: tuple[RPCServer, str], client: RPCClient
) -> None:
    bad = await RawPeer.connect_unix(served[1])
    await bad.send_bytes(struct.pack(">I", 5) + b"\0" * 8)  # length below the minimum
    assert await bad.recv() is None  # the server closed it: clean EOF
    await bad.close()
    huge = await RawPeer.connect_unix(served[1])
    await huge.send_bytes(struct.pack(">I", 0xFFFFFFFF))  # 4 GiB: refused, nothing allocated
    assert await huge.recv() is None
    await huge.close()
    assert await client.call(TEST, TestProc.ECHO, "unaffected") == "unaffected"


async def test_read_only_listener_refuses_writes() -> None:
    async with running_server(readonly=True) as (server, path):
        client = await RPCClient.connect_unix(path, programs=(TEST, REMOTE))
        try:
            assert await client.call(TEST, TestProc.ECHO, "reads are fine") == "reads are fine"
            with pytest.raises(VirtError) as info:
                await client.call(TEST, TestProc.WRITE)
            assert info.value.code == ErrorCode.OPERATION_DENIED
            dom = NonnullDomain("web01", bytes(16), 1)
            with pytest.raises(VirtError) as info:
                await client.call(REMOTE, RemoteProc.DOMAIN_DESTROY, {"dom": dom})
            assert info.value.message == (
                "operation forbidden: read only access prevents virDomainDestroy"
            )
            assert info.value.code == ErrorCode.OPERATION_DENIED
            assert info.value.domain == ErrorDomain.DOMAIN
            assert dispatcher_of(server).calls == ["ECHO"]  # refusals never reach it
        finally:
            await client.close()


async def test_authentication_required(client: RPCClient) -> None:
    await client.call(TEST, TestProc.DEAUTH)
    with pytest.raises(VirtError, match="authentication required"):
        await client.call(TEST, TestProc.ECHO, "x")
    # auth procedures stay callable (the test dispatcher does not implement AUTH_LIST)
    with pytest.raises(VirtError, match="no AUTH_LIST"):
        await client.call(REMOTE, RemoteProc.AUTH_LIST)


async def test_events_reach_handlers(client: RPCClient) -> None:
    received: list[tuple[str, Any]] = []
    async_done = asyncio.Event()

    def handler(program: Program, spec: ProcSpec, body: Any) -> None:
        received.append((spec.name, body))

    async def async_handler(program: Program, spec: ProcSpec, body: Any) -> None:
        if body["seq"] == 2:
            async_done.set()

    def broken(program: Program, spec: ProcSpec, body: Any) -> None:
        raise RuntimeError("handler bug")

    client.add_event_handler(broken)
    client.add_event_handler(handler)
    client.add_event_handler(async_handler)
    await client.call(TEST, TestProc.EMIT, 3)
    await asyncio.wait_for(async_done.wait(), TIMEOUT)
    assert received == [("EVENT", {"seq": 0}), ("EVENT", {"seq": 1}), ("EVENT", {"seq": 2})]
    assert await client.call(TEST, TestProc.ECHO, "alive") == "alive"


async def test_event_messages_use_serial_1(served: tuple[RPCServer, str]) -> None:
    peer = await RawPeer.connect_unix(served[1])
    try:
        await peer.call(TEST_PROGRAM, TestProc.EMIT, 0, b"\0\0\0\1")
        first, second = await peer.recv(), await peer.recv()
    finally:
        await peer.close()
    assert first is not None and second is not None
    message = first if first.header.type == MessageType.MESSAGE else second
    assert message.header.serial == 1 and message.header.proc == TestProc.EVENT


async def test_server_answers_ping(served: tuple[RPCServer, str]) -> None:
    peer = await RawPeer.connect_unix(served[1])
    try:
        await peer.send(keepalive_header(KeepaliveProc.PING))
        pong = await peer.recv()
    finally:
        await peer.close()
    assert pong is not None
    assert encode_packet(pong.header) == bytes.fromhex(
        "0000001c 6b656570 00000001 00000002 00000002 00000000 00000000".replace(" ", "")
    )


async def test_server_keepalive_closes_silent_client() -> None:
    limits = ServerLimits(keepalive_interval=0.05, keepalive_count=2)
    async with running_server(limits) as (_, path):
        silent = await RawPeer.connect_unix(path)
        await silent.call(TEST_PROGRAM, TestProc.KEEPALIVE_ON, 0)
        pings = 0
        while (packet := await silent.recv()) is not None:
            if packet.header.prog == KEEPALIVE_PROGRAM:
                assert packet.header.proc == KeepaliveProc.PING
                pings += 1
        assert pings == 2  # count pings, then closed for silence
        await silent.close()
        # a real client answers the pings and stays connected
        client = await RPCClient.connect_unix(path, programs=(TEST,))
        assert await client.call(TEST, TestProc.KEEPALIVE_ON) == 1
        await asyncio.sleep(0.4)
        assert await client.call(TEST, TestProc.ECHO, "still here") == "still here"
        await client.close()


async def test_keepalive_disabled_by_config() -> None:
    async with running_server(ServerLimits(keepalive_interval=-1)) as (_, path):
        client = await RPCClient.connect_unix(path, programs=(TEST,))
        assert await client.call(TEST, TestProc.KEEPALIVE_ON) == 0
        await client.close()


def _socketpair_client() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


async def _fake_server() -> tuple[RPCClient, asyncio.StreamReader, asyncio.StreamWriter]:
    ours, theirs = _socketpair_client()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    theirs.setblocking(False)
    peer_reader, peer_writer = await asyncio.open_unix_connection(sock=theirs)
    client = await RPCClient.from_streams(reader, writer, programs=(TEST,))
    return client, peer_reader, peer_writer


async def test_client_serials_start_at_zero_and_replies_route_out_of_order() -> None:
    client, peer_reader, peer_writer = await _fake_server()
    try:
        calls = [asyncio.create_task(client.call(TEST, TestProc.ECHO, w)) for w in ("a", "b")]
        decoder = PacketDecoder()
        packets: list[Packet] = []
        while len(packets) < 2:
            packets += decoder.feed(await peer_reader.read(4096))
        assert [p.header.serial for p in packets] == [0, 1]
        for packet in reversed(packets):  # answer in reverse order, with swapped payloads
            peer_writer.write(encode_packet(packet.header.reply(), packet.payload))
        assert await asyncio.gather(*calls) == ["a", "b"]
    finally:
        await client.close()
        peer_writer.close()


async def test_client_keepalive_closes_dead_server() -> None:
    client, _peer_reader, peer_writer = await _fake_server()
    try:
        pending = asyncio.create_task(client.call(TEST, TestProc.ECHO, "never answered"))
        client.start_keepalive(0.05, 2)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(pending, TIMEOUT)
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert client.close_reason == "keepalive timeout"
        with pytest.raises(ConnectionClosedError):
            await client.call(TEST, TestProc.ECHO, "after close")
    finally:
        peer_writer.close()


async def test_client_answers_server_ping() -> None:
    client, peer_reader, peer_writer = await _fake_server()
    try:
        peer_writer.write(encode_packet(keepalive_header(KeepaliveProc.PING)))
        data = await asyncio.wait_for(peer_reader.readexactly(28), TIMEOUT)
        assert PacketDecoder().feed(data)[0].header == keepalive_header(KeepaliveProc.PONG)
    finally:
        await client.close()
        peer_writer.close()


async def test_pending_calls_fail_when_server_goes_away(
    served: tuple[RPCServer, str], client: RPCClient
) -> None:
    disp = dispatcher_of(served[0])
    blocked = asyncio.create_task(client.call(TEST, TestProc.BLOCK, {"gate": "never"}))
    await asyncio.wait_for(disp.started["never"].wait(), TIMEOUT)
    await served[0].close()
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(blocked, TIMEOUT)


async def test_reply_mismatch_and_call_timeout() -> None:
    client, peer_reader, peer_writer = await _fake_server()
    try:
        with pytest.raises(TimeoutError):
            await client.call(TEST, TestProc.ECHO, "slow", timeout=0.05)
        call = asyncio.create_task(client.call(TEST, TestProc.ECHO, "x"))
        decoder = PacketDecoder()
        packets: list[Packet] = []
        while len(packets) < 2:
            packets += decoder.feed(await peer_reader.read(4096))
        hdr = packets[1].header
        wrong = Header(hdr.prog, hdr.vers, TestProc.FAIL, MessageType.REPLY, hdr.serial)
        peer_writer.write(encode_packet(packets[0].header.reply(), packets[0].payload))  # late
        peer_writer.write(encode_packet(wrong))
        with pytest.raises(VirtError, match="does not match"):
            await asyncio.wait_for(call, TIMEOUT)
    finally:
        await client.close()
        peer_writer.close()


async def test_tcp_listener() -> None:
    server = RPCServer(TestDispatcher(), (TEST,))
    listener = await server.listen_tcp("127.0.0.1", 0)
    await server.start()
    try:
        client = await RPCClient.connect_tcp("127.0.0.1", listener.port, programs=(TEST,))
        assert await client.call(TEST, TestProc.ECHO, "tcp") == "tcp"
        assert server.clients[0].peer.startswith("127.0.0.1:")
        await client.close()
    finally:
        await server.close()


async def test_unix_socket_mode_and_cleanup() -> None:
    async with running_server() as (server, path):
        import os
        import stat

        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        assert server.listeners[0].kind == "unix"
    assert not os.path.exists(path)
