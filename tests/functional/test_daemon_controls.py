"""The spec's processing controls, set in pyvirtd.conf, each with an observable effect.

Every test runs a real pyvirtd whose (fake) QEMU answers ``cont`` slowly, so that starting
a domain is a long call; each assertion would fail if the daemon ignored the key.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid as uuidlib
from collections.abc import Awaitable
from typing import Any

import pytest

from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_protocol import RemoteProc as RP
from pyvirt.rpc.remote_types import NonnullDomain
from tests.functional.daemon_util import DaemonHandle, running_daemon

SLOW_S = 1.5
XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><memballoon model='none'/></devices></domain>"""


def slow_daemon(**conf: Any) -> Any:
    return running_daemon(emulator="fake", faults={"delay_commands": {"cont": SLOW_S}},
                          conf=conf)


async def opened(daemon: DaemonHandle) -> RPCClient:
    client = await RPCClient.connect_unix(str(daemon.sock))
    await client.call(REMOTE, RP.AUTH_LIST)
    await client.call(REMOTE, RP.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0})
    return client


async def define(client: RPCClient, name: str) -> NonnullDomain:
    ret = await client.call(REMOTE, RP.DOMAIN_DEFINE_XML, {"xml": XML.format(name=name)})
    dom: NonnullDomain = ret["dom"]
    return dom


def start(client: RPCClient, dom: NonnullDomain) -> Awaitable[Any]:
    return client.call(REMOTE, RP.DOMAIN_CREATE, {"dom": dom})


def get_xml(client: RPCClient, dom: NonnullDomain) -> Awaitable[Any]:
    return client.call(REMOTE, RP.DOMAIN_GET_XML_DESC, {"dom": dom, "flags": 0})


async def timed(call: Awaitable[Any]) -> float:
    began = time.monotonic()
    await call
    return time.monotonic() - began


async def started_domain(client: RPCClient, name: str) -> NonnullDomain:
    dom = await define(client, name)
    await start(client, dom)
    uuid = bytes(dom.uuid)
    ret = await client.call(REMOTE, RP.DOMAIN_LOOKUP_BY_UUID, {"uuid": uuid})
    handle: NonnullDomain = ret["dom"]
    return handle


async def test_max_workers_queues_calls_but_destroy_runs_on_prio_worker() -> None:
    with slow_daemon(min_workers=1, max_workers=1, prio_workers=1) as daemon:
        client = await opened(daemon)
        running = await started_domain(client, "run")
        slow_dom, other = await define(client, "slow"), await define(client, "other")
        slow = asyncio.ensure_future(start(client, slow_dom))
        await asyncio.sleep(0.2)
        other_client = await opened(daemon)
        waited = asyncio.ensure_future(timed(get_xml(other_client, other)))
        destroy_s = await timed(other_client.call(REMOTE, RP.DOMAIN_DESTROY, {"dom": running}))
        assert destroy_s < 1.0  # a priority worker served it while the only worker is busy
        assert await waited > SLOW_S * 0.6  # the normal call waited for the worker
        await slow
        await client.close()
        await other_client.close()


async def test_without_prio_workers_destroy_waits() -> None:
    with slow_daemon(min_workers=1, max_workers=1, prio_workers=0) as daemon:
        client = await opened(daemon)
        running = await started_domain(client, "run")
        other = await opened(daemon)  # before the worker is taken: opening needs it too
        slow = asyncio.ensure_future(start(client, await define(client, "slow")))
        await asyncio.sleep(0.2)
        destroy_s = await timed(other.call(REMOTE, RP.DOMAIN_DESTROY, {"dom": running}))
        assert destroy_s > SLOW_S * 0.6
        await slow
        await client.close()
        await other.close()


@pytest.mark.parametrize(("limit", "serialized"), [(1, True), (5, False)])
async def test_max_client_requests(limit: int, serialized: bool) -> None:
    with slow_daemon(max_client_requests=limit) as daemon:
        client = await opened(daemon)
        slow_dom, other = await define(client, "slow"), await define(client, "other")
        slow = asyncio.ensure_future(start(client, slow_dom))
        await asyncio.sleep(0.2)
        fast_s = await timed(get_xml(client, other))
        assert (fast_s > SLOW_S * 0.6) == serialized
        await slow
        await client.close()


@pytest.mark.parametrize(("limit", "serialized"), [(1, True), (5, False)])
async def test_max_requests_is_global(limit: int, serialized: bool) -> None:
    with slow_daemon(max_requests=limit, max_workers=5) as daemon:
        first, second = await opened(daemon), await opened(daemon)
        dom_a, dom_b = await define(first, "a"), await define(first, "b")
        slow = asyncio.ensure_future(start(first, dom_a))
        await asyncio.sleep(0.2)
        other_s = await timed(get_xml(second, dom_b))
        assert (other_s > SLOW_S * 0.6) == serialized
        await slow
        await first.close()
        await second.close()


async def test_max_clients_holds_off_a_third_connection() -> None:
    with running_daemon(emulator="fake", conf={"max_clients": 2,
                                               "max_anonymous_clients": 2}) as daemon:
        first, second = await opened(daemon), await opened(daemon)
        third = await RPCClient.connect_unix(str(daemon.sock))  # sits in the backlog
        pending = asyncio.ensure_future(third.call(REMOTE, RP.AUTH_LIST))
        await asyncio.sleep(0.5)
        assert not pending.done()
        await first.close()
        await asyncio.wait_for(pending, 5)
        await second.close()
        await third.close()


async def test_max_anonymous_clients_ignores_auth_none_sockets() -> None:
    # auth_unix_rw = "none": clients are authenticated by definition, so connections that
    # never open do not hold the socket off (issue 10; libvirt counts them the same way)
    with running_daemon(emulator="fake", conf={"max_anonymous_clients": 1}) as daemon:
        lurkers = [await RPCClient.connect_unix(str(daemon.sock)) for _ in range(3)]
        for lurker in lurkers:  # none of them opens
            await asyncio.wait_for(lurker.call(REMOTE, RP.AUTH_LIST), 5)
        for lurker in lurkers:
            await lurker.close()


@pytest.mark.parametrize("backlog", [1, 6])
def test_max_queued_clients_is_the_listen_backlog(backlog: int) -> None:
    conf = {"max_clients": 1, "max_anonymous_clients": 1, "max_queued_clients": backlog}
    with running_daemon(emulator="fake", conf=conf) as daemon:
        held = socket.socket(socket.AF_UNIX)
        held.connect(str(daemon.sock))
        time.sleep(0.2)
        queued: list[socket.socket] = []
        try:
            for _ in range(10):
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    sock.connect(str(daemon.sock))
                except BlockingIOError:
                    sock.close()
                    break
                queued.append(sock)
            # Linux lets backlog + 1 connections wait on a unix socket
            assert len(queued) == backlog + 1
        finally:
            for sock in [held, *queued]:
                sock.close()


def test_min_workers_started(daemon_uuid: str = str(uuidlib.uuid4())) -> None:
    import subprocess

    with running_daemon(emulator="fake", conf={"min_workers": 4, "max_workers": 9}) as daemon:
        out = subprocess.run(["virt-admin", "-c", daemon.admin_uri, "srv-threadpool-info",
                              "libvirtd"], capture_output=True, text=True, check=True).stdout
        values = dict(line.replace(" ", "").split(":") for line in out.strip().splitlines())
        assert values["minWorkers"] == "4" and values["nWorkers"] == "4"
        assert values["maxWorkers"] == "9"
