#!/usr/bin/env python3
"""A fake ``qemu-system-x86_64`` for fast driver tests with fault injection.

It answers ``--version`` and ``-machine help`` like QEMU 10, and otherwise serves QMP on
the monitor socket named in its command line (``-chardev socket,id=charmonitor,path=P``).
Behaviour is steered by the ``FAKE_QEMU_FAULTS`` environment variable (JSON), merged with
the JSON file named by ``FAKE_QEMU_FAULTS_FILE`` (read at start, so a test can change what
the next QEMU a daemon starts does):

- ``exit_before_monitor``: exit with this code before the monitor listens (start failure)
- ``fail_commands``: {command: description} answered with a GenericError
- ``ignore_sigterm``: keep running on SIGTERM (forces the driver's SIGKILL fallback)
- ``ignore_powerdown``: ``system_powerdown`` does nothing (a guest without ACPI support)
- ``delay_commands``: {command: seconds} before answering (a slow QEMU)
- migration: ``ram_bytes``, ``migrate_duration_s``, ``migrate_fail_after_s``,
  ``incoming_die_after_bytes``, ``postcopy_break_after_s`` (below)
- storage migration (NBD, mirrors): see ``fake_qemu_block.py``

and by a control socket (``FAKE_QEMU_CONTROL`` = path prefix; the fake listens on
``PREFIX.<uuid>``) that accepts JSON lines ``{"emit": NAME, "data": {...}}``,
``{"exit": CODE}`` or ``{"faults": {...}}`` (replace the faults) so tests can inject guest
events at a chosen moment.

Migration model (QEMU 10's QMP surface, a toy stream)::

    source                                        destination (-incoming defer | tcp:H:P)
    migrate {"uri": "tcp:H:P"}                    migrate-incoming {"uri": "tcp:H:P"}: listen
      setup ─ connect ───────────────────────────► accept, stop listening     setup → active
      MIGRATION_PASS 1, active
      "QEVM {header}\\n"  (caps, multifd settings) ► header checked (multifd must match)
      "D...\\n" x chunks  paced by max-bandwidth ───► bytes counted
      STOP (runstate finish-migrate), PASS 2
      "E\\n" ─────────────────────────────────────► completed; runstate paused (or running
      ◄──────────────────────────── "OK\\n"           without -S, RESUME)
      completed; runstate postmigrate      (the "OK" only with the return-path capability)

Post-copy (``postcopy-ram`` on both ends): ``migrate-start-postcopy`` during the copy makes
the source stop the guest and send ``"P\\n"`` before the rest of its RAM; both ends report
``postcopy-active`` and the destination runs the guest (resumed if started without ``-S``,
else at ``cont``) while the remaining pages follow. A stream that breaks then leaves both
ends in ``postcopy-paused``, alive, each holding part of the guest (as QEMU: no ``failed``,
no exit).

Instead of ``tcp:``, both ends take ``fd:NAME``: a socket passed over the monitor with
SCM_RIGHTS and named by ``getfd`` (tunnelled migration).
Each 256 KiB of *virtual* guest RAM travels as one 1 KiB line, so 64 MiB cost 256 KiB.
``MIGRATION`` events are sent only when the ``events`` capability is on (as in QEMU).
``migrate_cancel`` or a failure leaves the guest running (QEMU restarts a guest it stopped
for the switchover; one paused before the migration stays paused). A destination whose
stream breaks reports ``failed`` and exits 1, as QEMU's "load of migration failed" does.
Migration faults:

- ``ram_bytes``: guest RAM to send (default: ``-m``, else 64 MiB)
- ``migrate_duration_s``: pace the copy so it takes at least this long
- ``migrate_fail_after_s``: the source reports ``failed`` (with ``error-desc``) then
- ``incoming_die_after_bytes``: the destination SIGKILLs itself after so many RAM bytes
- ``postcopy_break_after_s``: the source breaks the link this long after the post-copy
  switchover (both ends go ``postcopy-paused``); ``migrate-pause`` does the same at once

Every command but queries is appended to the JSON-lines journal ``FAKE_QEMU_JOURNAL``
(``{"t", "pid", "name", "uuid", "incoming", "cmd", "args"}``), so tests can assert exactly
what each side set.

Standard library only: it runs under whatever python3 the clean QEMU environment finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from array import array
from typing import Any

try:  # run as a script (how the daemons start it): this directory is on sys.path
    from fake_qemu_block import Block, BlockError  # type: ignore[import-not-found]
except ModuleNotFoundError:  # imported from the tests package (type checking, tools)
    from tests.fakes.fake_qemu_block import Block, BlockError

MACHINES = """Supported machines are:
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)
pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)
pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)
"""

#: QEMU 10.0.2's migration capabilities (reference/migration.md section 0)
CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram",
    "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd",
    "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
    "switchover-ack", "dirty-limit", "mapped-ram",
)
MIB = 1024 * 1024
#: QEMU 10.0.2's migration parameter defaults
PARAMETERS: dict[str, Any] = {
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "downtime-limit": 300, "max-bandwidth": 128 * MIB, "avail-switchover-bandwidth": 0,
    "xbzrle-cache-size": 64 * MIB, "multifd-channels": 2, "multifd-compression": "none",
    "multifd-zlib-level": 1, "multifd-zstd-level": 1, "zero-page-detection": "multifd",
    "cpu-throttle-initial": 20, "cpu-throttle-increment": 10, "cpu-throttle-tailslow": False,
    "max-cpu-throttle": 99, "throttle-trigger-threshold": 50, "vcpu-dirty-limit": 1,
    "x-vcpu-dirty-limit-period": 1000, "max-postcopy-bandwidth": 0, "mode": "normal",
    "direct-io": False, "tls-creds": "", "tls-hostname": "", "tls-authz": "",
}
#: what must agree on both ends or the stream is unreadable
MULTIFD_KEYS = ("multifd-channels", "multifd-compression")
CHUNK = 256 * 1024  # virtual bytes per stream line
SCALE = 256  # virtual bytes per real byte
ACTIVE = frozenset({"setup", "active", "postcopy-active", "postcopy-paused", "pre-switchover",
                    "device", "cancelling"})


class FakeQemu:
    def __init__(self, argv: list[str], faults: dict[str, Any]) -> None:
        self.argv = argv
        self.faults = faults
        self.incoming = self.option("-incoming")
        self.status = "inmigrate" if self.incoming else \
            "prelaunch" if "-S" in argv else "running"
        self.writers: list[QmpWriter] = []
        #: descriptors passed over the monitor (SCM_RIGHTS), then named by ``getfd``
        self.passed_fds: list[int] = []
        self.fds: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.exit_code = 0
        self.caps = dict.fromkeys(CAPABILITIES, False)
        self.params = dict(PARAMETERS)
        self.mig = Migration(self)
        self.block = Block(self)

    def option(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    def monitor_path(self) -> str:
        for i, arg in enumerate(self.argv):
            if arg == "-chardev" and "id=charmonitor" in self.argv[i + 1]:
                for part in self.argv[i + 1].split(","):
                    if part.startswith("path="):
                        return part[5:]
        raise SystemExit("fake qemu: no monitor chardev")

    def guest_name(self) -> str:
        return (self.option("-name") or "").split(",")[0].removeprefix("guest=")

    def ram_bytes(self) -> int:
        if "ram_bytes" in self.faults:
            return int(self.faults["ram_bytes"])
        size = (self.option("-m") or "").split(",")[0].removeprefix("size=")
        units = {"k": 1024, "M": MIB, "G": 1024 * MIB}
        if size[-1:] in units:
            return int(size[:-1]) * units[size[-1]]
        return int(size) * MIB if size.isdigit() else 64 * MIB

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        event = {"event": name, "data": data or {},
                 "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}
        line = (json.dumps(event) + "\r\n").encode()
        for writer in list(self.writers):
            writer.write(line)

    def set_runstate(self, status: str) -> None:
        """Change the run state with QEMU's STOP/RESUME events."""
        was_running, self.status = self.status == "running", status
        if was_running and status != "running":
            self.emit("STOP")
        elif not was_running and status == "running":
            self.emit("RESUME")

    def quit(self, code: int = 0) -> None:
        self.exit_code = code
        self.done.set()

    def journal(self, name: str, args: dict[str, Any]) -> None:
        path = os.environ.get("FAKE_QEMU_JOURNAL")
        if not path or name.startswith("query-") or name == "qmp_capabilities":
            return
        entry = {"t": time.time(), "pid": os.getpid(), "name": self.guest_name(),
                 "uuid": self.option("-uuid"), "incoming": bool(self.incoming),
                 "cmd": name, "args": args}
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    # -- QMP commands ------------------------------------------------------------------

    def command(self, name: str, args: dict[str, Any]) -> Any:
        self.journal(name, args)
        failure = self.faults.get("fail_commands", {}).get(name)
        if failure:
            raise CommandError(failure)
        method = "cmd_" + name.replace("-", "_")
        handler = next((getattr(part, method) for part in (self, self.mig, self.block)
                        if hasattr(part, method)), None)
        if handler is None:
            raise CommandError(f"The command {name} has not been found", "CommandNotFound")
        try:
            result = handler(args)
        except BlockError as exc:
            raise CommandError(str(exc)) from exc
        if asyncio.iscoroutine(result):
            return _block_errors(result)
        return result

    def cmd_qmp_capabilities(self, args: dict[str, Any]) -> Any:
        return {}

    def cmd_query_status(self, args: dict[str, Any]) -> Any:
        return {"status": self.status, "running": self.status == "running"}

    def cmd_cont(self, args: dict[str, Any]) -> Any:
        if self.status == "inmigrate":
            self.mig.autostart = True  # QEMU: resume once the incoming migration completes
        elif self.status != "running":
            self.set_runstate("running")
        return {}

    def cmd_stop(self, args: dict[str, Any]) -> Any:
        if self.status == "running":
            self.set_runstate("paused")
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

    def cmd_getfd(self, args: dict[str, Any]) -> Any:
        if not self.passed_fds:
            raise CommandError("No file descriptor supplied via SCM_RIGHTS")
        self.fds[args["fdname"]] = self.passed_fds.pop(0)
        return {}

    def take_fd(self, uri: str) -> socket.socket:
        """The socket behind ``fd:NAME`` (a migration URI), or a QMP error."""
        fd = self.fds.pop(uri.removeprefix("fd:"), None)
        if fd is None:
            raise CommandError(f"File descriptor named '{uri[3:]}' has not been found")
        return socket.socket(fileno=fd)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def cmd_quit(self, args: dict[str, Any]) -> Any:
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        asyncio.get_running_loop().call_later(0.01, self.quit)
        return {}


async def _block_errors(result: Any) -> Any:
    try:
        return await result
    except BlockError as exc:
        raise CommandError(str(exc)) from exc


class CommandError(Exception):
    def __init__(self, desc: str, klass: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.klass = klass


class Migration:
    """One QEMU's migration state: the QMP commands and both ends of the toy stream."""

    def __init__(self, vm: FakeQemu) -> None:
        self.vm = vm
        self.status = "none"
        self.error = ""
        self.sent = self.passes = 0
        self.started = self.setup_done = self.ended = self.stopped_at = 0.0
        self.autostart = "-S" not in vm.argv
        self.was_running = self.outgoing = False
        self.task: asyncio.Task[None] | None = None
        self.server: asyncio.AbstractServer | None = None
        self.continued = asyncio.Event()
        #: migrate-start-postcopy was asked; when the switch to post-copy happened
        self.postcopy_requested = False
        #: migrate-pause was asked (post-copy): the link is cut at the next chunk
        self.pause_requested = False
        self.postcopy_since = 0.0

    def set_status(self, status: str, error: str = "") -> None:
        self.status, self.error = status, error or self.error
        if status in ("completed", "failed", "cancelled"):
            self.ended = time.monotonic()
        if self.vm.caps["events"]:
            self.vm.emit("MIGRATION", {"status": status})

    def pass_done(self) -> None:
        self.passes += 1
        if self.vm.caps["events"]:
            self.vm.emit("MIGRATION_PASS", {"pass": self.passes})

    # -- configuration ---------------------------------------------------------------

    def cmd_query_migrate_capabilities(self, args: dict[str, Any]) -> Any:
        return [{"capability": n, "state": s} for n, s in self.vm.caps.items()]

    def cmd_query_migrate_parameters(self, args: dict[str, Any]) -> Any:
        return dict(self.vm.params)

    def cmd_migrate_set_capabilities(self, args: dict[str, Any]) -> Any:
        if self.status in ACTIVE:
            raise CommandError("There's a migration process in progress")
        new = dict(self.vm.caps)
        for item in args.get("capabilities", []):
            if item["capability"] not in new:
                raise CommandError(f"Parameter 'capability' does not accept value "
                                   f"'{item['capability']}'")
            new[item["capability"]] = bool(item["state"])
        if new["postcopy-ram"] and new["multifd"]:
            raise CommandError("Postcopy is not yet compatible with multifd")
        self.vm.caps = new
        return {}

    def cmd_migrate_set_parameters(self, args: dict[str, Any]) -> Any:
        for key, value in args.items():
            if key not in PARAMETERS:
                raise CommandError(f"Parameter '{key}' is unexpected")
            if type(value) is not type(PARAMETERS[key]):
                raise CommandError(f"Invalid parameter type for '{key}'")
        self.vm.params.update(args)
        return {}

    # -- queries and control ---------------------------------------------------------

    def cmd_query_migrate(self, args: dict[str, Any]) -> Any:
        info: dict[str, Any] = {"status": self.status}
        if not self.outgoing:
            return info  # a destination reports only its state
        now = self.ended or time.monotonic()
        elapsed = max(now - self.started, 1e-3)
        total = self.vm.ram_bytes()
        info["total-time"] = int(elapsed * 1000)
        info["setup-time"] = int(max(self.setup_done - self.started, 0) * 1000)
        info["ram"] = {
            "total": total, "transferred": self.sent, "remaining": max(total - self.sent, 0),
            "duplicate": 0, "normal": self.sent // 4096, "normal-bytes": self.sent,
            "mbps": round(self.sent * 8 / elapsed / 1e6, 3), "dirty-sync-count": self.passes,
            "page-size": 4096, "dirty-pages-rate": 0, "postcopy-requests": 0,
        }
        if self.status == "completed":
            info["downtime"] = int((self.ended - (self.stopped_at or self.ended)) * 1000) + 1
        else:
            info["expected-downtime"] = self.vm.params["downtime-limit"]
        if self.vm.caps["xbzrle"]:
            info["xbzrle-cache"] = {"cache-size": self.vm.params["xbzrle-cache-size"],
                                    **dict.fromkeys(("bytes", "pages", "cache-miss"), 0)}
        if self.vm.caps["auto-converge"] and self.status == "active":
            info["cpu-throttle-percentage"] = self.vm.params["cpu-throttle-initial"]
        if self.error:
            info["error-desc"] = self.error
        return info

    def cmd_migrate_cancel(self, args: dict[str, Any]) -> Any:
        if self.status in ("setup", "active", "pre-switchover") and self.task is not None:
            self.set_status("cancelling")
            self.task.cancel()
        return {}

    def cmd_migrate_start_postcopy(self, args: dict[str, Any]) -> Any:
        if not self.vm.caps["postcopy-ram"]:
            raise CommandError("Enable postcopy with migrate_set_capability before the "
                               "start of migration")
        if self.status == "none":
            raise CommandError("Postcopy must be started after migration has been started")
        self.postcopy_requested = True
        return {}

    def cmd_migrate_pause(self, args: dict[str, Any]) -> Any:
        """Interrupt a post-copy migration: the link is cut, both ends go postcopy-paused."""
        if self.status != "postcopy-active":
            raise CommandError("migrate-pause is currently only supported during "
                               "postcopy-active or postcopy-recover state")
        self.pause_requested = True
        return {}

    def cmd_migrate_continue(self, args: dict[str, Any]) -> Any:
        if self.status != args.get("state"):
            raise CommandError(f"Migration not in expected state: {self.status}")
        self.continued.set()
        return {}

    # -- source ----------------------------------------------------------------------

    def cmd_migrate(self, args: dict[str, Any]) -> Any:
        if self.vm.status == "inmigrate":
            raise CommandError("Guest is waiting for an incoming migration")
        if self.status in ACTIVE:
            raise CommandError("There's a migration process in progress")
        uri = str(args.get("uri", ""))
        target = self.vm.take_fd(uri) if uri.startswith("fd:") else parse_tcp(uri)
        self.sent = self.passes = 0
        self.error, self.ended, self.stopped_at = "", 0.0, 0.0
        self.postcopy_requested = self.pause_requested = False
        self.started = time.monotonic()
        self.was_running, self.outgoing = self.vm.status == "running", True
        self.set_status("setup")
        self.task = self.vm.spawn(self._outgoing(target))
        self.task.add_done_callback(self._reap)
        return {}

    def _reap(self, task: asyncio.Task[None]) -> None:
        """Whatever ended the copy (even a cancel before it ran), the state is final."""
        if not task.cancelled() and task.exception() is not None:
            print(f"fake qemu: migration: {task.exception()!r}", file=sys.stderr)
        if self.status == "cancelling":
            self._ended_badly("cancelled")
        elif self.status not in ("completed", "failed", "cancelled", "postcopy-paused"):
            self._ended_badly("failed", "fake qemu: the migration ended unexpectedly")

    async def _outgoing(self, target: socket.socket | tuple[str, int]) -> None:
        writer = None
        try:
            reader, writer = await _connect(target)
            self.setup_done = time.monotonic()
            self.pass_done()
            self.set_status("active")
            header = {"caps": [c for c, on in self.vm.caps.items() if on],
                      **{k: self.vm.params[k] for k in MULTIFD_KEYS}}
            writer.write(b"QEVM " + json.dumps(header).encode() + b"\n")
            await self._send_ram(writer)
            if self.postcopy_requested:
                await self._postcopy(writer)
            await self._switchover(reader, writer)
        except asyncio.CancelledError:
            self._ended_badly("cancelled")
        except (StreamError, OSError) as exc:
            error = str(exc) if isinstance(exc, StreamError) \
                else f"Unable to write to socket: {exc.strerror or exc}"
            if self.status == "postcopy-active":  # the guest runs on the other end now
                self.set_status("postcopy-paused", error)
            else:
                self._ended_badly("failed", error)
        finally:
            if writer is not None:
                writer.close()

    def _ended_badly(self, status: str, error: str = "") -> None:
        """QEMU restarts a guest it stopped for the switchover (migration_iteration_finish)."""
        self.set_status(status, error)
        if self.vm.status == "finish-migrate":
            self.vm.set_runstate("running" if self.was_running else "paused")

    async def _send_ram(self, writer: asyncio.StreamWriter) -> None:
        total = self.vm.ram_bytes()
        duration = float(self.vm.faults.get("migrate_duration_s", 0))
        fail_after = self.vm.faults.get("migrate_fail_after_s")
        line = b"D" + b"." * (CHUNK // SCALE - 2) + b"\n"
        break_after = self.vm.faults.get("postcopy_break_after_s")
        while self.sent < total:
            if self.postcopy_requested and self.status == "active":
                return  # switch to post-copy with this much RAM still to send
            elapsed = time.monotonic() - self.started
            if fail_after is not None and elapsed >= float(fail_after):
                raise StreamError("fake qemu: injected migration failure")
            if self.status == "postcopy-active" and break_after is not None \
                    and time.monotonic() - self.postcopy_since >= float(break_after):
                raise StreamError("fake qemu: injected post-copy link failure")
            if self.status == "postcopy-active" and self.pause_requested:
                raise StreamError("fake qemu: post-copy paused by migrate-pause")
            rate = max(float(self.vm.params["max-bandwidth"]), 1.0)
            step = min(CHUNK, total - self.sent)  # this chunk is due once sent at the rate
            due = max((self.sent + step) / rate, duration * (self.sent + step) / total)
            if due > elapsed:
                await asyncio.sleep(min(due - elapsed, 0.05))
                continue
            writer.write(line)
            await writer.drain()
            self.sent += step

    async def _postcopy(self, writer: asyncio.StreamWriter) -> None:
        """Hand the guest to the destination ("P"), then send the rest of its RAM."""
        self.stopped_at = time.monotonic()
        if self.vm.status == "running":
            self.vm.set_runstate("finish-migrate")
        self.pass_done()
        writer.write(b"P\n")
        await writer.drain()
        self.postcopy_since = time.monotonic()
        self.set_status("postcopy-active")
        await self._send_ram(writer)

    async def _switchover(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.stopped_at = self.stopped_at or time.monotonic()
        if self.vm.status == "running":
            self.vm.set_runstate("finish-migrate")
        if self.vm.caps["pause-before-switchover"] and self.status == "active":
            self.continued = asyncio.Event()
            self.set_status("pre-switchover")
            await self.continued.wait()
            self.set_status("device")
        self.pass_done()
        writer.write(b"E\n")
        await writer.drain()
        if self.vm.caps["return-path"]:  # the destination confirms the end of the stream
            try:
                ack = await asyncio.wait_for(reader.readline(), 10)
            except TimeoutError:
                ack = b""
            if ack != b"OK\n":
                raise StreamError("Unable to read from socket: Connection reset by peer")
        if self.vm.status == "finish-migrate":
            self.vm.status = "postmigrate"
        self.set_status("completed")

    # -- destination -----------------------------------------------------------------

    def cmd_migrate_incoming(self, args: dict[str, Any]) -> Any:
        if self.vm.incoming != "defer":
            raise CommandError("'-incoming' was not specified on the command line")
        if self.status != "none":
            raise CommandError("The incoming migration has already been started")
        return self.listen(args.get("uri", ""))

    async def listen(self, uri: str) -> dict[str, Any]:
        if uri.startswith("fd:"):  # the stream comes on a socket handed over with getfd
            reader, writer = await asyncio.open_connection(sock=self.vm.take_fd(uri))
            self.set_status("setup")
            self.vm.spawn(self._incoming(reader, writer))
            return {}
        host, port = parse_tcp(uri)
        try:
            self.server = await asyncio.start_server(self._incoming, host.strip("[]"), port)
        except OSError as exc:
            raise CommandError(f"Failed to bind socket: {exc.strerror}") from exc
        self.set_status("setup")
        return {}

    async def _incoming(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        if self.status != "setup":
            writer.close()
            return
        if self.server is not None:
            self.server.close()  # QEMU stops listening once the source is connected
        self.set_status("active")
        try:
            if await self._receive(reader):
                writer.write(b"OK\n")
                await writer.drain()
        except (StreamError, OSError) as exc:
            if self.status == "postcopy-active":  # part of the guest is only here: keep it
                print(f"fake qemu: post-copy paused: {exc}", file=sys.stderr)
                self.set_status("postcopy-paused", str(exc))
                writer.close()
                return
            print(f"fake qemu: load of migration failed: {exc}", file=sys.stderr)
            self.set_status("failed", str(exc))
            asyncio.get_running_loop().call_later(0.05, self.vm.quit, 1)
            return
        postcopy = self.status == "postcopy-active"  # then the guest's run state is set
        self.set_status("completed")
        if not postcopy:
            self.vm.set_runstate("running" if self.autostart else "paused")

    async def _receive(self, reader: asyncio.StreamReader) -> bool:
        """Read the stream; True: the source wants the return path's confirmation."""
        header = await reader.readline()
        if not header.startswith(b"QEVM "):
            raise StreamError("Input/output error")
        sent = json.loads(header[5:])
        mine = {k: self.vm.params[k] for k in MULTIFD_KEYS}
        multifd = "multifd" in sent["caps"]
        if multifd != self.vm.caps["multifd"] or (
                multifd and any(sent[k] != mine[k] for k in MULTIFD_KEYS)):
            raise StreamError("multifd settings differ between source and destination")
        die_after = self.vm.faults.get("incoming_die_after_bytes")
        received = 0
        while (line := await reader.readline()) != b"E\n":
            if line == b"P\n":  # post-copy: the guest runs here from now on
                self.set_status("postcopy-active")
                self.vm.set_runstate("running" if self.autostart else "paused")
                continue
            if not line.endswith(b"\n"):
                raise StreamError("Input/output error (stream ended early)")
            received += len(line) * SCALE
            if die_after is not None and received >= int(die_after):
                os.kill(os.getpid(), signal.SIGKILL)
        return "return-path" in sent["caps"]


class StreamError(Exception):
    """A migration stream failure, worded as QEMU's error-desc."""


async def _connect(target: socket.socket | tuple[str, int],
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(target, socket.socket):
        return await asyncio.open_connection(sock=target)
    try:
        return await asyncio.open_connection(*target)
    except OSError as exc:
        raise StreamError(f"Failed to connect to '{target[0]}:{target[1]}': "
                          f"{exc.strerror}") from exc


def parse_tcp(uri: str) -> tuple[str, int]:
    """``tcp:HOST:PORT`` (HOST may be ``[v6]``) → (host, port), or a QMP error."""
    rest = uri.removeprefix("tcp:")
    host, _, port = rest.rpartition(":")
    if not uri.startswith("tcp:") or not host or not port.isdigit():
        raise CommandError(f"fake qemu: unsupported migration URI '{uri}'")
    return host.strip("[]"), int(port)


class QmpWriter:
    """The sending half of a monitor connection (small messages: plain blocking sends)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.conn.sendall(data)

    async def drain(self) -> None:
        return None


async def serve_monitor(fake: FakeQemu, listener: socket.socket) -> None:
    """Accept monitor connections; read them with recvmsg so that descriptors passed with
    SCM_RIGHTS (for ``getfd``) reach ``fake.passed_fds``."""
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(True)
        reader = asyncio.StreamReader()
        loop.add_reader(conn.fileno(), _read_monitor, fake, conn, reader)
        fake.spawn(serve_qmp(fake, reader, QmpWriter(conn)))


def _read_monitor(fake: FakeQemu, conn: socket.socket, reader: asyncio.StreamReader) -> None:
    try:
        data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(64), socket.MSG_DONTWAIT)
    except BlockingIOError:
        return
    except OSError:
        data, ancdata = b"", []
    for level, kind, payload in ancdata:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fake.passed_fds.extend(array("i", payload[:len(payload) - len(payload) % 4]))
    if data:
        reader.feed_data(data)
    else:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        reader.feed_eof()


async def serve_qmp(fake: FakeQemu, reader: asyncio.StreamReader, writer: QmpWriter) -> None:
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
                if asyncio.iscoroutine(result):
                    result = await result
                reply = {"return": result}
            except CommandError as exc:
                reply = {"error": {"class": exc.klass, "desc": exc.desc}}
            if "id" in request:
                reply["id"] = request["id"]
            writer.write((json.dumps(reply) + "\r\n").encode())
            await writer.drain()
    except (ConnectionError, json.JSONDecodeError, asyncio.CancelledError):
        pass  # the client left, or the fake is exiting
    finally:
        fake.writers.remove(writer)
        asyncio.get_running_loop().remove_reader(writer.conn.fileno())
        writer.conn.close()


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
        if "faults" in order:
            fake.faults = dict(order["faults"])
        writer.write(b"ok\n")
        await writer.drain()


def load_faults() -> dict[str, Any]:
    faults: dict[str, Any] = json.loads(os.environ.get("FAKE_QEMU_FAULTS", "{}"))
    path = os.environ.get("FAKE_QEMU_FAULTS_FILE")
    if path:
        with contextlib.suppress(FileNotFoundError), open(path) as handle:
            faults.update(json.load(handle))
    return faults


async def run(argv: list[str]) -> int:
    faults = load_faults()
    fake = FakeQemu(argv, faults)
    if "exit_before_monitor" in faults:
        print("fake qemu: injected start failure", file=sys.stderr)
        return int(faults["exit_before_monitor"])
    for path in fake.block.missing_images():  # as QEMU: every image is opened at start
        print(f"fake qemu: Could not open '{path}': No such file or directory", file=sys.stderr)
        return 1
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
    if fake.incoming not in (None, "defer"):
        await fake.mig.listen(str(fake.incoming))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fake.monitor_path())  # a stale socket, as asyncio's unix servers do
    listener.bind(fake.monitor_path())
    listener.listen()
    listener.setblocking(False)
    fake.spawn(serve_monitor(fake, listener))
    control_prefix = os.environ.get("FAKE_QEMU_CONTROL")
    if control_prefix:
        await asyncio.start_unix_server(lambda r, w: serve_control(fake, r, w),
                                        path=f"{control_prefix}.{fake.option('-uuid')}")
    await fake.done.wait()
    listener.close()
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
