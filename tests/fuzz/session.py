"""One fuzzing connection: send frames, match replies, apply the oracles, count.

Oracles on every packet the daemon sends back:

* a reply echoes the call's program, version, procedure and serial, and is well formed:
  an OK payload decodes as the procedure's return type, an ERROR payload as
  ``remote_error``;
* no reply is the daemon's generic "unexpected failure" (an exception escaped a handler);
* on the read-only socket no procedure that is not read-only succeeds;
* no payload carries the canaries' secret (a file read on a client's behalf).

Whether a frame reached its procedure's argument decoder is read from the reply: errors
raised before decoding (unknown program or procedure, bad status, read-only refusal, file
descriptors) say it did not; "Unable to decode message payload" says the decoder refused
the arguments; anything else (an error from the handler, or success) says they decoded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyvirt.rpc.packet import (
    KEEPALIVE_PROGRAM,
    FramingError,
    MessageStatus,
    MessageType,
    Packet,
    read_packet,
)
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_types import RemoteError, RemoteErrorXDR
from pyvirt.rpc.xdr import XDRError
from tests.fuzz.frames import Frame
from tests.fuzz.hostile import SECRET_TOKEN

#: error messages the server sends before it decodes the arguments of a procedure of its
#: table ("unknown procedure" is not one: for a procedure of the table it comes from the
#: dispatcher, after decoding, when the daemon has no handler for it)
PRE_DECODE = ("Cannot find program", "Unexpected message status", "authentication required",
              "read only access prevents", "passing file descriptors is not supported")
UNDECODABLE = "Unable to decode message payload"
INTERNAL = "unexpected failure while handling the call"
#: the server's handler returned a value its wire type cannot carry: a daemon bug
ENCODE_FAILED = "cannot encode the"
_HEADER = struct.Struct(">IIiiIi")
MAX_KEPT_FAILURES = 200


@dataclass
class ProcCount:
    sent: int = 0
    reached: int = 0  # the reply proves the argument decoder ran
    decoded: int = 0  # ... and accepted the arguments


@dataclass
class Failure:
    what: str
    frame: Frame | None
    context: list[Frame]

    def report(self, limit: int = 512) -> str:
        lines = [f"FAILURE: {self.what}"]
        if self.frame is not None:
            lines += [f"  frame: {self.frame.describe()}", "  hex:", self.frame.hexdump(limit)]
        for earlier in self.context[-6:]:
            lines.append(f"  before it on the connection: {earlier.describe()}: "
                         f"{earlier.data[:min(limit, 128)].hex()}")
        return "\n".join(lines)


@dataclass
class Stats:
    procs: dict[tuple[str, int], ProcCount] = field(default_factory=dict)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    sessions: collections.Counter[str] = field(default_factory=collections.Counter)
    frames: int = 0
    bytes: int = 0
    replies: int = 0
    unanswered: int = 0
    slow: list[str] = field(default_factory=list)
    #: connections the daemon ended inside a packet (fine only when it said why: a limit)
    truncated: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    more_failures: int = 0

    def add_failure(self, failure: Failure) -> None:
        """Keep the first failures with their frames; count the rest (a failure that
        repeats all run long must not pin every frame it saw)."""
        if len(self.failures) < MAX_KEPT_FAILURES:
            self.failures.append(failure)
        else:
            self.more_failures += 1

    def count(self, program: str, proc: int) -> ProcCount:
        return self.procs.setdefault((program, proc), ProcCount())


class Session:
    """A raw connection to one of the daemon's sockets (``rw``, ``ro`` or ``admin``)."""

    def __init__(self, path: str, socket_kind: str, programs: Mapping[int, Program],
                 stats: Stats, *, reply_timeout: float = 20.0) -> None:
        self.path = path
        self.socket_kind = socket_kind
        self.programs = programs
        self.stats = stats
        self.reply_timeout = reply_timeout
        self.pending: dict[int, tuple[Frame, float]] = {}
        self.sent: collections.deque[Frame] = collections.deque(maxlen=16)
        self.closed = asyncio.Event()
        self.became_readonly = False
        self.stream_replies: list[Packet] = []
        self._replies: dict[int, asyncio.Future[Packet]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Session:
        self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._task = asyncio.create_task(self._read_loop())
        self.stats.sessions[self.socket_kind] += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stats.unanswered += len(self.pending)
        self.pending.clear()
        for future in self._replies.values():
            if not future.done():
                future.cancel()

    # -- sending ------------------------------------------------------------------------------
    async def send(self, frame: Frame) -> bool:
        """Write one frame; False when the connection is gone."""
        if self.closed.is_set() or self._writer is None:
            return False
        if frame.expect_reply:
            self.pending[frame.serial] = (frame, time.monotonic())
        self.sent.append(frame)
        self.stats.frames += 1
        self.stats.bytes += len(frame.data)
        self.stats.kinds[frame.kind.split(":")[0]] += 1
        self.stats.count(frame.program, frame.proc).sent += 1
        try:
            self._writer.write(frame.data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            self.closed.set()
            return False
        return True

    async def call(self, frame: Frame, timeout: float = 20.0) -> Packet | None:
        """Send ``frame`` and wait for its reply (None if the connection ended first)."""
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._replies[frame.serial] = future
        if not await self.send(frame):
            return None
        closed: asyncio.Future[Any] = asyncio.ensure_future(self.closed.wait())
        try:
            done, _ = await asyncio.wait((future, closed), timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if future in done:
            return future.result()
        if not done:
            self.stats.slow.append(f"{frame.describe()} unanswered after {timeout:.0f} s")
        return None

    async def wait_window(self, window: int) -> bool:
        """Wait until fewer than ``window`` calls are in flight; False if the connection
        ended or the oldest call went unanswered for ``reply_timeout``."""
        while len(self.pending) >= window:
            if self.closed.is_set():
                return False
            oldest_frame, sent_at = min(self.pending.values(), key=lambda item: item[1])
            if time.monotonic() - sent_at > self.reply_timeout:
                self.stats.slow.append(f"{oldest_frame.describe()} unanswered after "
                                       f"{self.reply_timeout:.0f} s")
                return False
            await asyncio.sleep(0.002)
        return not self.closed.is_set()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the replies still due."""
        deadline = time.monotonic() + timeout
        while self.pending and not self.closed.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    # -- receiving ----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while (packet := await read_packet(self._reader)) is not None:
                self._on_packet(packet)
        except FramingError as exc:
            if str(exc).startswith("end of stream inside a packet"):
                # dropped mid-reply; the verdict checks the daemon logged a limit for it
                self.stats.truncated.append(f"[{self.socket_kind}] {exc}")
            else:
                self.fail(f"the daemon sent a malformed packet: {exc}", None)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def _on_packet(self, packet: Packet) -> None:
        hdr = packet.header
        if SECRET_TOKEN in packet.payload:
            self.fail("a reply carries the canary's secret: a file was read for a client",
                      self.pending.get(hdr.serial, (None, 0))[0])
        if hdr.prog == KEEPALIVE_PROGRAM:
            return
        if hdr.type == MessageType.MESSAGE:
            self._check_event(packet)
        elif hdr.type in (MessageType.STREAM, MessageType.STREAM_HOLE):
            self.stream_replies.append(packet)
        elif hdr.type == MessageType.REPLY:
            entry = self.pending.pop(hdr.serial, None)
            future = self._replies.pop(hdr.serial, None)
            if future is not None and not future.done():
                future.set_result(packet)
            if entry is not None:
                self.stats.replies += 1
                self._check_reply(entry[0], packet)
        else:
            self.fail(f"unexpected packet type from the daemon: {hdr.describe()}", None)

    def _check_event(self, packet: Packet) -> None:
        hdr = packet.header
        program = self.programs.get(hdr.prog)
        spec = program.get(hdr.proc) if program is not None else None
        if spec is None or not spec.is_message:
            self.fail(f"unknown event from the daemon: {hdr.describe()}", None)
            return
        try:
            spec.decode_args(packet.payload)
        except XDRError as exc:
            self.fail(f"undecodable {spec.name} event: {exc}", None)

    def _check_reply(self, frame: Frame, packet: Packet) -> None:
        hdr = packet.header
        prog, vers, proc, _, serial, _ = _HEADER.unpack_from(frame.data, 4)
        if (hdr.prog, hdr.vers, hdr.proc, hdr.serial) != (prog, vers, proc, serial):
            self.fail(f"reply header {hdr.describe()} does not echo the call's", frame)
            return
        program = self.programs.get(prog)
        spec = program.get(proc) if program is not None and program.version == vers else None
        if _header_type(frame) not in (MessageType.CALL, MessageType.CALL_WITH_FDS):
            spec = None  # answered, but not as a call (a bug the header check reports)
        if hdr.status == MessageStatus.OK:
            self._check_ok(frame, spec, packet)
        elif hdr.status == MessageStatus.ERROR:
            self._check_error(frame, spec, packet)
        else:
            self.fail(f"reply with status {hdr.status}", frame)

    def _check_ok(self, frame: Frame, spec: ProcSpec | None, packet: Packet) -> None:
        if spec is None or spec.is_message:
            self.fail("a call the server cannot know was answered OK", frame)
            return
        self._count_reached(spec, decoded=True)
        if self.socket_kind == "ro" and not spec.readonly:
            self.fail(f"the read-only socket ran {spec.name}", frame)
        try:
            spec.decode_ret(packet.payload)
        except XDRError as exc:
            self.fail(f"{spec.name} reply does not decode: {exc}", frame)

    def _check_error(self, frame: Frame, spec: ProcSpec | None, packet: Packet) -> None:
        try:
            err: RemoteError = RemoteErrorXDR.decode(packet.payload)
        except XDRError as exc:
            self.fail(f"error reply does not decode: {exc}", frame)
            return
        message = err.message or ""
        if INTERNAL in message:
            self.fail(f"internal error answering {frame.proc_name}: an exception escaped "
                      "(see the daemon log)", frame)
        if ENCODE_FAILED in message:
            self.fail(f"the daemon could not encode its own reply: {message}", frame)
        if "read only access prevents" in message and self.socket_kind == "rw":
            self.became_readonly = True  # a fuzzed CONNECT_OPEN asked for read-only
        if spec is None or spec.is_message or message.startswith(PRE_DECODE):
            return
        self._count_reached(spec, decoded=not message.startswith(UNDECODABLE))

    def _count_reached(self, spec: ProcSpec, *, decoded: bool) -> None:
        program = next(p for p in self.programs.values() if p.get(spec.number) is spec)
        count = self.stats.count(program.name, spec.number)
        count.reached += 1
        count.decoded += int(decoded)

    def fail(self, what: str, frame: Frame | None) -> None:
        self.stats.add_failure(Failure(f"[{self.socket_kind}] {what}", frame, list(self.sent)))


def _header_type(frame: Frame) -> int:
    mtype: int = _HEADER.unpack_from(frame.data, 4)[3]
    return mtype


def programs_for(*programs: Program) -> dict[int, Program]:
    return {p.number: p for p in programs}


def remote_error_text(packet: Packet) -> str:
    try:
        err: Any = RemoteErrorXDR.decode(packet.payload)
    except XDRError:
        return "<undecodable>"
    return str(err.message)
