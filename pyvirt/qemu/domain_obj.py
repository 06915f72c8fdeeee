"""A domain as the driver holds it: definitions, state, process, monitor and job lock.

State follows libvirt: ``(DomainState, reason)`` pairs, changed only through
:meth:`DomainObj.set_state` so every transition is logged. The persistent definition
(``config``) and the running one (``live``) are kept apart, as libvirt's def/newDef: a
redefinition of a running domain changes ``config`` and takes effect at the next boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from pyvirt.conf.domain import DomainDef
from pyvirt.constants import DomainState, PausedReason, RunningReason
from pyvirt.errors import OperationInvalidError, OperationTimeoutError
from pyvirt.qemu.migration.job import MigrationJob
from pyvirt.qemu.monitor import Monitor
from pyvirt.qemu.ownership import OwnedFile
from pyvirt.qemu.process import QemuProcess

log = logging.getLogger(__name__)


@dataclass
class RuntimeResources:
    """Host resources a running domain holds; released when it stops."""

    run_dir: Path | None = None
    graphics_ports: list[int] = field(default_factory=list)
    tap_devices: list[str] = field(default_factory=list)
    #: tap name → an open queue of it, for QEMU to inherit (closed once QEMU has it)
    tap_fds: dict[str, int] = field(default_factory=dict)
    #: files handed to QEMU's user, to give back at stop (dynamic_ownership; ownership.py)
    owned_files: list[OwnedFile] = field(default_factory=list)


@dataclass
class DomainObj:
    uuid: str
    name: str
    #: persistent definition; None for a transient domain
    config: DomainDef | None
    #: definition of the running instance; None while shut off
    live: DomainDef | None = None
    state: DomainState = DomainState.SHUTOFF
    reason: int = 0
    autostart: bool = False
    process: QemuProcess | None = None
    monitor: Monitor | None = None
    resources: RuntimeResources = field(default_factory=RuntimeResources)
    #: name of the state-changing job in progress (for lock-timeout messages)
    job: str | None = None
    #: reason to record for the next QMP STOP/RESUME we caused ourselves
    pending_pause_reason: PausedReason | None = None
    pending_resume_reason: RunningReason | None = None
    #: the guest (or we) asked QEMU to shut down; QEMU EOF is then not a crash
    shutdown_seen: bool = False
    #: we are stopping QEMU ourselves; EOF must not be treated as a crash
    stopping: bool = False
    #: reboot() in progress: restart the guest when its ACPI shutdown completes
    fake_reboot: bool = False
    #: the migration job (libvirt's async job), from Begin/Prepare to Confirm/Finish
    migration: MigrationJob | None = None
    #: migration tuning that outlives a job (virsh migrate-setspeed before migrate)
    migrate_max_speed_mib: int | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def persistent(self) -> bool:
        return self.config is not None

    @property
    def active(self) -> bool:
        return self.live is not None

    @property
    def dom_id(self) -> int:
        return self.live.dom_id if self.live is not None else -1

    @property
    def current(self) -> DomainDef:
        """The definition that describes the domain now (live if running)."""
        definition = self.live or self.config
        assert definition is not None, "a domain object always has a definition"
        return definition

    def set_state(self, state: DomainState, reason: int) -> None:
        if (state, reason) != (self.state, self.reason):
            log.debug("[dom=%s] state %s/%d -> %s/%d", self.name, self.state.name,
                      self.reason, state.name, reason)
        self.state = state
        self.reason = reason

    def require_active(self) -> None:
        if not self.active:
            raise OperationInvalidError("domain is not running")

    def require_inactive(self) -> None:
        if self.active:
            raise OperationInvalidError("domain is already running")

    def require_no_migration(self) -> None:
        """State changes wait for no one while a migration job owns the domain."""
        if self.migration is not None:
            raise OperationInvalidError(
                f"domain '{self.name}' has an active migration job "
                f"(phase {self.migration.phase.value})")

    @contextlib.asynccontextmanager
    async def job_lock(self, job: str, timeout: float) -> AsyncIterator[None]:
        """Serialise state changes on this domain, as libvirt's job condition does."""
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except TimeoutError as exc:
            raise OperationTimeoutError(
                f"cannot acquire state change lock (held by {self.job or 'unknown'})"
            ) from exc
        self.job = job
        try:
            yield
        finally:
            self.job = None
            self._lock.release()
