"""What one fuzzing worker does on one connection: a call session on the read-write,
read-only or admin socket, or a session with a tunnel stream open.

Every session first opens the connection (CONNECT_OPEN) so that procedures past the
open gate are reached, then sends frames for procedures taken in turn from a shuffled
table (so each procedure gets its share), a few with header faults, and often ends with a
frame after which the connection must close (a length the framing refuses).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyvirt.constants import MigrateFlags
from pyvirt.rpc.admin_protocol import ADMIN, AdminProc
from pyvirt.rpc.packet import MessageStatus, MessageType
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.qemu_protocol import QEMU
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import TypedParam
from tests.fuzz.frames import Frame, FrameGen, call_frame, pack_frame
from tests.fuzz.gen import ArgGen, World
from tests.fuzz.hostile import HostileCorpus, fresh_uuid
from tests.fuzz.session import Session, Stats, programs_for

#: calls in flight per fuzzing connection (the daemon's max_client_requests is 5)
WINDOW = 4
HEADER_FAULT_RATE = 0.12
TERMINAL_RATE = 0.3
#: admin procedures that end the connection: sent last in a session
_ADMIN_TERMINAL = frozenset({AdminProc.CONNECT_CLOSE, AdminProc.CLIENT_CLOSE})
_TUNNEL = REMOTE.procs[RemoteProc.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS]
_TUNNEL_FLAGS = int(MigrateFlags.LIVE | MigrateFlags.PEER2PEER | MigrateFlags.TUNNELLED)


def callable_procs(*programs: Program) -> list[tuple[Program, ProcSpec]]:
    return [(program, spec) for program in programs
            for spec in sorted(program.procs.values(), key=lambda s: s.number)
            if not spec.is_message]


class ProcCycle:
    """Procedures in a fresh shuffled order each round: every one gets its turn."""

    def __init__(self, procs: list[tuple[Program, ProcSpec]], rng: random.Random) -> None:
        self.procs = procs
        self.rng = rng
        self._round: list[tuple[Program, ProcSpec]] = []

    def next(self) -> tuple[Program, ProcSpec]:
        if not self._round:
            self._round = list(self.procs)
            self.rng.shuffle(self._round)
        return self._round.pop()


@dataclass
class Sockets:
    rw: str
    ro: str
    admin: str


@dataclass
class Worker:
    """One fuzzing worker: its own random stream (seed-derived), generators and cycles."""

    index: int
    seed: int
    sockets: Sockets
    corpus: HostileCorpus
    world: World
    stats: Stats
    active: set[Session] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}/{self.index}")
        self.args = ArgGen(self.rng, self.corpus, self.world)
        self.frames = FrameGen(self.rng, self.args)
        remote = callable_procs(REMOTE, QEMU)
        self.cycles = {"rw": ProcCycle(remote, self.rng), "ro": ProcCycle(remote, self.rng),
                       "admin": ProcCycle(callable_procs(ADMIN), self.rng)}

    async def session(self, kind: str) -> None:
        if kind == "stream":
            await self._stream_session()
        else:
            await self._call_session(kind)

    # -- call sessions --------------------------------------------------------------------------
    def _programs(self, kind: str) -> dict[int, Program]:
        return programs_for(ADMIN) if kind == "admin" else programs_for(REMOTE, QEMU)

    async def _call_session(self, kind: str) -> None:
        path = getattr(self.sockets, kind)
        serials = itertools.count(1)
        async with Session(path, kind, self._programs(kind), self.stats) as session:
            self.active.add(session)
            try:
                if await self._open(session, kind, next(serials)):
                    await self._call_frames(session, kind, serials)
            finally:
                self.active.discard(session)

    async def _open(self, session: Session, kind: str, serial: int) -> bool:
        program = ADMIN if kind == "admin" else REMOTE
        spec = program.procs[1]  # CONNECT_OPEN in both programs
        args = {"flags": 0} if kind == "admin" else {"name": "qemu:///system", "flags": 0}
        frame = call_frame(program, spec, serial, spec.encode_args(args), "valid")
        reply = await session.call(frame)
        return reply is not None and reply.header.status == MessageStatus.OK

    async def _call_frames(self, session: Session, kind: str, serials: Iterator[int]) -> None:
        deferred: list[Frame] = []
        for _ in range(self.rng.randint(8, 40)):
            if not await session.wait_window(WINDOW):
                return
            if session.became_readonly and kind == "rw":
                break
            program, spec = self.cycles[kind].next()
            frame = self._frame(program, spec, next(serials))
            if program is ADMIN and spec.number in _ADMIN_TERMINAL:
                deferred.append(frame)
                continue
            if not await session.send(frame):
                return
            if program is REMOTE and spec.number == RemoteProc.CONNECT_CLOSE:
                await self._open(session, kind, next(serials))
        await self._finish(session, kind, deferred, next(serials))

    def _frame(self, program: Program, spec: ProcSpec, serial: int) -> Frame:
        if self.rng.random() < HEADER_FAULT_RATE:
            return self.frames.header_fault(program, spec, serial, terminal=False)
        return self.frames.call(program, spec, serial)

    async def _finish(self, session: Session, kind: str, deferred: list[Frame],
                      serial: int) -> None:
        """Last frames: the deferred connection-closing calls, or a framing fault."""
        await session.drain(10.0)
        for frame in deferred[:1]:
            await session.send(frame)
            await session.drain(5.0)
        if deferred or self.rng.random() > TERMINAL_RATE:
            return
        program, spec = self.cycles[kind].next()
        frame = self.frames.header_fault(program, spec, serial, terminal=True)
        await session.send(frame)
        if frame.kind in ("header:short-length", "header:over-max"):
            await self._expect_close(session, frame)

    async def _expect_close(self, session: Session, frame: Frame) -> None:
        try:
            await asyncio.wait_for(session.closed.wait(), 5.0)
        except TimeoutError:
            session.fail("a packet length outside the limits did not close the connection",
                         frame)

    # -- a session with a tunnel stream open ----------------------------------------------------
    async def _stream_session(self) -> None:
        serials = itertools.count(1)
        async with Session(self.sockets.rw, "rw", self._programs("rw"), self.stats) as session:
            self.active.add(session)
            try:
                if not await self._open(session, "rw", next(serials)):
                    return
                serial = next(serials)
                tunnel = self._tunnel_call(serial)
                reply = await session.call(tunnel)
                opened = reply is not None and reply.header.status == MessageStatus.OK
                self.stats.sessions["stream-open" if opened else "stream-refused"] += 1
                await self._stream_frames(session, tunnel, serials)
            finally:
                self.active.discard(session)

    def _tunnel_call(self, serial: int) -> Frame:
        name = b"fz-tun-%d-%d" % (self.index, self.rng.randrange(1 << 30))
        uuid = fresh_uuid(self.rng)
        xml = self.corpus.domain_xml_plain(name, uuid)
        args = {"params": [TypedParam.of_string("destination_xml", xml.decode())],
                "cookie_in": self.corpus.peer_cookie(name, uuid),
                "flags": _TUNNEL_FLAGS}
        return call_frame(REMOTE, _TUNNEL, serial, _TUNNEL.encode_args(args), "valid")

    async def _stream_frames(self, session: Session, tunnel: Frame,
                             serials: Iterator[int]) -> None:
        for _ in range(self.rng.randint(5, 30)):
            if not await session.wait_window(WINDOW):
                return
            pick = self.rng.random()
            if pick < 0.55:
                frame = self._stream_packet(tunnel.serial)
            elif pick < 0.6:  # the same call again: a stream is already open for it
                frame = call_frame(REMOTE, _TUNNEL, tunnel.serial,
                                   tunnel.data[28:], "valid")
            else:
                program, spec = self.cycles["rw"].next()
                frame = self._frame(program, spec, next(serials))
            if not await session.send(frame):
                return
        await session.drain(5.0)

    def _stream_packet(self, serial: int) -> Frame:
        rng = self.rng
        mtype: int = MessageType.STREAM
        status: int = MessageStatus.CONTINUE
        pick = rng.random()
        if pick < 0.6:
            payload = rng.choice((b"QEVM {}\n", b"D" + rng.randbytes(1000) + b"\n", b"E\n",
                                  rng.randbytes(rng.choice((0, 1, 4096, 262_144)))))
        elif pick < 0.75:
            mtype = MessageType.STREAM_HOLE
            payload = rng.choice((struct.pack(">qI", rng.choice((0, 1 << 20, -1, 2**62)), 0),
                                  b"", rng.randbytes(3)))
        elif pick < 0.9:
            status = rng.choice((MessageStatus.ERROR, MessageStatus.OK))
            payload = rng.choice((b"", rng.randbytes(40)))
        else:
            status = rng.choice((MessageStatus.CONTINUE, 9))
            serial = rng.choice((serial + 1, 0, 0xFFFFFFFF))
            payload = rng.randbytes(64)
        data = pack_frame(REMOTE.number, REMOTE.version, _TUNNEL.number, int(mtype), serial,
                          int(status), payload)
        return Frame("remote", _TUNNEL.number, _TUNNEL.name, "stream", data, serial,
                     expect_reply=False)
