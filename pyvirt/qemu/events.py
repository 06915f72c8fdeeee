"""Lifecycle events of the driver's domains, delivered to subscribers.

The daemon subscribes to forward events to RPC clients (DOMAIN_EVENT_CALLBACK_LIFECYCLE);
tests subscribe to see transitions. Callbacks are synchronous and must not block: they
typically put the event on a queue.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyvirt.constants import LifecycleEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainEvent:
    name: str
    uuid: str
    dom_id: int
    event: LifecycleEvent
    detail: int


@dataclass(frozen=True)
class MigrationIterationEvent:
    """A new pass over guest memory began (libvirt's VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION)."""

    name: str
    uuid: str
    dom_id: int
    iteration: int


AnyEvent = DomainEvent | MigrationIterationEvent
Subscriber = Callable[[AnyEvent], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count(1)

    def subscribe(self, callback: Subscriber) -> int:
        handle = next(self._ids)
        self._subscribers[handle] = callback
        return handle

    def unsubscribe(self, handle: int) -> None:
        self._subscribers.pop(handle, None)

    def emit(self, event: AnyEvent) -> None:
        log.debug("[dom=%s] event %s", event.name, event)
        for callback in list(self._subscribers.values()):
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the driver
                log.exception("event subscriber failed")
