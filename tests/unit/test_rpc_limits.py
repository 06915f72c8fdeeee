"""Processing controls: each test fails if its control were ignored."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from pyvirt.errors import VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.connection import ConnectionClosedError
from pyvirt.rpc.keepalive_protocol import KeepaliveProc, keepalive_header
from pyvirt.rpc.packet import KEEPALIVE_PROGRAM
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.testing import TEST, TEST_PROGRAM, RawPeer, TestDispatcher, TestProc, running_server

TIMEOUT = 5.0
SETTLE = 0.2  # how long "still waiting" is observed


@contextlib.asynccontextmanager
async def clients(path: str, n: int) -> AsyncIterator[list[RPCClient]]:
    opened = [await RPCClient.connect_unix(path, programs=(TEST,)) for _ in range(n)]
    try:
        yield opened
    finally:
        for c in opened:
            await c.close()


def disp(server: RPCServer) -> TestDispatcher:
    assert isinstance(server.dispatcher, TestDispatcher)
    return server.dispatcher


async def still_pending(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(SETTLE)
    return not task.done()


def block(client: RPCClient, gate: str, proc: TestProc = TestProc.BLOCK) -> asyncio.Task[Any]:
    return asyncio.create_task(client.call(TEST, proc, {"gate": gate}))


def echo(client: RPCClient, text: str = "x") -> asyncio.Task[Any]:
    return asyncio.create_task(client.call(TEST, TestProc.ECHO, text))


async def done(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, TIMEOUT)


# -- clients ------------------------------------------------------------------------------------
async def test_max_clients_holds_extra_connections_in_the_backlog() -> None:
    async with running_server(ServerLimits(max_clients=1, max_anonymous_clients=1)) as (
        server,
        path,
    ):
        first = await RPCClient.connect_unix(path, programs=(TEST,))
        assert await done(first.call(TEST, TestProc.ECHO, "1")) == "1"
        second = await RPCClient.connect_unix(path, programs=(TEST,))  # queued by the kernel
        waiting = echo(second, "2")
        assert await still_pending(waiting)
        assert server.clients_info()["nclients"] == 1
        await first.close()
        assert await done(waiting) == "2"
        await second.close()


async def test_max_clients_raised_at_run_time() -> None:
    async with (
        running_server(ServerLimits(max_clients=1, max_anonymous_clients=1)) as (
            server,
            path,
        ),
        clients(path, 2) as (first, second),
    ):
        await done(first.call(TEST, TestProc.ECHO, "1"))
        waiting = echo(second)
        assert await still_pending(waiting)
        server.set_client_limits(max_clients=2, max_anonymous_clients=2)
        assert await done(waiting) == "x"
        assert server.clients_info() == {
            "nclients_max": 2,
            "nclients": 2,
            "nclients_unauth_max": 2,
            "nclients_unauth": 2,
        }


def test_client_limits_validated() -> None:
    with pytest.raises(VirtError):
        RPCServer(TestDispatcher.__new__(TestDispatcher), (TEST,),
                  ServerLimits(max_clients=1, max_anonymous_clients=2))  # fmt: skip


def _nonblocking_connects(path: str, attempts: int) -> tuple[int, list[socket.socket]]:
    socks: list[socket.socket] = []
    for i in range(attempts):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        socks.append(s)
        if s.connect_ex(path) == errno.EAGAIN:
            return i, socks
    return attempts, socks


@pytest.mark.parametrize(("backlog", "max_accepted"), [(1, 2), (8, 6)])
async def test_max_queued_clients_is_the_listen_backlog(backlog: int, max_accepted: int) -> None:
    limits = ServerLimits(max_clients=1, max_anonymous_clients=1, max_queued_clients=backlog)
    async with running_server(limits) as (_, path):
        first = await RPCClient.connect_unix(path, programs=(TEST,))
        await done(first.call(TEST, TestProc.ECHO, "x"))  # accepting is now suspended
        queued, socks = _nonblocking_connects(path, 6)
        try:
            # Linux queues backlog + 1 connections, then refuses with EAGAIN
            assert queued == min(backlog + 1, 6) <= max_accepted
        finally:
            for s in socks:
                s.close()
            await first.close()


async def test_max_anonymous_clients() -> None:
    limits = ServerLimits(max_clients=10, max_anonymous_clients=1)
    async with running_server(limits) as (server, path), clients(path, 2) as (first, second):
        assert await done(first.call(TEST, TestProc.ECHO, "anon")) == "anon"
        waiting = echo(second)
        assert await still_pending(waiting)
        assert server.clients_info()["nclients_unauth"] == 1
        await done(first.call(TEST, TestProc.OPEN))  # first is no longer anonymous
        assert await done(waiting) == "x"
        assert server.clients_info()["nclients_unauth"] == 1  # second, not opened yet


async def test_handshake_timeout_closes_clients_that_never_open() -> None:
    limits = ServerLimits(handshake_timeout=0.1)
    async with running_server(limits) as (server, path), clients(path, 2) as (lazy, polite):
        await done(polite.call(TEST, TestProc.OPEN))
        await done(lazy.wait_closed())
        with pytest.raises(ConnectionClosedError):
            await lazy.call(TEST, TestProc.ECHO, "x")
        await asyncio.sleep(0.2)
        assert await done(polite.call(TEST, TestProc.ECHO, "ok")) == "ok"
        assert server.clients_info()["nclients"] == 1


# -- workers -------------------------------------------------------------------------------------
async def test_workers_prestarted_and_grow_to_max() -> None:
    limits = ServerLimits(min_workers=2, max_workers=3, prio_workers=1, max_client_requests=10)
    async with running_server(limits) as (server, path), clients(path, 1) as (c,):
        await asyncio.sleep(0.01)
        assert server.threadpool_info() == {
            "minWorkers": 2,
            "maxWorkers": 3,
            "prioWorkers": 1,
            "freeWorkers": 2,
            "nWorkers": 2,
            "jobQueueDepth": 0,
        }
        calls = [block(c, f"g{i}") for i in range(4)]
        for i in range(3):
            await done(disp(server).started[f"g{i}"].wait())
        assert await still_pending(calls[3])
        info = server.threadpool_info()
        assert (info["nWorkers"], info["freeWorkers"], info["jobQueueDepth"]) == (3, 0, 1)
        for i in range(4):
            disp(server).open_gate(f"g{i}")
        await done(asyncio.gather(*calls))
        assert server.threadpool_info()["jobQueueDepth"] == 0


@pytest.mark.parametrize("prio_workers", [1, 0])
async def test_priority_call_runs_when_normal_workers_are_busy(prio_workers: int) -> None:
    limits = ServerLimits(min_workers=1, max_workers=1, prio_workers=prio_workers)
    async with running_server(limits) as (server, path), clients(path, 3) as (a, b, c):
        d = disp(server)
        long_call = block(a, "long")
        await done(d.started["long"].wait())
        queued = echo(b)
        d.open_gate("destroy")
        destroy = block(c, "destroy", TestProc.PRIO_BLOCK)
        if prio_workers:
            await done(destroy)  # served by the priority worker
            assert not queued.done()  # a normal call still waits for the normal worker
        else:
            assert await still_pending(destroy)  # without prio workers it is stuck
        d.open_gate("long")
        await done(asyncio.gather(long_call, queued, destroy))


async def test_threadpool_params_at_run_time() -> None:
    limits = ServerLimits(min_workers=1, max_workers=1, prio_workers=0)
    async with running_server(limits) as (server, path), clients(path, 2) as (a, b):
        d = disp(server)
        first = block(a, "g")
        await done(d.started["g"].wait())
        queued = echo(b)
        assert await still_pending(queued)
        await server.set_threadpool_params(max_workers=2, min_workers=2, prio_workers=2)
        assert await done(queued) == "x"
        info = server.threadpool_info()
        assert (info["nWorkers"], info["prioWorkers"], info["maxWorkers"]) == (2, 2, 2)
        with pytest.raises(VirtError):
            await server.set_threadpool_params(min_workers=5)
        await server.set_threadpool_params(min_workers=0, max_workers=1, prio_workers=0)
        d.open_gate("g")
        await done(first)
        await asyncio.sleep(0.01)
        info = server.threadpool_info()
        assert (info["nWorkers"], info["prioWorkers"]) == (1, 0)  # surplus workers retired


# -- request caps ---------------------------------------------------------------------------------
async def test_max_requests_is_global() -> None:
    limits = ServerLimits(max_requests=1)
    async with running_server(limits) as (server, path), clients(path, 3) as (a, b, c):
        d = disp(server)
        first = block(a, "g")
        await done(d.started["g"].wait())
        other_client = echo(b)
        assert await still_pending(other_client)
        reader_of_b = next(x for x in server.clients if x.id == 2)
        assert reader_of_b.is_reading_paused
        # a priority call is counted but does not wait for the cap
        d.open_gate("p")
        await done(c.call(TEST, TestProc.PRIO_BLOCK, {"gate": "p"}))
        d.open_gate("g")
        await done(asyncio.gather(first, other_client))
        assert server.requests_in_flight == 0


async def test_max_client_requests_is_per_client() -> None:
    limits = ServerLimits(max_client_requests=1)
    async with running_server(limits) as (server, path), clients(path, 2) as (a, b):
        d = disp(server)
        first = block(a, "g")
        await done(d.started["g"].wait())
        same_client = echo(a, "same")
        assert await still_pending(same_client)
        assert await done(b.call(TEST, TestProc.ECHO, "other")) == "other"
        assert server.clients[0].is_reading_paused
        assert server.clients[0].inflight == 1
        await server.set_request_limits(max_client_requests=2)
        assert await done(same_client) == "same"
        d.open_gate("g")
        await done(first)


async def test_keepalive_answered_while_client_is_at_its_cap() -> None:
    limits = ServerLimits(max_client_requests=1, min_workers=1, max_workers=1, prio_workers=0)
    async with running_server(limits) as (server, path):
        peer = await RawPeer.connect_unix(path)
        try:
            args = TEST.procs[TestProc.BLOCK].encode_args({"gate": "g"})
            await peer.call(TEST_PROGRAM, TestProc.BLOCK, 0, args)
            await done(disp(server).started["g"].wait())
            await peer.send(keepalive_header(KeepaliveProc.PING))
            pong = await peer.recv(timeout=1.0)
            assert pong is not None and pong.header.prog == KEEPALIVE_PROGRAM
            assert pong.header.proc == KeepaliveProc.PONG
            disp(server).open_gate("g")
            reply = await peer.recv()
            assert reply is not None and reply.header.serial == 0
        finally:
            await peer.close()


async def test_request_limits_validated() -> None:
    async with running_server() as (server, _):
        with pytest.raises(VirtError):
            await server.set_request_limits(max_requests=0)


async def test_client_counts_follow_disconnects() -> None:
    async with running_server() as (server, path):
        async with clients(path, 3) as (a, b, _):
            await done(a.call(TEST, TestProc.OPEN))
            await done(b.call(TEST, TestProc.ECHO, "x"))
            info = server.clients_info()
            assert (info["nclients"], info["nclients_unauth"]) == (3, 2)
        for _ in range(100):
            if server.clients_info()["nclients"] == 0:
                break
            await asyncio.sleep(0.01)
        assert server.clients_info()["nclients"] == 0
        assert server.clients_info()["nclients_unauth"] == 0
