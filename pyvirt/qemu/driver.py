"""The QEMU driver: libvirt's domain API over real QEMU processes.

Holds every domain object (persistent and transient), enforces libvirt's rules on names,
UUIDs and states, and delegates running things to :class:`DomainRunner`. Methods are
async and named after libvirt's operations; the daemon's RPC dispatch calls them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_defaults import apply_defaults
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.conf.domain_validate import validate_domain
from pyvirt.constants import (
    CreateFlags,
    DomainState,
    EventDefinedDetail,
    EventStoppedDetail,
    EventUndefinedDetail,
    LifecycleEvent,
    ListFlags,
    ShutoffReason,
    XMLFlags,
)
from pyvirt.errors import NoDomainError, OperationFailedError, OperationInvalidError
from pyvirt.hostnames import NameResolver
from pyvirt.qemu import devacl, domain_ops
from pyvirt.qemu.capabilities import QemuCaps, probe
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.events import EventBus
from pyvirt.qemu.identity import resolve_identity
from pyvirt.qemu.lifecycle import DomainRunner
from pyvirt.qemu.migration.engine import MigrationEngine
from pyvirt.qemu.migration.recovery import recover_all
from pyvirt.qemu.settings import DriverSettings
from pyvirt.qemu.store import NamedFileStore

log = logging.getLogger(__name__)


class QemuDriver:
    def __init__(self, settings: DriverSettings, caps: QemuCaps | None = None) -> None:
        self.settings = settings
        #: who QEMU runs as (qemu.conf user/group); a missing user refuses to start
        self.identity = resolve_identity(settings.user, settings.group)
        self.caps = caps or probe(settings.emulator, self.identity)
        self.events = EventBus()
        self.runner = DomainRunner(settings, self.caps, self.events, self._forget,
                                   self.identity)
        self.config_store = NamedFileStore(settings.config_dir, ".xml")
        self.autostart_store = NamedFileStore(settings.autostart_dir, "")
        self._domains: dict[str, DomainObj] = {}
        self.migration = MigrationEngine(self)
        #: host name lookups, off the event loop
        self.host_names = NameResolver(settings.dns_lookup_threads, settings.dns_lookup_timeout_s)

    # -- start-up and shut-down --------------------------------------------------------

    async def initialize(self, autostart: bool = False) -> None:
        """Load definitions, re-attach running QEMUs, then start autostart domains."""
        self.settings.ensure_dirs()
        devacl.grant_qemu_devices(self.identity)  # /dev/kvm, /dev/userfaultfd: QEMU opens them
        for name in self.config_store.names():
            definition = self._load_config(name)
            if definition is not None:
                self._add(DomainObj(uuid=str(definition.uuid), name=name, config=definition,
                                    autostart=self.autostart_store.exists(name)))
        for name in self.runner.status_store.names():
            await self._reattach(name)
        await recover_all(self.migration)
        if autostart:
            await self._autostart_all()

    async def close(self) -> None:
        """Let go of every QEMU without stopping it (daemon shutdown or restart)."""
        for obj in self._domains.values():
            if obj.monitor is not None:
                await obj.monitor.close()
                obj.monitor = None

    def _load_config(self, name: str) -> DomainDef | None:
        try:
            definition = parse_domain_xml(self.config_store.read(name))
            apply_defaults(definition, self.caps.host_defaults())
        except Exception as exc:  # one bad file must not keep the others from loading
            log.error("cannot load definition of '%s': %s", name, exc)
            return None
        return definition

    async def _reattach(self, name: str) -> None:
        try:
            status = self.runner.load_status(name)
        except Exception as exc:
            log.error("cannot read status of '%s': %s", name, exc)
            return
        uuid = str(status.live.uuid)
        obj = self._domains.get(uuid) or DomainObj(uuid=uuid, name=name, config=None)
        try:
            alive = await self.runner.reattach(obj, status)
        except Exception as exc:
            log.error("[dom=%s] cannot re-attach to QEMU pid %d: %s", name, status.pid, exc)
            alive = False
        if alive:
            self._add(obj)
            log.info("[dom=%s] re-attached to QEMU pid %d", name, status.pid)
        elif obj.persistent:
            obj.set_state(DomainState.SHUTOFF, ShutoffReason.UNKNOWN)

    async def _autostart_all(self) -> None:
        for obj in list(self._domains.values()):
            if obj.autostart and not obj.active and obj.config is not None:
                try:
                    await self.create(obj)
                except Exception as exc:
                    log.error("[dom=%s] autostart failed: %s", obj.name, exc)

    # -- registry ----------------------------------------------------------------------

    def _add(self, obj: DomainObj) -> None:
        self._domains[obj.uuid] = obj

    def _forget(self, obj: DomainObj) -> None:
        if self._domains.get(obj.uuid) is obj and not obj.persistent and not obj.active:
            del self._domains[obj.uuid]

    add_domain = _add
    forget_if_transient = _forget

    def domain_by_uuid(self, uuid: str) -> DomainObj | None:
        return self._domains.get(uuid.lower())

    def domain_by_name(self, name: str) -> DomainObj | None:
        return next((obj for obj in self._domains.values() if obj.name == name), None)

    def list_all(self, flags: int = 0) -> list[DomainObj]:
        objs = sorted(self._domains.values(), key=lambda o: (o.dom_id < 0, o.dom_id, o.name))
        return [obj for obj in objs if domain_ops.list_filter_matches(obj, ListFlags(flags))]

    def lookup_by_name(self, name: str) -> DomainObj:
        for obj in self._domains.values():
            if obj.name == name:
                return obj
        raise NoDomainError.by_name(name)

    def lookup_by_uuid(self, uuid: str) -> DomainObj:
        obj = self._domains.get(uuid.lower())
        if obj is None:
            raise NoDomainError.by_uuid(uuid)
        return obj

    def lookup_by_id(self, dom_id: int) -> DomainObj:
        for obj in self._domains.values():
            if obj.active and obj.dom_id == dom_id:
                return obj
        raise NoDomainError.by_id(dom_id)

    # -- definitions -------------------------------------------------------------------

    def parse(self, xml: str) -> DomainDef:
        definition = parse_domain_xml(xml)
        apply_defaults(definition, self.caps.host_defaults())
        validate_domain(definition)
        return definition

    async def define_xml(self, xml: str) -> DomainObj:
        definition = self.parse(xml)
        obj, existed = self._claim(definition, allow_active=True)
        obj.require_no_migration()  # change protection: no new definition mid-migration
        self.config_store.write(definition.name, format_domain_xml(definition))
        obj.config = definition
        self._add(obj)
        if obj.active:
            self.runner.save_status(obj)
        detail = EventDefinedDetail.UPDATED if existed else EventDefinedDetail.ADDED
        self.runner.emit(obj, LifecycleEvent.DEFINED, detail)
        return obj

    def _claim(self, definition: DomainDef, allow_active: bool) -> tuple[DomainObj, bool]:
        """Find the object a new definition belongs to, refusing name/UUID clashes."""
        uuid, name = str(definition.uuid), definition.name
        by_uuid = self._domains.get(uuid)
        if by_uuid is not None:
            if by_uuid.name != name:
                raise OperationFailedError(
                    f"domain '{by_uuid.name}' is already defined with uuid {uuid}")
            if by_uuid.active and not allow_active:
                raise OperationInvalidError(f"domain '{name}' is already active")
            return by_uuid, True
        for other in self._domains.values():
            if other.name == name:
                raise OperationFailedError(
                    f"domain '{name}' already exists with uuid {other.uuid}")
        return DomainObj(uuid=uuid, name=name, config=None), False

    async def undefine(self, obj: DomainObj, flags: int = 0) -> None:
        if not obj.persistent:
            raise OperationInvalidError("cannot undefine transient domain")
        async with obj.job_lock("undefine", self.settings.job_wait_s):
            self.config_store.remove(obj.name)
            self.autostart_store.remove(obj.name)
            obj.autostart = False
            obj.config = None
            self.runner.emit(obj, LifecycleEvent.UNDEFINED, EventUndefinedDetail.REMOVED)
            if obj.active:
                self.runner.save_status(obj)
            else:
                self._forget(obj)

    # -- lifecycle ---------------------------------------------------------------------

    async def create_xml(self, xml: str, flags: int = 0) -> DomainObj:
        """Start a transient domain (virDomainCreateXML)."""
        definition = self.parse(xml)
        obj, _ = self._claim(definition, allow_active=False)
        self._add(obj)
        try:
            async with obj.job_lock("start", self.settings.job_wait_s):
                await self.runner.start(obj, definition,
                                        paused=bool(flags & CreateFlags.START_PAUSED))
        except BaseException:
            self._forget(obj)
            raise
        return obj

    async def create(self, obj: DomainObj, flags: int = 0) -> None:
        """Start a defined domain (virDomainCreateWithFlags)."""
        async with obj.job_lock("start", self.settings.job_wait_s):
            obj.require_inactive()
            if obj.config is None:
                # a transient domain destroyed while this call waited for the lock: gone
                raise NoDomainError.by_uuid(obj.uuid)
            await self.runner.start(obj, obj.config,
                                    paused=bool(flags & CreateFlags.START_PAUSED))

    async def destroy(self, obj: DomainObj, flags: int = 0) -> None:
        obj.require_active()
        # Like libvirt, signal QEMU before taking the lock so a stuck job cannot
        # keep destroy waiting: the holder's monitor calls fail once QEMU is gone.
        if obj.job is not None and obj.process is not None:
            obj.stopping = True
            await obj.process.terminate(self.settings.kill_grace_s, graceful_only=bool(flags))
        async with obj.job_lock("destroy", self.settings.job_wait_s):
            obj.require_active()
            await self.runner.stop(obj, ShutoffReason.DESTROYED, EventStoppedDetail.DESTROYED,
                                   graceful_only=bool(flags & 1))

    async def shutdown(self, obj: DomainObj, timeout: float | None = None) -> None:
        await domain_ops.shutdown(self, obj, timeout)

    async def reboot(self, obj: DomainObj, flags: int = 0) -> None:
        await domain_ops.reboot(self, obj, flags)

    async def reset(self, obj: DomainObj) -> None:
        await domain_ops.reset(self, obj)

    async def suspend(self, obj: DomainObj) -> None:
        await domain_ops.suspend(self, obj)

    async def resume(self, obj: DomainObj) -> None:
        await domain_ops.resume(self, obj)

    # -- queries -----------------------------------------------------------------------

    def get_xml(self, obj: DomainObj, flags: int = 0) -> str:
        xml_flags = XMLFlags(flags)
        inactive = bool(xml_flags & XMLFlags.INACTIVE) or not obj.active
        definition = obj.config if inactive and obj.config is not None else obj.current
        return format_domain_xml(definition, live=not inactive and obj.active,
                                 secure=bool(xml_flags & XMLFlags.SECURE),
                                 migratable=bool(xml_flags & XMLFlags.MIGRATABLE))

    def get_state(self, obj: DomainObj) -> tuple[int, int]:
        return int(obj.state), int(obj.reason)

    def get_info(self, obj: DomainObj) -> tuple[int, int, int, int, int]:
        """(state, maxMem KiB, memory KiB, nrVirtCpu, cpuTime ns) as virDomainGetInfo."""
        definition = obj.current
        cpu_time = _cpu_time_ns(obj.process.pid) if obj.process is not None else 0
        memory = definition.current_memory_kib or definition.memory_kib
        return int(obj.state), definition.memory_kib, memory, definition.vcpus, cpu_time

    def get_autostart(self, obj: DomainObj) -> bool:
        return obj.autostart

    async def set_autostart(self, obj: DomainObj, autostart: bool) -> None:
        if not obj.persistent:
            raise OperationInvalidError("cannot set autostart for transient domain")
        if autostart:
            self.autostart_store.write(obj.name, "")
        else:
            self.autostart_store.remove(obj.name)
        obj.autostart = autostart

    def log_path(self, obj: DomainObj) -> Path:
        return self.runner.log_path(obj.name)

    def serial_log_path(self, obj: DomainObj, index: int = 0) -> Path:
        return self.runner.serial_log_path(obj.name, index)


def _cpu_time_ns(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return int(ticks * 1e9 / os.sysconf("SC_CLK_TCK"))
