#!/usr/bin/env python3
"""A fake ``qemu-system-x86_64`` for fast driver tests with fault injection.

It answers ``--version`` and ``-machine help`` like QEMU 10, and otherwise serves QMP on
the monitor socket named in its command line (``-chardev socket,id=charmonitor,path=P``).
Behaviour is steered by the ``FAKE_QEMU_FAULTS`` environment variable (JSON):

- ``exit_before_monitor``: exit with this code before the monitor listens (start failure)
- ``fail_commands``: {command: description} answered with a GenericError
- ``ignore_sigterm``: keep running on SIGTERM (forces the driver's SIGKILL fallback)
- ``ignore_powerdown``: ``system_powerdown`` does nothing (a guest without ACPI support)
- ``delay_commands``: {command: seconds} before answering (a slow QEMU)

and by a control socket (``FAKE_QEMU_CONTROL`` = path prefix; the fake listens on
``PREFIX.<uuid>``) that accepts JSON lines ``{"emit": NAME, "data": {...}}`` or
``{"exit": CODE}`` so tests can inject guest events at a chosen moment.

Standard library only: it runs under whatever python3 the clean QEMU environment finds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

MACHINES = """Supported machines are:
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)
pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)
pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)
"""


class FakeQemu:
    def __init__(self, argv: list[str], faults: dict[str, Any]) -> None:
        self.argv = argv
        self.faults = faults
        self.status = "prelaunch" if "-S" in argv else "running"
        self.writers: list[asyncio.StreamWriter] = []
        self.done = asyncio.Event()
        self.exit_code = 0

    def option(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    def monitor_path(self) -> str:
        for i, arg in enumerate(self.argv):
            if arg == "-chardev" and "id=charmonitor" in self.argv[i + 1]:
                for part in self.argv[i + 1].split(","):
                    if part.startswith("path="):
                        return part[5:]
        raise SystemExit("fake qemu: no monitor chardev")

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        event = {"event": name, "data": data or {},
                 "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}
        line = (json.dumps(event) + "\r\n").encode()
        for writer in list(self.writers):
            writer.write(line)

    def quit(self, code: int = 0) -> None:
        self.exit_code = code
        self.done.set()

    # -- QMP commands ------------------------------------------------------------------

    def command(self, name: str, args: dict[str, Any]) -> Any:
        failure = self.faults.get("fail_commands", {}).get(name)
        if failure:
            raise CommandError(failure)
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise CommandError(f"The command {name} has not been found", "CommandNotFound")
        return handler(args)

    def cmd_qmp_capabilities(self, args: dict[str, Any]) -> Any:
        return {}

    def cmd_query_status(self, args: dict[str, Any]) -> Any:
        return {"status": self.status, "running": self.status == "running"}

    def cmd_cont(self, args: dict[str, Any]) -> Any:
        if self.status != "running":
            self.status = "running"
            self.emit("RESUME")
        return {}

    def cmd_stop(self, args: dict[str, Any]) -> Any:
        if self.status == "running":
            self.status = "paused"
            self.emit("STOP")
        return {}

    def cmd_system_powerdown(self, args: dict[str, Any]) -> Any:
        if not self.faults.get("ignore_powerdown"):
            asyncio.get_running_loop().call_later(0.05, self._guest_poweroff)
        return {}

    def _guest_poweroff(self) -> None:
        self.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        self.status = "shutdown"
        self.emit("STOP")

    def cmd_system_reset(self, args: dict[str, Any]) -> Any:
        self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        return {}

    def cmd_query_chardev(self, args: dict[str, Any]) -> Any:
        labels = [part[3:] for arg in self._chardev_args() for part in arg.split(",")
                  if part.startswith("id=")]
        return [{"label": label, "filename": f"pty:/dev/pts/{90 + i}", "frontend-open": False}
                for i, label in enumerate(labels) if label != "charmonitor"]

    def _chardev_args(self) -> list[str]:
        return [self.argv[i + 1] for i, a in enumerate(self.argv) if a == "-chardev"]

    def cmd_set_password(self, args: dict[str, Any]) -> Any:
        return {}

    def cmd_quit(self, args: dict[str, Any]) -> Any:
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        asyncio.get_running_loop().call_later(0.01, self.quit)
        return {}


class CommandError(Exception):
    def __init__(self, desc: str, klass: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.klass = klass


async def serve_qmp(fake: FakeQemu, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    greeting = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2},
                                    "package": "fake"}, "capabilities": []}}
    writer.write((json.dumps(greeting) + "\r\n").encode())
    fake.writers.append(writer)
    try:
        async for request in _json_stream(reader):
            delay = fake.faults.get("delay_commands", {}).get(request.get("execute"))
            if delay:
                await asyncio.sleep(float(delay))
            reply: dict[str, Any]
            try:
                result = fake.command(request["execute"], request.get("arguments", {}))
                reply = {"return": result}
            except CommandError as exc:
                reply = {"error": {"class": exc.klass, "desc": exc.desc}}
            if "id" in request:
                reply["id"] = request["id"]
            writer.write((json.dumps(reply) + "\r\n").encode())
            await writer.drain()
    except (ConnectionError, json.JSONDecodeError):
        pass
    finally:
        fake.writers.remove(writer)


async def _json_stream(reader: asyncio.StreamReader) -> Any:
    """Yield JSON objects from a stream; like QEMU, no newline is needed between them."""
    decoder = json.JSONDecoder()
    buffer = ""
    while chunk := await reader.read(65536):
        buffer += chunk.decode()
        while buffer.strip():
            stripped = buffer.lstrip()
            try:
                obj, end = decoder.raw_decode(stripped)
            except json.JSONDecodeError:
                break  # incomplete: wait for more bytes
            buffer = stripped[end:]
            yield obj


async def serve_control(fake: FakeQemu, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        order = json.loads(line)
        if "emit" in order:
            fake.emit(order["emit"], order.get("data"))
            if order["emit"] == "STOP":
                fake.status = "paused"
        if "exit" in order:
            fake.quit(int(order["exit"]))
        writer.write(b"ok\n")
        await writer.drain()


async def run(argv: list[str]) -> int:
    faults = json.loads(os.environ.get("FAKE_QEMU_FAULTS", "{}"))
    fake = FakeQemu(argv, faults)
    if "exit_before_monitor" in faults:
        print("fake qemu: injected start failure", file=sys.stderr)
        return int(faults["exit_before_monitor"])
    loop = asyncio.get_running_loop()
    if faults.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # Like QEMU: SIGTERM announces a host-initiated SHUTDOWN, then exits.
        loop.add_signal_handler(signal.SIGTERM, lambda: _terminate(fake))
    pidfile = fake.option("-pidfile")
    if pidfile:
        with open(pidfile, "w") as handle:
            handle.write(f"{os.getpid()}\n")
    server = await asyncio.start_unix_server(
        lambda r, w: serve_qmp(fake, r, w), path=fake.monitor_path())
    control_prefix = os.environ.get("FAKE_QEMU_CONTROL")
    if control_prefix:
        await asyncio.start_unix_server(lambda r, w: serve_control(fake, r, w),
                                        path=f"{control_prefix}.{fake.option('-uuid')}")
    async with server:
        await fake.done.wait()
    return fake.exit_code


def _terminate(fake: FakeQemu) -> None:
    fake.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
    asyncio.get_running_loop().call_later(0.01, fake.quit)


def main() -> int:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        print("QEMU emulator version 10.0.2 (fake)")
        return 0
    if argv == ["-machine", "help"]:
        print(MACHINES, end="")
        return 0
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
