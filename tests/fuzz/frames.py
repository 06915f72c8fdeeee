"""Whole frames: a header, an argument payload (valid, boundary or mutated) and, for header
faults, what the server is expected to do with it.

A :class:`Frame` carries the bytes exactly as sent (length word included), the procedure
it was built for, and what the sender expects: a reply, or none (a packet type the server
ignores), or the end of the connection (a length the framing must refuse, or a stream
left out of step on purpose).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

from pyvirt.rpc.packet import (
    ADMIN_PROGRAM,
    HEADER_SIZE,
    KEEPALIVE_PROGRAM,
    LEN_SIZE,
    LXC_PROGRAM,
    PACKET_MAX,
    QEMU_PROGRAM,
    REMOTE_PROGRAM,
    MessageStatus,
    MessageType,
)
from pyvirt.rpc.protocol import ProcSpec, Program
from tests.fuzz.gen import WORDS_4, ArgGen

_HEADER = struct.Struct(">IIIiiIi")  # length word + header; proc/type/status signed
KINDS = ("valid", "boundary", "mutated")
INTERESTING_WORDS = (*WORDS_4, 4194304, 4194305, 65536, 16384, 64, 65)


@dataclass(frozen=True, slots=True)
class Frame:
    program: str  # the program the frame was built for ("remote", "qemu", "admin")
    proc: int
    proc_name: str
    kind: str  # valid | boundary | mutated | header:<fault>
    data: bytes
    serial: int
    expect_reply: bool = True
    #: the server must close the connection (or the session must end: stream out of step)
    closes: bool = False

    def describe(self) -> str:
        return (f"{self.program}.{self.proc_name} ({self.proc}) kind={self.kind} "
                f"serial={self.serial} len={len(self.data)}")

    def hexdump(self, limit: int = 4096) -> str:
        text = self.data[:limit].hex()
        lines = [text[i:i + 64] for i in range(0, len(text), 64)]
        more = f"\n... {len(self.data) - limit} more bytes" if len(self.data) > limit else ""
        return "\n".join(lines) + more


def pack_frame(prog: int, vers: int, proc: int, mtype: int, serial: int, status: int,
               payload: bytes, length: int | None = None) -> bytes:
    total = LEN_SIZE + HEADER_SIZE + len(payload) if length is None else length
    return _HEADER.pack(total & 0xFFFFFFFF, prog & 0xFFFFFFFF, vers & 0xFFFFFFFF,
                        _s32(proc), _s32(mtype), serial & 0xFFFFFFFF, _s32(status)) + payload


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def call_frame(program: Program, spec: ProcSpec, serial: int, payload: bytes, kind: str,
               label: str | None = None) -> Frame:
    data = pack_frame(program.number, program.version, spec.number, MessageType.CALL, serial,
                      MessageStatus.OK, payload)
    return Frame(label or program.name, spec.number, spec.name, kind, data, serial)


class FrameGen:
    """Frames for one program; ``rng`` decides everything, so a seed replays a run."""

    def __init__(self, rng: random.Random, args: ArgGen) -> None:
        self.rng = rng
        self.args = args

    # -- calls --------------------------------------------------------------------------------
    def call(self, program: Program, spec: ProcSpec, serial: int) -> Frame:
        kind = self.rng.choice(KINDS)
        payload = self.payload(spec, kind)
        return call_frame(program, spec, serial, payload, kind)

    def payload(self, spec: ProcSpec, kind: str) -> bytes:
        boundary = 0.0 if kind == "valid" else self.rng.choice((0.05, 0.2, 0.5))
        data = self.args.encode(spec.args_type, 0.0 if kind == "mutated" else boundary)
        if kind == "mutated":
            for _ in range(self.rng.randint(1, 3)):
                data = self.mutate(data)
        return data

    def mutate(self, data: bytes) -> bytes:
        """One byte-level mutation: flips, truncation, extension, overwritten or removed
        words, duplicated slices."""
        rng = self.rng
        buf = bytearray(data)
        op = rng.randrange(7)
        if op == 0 and buf:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[rng.randrange(len(buf)):]
        elif op == 2:
            buf += rng.choice((rng.randbytes(rng.randint(1, 64)), b"\0" * 4 * rng.randint(1, 8),
                               b"\xff" * 4))
        elif op == 3 and len(buf) >= 4:
            at = rng.randrange(len(buf) // 4) * 4
            buf[at:at + 4] = struct.pack(">I", rng.choice(INTERESTING_WORDS))
        elif op == 4:
            at = rng.randrange(len(buf) // 4 + 1) * 4
            buf[at:at] = struct.pack(">I", rng.choice(INTERESTING_WORDS))
        elif op == 5 and len(buf) >= 4:
            at = rng.randrange(len(buf) // 4) * 4
            del buf[at:at + 4]
        elif buf:
            start = rng.randrange(len(buf))
            chunk = buf[start:start + rng.randint(1, 64)]
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = chunk * rng.randint(1, 4)
        return bytes(buf)

    # -- header faults ------------------------------------------------------------------------
    def header_fault(self, program: Program, spec: ProcSpec, serial: int, *,
                     terminal: bool) -> Frame:
        """A frame whose header is wrong; ``terminal`` allows the faults after which the
        connection ends (bad lengths, a stream out of step)."""
        faults = list(_INLINE_FAULTS) + (list(_TERMINAL_FAULTS) if terminal else [])
        name = self.rng.choice(faults)
        payload = self.args.encode(spec.args_type, 0.0)
        frame: Frame = getattr(self, f"_fault_{name}")(program, spec, serial, payload)
        return frame

    def _base(self, program: Program, spec: ProcSpec, serial: int, payload: bytes,
              fault: str, **fields: Any) -> Frame:
        header = {"prog": program.number, "vers": program.version, "proc": spec.number,
                  "mtype": int(MessageType.CALL), "serial": serial,
                  "status": int(MessageStatus.OK)}
        expect_reply = fields.pop("expect_reply", True)
        closes = fields.pop("closes", False)
        length = fields.pop("length", None)
        header.update(fields)
        data = pack_frame(header["prog"], header["vers"], header["proc"], header["mtype"],
                          header["serial"], header["status"], payload, length)
        return Frame(program.name, spec.number, spec.name, f"header:{fault}", data, serial,
                     expect_reply, closes)

    def _fault_prog(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        others = [p for p in (REMOTE_PROGRAM, QEMU_PROGRAM, ADMIN_PROGRAM, LXC_PROGRAM,
                              0, 0xFFFFFFFF, 0x20008088) if p != program.number]
        return self._base(program, spec, serial, payload, "prog", prog=self.rng.choice(others))

    def _fault_keepalive(self, program: Program, spec: ProcSpec, serial: int,
                         payload: bytes) -> Frame:
        # keepalive calls are not answered; the connection must stay usable
        mtype = self.rng.choice((MessageType.CALL, MessageType.MESSAGE))
        return self._base(program, spec, serial, payload, "keepalive", prog=KEEPALIVE_PROGRAM,
                          vers=1, proc=self.rng.choice((1, 2, 3, -1)), mtype=int(mtype),
                          expect_reply=False)

    def _fault_vers(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        return self._base(program, spec, serial, payload, "vers",
                          vers=self.rng.choice((0, 2, 0xFFFFFFFF)))

    def _fault_proc(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        messages = [p.number for p in program.procs.values() if p.is_message] or [0]
        proc = self.rng.choice((0, -1, 0x7FFFFFFF, -0x80000000, 9999, *messages))
        return self._base(program, spec, serial, payload, "proc", proc=proc)

    def _fault_type(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        mtype = self.rng.choice((MessageType.REPLY, MessageType.MESSAGE, MessageType.STREAM,
                                 MessageType.REPLY_WITH_FDS, MessageType.STREAM_HOLE, 7, -1))
        return self._base(program, spec, serial, payload, "type", mtype=int(mtype),
                          expect_reply=False)

    def _fault_fds(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        # CALL_WITH_FDS: a zero fd count still reaches the decoder; any other is refused
        count = self.rng.choice((0, 0, 1, 0xFFFFFFFF))
        body = b"" if self.rng.random() < 0.1 else struct.pack(">I", count) + payload
        return self._base(program, spec, serial, body, "fds",
                          mtype=int(MessageType.CALL_WITH_FDS))

    def _fault_status(self, program: Program, spec: ProcSpec, serial: int,
                      payload: bytes) -> Frame:
        status = self.rng.choice((MessageStatus.ERROR, MessageStatus.CONTINUE, 3, -1))
        return self._base(program, spec, serial, payload, "status", status=int(status))

    def _fault_serial(self, program: Program, spec: ProcSpec, serial: int,
                      payload: bytes) -> Frame:
        # extreme serials are fine to the server: echoed back; derived from the session's
        # small serial so they stay unique among the calls in flight
        extreme = self.rng.choice((0xFFFFFFFF - serial, 0x80000000 + serial))
        return self._base(program, spec, extreme, payload, "serial")

    def _fault_short(self, program: Program, spec: ProcSpec, serial: int,
                     payload: bytes) -> Frame:
        length = self.rng.choice((0, 1, 4, 27))
        return self._base(program, spec, serial, payload, "short-length", length=length,
                          expect_reply=False, closes=True)

    def _fault_long(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        length = self.rng.choice((PACKET_MAX + 1, 0xFFFFFFFF, 0x80000000))
        return self._base(program, spec, serial, payload, "over-max", length=length,
                          expect_reply=False, closes=True)

    def _fault_claims_more(self, program: Program, spec: ProcSpec, serial: int,
                           payload: bytes) -> Frame:
        real = LEN_SIZE + HEADER_SIZE + len(payload)
        length = real + self.rng.choice((1, 4, 4096, 1 << 20))
        return self._base(program, spec, serial, payload, "claims-more",
                          length=min(length, PACKET_MAX), expect_reply=False, closes=True)

    def _fault_claims_less(self, program: Program, spec: ProcSpec, serial: int,
                           payload: bytes) -> Frame:
        real = LEN_SIZE + HEADER_SIZE + len(payload)
        length = max(LEN_SIZE + HEADER_SIZE, real - self.rng.randint(1, 8))
        return self._base(program, spec, serial, payload + self.rng.randbytes(8),
                          "claims-less", length=length, expect_reply=False, closes=True)

    def _fault_cut(self, program: Program, spec: ProcSpec, serial: int, payload: bytes) -> Frame:
        frame = self._base(program, spec, serial, payload, "cut-header", expect_reply=False,
                           closes=True)
        cut = self.rng.randint(1, LEN_SIZE + HEADER_SIZE - 1)
        return Frame(frame.program, frame.proc, frame.proc_name, frame.kind,
                     frame.data[:cut], serial, False, True)


_INLINE_FAULTS = ("prog", "keepalive", "vers", "proc", "type", "fds", "status", "serial")
_TERMINAL_FAULTS = ("short", "long", "claims_more", "claims_less", "cut")
