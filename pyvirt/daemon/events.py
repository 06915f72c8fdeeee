"""Domain events to RPC clients: callback registrations and an ordered send queue.

A client registers (procedure 316) for an event ID, optionally for one domain; the daemon
answers with a callback ID and from then on sends each matching driver event as a MESSAGE
(318 for lifecycle). Events go through one queue per client so they arrive in the order
the driver emitted them, and a slow client never blocks the driver: the send never waits
(a client that lets ``max_client_queued_bytes`` of events pile up is dropped by the RPC
layer).

A client holds at most ``max_client_event_callbacks`` registrations (pyvirt's cap; libvirt
has none): each costs work on every driver event.  Beyond it registering fails with an
error reply and one log line per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from pyvirt.constants import EventID
from pyvirt.errors import ErrorCode, RPCError, VirtError
from pyvirt.qemu.events import AnyEvent, DomainEvent, EventBus, MigrationIterationEvent
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain
from pyvirt.rpc.server_client import ClientContext

log = logging.getLogger(__name__)

#: event IDs pyvirtd emits; registering any other is refused loudly, never ignored
SUPPORTED_EVENT_IDS = frozenset({EventID.LIFECYCLE, EventID.MIGRATION_ITERATION})
#: bounded so a client that stops reading cannot make the daemon grow without limit
QUEUE_MAX = 4096


@dataclass(frozen=True)
class Registration:
    callback_id: int
    event_id: int
    #: only events of this domain (uuid), or all when None
    uuid: str | None
    #: legacy registration (167): message 107 without a callback ID
    legacy: bool = False


def _message_for(reg: Registration, dom: NonnullDomain,
                 event: AnyEvent) -> tuple[int, Any] | None:
    """The MESSAGE (procedure, body) a registration gets for an event, if any."""
    if isinstance(event, DomainEvent) and reg.event_id == EventID.LIFECYCLE:
        body = {"dom": dom, "event": int(event.event), "detail": int(event.detail)}
        if reg.legacy:
            return RemoteProc.DOMAIN_EVENT_LIFECYCLE, body
        return (RemoteProc.DOMAIN_EVENT_CALLBACK_LIFECYCLE,
                {"callback_id": reg.callback_id, "msg": body})
    if isinstance(event, MigrationIterationEvent) \
            and reg.event_id == EventID.MIGRATION_ITERATION and not reg.legacy:
        return (RemoteProc.DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION,
                {"callback_id": reg.callback_id, "dom": dom, "iteration": event.iteration})
    return None


class ClientEvents:
    def __init__(self, client: ClientContext, bus: EventBus) -> None:
        self._client = client
        self._bus = bus
        self._regs: dict[int, Registration] = {}
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(QUEUE_MAX)
        self._handle: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._cap_logged = False
        self._overflow_logged = False

    def register(self, event_id: int, uuid: str | None, legacy: bool = False) -> int:
        self._check_cap()
        if event_id not in SUPPORTED_EVENT_IDS:
            raise VirtError(f"this function is not supported by the connection driver: "
                            f"domain event ID {event_id} is not supported by pyvirtd",
                            code=ErrorCode.NO_SUPPORT)
        if legacy and any(r.legacy and r.event_id == event_id for r in self._regs.values()):
            raise VirtError(f"operation failed: domain event {event_id} already registered",
                            code=ErrorCode.OPERATION_FAILED)
        callback_id = next(self._ids)
        self._regs[callback_id] = Registration(callback_id, event_id, uuid, legacy)
        if self._handle is None:
            self._handle = self._bus.subscribe(self._on_event)
            self._pump = asyncio.get_running_loop().create_task(self._send_loop())
        return callback_id

    def _check_cap(self) -> None:
        cap = self._client.limits.max_client_event_callbacks
        if len(self._regs) < cap:
            return
        if not self._cap_logged:
            self._cap_logged = True
            log.warning("[client=%s] refusing event registrations beyond "
                        "max_client_event_callbacks (%d)", self._client.id, cap)
        raise RPCError(f"Too many event callbacks registered on this connection "
                       f"(max_client_event_callbacks = {cap})")

    @property
    def registrations(self) -> int:
        return len(self._regs)

    def deregister(self, callback_id: int) -> None:
        if self._regs.pop(callback_id, None) is None:
            raise VirtError(f"invalid argument: callback {callback_id} not registered",
                            code=ErrorCode.INVALID_ARG)

    def deregister_legacy(self, event_id: int) -> None:
        for reg in list(self._regs.values()):
            if reg.legacy and reg.event_id == event_id:
                del self._regs[reg.callback_id]
                return
        raise VirtError(f"invalid argument: domain event {event_id} not registered",
                        code=ErrorCode.INVALID_ARG)

    def close(self) -> None:
        if self._handle is not None:
            self._bus.unsubscribe(self._handle)
            self._handle = None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        self._regs.clear()

    def _on_event(self, event: AnyEvent) -> None:
        import uuid as uuidlib

        dom = NonnullDomain(event.name, uuidlib.UUID(event.uuid).bytes, event.dom_id)
        for reg in list(self._regs.values()):
            if reg.uuid not in (None, event.uuid):
                continue
            message = _message_for(reg, dom, event)
            if message is None:
                continue
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                if not self._overflow_logged:  # once per client, not per registration
                    self._overflow_logged = True
                    log.warning("[client=%s] event queue full; dropping events",
                                self._client.id)

    async def _send_loop(self) -> None:
        while True:
            proc, body = await self._queue.get()
            with contextlib.suppress(Exception):
                await self._client.send_message(REMOTE, int(proc), body)
