"""RPCServer's client registry for the admin interface: client_records / client_record /
close_client, and the pure helpers that turn a record into admin wire values."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable

from pyvirt.daemon.admin import client_handle, client_info_params
from pyvirt.rpc.admin_protocol import AdminServer, ClientTransport
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.remote_types import TypedParam
from pyvirt.rpc.server import ClientRecord, RPCServer
from pyvirt.rpc.testing import TEST, TestDispatcher, TestProc, running_server

TIMEOUT = 5.0


async def eventually(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def test_unix_record_carries_peer_credentials() -> None:
    async with running_server(readonly=True) as (server, path):
        before = time.time()
        client = await RPCClient.connect_unix(path, programs=(TEST,))
        try:
            await client.call(TEST, TestProc.ECHO, "x", timeout=TIMEOUT)
            (record,) = server.client_records()
            assert record == server.client_record(record.id)
            assert (record.transport, record.sock_addr, record.readonly) == ("unix", None, True)
            assert (record.pid, record.uid, record.gid) == (os.getpid(), os.getuid(), os.getgid())
            assert before - 1 <= record.connected_at <= time.time()
            assert record.opened is False
            await client.call(TEST, TestProc.OPEN, timeout=TIMEOUT)
            assert server.client_record(record.id) == ClientRecord(
                record.id, "unix", record.connected_at, True, True, None,
                os.getpid(), os.getuid(), os.getgid(),
            )  # fmt: skip
        finally:
            await client.close()
        await eventually(lambda: server.client_records() == [])
        assert server.client_record(record.id) is None


async def test_tcp_record_has_the_socket_address() -> None:
    server = RPCServer(TestDispatcher(), (TEST,))
    try:
        listener = await server.listen_tcp("127.0.0.1", 0)
        await server.start()
        client = await RPCClient.connect_tcp("127.0.0.1", listener.port, programs=(TEST,))
        try:
            await client.call(TEST, TestProc.ECHO, "x", timeout=TIMEOUT)
            (record,) = server.client_records()
            assert record.transport == "tcp"
            assert re.fullmatch(r"127\.0\.0\.1:\d+", record.sock_addr or "")
            assert (record.pid, record.uid, record.gid) == (None, None, None)
        finally:
            await client.close()
    finally:
        await server.close()


async def test_close_client() -> None:
    async with running_server() as (server, path):
        assert server.close_client(12345) is False
        clients = [await RPCClient.connect_unix(path, programs=(TEST,)) for _ in range(2)]
        try:
            for c in clients:
                await c.call(TEST, TestProc.ECHO, "x", timeout=TIMEOUT)
            first, second = server.client_records()
            assert server.close_client(first.id) is True
            await asyncio.wait_for(clients[0].wait_closed(), TIMEOUT)
            await eventually(lambda: [r.id for r in server.client_records()] == [second.id])
            assert await clients[1].call(TEST, TestProc.ECHO, "y", timeout=TIMEOUT) == "y"
        finally:
            for c in clients:
                await c.close()


# -- record → admin wire values ----------------------------------------------------------------
def test_handle_from_record() -> None:
    record = ClientRecord(7, "tcp", 1_700_000_000.9, False, True, "10.0.0.1:4444")
    handle = client_handle("libvirtd", record)
    assert (handle.srv, handle.id, handle.timestamp) == (AdminServer("libvirtd"), 7, 1_700_000_000)
    assert handle.transport == ClientTransport.TCP


def test_tcp_client_info() -> None:
    record = ClientRecord(7, "tcp", 0.0, True, True, "[::1]:4444")
    assert client_info_params(record) == [
        TypedParam.of_bool("readonly", True),
        TypedParam.of_string("sock_addr", "[::1]:4444"),
    ]


def test_unix_client_info_names_known_ids_only() -> None:
    record = ClientRecord(1, "unix", 0.0, False, True, None, pid=42, uid=0, gid=0)
    fields = [p.field for p in client_info_params(record)]
    assert fields == ["readonly", "unix_user_id", "unix_user_name", "unix_group_id",
                      "unix_group_name", "unix_process_id"]  # fmt: skip
    unnamed = ClientRecord(1, "unix", 0.0, False, True, None, pid=42, uid=2**31 - 7,
                           gid=2**31 - 7)  # fmt: skip
    fields = [p.field for p in client_info_params(unnamed)]
    assert fields == ["readonly", "unix_user_id", "unix_group_id", "unix_process_id"]
