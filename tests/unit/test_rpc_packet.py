"""Packet framing: golden hex from the reference (§2), limits, incremental decoding."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirt.rpc.packet import (
    KEEPALIVE_PROGRAM,
    PACKET_MAX,
    PAYLOAD_MAX,
    REMOTE_PROGRAM,
    FramingError,
    Header,
    MessageStatus,
    MessageType,
    Packet,
    PacketDecoder,
    encode_packet,
    encode_prefix,
    read_packet,
)
from pyvirt.rpc.remote_types import OptString
from pyvirt.rpc.types import Struct, UInt


def hexwords(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("|", ""))


AUTH_LIST_CALL = hexwords("0000001c 20008086 00000001 00000042 00000000 00000000 00000000")
AUTH_LIST_REPLY = hexwords(
    "00000024 20008086 00000001 00000042 00000001 00000000 00000000 | 00000001 00000000"
)
CONNECT_OPEN_CALL = hexwords(
    "00000038 20008086 00000001 00000001 00000000 00000002 00000000 |"
    "00000001 0000000e 71656d75 3a2f2f2f 73797374 656d0000 | 00000000"
)
PING = hexwords("0000001c 6b656570 00000001 00000001 00000002 00000000 00000000")
PONG = hexwords("0000001c 6b656570 00000001 00000002 00000002 00000000 00000000")

OPEN_ARGS = Struct("remote_connect_open_args", [("name", OptString), ("flags", UInt)])


def test_golden_auth_list() -> None:
    call = Header(REMOTE_PROGRAM, 1, 66, MessageType.CALL, 0, MessageStatus.OK)
    assert encode_packet(call) == AUTH_LIST_CALL
    reply = call.reply()
    assert encode_packet(reply, struct.pack(">II", 1, 0)) == AUTH_LIST_REPLY


def test_golden_connect_open() -> None:
    header = Header(REMOTE_PROGRAM, 1, 1, MessageType.CALL, 2, MessageStatus.OK)
    payload = OPEN_ARGS.encode({"name": "qemu:///system", "flags": 0})
    assert encode_packet(header, payload) == CONNECT_OPEN_CALL
    [packet] = PacketDecoder().feed(CONNECT_OPEN_CALL)
    assert packet.header == header
    assert OPEN_ARGS.decode(packet.payload) == {"name": "qemu:///system", "flags": 0}


def test_golden_keepalive() -> None:
    ping = Header(KEEPALIVE_PROGRAM, 1, 1, MessageType.MESSAGE, 0, MessageStatus.OK)
    assert encode_packet(ping) == PING
    assert encode_packet(Header(KEEPALIVE_PROGRAM, 1, 2, MessageType.MESSAGE, 0)) == PONG


def test_decoder_handles_byte_by_byte_and_batches() -> None:
    stream = AUTH_LIST_CALL + AUTH_LIST_REPLY + PING
    decoder = PacketDecoder()
    packets: list[Packet] = []
    for i in range(len(stream)):
        packets += decoder.feed(stream[i : i + 1])
    assert [p.header.proc for p in packets] == [66, 66, 1]
    assert packets[1].payload == struct.pack(">II", 1, 0)
    assert decoder.pending == 0
    assert len(PacketDecoder().feed(stream)) == 3


@pytest.mark.parametrize("length", [0, 4, 27, PACKET_MAX + 1, 0xFFFFFFFF])
def test_decoder_rejects_bad_length_before_buffering(length: int) -> None:
    with pytest.raises(FramingError):
        PacketDecoder().feed(struct.pack(">I", length))


def test_decoder_custom_limit() -> None:
    with pytest.raises(FramingError):
        PacketDecoder(max_packet=100).feed(struct.pack(">I", 101))


def test_encode_limits() -> None:
    header = Header(REMOTE_PROGRAM, 1, 1, MessageType.CALL, 0)
    assert len(encode_prefix(header, PAYLOAD_MAX)) == 28
    with pytest.raises(FramingError):
        encode_prefix(header, PAYLOAD_MAX + 1)
    with pytest.raises(FramingError):
        encode_packet(Header(REMOTE_PROGRAM, 1, 1, MessageType.CALL, -1))


@given(
    st.integers(0, 2**32 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from(list(MessageType)),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(MessageStatus)),
    st.binary(max_size=100),
)
def test_round_trip(prog: int, proc: int, kind: int, serial: int, status: int, body: bytes) -> None:
    header = Header(prog, 1, proc, kind, serial, status)
    data = encode_packet(header, body)
    assert struct.unpack(">I", data[:4])[0] == len(data)
    assert PacketDecoder().feed(data) == [Packet(header, body)]


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_read_packet_sequence_and_clean_eof() -> None:
    reader = _reader(AUTH_LIST_CALL + PING)
    first = await read_packet(reader)
    second = await read_packet(reader)
    assert first is not None and first.header.proc == 66
    assert second is not None and second.header.prog == KEEPALIVE_PROGRAM
    assert await read_packet(reader) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\0\0",  # EOF inside the length word
        AUTH_LIST_REPLY[:-3],  # EOF inside the body
        struct.pack(">I", 12) + b"\0" * 12,  # length below the minimum
    ],
)
async def test_read_packet_framing_errors(data: bytes) -> None:
    with pytest.raises(FramingError):
        await read_packet(_reader(data))


async def test_read_packet_4gib_length_does_not_wait_or_allocate() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">I", 0xFFFFFFFF))  # no EOF: a reader that waited would hang
    with pytest.raises(FramingError):
        await asyncio.wait_for(read_packet(reader), 1)
