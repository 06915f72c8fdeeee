"""Replay dumped frames against a fresh isolated daemon (debug logging on) and show what
happened: ``python -m tests.fuzz.replay [--socket rw|ro|admin] [--no-open] FILE...``.

Each FILE is a raw frame (``failure-NNN.bin`` from a failed run, length word included) or
its hex (``.txt``/``.hex``: the hex digits are read, anything else is ignored). The frames
are sent in order on one connection, after CONNECT_OPEN unless ``--no-open``; the replies,
the daemon's escaped exceptions and any canary change are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from pyvirt.rpc.admin_protocol import ADMIN
from pyvirt.rpc.packet import MessageStatus, read_packet
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_types import RemoteErrorXDR
from tests.fuzz.frames import call_frame
from tests.fuzz.harness import FuzzTarget, LogWatch, canary_changes, fuzz_target, snapshot

REPLY_WAIT_S = 3.0


def load_frame(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix in (".txt", ".hex"):
        text = data.decode("ascii", "replace")
        if "hex:" not in text:
            raise SystemExit(f"{path}: no frame in this file (a failure seen in the log)")
        lines = text.split("hex:", 1)[1].splitlines()
        return bytes.fromhex("".join(line.strip() for line in lines
                                     if re.fullmatch(r"\s*(?:[0-9a-f]{2})+\s*", line)))
    return data


async def replay(target: FuzzTarget, socket_kind: str, frames: list[bytes], opened: bool) -> None:
    daemon = target.daemon
    path = {"rw": daemon.sock, "ro": daemon.ro_sock, "admin": daemon.admin_sock}[socket_kind]
    reader, writer = await asyncio.open_unix_connection(str(path))
    if opened:
        program = ADMIN if socket_kind == "admin" else REMOTE
        args = {"flags": 0} if socket_kind == "admin" else {"name": "qemu:///system", "flags": 0}
        spec = program.procs[1]
        writer.write(call_frame(program, spec, 0xF0000000, spec.encode_args(args), "open").data)
    for frame in frames:
        writer.write(frame)
    await writer.drain()
    try:
        while (packet := await asyncio.wait_for(read_packet(reader), REPLY_WAIT_S)) is not None:
            detail = ""
            if packet.header.status == MessageStatus.ERROR:
                detail = str(RemoteErrorXDR.decode(packet.payload).message)
            print(f"<- {packet.header.describe()} {detail}")
    except (TimeoutError, ConnectionError) as exc:
        print(f"(no more packets: {type(exc).__name__})")
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.replay", description=__doc__)
    parser.add_argument("--socket", choices=("rw", "ro", "admin"), default="rw")
    parser.add_argument("--no-open", action="store_true")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    frames = [load_frame(path) for path in args.files]
    with fuzz_target({"log_filters": "1:pyvirt.rpc.server_client"}) as target:
        asyncio.run(replay(target, args.socket, frames, not args.no_open))
        bad = LogWatch(target.log_files()).poll()
        changes = canary_changes(target.canary_before, snapshot(target.root))
    for line in bad:
        print(f"daemon log: {line}")
    for change in changes:
        print(f"canary: {change}")
    return 1 if bad or changes else 0


if __name__ == "__main__":
    sys.exit(main())
