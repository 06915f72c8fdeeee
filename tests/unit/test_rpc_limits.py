"""Processing controls: each test fails if its control were ignored."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pyvirt.errors import VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.connection import ConnectionClosedError
from pyvirt.rpc.keepalive_protocol import KeepaliveProc, keepalive_header
from pyvirt.rpc.packet import (
    KEEPALIVE_PROGRAM,
    Header,
    MessageStatus,
    MessageType,
    encode_packet,
)
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


async def until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await done(poll())


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
            "nclients_unauth": 0,  # auth "none": authenticated by definition
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


@contextlib.asynccontextmanager
async def two_listeners(limits: ServerLimits) -> AsyncIterator[tuple[RPCServer, str, str]]:
    """A server with an authenticating listener ("sasl": its clients start anonymous) and
    an auth "none" one; yields (server, authenticating path, none path)."""
    tmpdir = tempfile.mkdtemp(prefix="pyvirt-rpc-")
    server = RPCServer(TestDispatcher(), (TEST,), limits)
    try:
        await server.listen_unix(f"{tmpdir}/auth", auth="sasl")
        await server.listen_unix(f"{tmpdir}/none")
        await server.start()
        yield server, f"{tmpdir}/auth", f"{tmpdir}/none"
    finally:
        await server.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


async def test_max_anonymous_clients_holds_off_only_authenticating_listeners() -> None:
    limits = ServerLimits(max_clients=10, max_anonymous_clients=1)
    async with two_listeners(limits) as (server, auth_path, none_path), \
            clients(auth_path, 2) as (first, second), clients(none_path, 3) as others:
        with pytest.raises(VirtError, match="authentication required"):
            await done(first.call(TEST, TestProc.ECHO, "anon"))  # accepted, anonymous
        waiting = echo(second)
        assert await still_pending(waiting)
        assert server.clients_info()["nclients_unauth"] == 1
        # the auth "none" listener keeps accepting, and its clients never count (libvirt
        # would stop every listener here: a deliberate deviation)
        for other in others:
            assert await done(other.call(TEST, TestProc.ECHO, "none")) == "none"
        assert server.clients_info()["nclients_unauth"] == 1
        next(c for c in server.clients if c.anonymous).set_authenticated(True)
        with pytest.raises(VirtError, match="authentication required"):
            await done(waiting)  # accepted at last
        assert server.clients_info()["nclients_unauth"] == 1  # second, not authenticated yet


async def test_opening_does_not_matter_on_auth_none_listeners() -> None:
    limits = ServerLimits(max_clients=10, max_anonymous_clients=1)
    async with running_server(limits) as (server, path), clients(path, 4) as lurkers:
        for lurker in lurkers:  # none of them opens
            assert await done(lurker.call(TEST, TestProc.ECHO, "x")) == "x"
        assert server.clients_info()["nclients_unauth"] == 0


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
            assert (info["nclients"], info["nclients_unauth"]) == (3, 0)
        for _ in range(100):
            if server.clients_info()["nclients"] == 0:
                break
            await asyncio.sleep(0.01)
        assert server.clients_info()["nclients"] == 0
        assert server.clients_info()["nclients_unauth"] == 0


# -- clients that do not read ---------------------------------------------------------------------
def _echo_packets(count: int, size: int) -> bytes:
    spec = TEST.procs[TestProc.ECHO]
    header = Header(TEST_PROGRAM, 1, TestProc.ECHO, MessageType.CALL, 1, MessageStatus.OK)
    return encode_packet(header, spec.encode_args("x" * size)) * count


@contextlib.asynccontextmanager
async def non_reader(path: str, calls: bytes) -> AsyncIterator[socket.socket]:
    """A peer that keeps sending ``calls`` and never reads (small receive buffer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(path)
    sock.setblocking(False)

    async def flood() -> None:
        with contextlib.suppress(OSError):
            while True:
                await asyncio.get_running_loop().sock_sendall(sock, calls)

    task = asyncio.create_task(flood())
    try:
        yield sock
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


async def test_a_client_that_never_reads_holds_no_worker_and_no_global_slot() -> None:
    limits = ServerLimits(min_workers=2, max_workers=2, prio_workers=0, max_requests=2,
                          max_client_requests=2)  # fmt: skip
    async with running_server(limits) as (server, path), \
            non_reader(path, _echo_packets(8, 60_000)), non_reader(path, _echo_packets(8, 60_000)):
        await asyncio.sleep(0.5)  # megabytes of replies offered, none read
        attackers = list(server.clients)
        assert all(c.inflight == limits.max_client_requests for c in attackers)
        assert all(c.is_reading_paused for c in attackers)
        # their slots are held by their own unread replies: silence is their fault
        assert not any(c._silence_is_ours() for c in attackers)
        assert server.requests_in_flight == 0
        info = server.threadpool_info()
        assert info["freeWorkers"] == info["nWorkers"] == 2
        async with clients(path, 1) as (polite,):
            assert await done(polite.call(TEST, TestProc.ECHO, "served")) == "served"


async def test_keepalive_closes_a_client_whose_unread_replies_hold_its_slots(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pyvirt.rpc")
    limits = ServerLimits(max_client_requests=1, keepalive_interval=0.1, keepalive_count=1)
    async with running_server(limits) as (server, path):
        on = encode_packet(Header(TEST_PROGRAM, 1, TestProc.KEEPALIVE_ON, MessageType.CALL, 1,
                                  MessageStatus.OK))  # fmt: skip
        async with non_reader(path, on + _echo_packets(50, 60_000)):
            # closed within ~0.2 s: a poll for "connected" could miss it under load
            await until(lambda: any("disconnected" in r.getMessage()
                                    for r in caplog.records))
            assert server.clients_info()["nclients"] == 0  # keepalive timeout


async def test_unread_events_over_the_byte_bound_drop_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = ServerLimits(max_client_queued_bytes=32 * 1024)
    emit = encode_packet(Header(TEST_PROGRAM, 1, TestProc.EMIT, MessageType.CALL, 1,
                                MessageStatus.OK), TEST.procs[TestProc.EMIT].encode_args(50_000))
    async with running_server(limits) as (server, path), non_reader(path, emit) as sock:
        # the drop can come before a poll ever sees the client connected: wait for it
        await until(lambda: any("dropping the connection" in r.getMessage()
                                for r in caplog.records))
        await until(lambda: server.clients_info()["nclients"] == 0)
        drops = [r for r in caplog.records if "dropping the connection" in r.getMessage()]
        assert len(drops) == 1
        assert "(limit 32768)" in drops[0].getMessage()
        del sock
