"""``pyvirsh`` start-up: from spawning the process to its first RPC arriving.

A local TCP listener stands in for the daemon: pyvirsh is started with
``-c qemu+tcp://127.0.0.1:PORT/system uri`` and the time is taken when the first complete
RPC packet header (4-byte length + 24-byte header) arrives; then pyvirsh is killed. This is
exactly "start-up to its first RPC" (interpreter, imports, option parsing, URI, connect),
with no daemon time in it. The whole ``pyvirsh uri`` against a real daemon is measured too.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass

from bench.pyvirt_mode import PYVIRSH, PYVIRSH_ENV

FIRST_PACKET_BYTES = 28
RUNS = 15


@dataclass
class _FirstRpc:
    arrived: asyncio.Future[float]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(FIRST_PACKET_BYTES)
            if not self.arrived.done():
                self.arrived.set_result(time.monotonic())
        writer.close()


async def first_rpc_ms() -> float:
    """One measurement: spawn → first RPC header received, in milliseconds."""
    loop = asyncio.get_running_loop()
    probe = _FirstRpc(loop.create_future())
    server = await asyncio.start_server(probe.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            PYVIRSH, "-c", f"qemu+tcp://127.0.0.1:{port}/system", "uri",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=PYVIRSH_ENV)
        try:
            arrived = await asyncio.wait_for(probe.arrived, 10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    finally:
        server.close()
        await server.wait_closed()
    return (arrived - t0) * 1000


async def command_ms(uri: str) -> float:
    """``pyvirsh -c URI uri`` against a real daemon, start to exit, in milliseconds."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYVIRSH, "-c", uri, "uri", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=PYVIRSH_ENV)
    await proc.wait()
    return (time.monotonic() - t0) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 2), "min": round(min(samples), 2),
            "max": round(max(samples), 2), "n": len(samples)}


async def measure(uri: str | None, runs: int = RUNS) -> dict[str, dict[str, float]]:
    """Start-up figures: first RPC (always) and whole ``uri`` commands (given a daemon)."""
    await first_rpc_ms()  # warm-up, not counted (the page cache, the bytecode cache)
    result = {"first_rpc_ms": summary([await first_rpc_ms() for _ in range(runs)])}
    if uri is not None:
        result["uri_command_ms"] = summary([await command_ms(uri) for _ in range(runs)])
    return result
