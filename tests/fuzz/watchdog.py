"""The well-formed client that watches the daemon while it is fuzzed, in its own process
(so the fuzzer's CPU use cannot delay it): every ``interval`` seconds it lists all domains
and records how long the answer took, as JSON lines.

``python -m tests.fuzz.watchdog SOCKET OUTFILE [INTERVAL]``; runs until killed. A closed
connection (an admin's CLIENT_CLOSE may pick it) is reopened, and the reopening counts in
that sample's latency.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from pyvirt.errors import VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.connection import ConnectionClosedError
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_protocol import RemoteProc as RP

CALL_TIMEOUT = 10.0


async def _opened(path: str) -> RPCClient:
    client = await RPCClient.connect_unix(path)
    await client.call(REMOTE, RP.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0})
    return client


async def _list(client: RPCClient) -> None:
    await client.call(REMOTE, RP.CONNECT_LIST_ALL_DOMAINS, {"need_results": 1, "flags": 0})


async def _sample(path: str, client: RPCClient | None) -> tuple[RPCClient | None, str]:
    """One timed listing; a connection the daemon closed is reopened once, in the sample."""
    for attempt in range(2):
        try:
            if client is None or not client.is_running:
                client = await _opened(path)
            await _list(client)
            return client, ""
        except ConnectionClosedError as exc:
            client = None
            if attempt:
                return None, f"connection closed twice: {exc}"
        except (VirtError, OSError) as exc:
            if client is not None:
                client.abort("watchdog: call failed")
            return None, f"{type(exc).__name__}: {exc}"
    return None, "unreachable"


async def watch(path: str, out: TextIO, interval: float) -> None:
    client: RPCClient | None = None
    while True:
        began = time.monotonic()
        try:
            client, error = await asyncio.wait_for(_sample(path, client), CALL_TIMEOUT)
        except TimeoutError:
            if client is not None:
                client.abort("watchdog: timeout")
            client, error = None, f"no answer within {CALL_TIMEOUT} s"
        record: dict[str, Any] = {"t": time.time(), "latency": time.monotonic() - began}
        if error:
            record["error"] = error
        out.write(json.dumps(record) + "\n")
        out.flush()
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))


def main(argv: list[str]) -> int:
    path, outfile = argv[0], argv[1]
    interval = float(argv[2]) if len(argv) > 2 else 0.5
    with open(outfile, "a", encoding="utf-8") as out:
        asyncio.run(watch(path, out, interval))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
