"""The stock ``virt-admin`` (libvirt-clients 9.0) against pyvirt's admin server.

An in-process "libvirtd" RPCServer (the test program, configured limits) and an admin
RPCServer with :class:`AdminDispatcher` listen in a temporary directory; the real
``virt-admin -c 'libvirtd:///system?socket=<dir>/libvirt-admin-sock'`` runs as a
subprocess while the servers keep serving on this event loop.  Expected outputs are what
virt-admin printed against a real libvirtd 9.0; only ids and times are matched loosely.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable

import pytest

from pyvirt.daemon.admin import AdminDispatcher, admin_server_limits
from pyvirt.rpc.admin_protocol import ADMIN
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.testing import TEST, TestDispatcher, TestProc
from pyvirt.uri import ADMIN_SOCKET_NAME, RW_SOCKET_NAME

VIRT_ADMIN = shutil.which("virt-admin")
pytestmark = pytest.mark.skipif(VIRT_ADMIN is None, reason="virt-admin is not installed")

TIMEOUT = 10.0
SETTLE = 0.3  # how long "still held off" is observed
LIMITS = ServerLimits(min_workers=3, max_workers=9, prio_workers=2, max_clients=10,
                      max_anonymous_clients=4)  # fmt: skip
CONNECTED_SINCE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000"  # TZ=UTC


@dataclasses.dataclass
class Daemon:
    main: RPCServer
    admin: RPCServer
    tmpdir: str

    @property
    def main_path(self) -> str:
        return f"{self.tmpdir}/{RW_SOCKET_NAME}"

    @property
    def uri(self) -> str:
        return f"libvirtd:///system?socket={self.tmpdir}/{ADMIN_SOCKET_NAME}"


@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.rstrip("\n").split("\n")


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    tmpdir = tempfile.mkdtemp(prefix="pv-va-")  # short: unix socket paths are limited
    main = RPCServer(TestDispatcher(), (TEST,), LIMITS, name="libvirtd")
    dispatcher = AdminDispatcher({"libvirtd": main})
    admin = RPCServer(dispatcher, (ADMIN,), admin_server_limits(), name="admin")
    dispatcher.add_server("admin", admin)
    made = Daemon(main, admin, tmpdir)
    try:
        await main.listen_unix(made.main_path)
        await main.start()
        await admin.listen_unix(f"{tmpdir}/{ADMIN_SOCKET_NAME}", mode=0o700)
        await admin.start()
        yield made
    finally:
        await admin.close()
        await main.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


async def virt_admin(daemon: Daemon, *argv: str, uri_from_env: bool = False) -> Result:
    assert VIRT_ADMIN is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": daemon.tmpdir,
           "LC_ALL": "C", "TZ": "UTC"}  # fmt: skip
    if uri_from_env:  # libvirt-admin's default URI when -c is not given
        env["LIBVIRT_ADMIN_DEFAULT_URI"] = daemon.uri
    else:
        argv = ("-c", daemon.uri, *argv)
    proc = await asyncio.create_subprocess_exec(
        VIRT_ADMIN, *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def ok(daemon: Daemon, *argv: str, uri_from_env: bool = False) -> Result:
    result = await virt_admin(daemon, *argv, uri_from_env=uri_from_env)
    assert result.rc == 0, result.err
    return result


async def eventually(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def main_client(daemon: Daemon) -> AsyncIterator[RPCClient]:
    client = await RPCClient.connect_unix(daemon.main_path, programs=(TEST,))
    try:
        yield client
    finally:
        await client.close()


# -- servers and versions ----------------------------------------------------------------------
async def test_srv_list(daemon: Daemon) -> None:
    result = await ok(daemon, "srv-list")
    assert result.lines == [" Id   Name", "----------------", " 0    libvirtd", " 1    admin"]


async def test_version_with_the_uri_from_the_environment(daemon: Daemon) -> None:
    result = await ok(daemon, "version", uri_from_env=True)
    assert "Running against daemon: 9.0.0" in result.lines
    assert (await ok(daemon, "uri", uri_from_env=True)).lines == [daemon.uri]


async def test_unknown_server(daemon: Daemon) -> None:
    result = await virt_admin(daemon, "srv-threadpool-info", "nosuch")
    assert result.rc == 1
    assert "error: Server not found: No server named 'nosuch'" in result.err


async def test_admin_connections_do_not_linger(daemon: Daemon) -> None:
    for _ in range(3):
        await ok(daemon, "srv-list")
    await eventually(lambda: daemon.admin.clients_info()["nclients"] == 0)


# -- worker pool -------------------------------------------------------------------------------
async def test_srv_threadpool_info(daemon: Daemon) -> None:
    result = await ok(daemon, "srv-threadpool-info", "libvirtd")
    assert result.lines == [
        "minWorkers     : 3",
        "maxWorkers     : 9",
        "nWorkers       : 3",
        "freeWorkers    : 3",
        "prioWorkers    : 2",
        "jobQueueDepth  : 0",
    ]


async def test_srv_threadpool_set(daemon: Daemon) -> None:
    await ok(daemon, "srv-threadpool-set", "libvirtd", "--max-workers", "7")
    assert (daemon.main.pool.max_workers, daemon.main.limits.max_workers) == (7, 7)
    await ok(daemon, "srv-threadpool-set", "libvirtd", "--min-workers", "5",
             "--priority-workers", "3")  # fmt: skip
    info = await ok(daemon, "srv-threadpool-info", "libvirtd")
    assert info.lines[:3] == ["minWorkers     : 5", "maxWorkers     : 7", "nWorkers       : 5"]
    assert info.lines[4] == "prioWorkers    : 3"
    assert daemon.main.threadpool_info()["nWorkers"] == 5  # started at once


async def test_srv_threadpool_set_refused(daemon: Daemon) -> None:
    result = await virt_admin(daemon, "srv-threadpool-set", "libvirtd", "--min-workers", "30")
    assert result.rc == 1
    assert result.err.split("\n")[:2] == [
        "error: Unable to change server workerpool parameters",
        "error: invalid argument: minWorkers cannot be larger than maxWorkers",
    ]
    assert daemon.main.pool.min_workers == 3


# -- client limits -----------------------------------------------------------------------------
async def test_srv_clients_info(daemon: Daemon) -> None:
    async with main_client(daemon) as client:
        await client.call(TEST, TestProc.OPEN, timeout=TIMEOUT)
        result = await ok(daemon, "srv-clients-info", "libvirtd")
    assert result.lines == [
        "nclients_max        : 10",
        "nclients            : 1",
        "nclients_unauth_max : 4",
        "nclients_unauth     : 0",
    ]


async def test_srv_clients_set_is_enforced(daemon: Daemon) -> None:
    await ok(daemon, "srv-clients-set", "libvirtd", "--max-clients", "1",
             "--max-unauth-clients", "1")  # fmt: skip
    assert (daemon.main.limits.max_clients, daemon.main.limits.max_anonymous_clients) == (1, 1)
    async with main_client(daemon) as first, main_client(daemon) as second:
        assert await first.call(TEST, TestProc.ECHO, "1", timeout=TIMEOUT) == "1"
        held = asyncio.create_task(second.call(TEST, TestProc.ECHO, "2", timeout=TIMEOUT))
        await asyncio.sleep(SETTLE)
        assert not held.done()  # the second connection waits in the listen backlog
        info = await ok(daemon, "srv-clients-info", "libvirtd")
        assert info.lines[:2] == ["nclients_max        : 1", "nclients            : 1"]
        await ok(daemon, "srv-clients-set", "libvirtd", "--max-clients", "9",
                 "--max-unauth-clients", "2")  # fmt: skip
        assert await held == "2"  # accepted as soon as the limit was raised


async def test_srv_clients_set_refused(daemon: Daemon) -> None:
    result = await virt_admin(daemon, "srv-clients-set", "libvirtd", "--max-clients", "2")
    assert result.rc == 1
    assert result.err.split("\n")[:2] == [
        "error: Unable to change server's client-related configuration limits",
        "error: invalid argument: The overall maximum number of clients waiting for "
        "authentication must not be less than the overall maximum number of clients",
    ]
    assert daemon.main.limits.max_clients == 10


# -- clients -----------------------------------------------------------------------------------
async def test_client_list_info_and_disconnect(daemon: Daemon) -> None:
    async with main_client(daemon) as client:
        await client.call(TEST, TestProc.OPEN, timeout=TIMEOUT)
        (record,) = daemon.main.client_records()
        listed = await ok(daemon, "client-list", "libvirtd")
        assert listed.lines[0] == " Id   Transport   Connected since"
        assert re.fullmatch(rf" {record.id}\s+unix\s+{CONNECTED_SINCE}", listed.lines[2])
        info = await ok(daemon, "client-info", "libvirtd", str(record.id))
        fields = dict(line.split(": ", 1) for line in info.lines)
        assert fields["id             "] == str(record.id)
        assert re.fullmatch(CONNECTED_SINCE, fields["connection_time"])
        assert fields["transport      "] == "unix"
        assert fields["readonly       "] == "no"
        assert fields["unix_user_id   "] == str(os.getuid())
        assert fields["unix_process_id"] == str(os.getpid())
        bye = await ok(daemon, "client-disconnect", "libvirtd", str(record.id))
        assert bye.out == f"Client '{record.id}' disconnected\n"
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
    await eventually(lambda: daemon.main.client_records() == [])
    empty = await ok(daemon, "client-list", "libvirtd")
    assert empty.lines == [" Id   Transport   Connected since", "-" * 35]
