"""AdminDispatcher against in-process RPCServers: a "libvirtd" server and the admin server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pyvirt.daemon.admin import (
    CLIENT_LIMIT_FIELDS,
    EAGER_WORKERS_MAX,
    THREADPOOL_FIELDS,
    AdminDispatcher,
    admin_server_limits,
)
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.rpc.admin_protocol import ADMIN, AdminClient, AdminServer, ClientTransport
from pyvirt.rpc.admin_protocol import AdminProc as AP
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.keepalive_protocol import KeepaliveProc, keepalive_header
from pyvirt.rpc.packet import ADMIN_PROGRAM, KEEPALIVE_PROGRAM, MessageType
from pyvirt.rpc.remote_types import TypedParam, TypedParamType
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.testing import TEST, RawPeer, TestDispatcher, TestProc

TIMEOUT = 5.0
LIMITS = ServerLimits(min_workers=2, max_workers=6, prio_workers=1, max_clients=10,
                      max_anonymous_clients=4)  # fmt: skip
SRV = AdminServer("libvirtd")


@dataclasses.dataclass
class Pair:
    main: RPCServer
    admin: RPCServer
    dispatcher: AdminDispatcher
    main_path: str
    admin_path: str


@contextlib.asynccontextmanager
async def server_pair(**kwargs: Any) -> AsyncIterator[Pair]:
    tmpdir = tempfile.mkdtemp(prefix="pv-adm-")  # short: unix socket paths are limited
    main = RPCServer(TestDispatcher(), (TEST,), LIMITS, name="libvirtd")
    dispatcher = AdminDispatcher({"libvirtd": main}, **kwargs)
    admin = RPCServer(dispatcher, (ADMIN,), admin_server_limits(), name="admin")
    dispatcher.add_server("admin", admin)
    pair = Pair(main, admin, dispatcher, f"{tmpdir}/sock", f"{tmpdir}/admin-sock")
    try:
        for server, path in ((main, pair.main_path), (admin, pair.admin_path)):
            await server.listen_unix(path)
            await server.start()
        yield pair
    finally:
        await admin.close()
        await main.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def admin_client(pair: Pair, *, opened: bool = True) -> AsyncIterator[RPCClient]:
    client = await RPCClient.connect_unix(pair.admin_path, programs=(ADMIN,))
    try:
        if opened:
            await call(client, AP.CONNECT_OPEN, flags=0)
        yield client
    finally:
        await client.close()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with server_pair() as made:
        yield made


@pytest.fixture
async def adm(pair: Pair) -> AsyncIterator[RPCClient]:
    async with admin_client(pair) as client:
        yield client


async def call(client: RPCClient, proc: AP, **args: Any) -> Any:
    return await client.call(ADMIN, proc, args or None, timeout=TIMEOUT)


async def refused(client: RPCClient, proc: AP, **args: Any) -> VirtError:
    with pytest.raises(VirtError) as info:
        await call(client, proc, **args)
    return info.value


async def eventually(predicate: Callable[[], bool]) -> None:
    """Server-side bookkeeping finishes just after the peer sees EOF: poll briefly."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def uints(params: list[TypedParam]) -> dict[str, int]:
    assert all(p.type is TypedParamType.UINT for p in params)
    return {p.field: int(p.value) for p in params}


async def open_test_client(pair: Pair) -> RPCClient:
    client = await RPCClient.connect_unix(pair.main_path, programs=(TEST,))
    await client.call(TEST, TestProc.OPEN, timeout=TIMEOUT)
    return client


# -- connection --------------------------------------------------------------------------------
async def test_open_list_and_version(adm: RPCClient) -> None:
    listed = await call(adm, AP.CONNECT_LIST_SERVERS, need_results=1, flags=0)
    assert listed == {"servers": [AdminServer("libvirtd"), AdminServer("admin")], "ret": 2}
    counted = await call(adm, AP.CONNECT_LIST_SERVERS, need_results=0, flags=0)
    assert counted == {"servers": [], "ret": 2}
    assert await call(adm, AP.CONNECT_GET_LIB_VERSION) == {"lib_ver": 9_000_000}
    assert await call(adm, AP.CONNECT_LOOKUP_SERVER, name="admin", flags=0) == {
        "srv": AdminServer("admin")
    }


async def test_calls_before_open_refused(pair: Pair) -> None:
    async with admin_client(pair, opened=False) as client:
        err = await refused(client, AP.CONNECT_GET_LIB_VERSION)
        assert err.message == "internal error: connection not open"


async def test_missing_server(adm: RPCClient) -> None:
    err = await refused(adm, AP.CONNECT_LOOKUP_SERVER, name="nosuch", flags=0)
    assert (err.code, err.message) == (
        ErrorCode.NO_SERVER,
        "Server not found: No server named 'nosuch'",
    )
    err = await refused(adm, AP.SERVER_SET_CLIENT_LIMITS, srv=AdminServer("x"), params=[], flags=0)
    assert err.message == "Server not found: no server with matching name 'x' found"


async def test_unknown_flags_refused_with_libvirts_function_name(adm: RPCClient) -> None:
    err = await refused(adm, AP.SERVER_GET_THREADPOOL_PARAMETERS, srv=SRV, flags=4)
    assert err.code == ErrorCode.INVALID_ARG
    assert err.message == (
        "invalid argument: unsupported flags (0x4) in function adminServerGetThreadPoolParameters"
    )


async def test_daemon_wide_procedures_not_supported(adm: RPCClient) -> None:
    err = await refused(adm, AP.CONNECT_GET_LOGGING_OUTPUTS, flags=0)
    assert err.code == ErrorCode.NO_SUPPORT
    assert err.message.endswith(": virAdmConnectGetLoggingOutputs")


async def test_connect_close_replies_then_closes(pair: Pair) -> None:
    peer = await RawPeer.connect_unix(pair.admin_path)
    try:
        await peer.call(ADMIN_PROGRAM, AP.CONNECT_OPEN, 0, b"\0\0\0\0")
        await peer.call(ADMIN_PROGRAM, AP.CONNECT_CLOSE, 1)
        replies = [await peer.recv(), await peer.recv()]
        assert [(p.header.proc, p.header.status) for p in replies if p] == [(1, 0), (2, 0)]
        assert await peer.recv() is None  # then the server closed the connection
    finally:
        await peer.close()


async def test_peer_of_another_uid_refused() -> None:
    async with server_pair(allowed_uid=os.geteuid() + 4242) as other:
        peer = await RawPeer.connect_unix(other.admin_path)
        try:
            await peer.call(ADMIN_PROGRAM, AP.CONNECT_OPEN, 0, b"\0\0\0\0")
            assert await peer.recv() is None  # dropped without opening, as libvirtd does
            await eventually(lambda: other.admin.clients_info()["nclients"] == 0)
        finally:
            await peer.close()


async def test_keepalive_answered_never_initiated(pair: Pair) -> None:
    """virt-admin answers PINGs but sends none; the admin server does the same."""
    pair.admin.limits.keepalive_interval = 0.1  # would ping within the wait below if enabled
    peer = await RawPeer.connect_unix(pair.admin_path)
    try:
        await peer.call(ADMIN_PROGRAM, AP.CONNECT_OPEN, 0, b"\0\0\0\0")
        assert (await peer.recv()) is not None
        await peer.send(keepalive_header(KeepaliveProc.PING))
        pong = await peer.recv()
        assert pong is not None
        assert (pong.header.prog, pong.header.proc) == (KEEPALIVE_PROGRAM, KeepaliveProc.PONG)
        assert pong.header.type == MessageType.MESSAGE
        with pytest.raises(asyncio.TimeoutError):
            await peer.recv(timeout=0.5)  # no PING from the server
    finally:
        await peer.close()


# -- threadpool --------------------------------------------------------------------------------
async def test_threadpool_parameters(adm: RPCClient, pair: Pair) -> None:
    ret = await call(adm, AP.SERVER_GET_THREADPOOL_PARAMETERS, srv=SRV, flags=0)
    assert [p.field for p in ret["params"]] == list(THREADPOOL_FIELDS)  # libvirt's order
    values = uints(ret["params"])
    assert values == {"minWorkers": 2, "maxWorkers": 6, "nWorkers": 2, "freeWorkers": 2,
                      "prioWorkers": 1, "jobQueueDepth": 0}  # fmt: skip
    admin = await call(adm, AP.SERVER_GET_THREADPOOL_PARAMETERS, srv=AdminServer("admin"),
                       flags=0)  # fmt: skip
    assert uints(admin["params"])["prioWorkers"] == 0
    assert uints(admin["params"])["freeWorkers"] == 4  # one worker serves this very call


async def test_threadpool_set_takes_effect(adm: RPCClient, pair: Pair) -> None:
    params = [TypedParam.of_uint("maxWorkers", 7), TypedParam.of_uint("minWorkers", 3),
              TypedParam.of_uint("prioWorkers", 2)]  # fmt: skip
    assert await call(adm, AP.SERVER_SET_THREADPOOL_PARAMETERS, srv=SRV, params=params,
                      flags=0) is None  # fmt: skip
    assert (pair.main.pool.min_workers, pair.main.pool.max_workers) == (3, 7)
    assert (pair.main.limits.min_workers, pair.main.limits.prio_workers) == (3, 2)
    info = pair.main.threadpool_info()
    assert (info["nWorkers"], info["prioWorkers"]) == (3, 2)  # started at once


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ([TypedParam.of_uint("minWorkers", 30)], ErrorCode.INVALID_ARG,
         "invalid argument: minWorkers cannot be larger than maxWorkers"),
        ([TypedParam.of_uint("maxWorkers", 0)], ErrorCode.INVALID_ARG,
         "invalid argument: minWorkers cannot be larger than maxWorkers"),
        ([TypedParam.of_uint("minWorkers", 0), TypedParam.of_uint("maxWorkers", 0)],
         ErrorCode.INVALID_ARG,
         "invalid argument: maxWorkers must not be switched from zero to non-zero and vice versa"),
        ([TypedParam.of_uint("nWorkers", 3)], ErrorCode.ARGUMENT_UNSUPPORTED,
         "argument unsupported: parameter 'nWorkers' not supported"),
        ([TypedParam.of_int("maxWorkers", 3)], ErrorCode.INVALID_ARG,
         "invalid argument: invalid type 'int' for parameter 'maxWorkers', expected 'uint'"),
        ([TypedParam.of_uint("maxWorkers", 3)] * 2, ErrorCode.INVALID_ARG,
         "invalid argument: parameter 'maxWorkers' occurs multiple times"),
        ([TypedParam.of_uint("maxWorkers", 10**6), TypedParam.of_uint("prioWorkers", 10**6)],
         ErrorCode.INVALID_ARG,
         f"invalid argument: prioWorkers must not exceed {EAGER_WORKERS_MAX}"),
    ],
)  # fmt: skip
async def test_threadpool_set_validated(
    adm: RPCClient, pair: Pair, params: list[TypedParam], code: int, message: str
) -> None:
    err = await refused(adm, AP.SERVER_SET_THREADPOOL_PARAMETERS, srv=SRV, params=params,
                        flags=0)  # fmt: skip
    assert (err.code, err.message) == (code, message)
    assert (pair.main.pool.min_workers, pair.main.pool.max_workers) == (2, 6)  # unchanged


# -- client limits -----------------------------------------------------------------------------
async def test_client_limits(adm: RPCClient, pair: Pair) -> None:
    client = await open_test_client(pair)
    try:
        ret = await call(adm, AP.SERVER_GET_CLIENT_LIMITS, srv=SRV, flags=0)
        assert [p.field for p in ret["params"]] == list(CLIENT_LIMIT_FIELDS)
        assert uints(ret["params"]) == {"nclients_max": 10, "nclients": 1,
                                        "nclients_unauth_max": 4, "nclients_unauth": 0}  # fmt: skip
        params = [
            TypedParam.of_uint("nclients_max", 9),
            TypedParam.of_uint("nclients_unauth_max", 3),
        ]
        await call(adm, AP.SERVER_SET_CLIENT_LIMITS, srv=SRV, params=params, flags=0)
        assert (pair.main.limits.max_clients, pair.main.limits.max_anonymous_clients) == (9, 3)
    finally:
        await client.close()


async def test_client_limits_order_checked(adm: RPCClient, pair: Pair) -> None:
    params = [TypedParam.of_uint("nclients_max", 1)]  # below the unauthenticated limit (4)
    err = await refused(adm, AP.SERVER_SET_CLIENT_LIMITS, srv=SRV, params=params, flags=0)
    assert err.message == (  # libvirt 9.0's words, limits named the wrong way round
        "invalid argument: The overall maximum number of clients waiting for authentication "
        "must not be less than the overall maximum number of clients"
    )
    assert pair.main.limits.max_clients == 10


# -- clients -----------------------------------------------------------------------------------
async def test_list_lookup_and_info(adm: RPCClient, pair: Pair) -> None:
    client = await open_test_client(pair)
    try:
        listed = await call(adm, AP.SERVER_LIST_CLIENTS, srv=SRV, need_results=1, flags=0)
        assert listed["ret"] == 1
        (handle,) = listed["clients"]
        assert isinstance(handle, AdminClient)
        assert (handle.srv, handle.transport) == (SRV, ClientTransport.UNIX)
        assert abs(handle.timestamp - time.time()) < 5
        counted = await call(adm, AP.SERVER_LIST_CLIENTS, srv=SRV, need_results=0, flags=0)
        assert counted == {"clients": [], "ret": 1}
        found = await call(adm, AP.SERVER_LOOKUP_CLIENT, srv=SRV, id=handle.id, flags=0)
        assert found == {"clnt": handle}
        info = await call(adm, AP.CLIENT_GET_INFO, clnt=handle, flags=0)
        values = {p.field: p.value for p in info["params"]}
        assert values["readonly"] is False
        assert (values["unix_user_id"], values["unix_process_id"]) == (os.getuid(), os.getpid())
        assert values["unix_group_id"] == os.getgid()
    finally:
        await client.close()


async def test_missing_client(adm: RPCClient) -> None:
    err = await refused(adm, AP.SERVER_LOOKUP_CLIENT, srv=SRV, id=99, flags=0)
    assert (err.code, err.message) == (
        ErrorCode.NO_CLIENT,
        "Client not found: No client with matching ID '99'",
    )
    ghost = AdminClient(SRV, 99, 0, ClientTransport.UNIX)
    err = await refused(adm, AP.CLIENT_GET_INFO, clnt=ghost, flags=0)
    assert err.message == "Client not found: no client with matching id '99' found"
    err = await refused(adm, AP.CLIENT_CLOSE, clnt=ghost, flags=0)
    assert err.message == "Client not found: No client with matching ID '99'"


async def test_client_close_disconnects(adm: RPCClient, pair: Pair) -> None:
    client = await open_test_client(pair)
    try:
        (record,) = pair.main.client_records()
        handle = AdminClient(SRV, record.id, int(record.connected_at), ClientTransport.UNIX)
        await call(adm, AP.CLIENT_CLOSE, clnt=handle, flags=0)
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        with pytest.raises(VirtError):
            await client.call(TEST, TestProc.ECHO, "x", timeout=TIMEOUT)
        await eventually(lambda: pair.main.clients_info()["nclients"] == 0)
    finally:
        await client.close()


async def test_admin_clients_listed_on_the_admin_server(adm: RPCClient) -> None:
    listed = await call(adm, AP.SERVER_LIST_CLIENTS, srv=AdminServer("admin"), need_results=1,
                        flags=0)  # fmt: skip
    assert [c.srv.name for c in listed["clients"]] == ["admin"]


def test_add_server_refuses_duplicates() -> None:
    dispatcher = AdminDispatcher({})
    server = RPCServer.__new__(RPCServer)
    dispatcher.add_server("libvirtd", server)
    with pytest.raises(ValueError, match="already registered"):
        dispatcher.add_server("libvirtd", server)
    assert list(dispatcher.servers) == ["libvirtd"]
