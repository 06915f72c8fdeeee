"""Domain event callbacks: local registrations mapped to the daemon's callback IDs.

Registration is libvirt's "remote event callback" protocol (feature 14)::

    316 REGISTER_ANY {event_id, dom?}  → callback_id (the daemon's)
    318 / 359 / 363 MESSAGE {callback_id, dom, ...}  → our callback
    317 DEREGISTER_ANY {callback_id}

The ID handed to the caller is local (as libvirt's is), so it stays meaningful even if
the daemon reuses numbers.  Callbacks get libvirt-python's arguments, ``opaque`` last:

==========================  ===============================================
LIFECYCLE (0)               ``cb(conn, dom, event, detail, opaque)``
MIGRATION_ITERATION (20)    ``cb(conn, dom, iteration, opaque)``
JOB_COMPLETED (21)          ``cb(conn, dom, params: dict, opaque)``
==========================  ===============================================

They run on the connection's event loop, in arrival order; one that returns an awaitable
has it run as a task.  An event whose callback ID is not (or no longer) registered is
dropped, as libvirt drops it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pyvirt.client.error import libvirtError
from pyvirt.client.params import from_typed_params
from pyvirt.constants import DriverFeature, EventID
from pyvirt.errors import ErrorCode, ErrorDomain
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain

if TYPE_CHECKING:
    from pyvirt.client.aio import AsyncConnection

log = logging.getLogger(__name__)

RP = RemoteProc

#: ``cb(conn, dom, *event_args, opaque)``; may return an awaitable
DomainEventCallback = Callable[..., object]

_Decoded = tuple[int, NonnullDomain, tuple[object, ...]]  # daemon's callback ID, dom, args


def _lifecycle(body: Any) -> _Decoded:
    msg = body["msg"]
    return body["callback_id"], msg["dom"], (msg["event"], msg["detail"])


def _iteration(body: Any) -> _Decoded:
    return body["callback_id"], body["dom"], (body["iteration"],)


def _job_completed(body: Any) -> _Decoded:
    return body["callback_id"], body["dom"], (from_typed_params(body["params"]),)


#: event ID → the MESSAGE procedure carrying it and how to unpack it
_EVENTS: dict[EventID, tuple[RemoteProc, Callable[[Any], _Decoded]]] = {
    EventID.LIFECYCLE: (RP.DOMAIN_EVENT_CALLBACK_LIFECYCLE, _lifecycle),
    EventID.MIGRATION_ITERATION: (RP.DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION, _iteration),
    EventID.JOB_COMPLETED: (RP.DOMAIN_EVENT_CALLBACK_JOB_COMPLETED, _job_completed),
}
_DECODERS = {int(proc): decode for proc, decode in _EVENTS.values()}


@dataclasses.dataclass(eq=False)
class Registration:
    local_id: int
    remote_id: int
    event_id: int
    callback: DomainEventCallback
    opaque: object


class EventTable:
    """One connection's domain event registrations."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._ids = itertools.count(1)
        self._by_local: dict[int, Registration] = {}
        self._by_remote: dict[int, Registration] = {}

    def __len__(self) -> int:
        return len(self._by_local)

    async def register(self, dom: NonnullDomain | None, event_id: int,
                       callback: DomainEventCallback, opaque: object) -> int:  # fmt: skip
        if event_id not in _EVENTS:
            raise libvirtError(f"invalid argument: event ID {event_id} is not supported by "
                               f"this client (supported: {sorted(map(int, _EVENTS))})",
                               code=ErrorCode.INVALID_ARG, domain=ErrorDomain.NONE)  # fmt: skip
        if not await self._conn.supports_feature(DriverFeature.REMOTE_EVENT_CALLBACK):
            raise libvirtError("this function is not supported by the connection driver: "
                               "the server lacks per-callback domain events",
                               code=ErrorCode.NO_SUPPORT, domain=ErrorDomain.REMOTE)  # fmt: skip
        ret = await self._conn.call(RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                                    {"event_id": event_id, "dom": dom})  # fmt: skip
        reg = Registration(next(self._ids), ret["callback_id"], event_id, callback, opaque)
        self._by_local[reg.local_id] = reg
        self._by_remote[reg.remote_id] = reg
        return reg.local_id

    async def deregister(self, local_id: int) -> None:
        reg = self._by_local.pop(local_id, None)
        if reg is None:
            raise libvirtError(f"invalid argument: could not find event callback {local_id} "
                               "for deletion", code=ErrorCode.INVALID_ARG,
                               domain=ErrorDomain.NONE)  # fmt: skip
        self._by_remote.pop(reg.remote_id, None)
        await self._conn.call(RP.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
                              {"callback_id": reg.remote_id})  # fmt: skip

    def on_message(self, program: Program, spec: ProcSpec, body: Any) -> object:
        """The RPC client's event handler for this connection."""
        decode = _DECODERS.get(spec.number) if program is REMOTE else None
        if decode is None:
            return None
        remote_id, handle, args = decode(body)
        reg = self._by_remote.get(remote_id)
        if reg is None:
            log.debug("dropping %s for unknown callback %d", spec.name, remote_id)
            return None
        result = reg.callback(self._conn, self._conn.domain_for(handle), *args, reg.opaque)
        return result if isinstance(result, Awaitable) else None
