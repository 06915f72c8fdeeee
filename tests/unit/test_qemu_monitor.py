"""The QMP monitor against a QEMU that hangs up right after the handshake (fuzzer finding).

qemu.qmp asserts it is RUNNING once the handshake is done; when the peer closes the socket
in the same moment, its reader has already moved it to DISCONNECTING and ``connect``
raised a bare AssertionError. The monitor must report a clean VirtError instead (or, when
the hang-up is seen later, an EOF), never an assertion.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pyvirt.errors import VirtError
from pyvirt.qemu.monitor import Monitor

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0},
                                "package": ""}, "capabilities": []}}


async def _hang_up_after_handshake(reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter) -> None:
    writer.write(json.dumps(GREETING).encode() + b"\n")
    await writer.drain()
    await reader.read(4096)  # qmp_capabilities (qemu.qmp sends no id and no newline)
    writer.write(b'{"return": {}}\n')
    writer.close()  # no drain: the reply and the hang-up arrive together


async def test_hang_up_right_after_handshake_is_a_clean_error(tmp_path: Path) -> None:
    path = str(tmp_path / "mon.sock")
    server = await asyncio.start_unix_server(_hang_up_after_handshake, path)
    outcomes: set[str] = set()
    try:
        for _ in range(20):
            eof = asyncio.Event()

            async def on_eof(flag: asyncio.Event = eof) -> None:
                flag.set()

            monitor = Monitor("hangup", lambda *_: None, on_eof)
            try:
                await monitor.connect(path, 5.0, lambda: True)
            except VirtError:
                outcomes.add("refused")
            else:
                await asyncio.wait_for(eof.wait(), 5.0)
                outcomes.add("eof")
            finally:
                await monitor.close()
    finally:
        server.close()
        await server.wait_closed()
    assert outcomes <= {"refused", "eof"}, outcomes
