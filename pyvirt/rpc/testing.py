"""In-process test kit for the RPC layer (and for daemon tests that need a wire peer).

* :data:`TEST` — a tiny RPC program (echo, blocking calls, a priority call, events,
  streams, ...) served by :class:`TestDispatcher`;
* :func:`running_server` — an :class:`~pyvirt.rpc.server.RPCServer` on a unix socket in a
  private temporary directory, torn down (socket file included) on exit;
* :class:`RawPeer` — a byte-level peer for golden-packet and misbehaviour tests.

Blocking calls wait on named *gates* that the test opens, so concurrency tests are
deterministic instead of relying on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import shutil
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from pyvirt.errors import NoDomainError, OperationFailedError
from pyvirt.rpc.packet import Header, MessageStatus, MessageType, Packet, encode_packet, read_packet
from pyvirt.rpc.protocol import ProcKind, ProcSpec, Program, StreamKind
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.server_client import ClientContext
from pyvirt.rpc.types import Int, String, Struct, UHyper, Void, XDRType

TEST_PROGRAM = 0x7E570001


class TestProc(enum.IntEnum):
    __test__ = False  # not a pytest test class

    ECHO = 1  # string → string
    BLOCK = 2  # gate name → void; waits until the gate opens
    PRIO_BLOCK = 3  # like BLOCK, but a priority procedure
    OPEN = 4  # marks the client opened (CONNECT_OPEN's role)
    FAIL = 5  # raises a VirtError (NO_DOMAIN)
    WRITE = 6  # a state-changing call, refused on read-only connections
    BAD_RET = 7  # returns a value that does not fit the reply type
    EMIT = 8  # sends EVENT messages back: int count → void
    EVENT = 9  # the message sent by EMIT
    KEEPALIVE_ON = 10  # enable_keepalive()
    DEAUTH = 11  # set_authenticated(False)
    SINK = 12  # write stream: consume data; returns nothing
    SOURCE = 13  # read stream: sends `size` bytes of data
    CRASH = 14  # raises a non-VirtError exception


_GATE = Struct("test_gate_args", [("gate", String(64))])
_SOURCE = Struct("test_source_args", [("size", UHyper), ("chunk", UHyper)])


def _spec(
    proc: TestProc, args: XDRType[Any] = Void, ret: XDRType[Any] = Void, **kw: Any
) -> ProcSpec:
    kw.setdefault("readonly", True)
    return ProcSpec(int(proc), proc.name, args, ret, api=f"test{proc.name.title()}", **kw)


TEST = Program.build(
    "test",
    TEST_PROGRAM,
    [
        _spec(TestProc.ECHO, String(), String()),
        _spec(TestProc.BLOCK, _GATE),
        _spec(TestProc.PRIO_BLOCK, _GATE, priority=True),
        _spec(TestProc.OPEN, priority=True),
        _spec(TestProc.FAIL),
        _spec(TestProc.WRITE, readonly=False),
        _spec(TestProc.BAD_RET, ret=Int),
        _spec(TestProc.EMIT, Int),
        _spec(TestProc.EVENT, Struct("test_event_msg", [("seq", Int)]), kind=ProcKind.MESSAGE),
        _spec(TestProc.KEEPALIVE_ON, ret=Int),
        _spec(TestProc.DEAUTH),
        _spec(TestProc.SINK, stream=StreamKind.WRITE),
        _spec(TestProc.SOURCE, _SOURCE, stream=StreamKind.READ),
        _spec(TestProc.CRASH),
    ],
)


class TestDispatcher:
    """Serves :data:`TEST`; records what ran so tests can assert on it."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.calls: list[str] = []
        self.running = 0
        self.sunk = bytearray()
        self.sink_fail_after: int | None = None
        self.sink_pause = asyncio.Event()
        self.sink_pause.set()
        self.sink_done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def open_gate(self, name: str) -> None:
        self.gates[name].set()

    async def dispatch(self, client: ClientContext, spec: ProcSpec, args: Any) -> Any:
        self.calls.append(spec.name)
        handler = getattr(self, f"do_{spec.name.lower()}", None)
        if handler is None:
            raise OperationFailedError(f"test dispatcher has no {spec.name}")
        self.running += 1
        try:
            return await handler(client, args)
        finally:
            self.running -= 1

    async def do_echo(self, client: ClientContext, args: str) -> str:
        return args

    async def do_block(self, client: ClientContext, args: dict[str, str]) -> None:
        self.started[args["gate"]].set()
        await self.gates[args["gate"]].wait()

    do_prio_block = do_block

    async def do_open(self, client: ClientContext, args: None) -> None:
        client.mark_opened()

    async def do_fail(self, client: ClientContext, args: None) -> None:
        raise NoDomainError.by_name("nosuchdomain")

    async def do_write(self, client: ClientContext, args: None) -> None:
        return None

    async def do_bad_ret(self, client: ClientContext, args: None) -> str:
        return "not an int"

    async def do_emit(self, client: ClientContext, count: int) -> None:
        for seq in range(count):
            await client.send_message(TEST, TestProc.EVENT, {"seq": seq})

    async def do_keepalive_on(self, client: ClientContext, args: None) -> int:
        return int(client.enable_keepalive())

    async def do_deauth(self, client: ClientContext, args: None) -> None:
        client.set_authenticated(False)

    async def do_crash(self, client: ClientContext, args: None) -> None:
        raise KeyError("internal detail")

    async def do_sink(self, client: ClientContext, args: None) -> None:
        stream = client.stream()
        task = asyncio.create_task(self._consume(stream))
        client.user_data.setdefault("tasks", []).append(task)

    async def _consume(self, stream: Any) -> None:
        try:
            while data := await stream.recv():
                await self.sink_pause.wait()
                self.sunk += data
                if self.sink_fail_after is not None and len(self.sunk) >= self.sink_fail_after:
                    await stream.error(OperationFailedError("sink is full"))
                    self.sink_done.set_result("failed")
                    return
            await stream.finish()
            self.sink_done.set_result("finished")
        except Exception as exc:
            if not self.sink_done.done():
                self.sink_done.set_result(type(exc).__name__)

    async def do_source(self, client: ClientContext, args: dict[str, int]) -> None:
        stream = client.stream()

        async def produce() -> None:
            data = bytes(range(256)) * (args["size"] // 256 + 1)
            for start in range(0, args["size"], args["chunk"]):
                await stream.send(data[start : min(start + args["chunk"], args["size"])])
            await stream.finish()

        # the reply must go out before data: produce after this call returns
        client.user_data.setdefault("tasks", []).append(asyncio.create_task(produce()))


@contextlib.asynccontextmanager
async def running_server(
    limits: ServerLimits | None = None,
    *,
    dispatcher: Any = None,
    readonly: bool = False,
    programs: tuple[Program, ...] = (TEST, REMOTE),
) -> AsyncIterator[tuple[RPCServer, str]]:
    """Serve on ``<tmpdir>/sock``; yields (server, socket path).  Cleans everything up."""
    tmpdir = tempfile.mkdtemp(prefix="pyvirt-rpc-")  # short: unix paths are limited
    server = RPCServer(dispatcher or TestDispatcher(), programs, limits)
    try:
        await server.listen_unix(f"{tmpdir}/sock", readonly=readonly)
        await server.start()
        yield server, f"{tmpdir}/sock"
    finally:
        await server.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


class RawPeer:
    """A peer speaking raw packets, for golden bytes and misbehaviour."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect_unix(cls, path: str) -> RawPeer:
        return cls(*await asyncio.open_unix_connection(path))

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, header: Header, payload: bytes = b"") -> None:
        await self.send_bytes(encode_packet(header, payload))

    async def call(self, prog: int, proc: int, serial: int, payload: bytes = b"") -> None:
        await self.send(Header(prog, 1, proc, MessageType.CALL, serial, MessageStatus.OK), payload)

    async def recv(self, timeout: float = 5.0) -> Packet | None:
        return await asyncio.wait_for(read_packet(self.reader), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
