"""The KEEPALIVE program ("keep", 0x6b656570): PING and PONG, both empty MESSAGEs.

Whoever receives a PING answers PONG; any packet at all proves the peer alive
(``reference/libvirt-wire.md`` §7).  Keepalive packets always use serial 0.
"""

from __future__ import annotations

import enum

from pyvirt.rpc.packet import KEEPALIVE_PROGRAM, Header, MessageStatus, MessageType
from pyvirt.rpc.protocol import ProcKind, ProcSpec, Program


class KeepaliveProc(enum.IntEnum):
    PING = 1
    PONG = 2


KEEPALIVE = Program.build(
    "keepalive",
    KEEPALIVE_PROGRAM,
    [
        ProcSpec(p.value, p.name, readonly=True, priority=True, kind=ProcKind.MESSAGE, api=p.name)
        for p in KeepaliveProc
    ],
)


def keepalive_header(proc: KeepaliveProc) -> Header:
    return Header(
        KEEPALIVE_PROGRAM, KEEPALIVE.version, proc, MessageType.MESSAGE, 0, MessageStatus.OK
    )
