"""A misbehaving client costs the others nothing: attacks on a live pyvirtd (fake QEMU).

Each test runs the attack against a real daemon while another, well-behaved client keeps
asking for the domain list; throughout, that list answers in under a second and the
daemon's event-loop lag monitor (:mod:`pyvirt.daemon.loopwatch`) logs no late tick.

The daemon logs to ``<root>/log/pyvirtd.log`` (its stderr is not a terminal, so
``log_outputs``' default is the file in ``log_dir``); the lag monitor's line there is
``event loop lag: tick late by N ms``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from pyvirt.daemon.loopwatch import LAG_MESSAGE_PREFIX
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_protocol import RemoteProc as RP
from tests.functional.daemon_util import DaemonHandle, run, running_daemon

LIST_BUDGET_S = 1.0


# -- helpers -----------------------------------------------------------------------------------
def daemon_log(daemon: DaemonHandle) -> str:
    try:
        return (daemon.root / "log" / "pyvirtd.log").read_text(errors="replace")
    except OSError:
        return ""


def lag_lines(daemon: DaemonHandle) -> list[str]:
    return [line for line in daemon_log(daemon).splitlines() if LAG_MESSAGE_PREFIX in line]


def admin_values(daemon: DaemonHandle, command: str) -> dict[str, str]:
    proc = run(["virt-admin", "-c", daemon.admin_uri, command, "libvirtd"], timeout=10)
    assert proc.returncode == 0, proc.stderr
    return dict(line.replace(" ", "").split(":", 1) for line in proc.stdout.strip().splitlines())


async def opened(sock: Path) -> RPCClient:
    client = await RPCClient.connect_unix(str(sock))
    await client.call(REMOTE, RP.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0})
    return client


async def list_seconds(client: RPCClient) -> float:
    began = time.monotonic()
    await client.call(REMOTE, RP.CONNECT_LIST_ALL_DOMAINS, {"need_results": 1, "flags": 0},
                      timeout=10)
    return time.monotonic() - began


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- the lag monitor ---------------------------------------------------------------------------
async def test_lag_monitor_logs_a_stalled_loop_and_virt_admin_shows_it() -> None:
    with running_daemon(emulator="fake") as daemon:
        client = await opened(daemon.sock)
        try:
            assert await list_seconds(client) < LIST_BUDGET_S
            await asyncio.sleep(0.3)
            assert lag_lines(daemon) == []
            before = admin_values(daemon, "srv-threadpool-info")
            assert before["eventLoopLateTicks"] == "0"
            os.kill(daemon.proc.pid, signal.SIGSTOP)  # the whole loop stalls, as a block would
            await asyncio.sleep(0.4)
            os.kill(daemon.proc.pid, signal.SIGCONT)
            await wait_for(lambda: lag_lines(daemon))
            line = lag_lines(daemon)[0]
            assert "WARNING pyvirt.daemon.loopwatch: event loop lag: tick late by " in line
            assert int(line.rsplit(" ", 2)[-2]) >= 300
            after = admin_values(daemon, "srv-threadpool-info")
            assert after["eventLoopLateTicks"] == "1"
            assert int(after["eventLoopLagMaxMs"]) >= 300
            assert after["minWorkers"] == "5"  # libvirt's fields still come first
        finally:
            await client.close()
