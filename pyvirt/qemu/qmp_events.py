"""QMP events → libvirt domain states, reasons and lifecycle events.

A table maps each QMP event name to a handler. Transitions we cause ourselves (suspend,
resume, start) record the reason beforehand in ``pending_*_reason`` so the event that
follows carries it; anything else gets libvirt's reason for an outside cause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyvirt.constants import (
    CrashedReason,
    DomainState,
    EventCrashedDetail,
    EventResumedDetail,
    EventShutdownDetail,
    EventStoppedDetail,
    EventSuspendedDetail,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutdownReason,
    ShutoffReason,
)
from pyvirt.errors import VirtError
from pyvirt.qemu.domain_obj import DomainObj

if TYPE_CHECKING:
    from pyvirt.qemu.lifecycle import DomainRunner

log = logging.getLogger(__name__)

Handler = Callable[["QmpEventHandler", DomainObj, dict[str, Any]], None]

_SUSPEND_DETAIL = {
    PausedReason.USER: EventSuspendedDetail.PAUSED,
    PausedReason.MIGRATION: EventSuspendedDetail.MIGRATED,
    PausedReason.IOERROR: EventSuspendedDetail.IOERROR,
    PausedReason.POSTCOPY: EventSuspendedDetail.POSTCOPY,
    PausedReason.POSTCOPY_FAILED: EventSuspendedDetail.POSTCOPY_FAILED,
    PausedReason.API_ERROR: EventSuspendedDetail.API_ERROR,
}

_RESUME_DETAIL = {
    RunningReason.UNPAUSED: EventResumedDetail.UNPAUSED,
    RunningReason.MIGRATED: EventResumedDetail.MIGRATED,
    RunningReason.POSTCOPY: EventResumedDetail.POSTCOPY,
    RunningReason.MIGRATION_CANCELED: EventResumedDetail.UNPAUSED,
}

#: QEMU run states (query-status) → libvirt state/reason, used when re-attaching
_QEMU_STATUS: dict[str, tuple[DomainState, int]] = {
    "running": (DomainState.RUNNING, RunningReason.UNKNOWN),
    "paused": (DomainState.PAUSED, PausedReason.USER),
    "prelaunch": (DomainState.PAUSED, PausedReason.STARTING_UP),
    "inmigrate": (DomainState.PAUSED, PausedReason.MIGRATION),
    "postmigrate": (DomainState.PAUSED, PausedReason.MIGRATION),
    "finish-migrate": (DomainState.PAUSED, PausedReason.MIGRATION),
    "io-error": (DomainState.PAUSED, PausedReason.IOERROR),
    "shutdown": (DomainState.SHUTDOWN, ShutdownReason.USER),
    "guest-panicked": (DomainState.CRASHED, CrashedReason.PANICKED),
    "internal-error": (DomainState.PAUSED, PausedReason.UNKNOWN),
    "watchdog": (DomainState.PAUSED, PausedReason.WATCHDOG),
    "suspended": (DomainState.PMSUSPENDED, 0),
}


class QmpEventHandler:
    def __init__(self, runner: DomainRunner) -> None:
        self.runner = runner
        self.table: dict[str, Handler] = {
            "STOP": QmpEventHandler._on_stop,
            "RESUME": QmpEventHandler._on_resume,
            "SHUTDOWN": QmpEventHandler._on_shutdown,
            "GUEST_PANICKED": QmpEventHandler._on_panic,
            "BLOCK_IO_ERROR": QmpEventHandler._on_io_error,
        }
        #: raw QMP events for others (migration) to watch: (obj, name, data, when)
        self.listeners: list[Callable[[DomainObj, str, dict[str, Any], float], None]] = []

    def handle(self, obj: DomainObj, name: str, data: dict[str, Any], when: float) -> None:
        for listener in list(self.listeners):
            listener(obj, name, data, when)
        handler = self.table.get(name)
        # While we stop QEMU ourselves (destroy), its SHUTDOWN/STOP on SIGTERM are echoes of
        # our own action: the stop path records the state and reason.
        if handler is not None and obj.live is not None and not obj.stopping:
            handler(self, obj, data)

    def _on_stop(self, obj: DomainObj, data: dict[str, Any]) -> None:
        if obj.shutdown_seen or obj.state == DomainState.PAUSED:
            return
        reason = obj.pending_pause_reason or PausedReason.UNKNOWN
        obj.pending_pause_reason = None
        obj.set_state(DomainState.PAUSED, reason)
        self.runner.save_status(obj)
        detail = _SUSPEND_DETAIL.get(reason, EventSuspendedDetail.PAUSED)
        self.runner.emit(obj, LifecycleEvent.SUSPENDED, detail)

    def _on_resume(self, obj: DomainObj, data: dict[str, Any]) -> None:
        reason = obj.pending_resume_reason or RunningReason.UNPAUSED
        obj.pending_resume_reason = None
        obj.set_state(DomainState.RUNNING, reason)
        self.runner.save_status(obj)
        if reason == RunningReason.BOOTED:
            return  # start() emits STARTED itself
        self.runner.emit(obj, LifecycleEvent.RESUMED,
                         _RESUME_DETAIL.get(reason, EventResumedDetail.UNPAUSED))

    def _on_io_error(self, obj: DomainObj, data: dict[str, Any]) -> None:
        if data.get("action") == "stop":
            obj.pending_pause_reason = PausedReason.IOERROR

    def _on_shutdown(self, obj: DomainObj, data: dict[str, Any]) -> None:
        """The guest powered off (or asked to reboot with on_reboot=destroy)."""
        if obj.fake_reboot:
            obj.fake_reboot = False
            self.runner.schedule(self._finish_fake_reboot(obj), f"reboot-{obj.name}")
            return
        obj.shutdown_seen = True
        obj.set_state(DomainState.SHUTDOWN, ShutdownReason.USER)
        guest = bool(data.get("guest", False))
        self.runner.emit(obj, LifecycleEvent.SHUTDOWN,
                         EventShutdownDetail.GUEST if guest else EventShutdownDetail.HOST)
        action = obj.live.on_poweroff if obj.live is not None else None
        if data.get("reason") == "guest-reset" and obj.live is not None:
            action = obj.live.on_reboot
        self.runner.schedule(self._after_guest_stop(obj, action or "destroy"),
                             f"on_poweroff-{obj.name}")

    async def _after_guest_stop(self, obj: DomainObj, action: str) -> None:
        if action == "preserve" or obj.live is None:
            return
        restart = action == "restart"
        definition = obj.config if obj.config is not None else obj.live
        await self.runner.stop(obj, ShutoffReason.SHUTDOWN, EventStoppedDetail.SHUTDOWN)
        if restart and definition is not None and obj.live is None:
            try:
                await self.runner.start(obj, definition, paused=False)
            except VirtError as exc:
                log.error("[dom=%s] restart after shutdown failed: %s", obj.name, exc)

    async def _finish_fake_reboot(self, obj: DomainObj) -> None:
        """libvirt's ACPI reboot: the guest shut down; reset it and let it run again."""
        monitor = self.runner.monitor(obj)
        await monitor.execute("system_reset")
        obj.pending_resume_reason = RunningReason.BOOTED
        await monitor.execute("cont")

    def _on_panic(self, obj: DomainObj, data: dict[str, Any]) -> None:
        obj.set_state(DomainState.CRASHED, CrashedReason.PANICKED)
        self.runner.emit(obj, LifecycleEvent.CRASHED, EventCrashedDetail.PANICKED)
        action = obj.live.on_crash if obj.live is not None else "destroy"
        if action in ("destroy", "restart", None):
            self.runner.schedule(self._after_crash(obj, action == "restart"),
                                 f"on_crash-{obj.name}")

    async def _after_crash(self, obj: DomainObj, restart: bool) -> None:
        definition = obj.config if obj.config is not None else obj.live
        await self.runner.stop(obj, ShutoffReason.CRASHED, EventStoppedDetail.CRASHED)
        if restart and definition is not None:
            await self.runner.start(obj, definition, paused=False)

    async def sync_state(self, obj: DomainObj) -> None:
        """Re-read QEMU's run state after a reattach; keep our reason when it agrees."""
        status = await self.runner.monitor(obj).execute("query-status")
        state, reason = _QEMU_STATUS.get(status.get("status", ""),
                                         (DomainState.NOSTATE, 0))
        if state != obj.state:
            obj.set_state(state, reason)
