"""Starting, stopping and re-attaching QEMU processes for domains.

Start (libvirt's order): take resources (id, run dir, display ports, taps, channel
paths) → hand the guest's files to QEMU's user (ownership.py) → start the log writer
and its pipes (``stdio_handler = "logd"``) → build argv (pure) → spawn QEMU with ``-S``
→ connect QMP → read back pty paths → set graphics passwords → ``cont`` (unless started
paused) → record status. Any failure undoes every step so no process, socket, port or
tap is left behind, and gives every file back. Stop gives them back once QEMU is gone
(except what the peer of a migration uses on shared storage), as does a restarted daemon
that finds QEMU gone.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyvirt import safefs
from pyvirt.conf.domain import DomainDef
from pyvirt.constants import (
    DomainState,
    EventStartedDetail,
    EventStoppedDetail,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import InternalError, OperationFailedError, VirtError
from pyvirt.qemu import process as qproc
from pyvirt.qemu import runtime_setup
from pyvirt.qemu.argv import LaunchOptions, LaunchPaths, build_argv
from pyvirt.qemu.argv_chardev import ChardevLog, chardev_logs
from pyvirt.qemu.capabilities import QemuCaps
from pyvirt.qemu.domain_obj import DomainObj, RuntimeResources
from pyvirt.qemu.events import DomainEvent, EventBus
from pyvirt.qemu.identity import QemuIdentity
from pyvirt.qemu.logpipes import LogPipes, LogRotation, close_fds, open_chardev_logs
from pyvirt.qemu.monitor import Monitor
from pyvirt.qemu.ownership import DacLabeller
from pyvirt.qemu.qmp_events import QmpEventHandler
from pyvirt.qemu.resources import PortAllocator
from pyvirt.qemu.settings import DriverSettings
from pyvirt.qemu.status import DomainStatus, format_status, parse_status
from pyvirt.qemu.store import NamedFileStore

log = logging.getLogger(__name__)

#: seconds a stopped QEMU's log writer gets to write what is left in its pipes
LOG_FLUSH_S = 2.0


class DomainRunner:
    """Owns the running side of every domain: processes, monitors, status files."""

    def __init__(
        self, settings: DriverSettings, caps: QemuCaps, events: EventBus,
        forget: Callable[[DomainObj], None], identity: QemuIdentity,
    ) -> None:
        self.settings = settings
        #: who QEMU runs as
        self.identity = identity
        self.caps = caps
        self.events = events
        self._forget = forget
        self.status_store = NamedFileStore(settings.status_dir, ".status")
        self.display_ports = PortAllocator(
            settings.remote_display_port_min, settings.remote_display_port_max,
            "display")
        self._next_id = 1
        self.qmp_events = QmpEventHandler(self)
        #: hands files to QEMU's user and back (dynamic_ownership)
        self.ownership = DacLabeller(settings, identity)
        #: called when a domain's QEMU is gone, before it may be forgotten (migration
        #: jobs give their ports back here)
        self.stop_listeners: list[Callable[[DomainObj], None]] = []

    # -- start -------------------------------------------------------------------------

    async def start(self, obj: DomainObj, definition: DomainDef, paused: bool,
                    incoming: str | None = None) -> None:
        """Boot ``definition`` as the running instance of ``obj``."""
        live = copy.deepcopy(definition)
        live.dom_id = self._allocate_id()
        obj.live = live
        obj.resources = RuntimeResources()
        obj.shutdown_seen = obj.stopping = obj.fake_reboot = False
        obj.set_state(DomainState.PAUSED, PausedReason.STARTING_UP)
        try:
            await self._launch(obj, live, incoming)
            if incoming is not None:
                # a migration destination stays paused until Finish resumes it
                obj.set_state(DomainState.PAUSED, PausedReason.MIGRATION)
            elif not paused:
                obj.pending_resume_reason = RunningReason.BOOTED
                await self.monitor(obj).execute("cont")
                obj.set_state(DomainState.RUNNING, RunningReason.BOOTED)
            else:
                obj.set_state(DomainState.PAUSED, PausedReason.USER)
            self.save_status(obj)
        except BaseException:
            await self._abort_start(obj)
            raise
        detail = EventStartedDetail.MIGRATED if incoming else EventStartedDetail.BOOTED
        self.emit(obj, LifecycleEvent.STARTED, detail)

    async def _launch(self, obj: DomainObj, live: DomainDef, incoming: str | None) -> None:
        run_dir = self.settings.domain_run_dir(live.dom_id, live.name)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        obj.resources.run_dir = run_dir
        # QEMU creates its monitor socket, pid file and channel sockets here
        os.chown(run_dir, self.identity.uid, self.identity.gid)
        listen_defaults = {"vnc": self.settings.vnc_listen,
                           "spice": self.settings.spice_listen}
        runtime_setup.prepare_resources(obj, live, run_dir, self.display_ports,
                                        listen_defaults)
        self.ownership.label(live, obj.resources.owned_files)
        serial_log_prefix = str(self.settings.qemu_log_dir / f"{live.name}-serial")
        log_path = self.log_path(live.name)
        assert live.uuid is not None
        # the daemon (or its log writer) opens only logs inside its log directory; a
        # <log file> elsewhere is QEMU's to open, as its own user
        daemon_logs = [log for log in chardev_logs(live, serial_log_prefix)
                       if safefs.is_within(self.settings.qemu_log_dir, log.path)]
        output = self._log_output(live, daemon_logs, log_path, live.uuid)
        log_fds = (output.chardev_fds if isinstance(output, LogPipes)
                   else open_chardev_logs(daemon_logs))
        try:
            paths = LaunchPaths(
                monitor_socket=str(run_dir / "monitor.sock"),
                pidfile=str(run_dir / "qemu.pid"),
                serial_log_prefix=serial_log_prefix,
                log_fds=log_fds,
                tap_fds=obj.resources.tap_fds,
            )
            argv = build_argv(live, paths, LaunchOptions(
                incoming=incoming, sandbox=bool(self.settings.seccomp_sandbox)))
            obj.process = qproc.spawn(
                argv, output, qproc.qemu_env(self.settings.extra_env), live.uuid,
                self.identity, [*log_fds.values(), *obj.resources.tap_fds.values()])
        finally:
            # QEMU has its copies (or failed): the writer sees end of file when QEMU exits
            if isinstance(output, LogPipes):
                output.close_qemu_ends()
            else:
                close_fds(log_fds.values())
            close_fds(obj.resources.tap_fds.values())
            obj.resources.tap_fds.clear()
        await self._connect_monitor(obj, paths.monitor_socket, log_path)
        await runtime_setup.after_launch(obj, live, self.monitor(obj))

    def _log_output(self, live: DomainDef, daemon_logs: list[ChardevLog], log_path: Path,
                    uuid: str) -> Path | LogPipes:
        """QEMU's log file ("file"), or pipes to a log writer that caps them ("logd")."""
        if self.settings.stdio_handler == "file":
            return log_path
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        rotation = LogRotation(self.settings.log_max_size, self.settings.log_max_backups)
        return LogPipes.start(log_path, daemon_logs, rotation, uuid)

    async def _connect_monitor(self, obj: DomainObj, path: str, log_path: Path) -> None:
        process = obj.process
        assert process is not None
        obj.monitor = self._new_monitor(obj)
        try:
            await obj.monitor.connect(path, self.settings.monitor_timeout_s, process.alive)
        except VirtError as exc:
            if not process.alive():  # all QEMU said is in the log once its writer is done
                await process.wait_logs_written(LOG_FLUSH_S)
            tail = qproc.log_tail(log_path)
            if not tail or process.alive():
                raise
            # libvirt's wording for a QEMU that died at start, with QEMU's own reason
            raise InternalError(f"process exited while connecting to monitor: {tail}") \
                from exc

    def _new_monitor(self, obj: DomainObj) -> Monitor:
        def on_event(name: str, data: dict[str, Any], when: float) -> None:
            self.qmp_events.handle(obj, name, data, when)

        async def on_eof() -> None:
            await self.handle_eof(obj)

        return Monitor(obj.name, on_event, on_eof)

    async def _abort_start(self, obj: DomainObj) -> None:
        obj.stopping = True
        await self._teardown(obj)
        obj.set_state(DomainState.SHUTOFF, ShutoffReason.FAILED)

    # -- stop --------------------------------------------------------------------------

    async def stop(self, obj: DomainObj, reason: ShutoffReason,
                   detail: EventStoppedDetail, graceful_only: bool = False) -> None:
        """Kill QEMU (SIGTERM, then SIGKILL), release everything, emit STOPPED."""
        obj.stopping = True
        if obj.process is not None:
            gone = await obj.process.terminate(self.settings.kill_grace_s, graceful_only)
            if not gone:
                obj.stopping = False
                raise OperationFailedError(
                    f"failed to terminate process {obj.process.pid} with SIGTERM: "
                    "Device or resource busy")
        await self._finish_stop(obj, reason, detail)

    async def _finish_stop(self, obj: DomainObj, reason: ShutoffReason,
                           detail: EventStoppedDetail) -> None:
        name, uuid, dom_id = obj.name, obj.uuid, obj.dom_id
        await self._teardown(obj, reason)
        for listener in list(self.stop_listeners):
            listener(obj)
        obj.set_state(DomainState.SHUTOFF, reason)
        self.events.emit(DomainEvent(name, uuid, dom_id, LifecycleEvent.STOPPED, detail))
        if not obj.persistent:
            self._forget(obj)

    async def handle_eof(self, obj: DomainObj) -> None:
        """QEMU closed its monitor: it exited, by our hand, the guest's, or a crash."""
        if obj.stopping or obj.live is None:
            return
        obj.stopping = True
        if obj.process is not None:
            await obj.process.wait_exit(self.settings.kill_grace_s)
        if obj.shutdown_seen:
            await self._finish_stop(obj, ShutoffReason.SHUTDOWN, EventStoppedDetail.SHUTDOWN)
        else:
            log.warning("[dom=%s] QEMU exited unexpectedly", obj.name)
            await self._finish_stop(obj, ShutoffReason.CRASHED, EventStoppedDetail.FAILED)

    async def _teardown(self, obj: DomainObj,
                        reason: ShutoffReason = ShutoffReason.FAILED) -> None:
        if obj.monitor is not None:
            await obj.monitor.close()
            obj.monitor = None
        process = obj.process  # a concurrent teardown (a second destroy) may clear it
        if process is not None:
            if await process.terminate(self.settings.kill_grace_s):
                # the writer has QEMU's last words in its pipes: let it write them and go
                if not await process.wait_logs_written(LOG_FLUSH_S):
                    log.warning("[dom=%s] log writer still running after QEMU exited",
                                obj.name)
            else:
                log.warning("[dom=%s] QEMU pid %d did not exit on SIGKILL", obj.name,
                            process.pid)
            process.reap()  # what has exited; never a blocking wait on the loop
            obj.process = None
        # taken before any await: a concurrent teardown must not give a file back twice
        owned, obj.resources.owned_files = obj.resources.owned_files, []
        self.ownership.restore(owned, migrated=_peer_uses_files(obj, reason))
        runtime_setup.release_resources(obj, self.display_ports)
        self.status_store.remove(obj.name)
        obj.live = None
        obj.pending_pause_reason = obj.pending_resume_reason = None

    # -- reattach ----------------------------------------------------------------------

    def load_status(self, name: str) -> DomainStatus:
        return parse_status(self.status_store.read(name))

    async def reattach(self, obj: DomainObj, status: DomainStatus) -> bool:
        """Adopt a QEMU left running by a previous daemon; False if it is gone."""
        live = status.live
        assert live.uuid is not None
        self._next_id = max(self._next_id, live.dom_id + 1)
        if not qproc.process_matches(status.pid, live.uuid):
            self.ownership.restore(status.owned_files, migrated=False)
            self.status_store.remove(status.live.name)
            runtime_setup.release_resources_of(live, Path(status.run_dir))
            return False
        obj.live = live
        obj.process = qproc.QemuProcess(pid=status.pid, uuid=live.uuid)
        obj.resources = runtime_setup.resources_of(live, Path(status.run_dir),
                                                   self.display_ports)
        obj.resources.owned_files = status.owned_files
        self.ownership.adopt(status.owned_files)
        obj.set_state(status.state, status.reason)
        obj.monitor = self._new_monitor(obj)
        await obj.monitor.connect(status.monitor_path, self.settings.monitor_timeout_s,
                                  obj.process.alive)
        await self.qmp_events.sync_state(obj)
        self.save_status(obj)
        return True

    # -- helpers -----------------------------------------------------------------------

    def monitor(self, obj: DomainObj) -> Monitor:
        if obj.monitor is None:
            raise OperationFailedError(f"domain '{obj.name}' has no monitor")
        return obj.monitor

    def save_status(self, obj: DomainObj) -> None:
        if obj.live is None or obj.process is None or obj.resources.run_dir is None:
            return
        status = DomainStatus(
            state=obj.state, reason=obj.reason, pid=obj.process.pid,
            persistent=obj.persistent,
            monitor_path=str(obj.resources.run_dir / "monitor.sock"),
            run_dir=str(obj.resources.run_dir), live=obj.live,
            owned_files=list(obj.resources.owned_files))
        self.status_store.write(obj.name, format_status(status))

    def emit(self, obj: DomainObj, event: LifecycleEvent, detail: int) -> None:
        self.events.emit(DomainEvent(obj.name, obj.uuid, obj.dom_id, event, detail))

    def log_path(self, name: str) -> Path:
        return self.settings.qemu_log_dir / f"{name}.log"

    def serial_log_path(self, name: str, index: int = 0) -> Path:
        return self.settings.qemu_log_dir / f"{name}-serial{index}.log"

    def _allocate_id(self) -> int:
        dom_id = self._next_id
        self._next_id += 1
        return dom_id

    def schedule(self, coro: Any, what: str) -> None:
        """Run a follow-up action (e.g. on_poweroff) outside the QMP event callback."""
        task = asyncio.get_running_loop().create_task(coro, name=what)
        task.add_done_callback(_log_task_failure)


def _peer_uses_files(obj: DomainObj, reason: ShutoffReason) -> bool:
    """libvirt's VIR_QEMU_PROCESS_STOP_MIGRATED: the source after a migration out, or the
    destination of an incoming one that failed; the other host runs the guest on the
    shared files then, so they are not given back (ownership.py)."""
    job = obj.migration
    return reason == ShutoffReason.MIGRATED or (job is not None and not job.outgoing)


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", task.get_name(), task.exception())
