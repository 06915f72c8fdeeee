"""Procedure tables: procedures described as data.

One :class:`Program` per RPC program holds a :class:`ProcSpec` per procedure number.  The
same table drives client stubs (encode args, decode ret), server dispatch (decode args,
encode ret), the read-only check and the priority-worker choice.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from pyvirt.rpc.packet import PROTOCOL_VERSION
from pyvirt.rpc.types import Void, XDRType


class ProcKind(enum.Enum):
    CALL = "call"  # client → server CALL, server → client REPLY
    MESSAGE = "message"  # asynchronous MESSAGE (events), no reply


class StreamKind(enum.Enum):
    """Direction of the data stream a call opens, seen from the *client* (libvirt's
    ``@writestream`` / ``@readstream``)."""

    WRITE = "write"  # client sends data (e.g. PREPARE_TUNNEL3_PARAMS)
    READ = "read"  # server sends data


@dataclasses.dataclass(frozen=True, slots=True)
class ProcSpec:
    """One procedure.

    ``readonly``: allowed on a read-only connection (it changes no state).
    ``priority``: libvirt's ``@priority: high``; served by priority workers when every
    normal worker is busy, so it is never stuck behind a long call.
    ``api``: the public API name used in error messages ("read only access prevents X").
    ``needs_auth``: refused with "authentication required" before the client authenticated.
    For a MESSAGE, ``args_type`` describes the message body and ``ret_type`` is void.
    """

    number: int
    name: str
    args_type: XDRType[Any] = Void
    ret_type: XDRType[Any] = Void
    readonly: bool = False
    priority: bool = False
    kind: ProcKind = ProcKind.CALL
    stream: StreamKind | None = None
    api: str = ""
    needs_auth: bool = True

    @property
    def is_message(self) -> bool:
        return self.kind is ProcKind.MESSAGE

    def encode_args(self, args: Any) -> bytes:
        return self.args_type.encode(args)

    def decode_args(self, payload: bytes | memoryview) -> Any:
        return self.args_type.decode(payload)

    def encode_ret(self, ret: Any) -> bytes:
        return self.ret_type.encode(ret)

    def decode_ret(self, payload: bytes | memoryview) -> Any:
        return self.ret_type.decode(payload)


@dataclasses.dataclass(frozen=True)
class Program:
    """An RPC program: number, version and its procedure table."""

    name: str
    number: int
    procs: Mapping[int, ProcSpec]
    version: int = PROTOCOL_VERSION

    @classmethod
    def build(
        cls, name: str, number: int, procs: Iterable[ProcSpec], version: int = PROTOCOL_VERSION
    ) -> Program:
        table: dict[int, ProcSpec] = {}
        for spec in procs:
            if spec.number in table:
                raise ValueError(f"{name}: procedure number {spec.number} used twice")
            table[spec.number] = spec
        return cls(name, number, table, version)

    def get(self, proc: int) -> ProcSpec | None:
        return self.procs.get(proc)

    def by_name(self, name: str) -> ProcSpec:
        for spec in self.procs.values():
            if spec.name == name:
                return spec
        raise KeyError(name)
