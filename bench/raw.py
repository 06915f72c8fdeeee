"""The baseline: QEMU migrated by the benchmark itself over QMP, no pyvirt on the path.

The guest's argv is pyvirt's own (:func:`pyvirt.qemu.argv.build_argv` on the same domain
XML, so the same machine, memory and devices), launched inside the lab host's network and
mount namespaces (``nsenter``, as :func:`pyvirt.lab.hosts.host_exec_argv` does) with
pyvirt's QEMU environment. The migration capabilities and parameters are what pyvirt's
planner (:func:`pyvirt.qemu.migration.capabilities.plan`) gives normal mode, sent in the
same order. One migration::

    t0  spawn destination QEMU (-incoming defer) ─ connect QMP ─ set caps/params
        migrate-incoming tcp:DST:PORT
        source: set caps/params ─ migrate tcp:DST:PORT
        wait: source MIGRATION completed, destination MIGRATION completed   (events)
        destination: cont ─ wait RESUME                                      (event)
        source: quit ─ wait for the process to exit
    t1  wall = t1 - t0;  pause = RESUME.timestamp(dst) - STOP.timestamp(src)

Waits are on QMP events (no sleeps); only the monitor socket's appearance is polled, every
5 ms, as pyvirt's monitor polls it every 10 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient, Runstate

from pyvirt.conf.domain_defaults import apply_defaults
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.conf.domain_validate import validate_domain
from pyvirt.constants import MigrateFlags
from pyvirt.lab.hosts import LabHost, host_exec_argv
from pyvirt.qemu.argv import LaunchOptions, LaunchPaths, build_argv
from pyvirt.qemu.argv_aliases import assign_aliases
from pyvirt.qemu.capabilities import probe
from pyvirt.qemu.migration.capabilities import QemuMigrationSetup, plan
from pyvirt.qemu.migration.params import MigrationRequest, Side
from pyvirt.qemu.process import qemu_env

EMULATOR = "/usr/bin/qemu-system-x86_64"
FINAL = frozenset({"completed", "failed", "cancelled"})
#: destination states in which it may run the guest (post-copy switched, or done)
DST_READY = frozenset({"completed", "postcopy-active"})
SOCKET_POLL_S = 0.005
START_TIMEOUT_S = 30.0
#: the first port raw destinations listen on (pyvirt's range is 49152-49215)
RAW_PORT_BASE = 49300


@dataclass(frozen=True)
class QmpEvent:
    name: str
    ts: float  # QEMU's timestamp (host clock, seconds)
    data: dict[str, Any]


def guest_argv(xml: str, run_dir: Path, label: str, incoming: str | None) -> list[str]:
    """pyvirt's argv for the domain ``xml``; its files are ``run_dir/label.*``."""
    definition = parse_domain_xml(xml)
    apply_defaults(definition, probe(EMULATOR).host_defaults())
    validate_domain(definition)
    assign_aliases(definition)
    paths = LaunchPaths(monitor_socket=str(monitor_socket(run_dir, label)),
                        pidfile=str(run_dir / f"{label}.pid"),
                        serial_log_prefix=str(run_dir / f"{label}-serial"))
    return build_argv(definition, paths, LaunchOptions(incoming=incoming))


def monitor_socket(run_dir: Path, label: str) -> Path:
    return run_dir / f"{label}.sock"


def serial_log(run_dir: Path, label: str) -> Path:
    return run_dir / f"{label}-serial0.log"


@dataclass
class RawQemu:
    """One QEMU the benchmark started, with its QMP connection and every event it sent."""

    name: str
    host: LabHost
    proc: asyncio.subprocess.Process
    qmp: QMPClient
    events: list[QmpEvent] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _pump: asyncio.Task[None] | None = None

    #: where the guest's serial console is logged
    serial: Path = Path()

    @classmethod
    async def spawn(cls, host: LabHost, xml: str, run_dir: Path, label: str,
                    incoming: str | None = None) -> RawQemu:
        """Start the guest of ``xml`` on ``host`` (paused: ``-S``) and connect its QMP."""
        argv = guest_argv(xml, run_dir, label, incoming)
        socket_path = monitor_socket(run_dir, label)
        socket_path.unlink(missing_ok=True)
        serial_log(run_dir, label).unlink(missing_ok=True)
        with open(run_dir / f"{label}.log", "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *host_exec_argv(host, argv), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=out, env=qemu_env({}), cwd="/", start_new_session=True)
        qemu = cls(label, host, proc, QMPClient(label), serial=serial_log(run_dir, label))
        try:
            await qemu._connect(socket_path)
        except BaseException:
            await qemu.kill()
            raise
        return qemu

    async def _connect(self, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"QEMU {self.name} exited at start ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU {self.name}: no monitor after {START_TIMEOUT_S} s")
            if path.exists():
                with contextlib.suppress(ConnectError):
                    await self.qmp.connect(str(path))
                    break
            await asyncio.sleep(SOCKET_POLL_S)
        self._pump = asyncio.create_task(self._collect(), name=f"qmp-events-{self.name}")

    async def _collect(self) -> None:
        async for message in self.qmp.events:
            event: dict[str, Any] = dict(message)  # a qemu.qmp Message is a mapping
            stamp = event["timestamp"]
            self.events.append(QmpEvent(str(event["event"]),
                                        stamp["seconds"] + stamp["microseconds"] / 1e6,
                                        dict(event.get("data", {}))))
            self._arrived.set()

    async def execute(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(command, args)

    async def apply(self, setup: QemuMigrationSetup) -> None:
        for command, args in setup.qmp_commands():
            await self.execute(command, args)

    def find(self, name: str, since: int,
             match: Callable[[dict[str, Any]], bool] = lambda d: True) -> QmpEvent | None:
        return next((e for e in self.events[since:] if e.name == name and match(e.data)), None)

    async def wait_event(self, name: str, since: int, timeout: float,
                         match: Callable[[dict[str, Any]], bool] = lambda d: True) -> QmpEvent:
        """The first ``name`` event at or after index ``since`` that ``match``es."""
        async with asyncio.timeout(timeout):
            while (found := self.find(name, since, match)) is None:
                self._arrived.clear()
                if (found := self.find(name, since, match)) is not None:
                    break
                await self._arrived.wait()
        return found

    async def wait_migration(self, since: int, states: frozenset[str],
                             timeout: float) -> str:
        event = await self.wait_event("MIGRATION", since, timeout,
                                      lambda d: d.get("status") in states | FINAL)
        return str(event.data["status"])

    async def quit(self) -> None:
        """QMP quit, then wait for the process to be gone."""
        with contextlib.suppress(Exception):
            await self.execute("quit")
        await self._close()
        await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self._close()
        await self.proc.wait()

    async def _close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()


def raw_request(side: Side, flags: MigrateFlags, bandwidth_mib: int | None) -> MigrationRequest:
    """The request pyvirt's planner gets in normal mode for these flags."""
    compression = ("xbzrle",) if flags & MigrateFlags.COMPRESSED else ()
    return MigrationRequest(side=side, flags=flags, bandwidth_mib=bandwidth_mib,
                            compression=compression)


@dataclass(frozen=True)
class RawPlan:
    source: QemuMigrationSetup
    destination: QemuMigrationSetup
    postcopy_after_precopy: bool


async def make_plan(qemu: RawQemu, flags: MigrateFlags, bandwidth_mib: int | None,
                    postcopy_after_precopy: bool) -> RawPlan:
    caps = {c["capability"] for c in await qemu.execute("query-migrate-capabilities")}
    params = set(await qemu.execute("query-migrate-parameters"))
    return RawPlan(plan(raw_request(Side.SOURCE, flags, bandwidth_mib), Side.SOURCE, caps, params),
                   plan(raw_request(Side.DESTINATION, flags, bandwidth_mib), Side.DESTINATION,
                        caps, params),
                   postcopy_after_precopy)


@dataclass
class Outcome:
    """One migration's figures (None where it did not get that far)."""

    wall_s: float | None
    pause_ms: float | None
    stats: dict[str, int]
    converged: bool
    error: str | None = None


def qemu_stats(info: dict[str, Any]) -> dict[str, int]:
    """QEMU's figures of a finished migration (query-migrate), in the report's names."""
    ram = info.get("ram", {})
    found = {"total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
             "setup_ms": info.get("setup-time"), "transferred": ram.get("transferred"),
             "dirty_syncs": ram.get("dirty-sync-count")}
    return {key: int(value) for key, value in found.items() if value is not None}


def pause_ms(stop: QmpEvent | None, resume: QmpEvent | None) -> float | None:
    if stop is None or resume is None:
        return None
    return round((resume.ts - stop.ts) * 1000, 3)


async def _switch_to_postcopy(src: RawQemu, since: int) -> None:
    """virsh's --postcopy-after-precopy: post-copy once the first pass is done."""
    await src.wait_event("MIGRATION_PASS", since, 3600, lambda d: d.get("pass", 0) >= 2)
    with contextlib.suppress(Exception):
        await src.execute("migrate-start-postcopy")


async def _source_side(src: RawQemu, since: int, raw_plan: RawPlan) -> None:
    switch = (asyncio.create_task(_switch_to_postcopy(src, since))
              if raw_plan.postcopy_after_precopy else None)
    try:
        status = await src.wait_migration(since, frozenset({"completed"}), 3600)
        if status != "completed":
            raise RuntimeError(f"outgoing migration {status}")
    finally:
        if switch is not None:
            switch.cancel()


async def _destination_side(dst: RawQemu, since: int) -> QmpEvent:
    status = await dst.wait_migration(since, DST_READY, 3600)
    if status not in DST_READY:
        raise RuntimeError(f"incoming migration {status}")
    await dst.execute("cont")
    return await dst.wait_event("RESUME", since, 30)


async def migrate(src: RawQemu, dst_host: LabHost, spawn_dst: Callable[[], Any],
                  raw_plan: RawPlan, port: int, cap_s: float) -> tuple[RawQemu, Outcome]:
    """Migrate ``src``'s guest to a new QEMU on ``dst_host``: (the QEMU now running the
    guest, the figures). Not done within ``cap_s``: cancelled, the guest stays on ``src``."""
    t0 = time.monotonic()
    dst: RawQemu = await spawn_dst()
    s0, d0 = len(src.events), len(dst.events)
    try:
        uri = f"tcp:{dst_host.address}:{port}"
        await dst.apply(raw_plan.destination)
        await dst.execute("migrate-incoming", {"uri": uri})
        await src.apply(raw_plan.source)
        await src.execute("migrate", {"uri": uri})
        async with asyncio.timeout(cap_s), asyncio.TaskGroup() as group:
            group.create_task(_source_side(src, s0, raw_plan))
            arrived = group.create_task(_destination_side(dst, d0))
        info = await src.execute("query-migrate")
        await src.quit()
    except Exception as exc:  # not converged within the cap, or failed: the source keeps it
        await _give_up(src, dst)
        return src, Outcome(None, None, {}, False, _reason(exc))
    wall = time.monotonic() - t0
    return dst, Outcome(round(wall, 4), pause_ms(src.find("STOP", s0), arrived.result()),
                        qemu_stats(info), True)


async def _give_up(src: RawQemu, dst: RawQemu) -> None:
    """Cancel the migration and resume the guest on the source (it never switched)."""
    with contextlib.suppress(Exception):
        since = len(src.events)
        await src.execute("migrate_cancel")
        await src.wait_migration(since, frozenset(), 10)
    await dst.kill()
    with contextlib.suppress(Exception):
        await src.execute("cont")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    if isinstance(exc, TimeoutError):
        return "not converged within the cap"
    return f"{type(exc).__name__}: {exc}"


async def poll_remaining(qemu: RawQemu, interval_s: float) -> list[tuple[float, int, int]]:
    """(seconds since the start, ram remaining, ram transferred) until the migration ends.
    Only for the plotted curve: a run with this poller is not one of the measured runs."""
    samples: list[tuple[float, int, int]] = []
    t0, started = time.monotonic(), False
    while qemu.qmp.runstate == Runstate.RUNNING:
        with contextlib.suppress(Exception):
            info = await qemu.execute("query-migrate")
            status, ram = info.get("status"), info.get("ram", {})
            if started and status in FINAL:  # (before: the last incoming one's status)
                return samples
            started = started or status in ("setup", "active")
            if started and "remaining" in ram:
                samples.append((round(time.monotonic() - t0, 4), int(ram["remaining"]),
                                int(ram["transferred"])))
        await asyncio.sleep(interval_s)
    return samples  # the source quit before a poll saw the end
