"""Packet framing: a length word, a 24-byte header, an XDR payload.

::

    +--------+------+------+------+------+--------+--------+----------------...
    | length | prog | vers | proc | type | serial | status | payload (XDR)
    | u32    | u32  | u32  | i32  | i32  | u32    | i32    |
    +--------+------+------+------+------+--------+--------+----------------...
       4 B     4 B    4 B    4 B    4 B    4 B      4 B

``length`` counts the whole packet *including itself*: an empty call is 28 bytes.  The
length word is checked against ``[PACKET_MIN, PACKET_MAX]`` before anything is allocated;
a bad length is a :class:`FramingError`, which closes the connection (semantic errors get
an error reply instead; that decision belongs to the connection, not here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import struct

# -- programs --------------------------------------------------------------------------------
REMOTE_PROGRAM = 0x20008086
QEMU_PROGRAM = 0x20008087
LXC_PROGRAM = 0x00068000
KEEPALIVE_PROGRAM = 0x6B656570
ADMIN_PROGRAM = 0x06900690
PROTOCOL_VERSION = 1

# -- sizes (libvirt's VIR_NET_MESSAGE_*) -----------------------------------------------------
LEN_SIZE = 4
HEADER_SIZE = 24
MESSAGE_MAX = 33_554_432  # header + payload
PAYLOAD_MAX = MESSAGE_MAX - HEADER_SIZE
PACKET_MIN = LEN_SIZE + HEADER_SIZE
PACKET_MAX = MESSAGE_MAX + LEN_SIZE
#: libvirtd's chunk size for stream data it sends (the legacy payload maximum)
STREAM_CHUNK_MAX = 262_120
#: asyncio StreamReader limit for RPC connections. asyncio's default (64 KiB) pauses the
#: transport at 128 KiB buffered and resumes it when a reader waits: twice per 256 KiB
#: stream packet. Above a few packets, a tunnelled migration reads without that churn.
READER_LIMIT = 4 << 20


class MessageType(enum.IntEnum):
    CALL = 0
    REPLY = 1
    MESSAGE = 2
    STREAM = 3
    CALL_WITH_FDS = 4
    REPLY_WITH_FDS = 5
    STREAM_HOLE = 6


class MessageStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    CONTINUE = 2


_LEN = struct.Struct(">I")
_HEADER = struct.Struct(">IIiiIi")
_LEN_HEADER = struct.Struct(">IIIiiIi")


class FramingError(Exception):
    """The byte stream is not a valid packet sequence; the connection must be closed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """The 24-byte packet header.  ``type``/``status`` stay plain ints: a peer may send
    values we do not know, and the connection decides what to do with them."""

    prog: int
    vers: int
    proc: int
    type: int
    serial: int
    status: int = MessageStatus.OK

    def reply(self, status: int = MessageStatus.OK, type: int = MessageType.REPLY) -> Header:
        """The header of the answer to this one: same prog/vers/proc/serial."""
        return Header(self.prog, self.vers, self.proc, type, self.serial, status)

    def describe(self) -> str:
        try:
            kind = MessageType(self.type).name
        except ValueError:
            kind = str(self.type)
        return (
            f"prog={self.prog:#x} vers={self.vers} proc={self.proc} type={kind} "
            f"serial={self.serial} status={self.status}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Packet:
    header: Header
    payload: bytes = b""


def check_length(length: int, max_packet: int = PACKET_MAX) -> None:
    if length < PACKET_MIN:
        raise FramingError(f"packet length {length} is below the minimum {PACKET_MIN}")
    if length > max_packet:
        raise FramingError(f"packet length {length} exceeds the maximum {max_packet}")


def encode_prefix(header: Header, payload_len: int) -> bytes:
    """Length word + header, so a large payload can be written without copying it."""
    if payload_len > PAYLOAD_MAX:
        raise FramingError(f"payload of {payload_len} bytes exceeds the maximum {PAYLOAD_MAX}")
    try:
        return _LEN_HEADER.pack(
            PACKET_MIN + payload_len,
            header.prog,
            header.vers,
            header.proc,
            header.type,
            header.serial,
            header.status,
        )
    except struct.error as exc:
        raise FramingError(f"header field out of range: {header}") from exc


def encode_packet(header: Header, payload: bytes | memoryview = b"") -> bytes:
    return encode_prefix(header, len(payload)) + bytes(payload)


def decode_header(data: bytes | memoryview) -> Header:
    if len(data) < HEADER_SIZE:
        raise FramingError(f"header needs {HEADER_SIZE} bytes, got {len(data)}")
    return Header(*_HEADER.unpack_from(data, 0))


class PacketDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole packets out.

    Memory is bounded by one maximal packet: the length word is validated as soon as its
    4 bytes are in, before the body is buffered.
    """

    def __init__(self, max_packet: int = PACKET_MAX) -> None:
        self._max_packet = max_packet
        self._buf = bytearray()
        self._need: int | None = None  # total length of the packet being assembled

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        packets: list[Packet] = []
        while True:
            if self._need is None:
                if len(self._buf) < LEN_SIZE:
                    return packets
                length = _LEN.unpack_from(self._buf, 0)[0]
                check_length(length, self._max_packet)
                self._need = length
            if len(self._buf) < self._need:
                return packets
            body = bytes(self._buf[LEN_SIZE : self._need])
            del self._buf[: self._need]
            self._need = None
            packets.append(Packet(decode_header(body), body[HEADER_SIZE:]))

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a packet."""
        return len(self._buf)


async def read_packet(reader: asyncio.StreamReader, max_packet: int = PACKET_MAX) -> Packet | None:
    """Read one packet; ``None`` on a clean end of stream between packets.

    Raises :class:`FramingError` for a bad length word or a stream that ends mid-packet.
    """
    try:
        prefix = await reader.readexactly(LEN_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FramingError("end of stream inside a length word") from None
    length = _LEN.unpack(prefix)[0]
    check_length(length, max_packet)  # before readexactly allocates the body
    try:
        body = await reader.readexactly(length - LEN_SIZE)
    except asyncio.IncompleteReadError as exc:
        raise FramingError(
            f"end of stream inside a packet ({len(exc.partial)} of {length - LEN_SIZE} bytes)"
        ) from None
    return Packet(decode_header(body), body[HEADER_SIZE:])
