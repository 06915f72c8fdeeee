"""The fake QEMU's block layer: disk images, an NBD server and mirror jobs (storage migration).

QEMU 10's QMP surface for NBD storage migration, over a toy protocol::

    destination                                   source
    nbd-server-start {addr}: listen               blockdev-add {driver: nbd, server, export}
    block-export-add {name, node-name, writable}    connect ─► "EXPORT name\\n" ◄─ "OK\\n"
                                                  blockdev-add {driver: raw, file}
                                                  blockdev-mirror {job-id, device, target,
                                                                   sync, copy-mode, speed}
         ◄──────────────── "W n\\n" per 256 KiB ──   copy the image's virtual size, paced
         ──── "OK\\n" | "ERR No space left…\\n" ──►   BLOCK_JOB_READY
                                                  block-job-cancel {force: false} on a READY
         ◄──────────────────────── "FLUSH\\n" ──     job: BLOCK_JOB_COMPLETED; forced or not
    nbd-server-stop: close all                      ready: BLOCK_JOB_CANCELLED
                                                  blockdev-del {node-name}

Disk images are the files of the ``-blockdev`` nodes in the command line: a missing file makes
QEMU exit at start (as QEMU's "Could not open"), so a destination must pre-create it first.
``query-named-block-nodes`` reports each format node's image (raw: the file's size; qcow2:
the size and backing file in its header).

Faults (``FAKE_QEMU_FAULTS``): ``mirror_duration_s`` (pace each mirror's copy),
``mirror_error`` (the source's mirror fails half-way with this error), and, on the
destination, ``nbd_full_after_bytes`` (the export answers ENOSPC after so many bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.fake_qemu import FakeQemu

CHUNK = 256 * 1024  # virtual bytes per protocol line
ENOSPC = "No space left on device"


class BlockError(Exception):
    """A QMP error of the block layer (the fake turns it into GenericError)."""


def image_info(path: str, fmt: str) -> dict[str, Any]:
    """QEMU's ImageInfo of a raw or qcow2 file (size, allocation, backing file)."""
    stat = os.stat(path)
    info: dict[str, Any] = {"filename": path, "format": fmt, "virtual-size": stat.st_size,
                            "actual-size": stat.st_blocks * 512, "dirty-flag": False}
    if fmt == "qcow2":
        with open(path, "rb") as handle:
            header = handle.read(32)
            offset, size = struct.unpack(">QI", header[8:20])
            info["virtual-size"] = struct.unpack(">Q", header[24:32])[0]
            if offset and size:
                handle.seek(offset)
                backing = handle.read(size).decode()
                info["backing-filename"] = info["full-backing-filename"] = backing
    return info


@dataclass
class Mirror:
    job_id: str
    length: int
    speed: int
    client: NbdClient
    offset: int = 0
    ready: bool = False
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    force: bool = False
    task: asyncio.Task[None] | None = None

    def event_data(self) -> dict[str, Any]:
        return {"device": self.job_id, "type": "mirror", "len": self.length,
                "offset": self.offset, "speed": self.speed}


@dataclass
class NbdClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self, line: bytes) -> str:
        self.writer.write(line)
        await self.writer.drain()
        reply = await self.reader.readline()
        if not reply:
            raise BlockError("Unable to read from socket: Connection reset by peer")
        return reply.decode().strip()


class Block:
    """One fake QEMU's block layer (commands ``cmd_*``, dispatched by FakeQemu.command)."""

    def __init__(self, vm: FakeQemu) -> None:
        self.vm = vm
        #: node name → -blockdev options (from the command line, then blockdev-add)
        self.nodes: dict[str, dict[str, Any]] = {}
        for i, arg in enumerate(vm.argv):
            if arg == "-blockdev":
                options = json.loads(vm.argv[i + 1])
                self.nodes[options["node-name"]] = options
        self.clients: dict[str, NbdClient] = {}
        self.jobs: dict[str, Mirror] = {}
        self.server: asyncio.AbstractServer | None = None
        self.exports: dict[str, dict[str, Any]] = {}
        self.connections: list[asyncio.StreamWriter] = []
        self.received = 0

    def missing_images(self) -> list[str]:
        return [str(o["filename"]) for o in self.nodes.values()
                if "filename" in o and not os.path.exists(str(o["filename"]))]

    def _image(self, node: str) -> dict[str, Any]:
        options = self.nodes[node]
        storage = self.nodes.get(str(options.get("file", "")), {})
        if "filename" not in storage:
            return {}
        return image_info(str(storage["filename"]), str(options.get("driver", "raw")))

    def cmd_query_named_block_nodes(self, args: dict[str, Any]) -> Any:
        out = []
        for name, options in self.nodes.items():
            entry: dict[str, Any] = {"node-name": name, "drv": options.get("driver")}
            if "file" in options:
                entry["image"] = self._image(name)
            out.append(entry)
        return out

    # -- destination: NBD server -------------------------------------------------------

    async def cmd_nbd_server_start(self, args: dict[str, Any]) -> Any:
        if self.server is not None:
            raise BlockError("NBD server already running")
        addr = args["addr"]
        try:
            if addr["type"] == "unix":
                self.server = await asyncio.start_unix_server(self._serve, addr["data"]["path"])
            else:
                data = addr["data"]
                self.server = await asyncio.start_server(self._serve, data["host"],
                                                         int(data["port"]))
        except OSError as exc:
            raise BlockError(f"Failed to bind socket: {exc.strerror}") from exc
        return {}

    def cmd_block_export_add(self, args: dict[str, Any]) -> Any:
        if self.server is None:
            raise BlockError("NBD server not running")
        if args.get("node-name") not in self.nodes:
            raise BlockError(f"Cannot find device={args.get('node-name')} nor node-name")
        self.exports[str(args["name"])] = args
        return {}

    def cmd_nbd_server_stop(self, args: dict[str, Any]) -> Any:
        if self.server is None:
            raise BlockError("NBD server not running")
        self.server.close()
        self.server = None
        self.exports.clear()
        for writer in self.connections:
            writer.close()
        return {}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        full_after = self.vm.faults.get("nbd_full_after_bytes")
        with contextlib.suppress(OSError, ConnectionError):
            while line := await reader.readline():
                word, _, rest = line.decode().strip().partition(" ")
                if word == "EXPORT":
                    reply = "OK" if rest in self.exports else f"ERR export '{rest}' not found"
                elif word == "W":
                    self.received += int(rest)
                    full = full_after is not None and self.received > int(full_after)
                    reply = f"ERR {ENOSPC}" if full else "OK"
                else:
                    reply = "OK"
                writer.write(reply.encode() + b"\n")
                await writer.drain()

    # -- source: NBD clients and mirrors ------------------------------------------------

    async def cmd_blockdev_add(self, args: dict[str, Any]) -> Any:
        name = str(args["node-name"])
        if name in self.nodes:
            raise BlockError(f"Duplicate nodes with node-name='{name}'")
        if args["driver"] == "nbd":
            self.clients[name] = await self._connect(args["server"], str(args["export"]))
        elif str(args.get("file")) not in self.nodes:
            raise BlockError(f"Cannot find device='' nor node-name='{args.get('file')}'")
        self.nodes[name] = args
        return {}

    async def _connect(self, server: dict[str, Any], export: str) -> NbdClient:
        try:
            if server["type"] == "unix":
                reader, writer = await asyncio.open_unix_connection(server["path"])
            else:
                reader, writer = await asyncio.open_connection(server["host"],
                                                               int(server["port"]))
        except OSError as exc:
            raise BlockError(f"Failed to connect to '{server.get('host')}:"
                             f"{server.get('port')}': {exc.strerror}") from exc
        client = NbdClient(reader, writer)
        reply = await client.request(f"EXPORT {export}\n".encode())
        if reply != "OK":
            writer.close()
            raise BlockError(f"Requested export not available: {reply}")
        return client

    def cmd_blockdev_reopen(self, args: dict[str, Any]) -> Any:
        for options in args["options"]:
            name = str(options["node-name"])
            if name not in self.nodes:
                raise BlockError(f"Cannot find node named '{name}'")
            if options.get("file") != self.nodes[name].get("file"):
                raise BlockError(f"Cannot change the option 'file' of node '{name}'")
            self.nodes[name] = dict(options)
        return {}

    def cmd_blockdev_del(self, args: dict[str, Any]) -> Any:
        name = str(args["node-name"])
        if name not in self.nodes:
            raise BlockError(f"Failed to find node with node-name='{name}'")
        if any(o.get("file") == name for o in self.nodes.values()):
            raise BlockError(f"Node '{name}' is busy: node is used as child")
        del self.nodes[name]
        client = self.clients.pop(name, None)
        if client is not None:
            client.writer.close()
        return {}

    def _client_of(self, target: str) -> NbdClient:
        storage = str(self.nodes.get(target, {}).get("file", ""))
        client = self.clients.get(storage)
        if client is None:
            raise BlockError(f"Cannot find device='' nor node-name='{target}'")
        return client

    def cmd_blockdev_mirror(self, args: dict[str, Any]) -> Any:
        job_id = str(args["job-id"])
        if job_id in self.jobs:
            raise BlockError(f"Job ID '{job_id}' already in use")
        if args.get("device") not in self.nodes:
            raise BlockError(f"Cannot find device='{args.get('device')}' nor node-name")
        length = int(self._image(str(args["device"])).get("virtual-size", 0))
        mirror = Mirror(job_id, length, int(args.get("speed", 0)),
                        self._client_of(str(args["target"])))
        self.jobs[job_id] = mirror
        mirror.task = self.vm.spawn(self._run(mirror))
        return {}

    async def _run(self, mirror: Mirror) -> None:
        try:
            await self._copy(mirror)
            mirror.ready = True
            self.vm.emit("BLOCK_JOB_READY", mirror.event_data())
            await mirror.cancel.wait()
            if mirror.force:
                raise asyncio.CancelledError
            await mirror.client.request(b"FLUSH\n")
            self._end(mirror, "BLOCK_JOB_COMPLETED")
        except asyncio.CancelledError:
            self._end(mirror, "BLOCK_JOB_CANCELLED")
        except (BlockError, OSError) as exc:
            self.vm.emit("BLOCK_JOB_ERROR", {"device": mirror.job_id, "operation": "write",
                                             "action": "report"})
            self._end(mirror, "BLOCK_JOB_COMPLETED", str(exc))

    async def _copy(self, mirror: Mirror) -> None:
        faults = self.vm.faults
        duration = float(faults.get("mirror_duration_s", 0))
        started = time.monotonic()
        while mirror.offset < mirror.length:
            if mirror.cancel.is_set():
                raise asyncio.CancelledError
            if faults.get("mirror_error") and mirror.offset >= mirror.length // 2:
                raise BlockError(str(faults["mirror_error"]))
            step = min(CHUNK, mirror.length - mirror.offset)
            due = max((mirror.offset + step) / mirror.speed if mirror.speed else 0,
                      duration * (mirror.offset + step) / mirror.length)
            if due > time.monotonic() - started:
                await asyncio.sleep(min(due - (time.monotonic() - started), 0.05))
                continue
            reply = await mirror.client.request(f"W {step}\n".encode())
            if reply != "OK":
                raise BlockError(reply.removeprefix("ERR "))
            mirror.offset += step

    def _end(self, mirror: Mirror, event: str, error: str | None = None) -> None:
        data = mirror.event_data()
        if error is not None:
            data["error"] = error
        self.jobs.pop(mirror.job_id, None)
        self.vm.emit(event, data)

    def cmd_block_job_cancel(self, args: dict[str, Any]) -> Any:
        mirror = self.jobs.get(str(args["device"]))
        if mirror is None:
            raise BlockError(f"Block job '{args['device']}' not found")
        mirror.force = bool(args.get("force", False)) or not mirror.ready
        mirror.cancel.set()
        return {}

    def cmd_query_block_jobs(self, args: dict[str, Any]) -> Any:
        return [{**m.event_data(), "ready": m.ready, "busy": not m.ready, "paused": False,
                 "status": "ready" if m.ready else "running", "io-status": "ok",
                 "auto-finalize": True, "auto-dismiss": True} for m in self.jobs.values()]
