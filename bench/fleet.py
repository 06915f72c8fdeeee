"""The guests of one scenario: a pyvirt-managed set and a raw-QEMU set, moved back and forth.

Each scenario boots its guests once on host 1: ``scenario.guests`` under pyvirt (created
through pyvirtd) and as many raw QEMUs (the same argv, started by the benchmark). Every
migration moves a set to the other host, so the runs go host1 → host2 → host1 → ...
Only the set being measured runs: the other one is paused (a paused TCG guest costs no CPU
on this 2-core machine). Before each migration the set is resumed and left to settle
(its workload prints two more heartbeats), so the dirtier is back at its steady rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import pyvirt_mode, raw
from bench.scenarios import Mode, Scenario
from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import MigrateFlags
from pyvirt.lab.guest import domain_xml, parse_heartbeat
from pyvirt.lab.hosts import LabHost

READY_TIMEOUT_S = 180.0
SETTLE_BEATS = 2
POLL_S = 0.05


@dataclass
class Guest:
    name: str
    xml: str
    host: LabHost
    #: the QEMU running a raw guest (None: pyvirt manages this guest)
    qemu: raw.RawQemu | None = None

    @property
    def serial(self) -> Path:
        if self.qemu is not None:
            return self.qemu.serial
        return self.host.log_dir / "qemu" / f"{self.name}-serial0.log"


def heartbeats_after(path: Path, offset: int) -> list[int]:
    """Heartbeat counters in ``path`` after byte ``offset`` (also: passes of the dirtier)."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    beats = (parse_heartbeat(line.strip("\r")) for line in text.splitlines())
    return [hb.passes for hb in beats if hb is not None]


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def wait_beats(guest: Guest, offset: int, beats: int, passes: int,
                     timeout: float) -> None:
    """Wait for ``beats`` heartbeats after ``offset``, the last with >= ``passes`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        found = heartbeats_after(guest.serial, offset)
        if len(found) >= beats and found[-1] >= passes:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{guest.name}: no heartbeat in {guest.serial} in {timeout} s")
        await asyncio.sleep(POLL_S)


@dataclass
class Fleet:
    """Both guest sets of one scenario, the lab's hosts and a connection to each daemon."""

    scenario: Scenario
    hosts: list[LabHost]
    conns: dict[str, AsyncConnection]
    pyvirt_set: list[Guest] = field(default_factory=list)
    raw_set: list[Guest] = field(default_factory=list)
    plan: raw.RawPlan | None = None
    _labels: itertools.count[int] = field(default_factory=itertools.count)

    def other(self, host: LabHost) -> LabHost:
        return self.hosts[1] if host.index == self.hosts[0].index else self.hosts[0]

    def xml(self, name: str) -> str:
        s = self.scenario
        return domain_xml(name, memory_mib=s.memory_mib, dirty_mb=s.dirty_mb,
                          dirty_rate=s.dirty_rate)

    def run_dir(self, host: LabHost) -> Path:
        path = host.run_dir / "bench"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def label(self, guest: Guest) -> str:
        return f"{guest.name}.{next(self._labels)}"

    # -- start and stop ------------------------------------------------------------------
    async def start(self) -> None:
        home = self.hosts[0]
        for i in range(1, self.scenario.guests + 1):
            base = f"bench-{self.scenario.name}-{i}"
            self.pyvirt_set.append(Guest(base, self.xml(base), home))
            self.raw_set.append(Guest(f"{base}-raw", self.xml(f"{base}-raw"), home))
        await asyncio.gather(*(self._boot(g) for g in [*self.pyvirt_set, *self.raw_set]))
        first = self.raw_set[0].qemu
        assert first is not None
        self.plan = await raw.make_plan(first, self.flags(Mode.RAW), self.scenario.bandwidth_mib,
                                        "--postcopy-after-precopy" in self.scenario.options)
        await asyncio.gather(*(self.pause(g) for g in [*self.pyvirt_set, *self.raw_set]))

    def flags(self, mode: Mode) -> MigrateFlags:
        return mode.flags | self.scenario.flags

    async def _boot(self, guest: Guest) -> None:
        if guest.name.endswith("-raw"):
            label = self.label(guest)
            guest.qemu = await raw.RawQemu.spawn(guest.host, guest.xml,
                                                 self.run_dir(guest.host), label)
            await guest.qemu.execute("cont")
        else:
            await self.conns[guest.host.name].createXML(guest.xml)
        passes = 1 if self.scenario.dirty_mb else 0
        await wait_beats(guest, 0, 1, passes, READY_TIMEOUT_S)

    async def stop(self) -> None:
        for guest in self.raw_set:
            if guest.qemu is not None:
                await guest.qemu.kill()
        for guest in self.pyvirt_set:
            with contextlib.suppress(Exception):
                dom = await self.conns[guest.host.name].lookupByName(guest.name)
                await dom.destroy()

    # -- pause, resume -------------------------------------------------------------------
    async def pause(self, guest: Guest) -> None:
        if guest.qemu is not None:
            await guest.qemu.execute("stop")
        else:
            await (await self.conns[guest.host.name].lookupByName(guest.name)).suspend()

    async def resume(self, guest: Guest) -> None:
        offset = log_size(guest.serial)
        if guest.qemu is not None:
            await guest.qemu.execute("cont")
        else:
            await (await self.conns[guest.host.name].lookupByName(guest.name)).resume()
        await wait_beats(guest, offset, SETTLE_BEATS, 0, 60)

    # -- one measured run ------------------------------------------------------------------
    async def run(self, mode: Mode) -> list[raw.Outcome]:
        """Resume the mode's set, migrate every guest of it at once, pause it again."""
        guests = self.raw_set if mode == Mode.RAW else self.pyvirt_set
        await asyncio.gather(*(self.resume(g) for g in guests))
        outcomes = await asyncio.gather(*(self.migrate(g, mode) for g in guests))
        await asyncio.gather(*(self.pause(g) for g in guests))
        return list(outcomes)

    async def migrate(self, guest: Guest, mode: Mode) -> raw.Outcome:
        dst = self.other(guest.host)
        if mode == Mode.RAW:
            return await self._migrate_raw(guest, dst)
        options = [*mode.pyvirsh_options, *self.scenario.pyvirsh_options]
        outcome = await pyvirt_mode.migrate(guest.name, guest.host, dst, options,
                                            self.scenario.cap_s, self.conns[dst.name])
        if outcome.converged:
            guest.host = dst
        return outcome

    async def _migrate_raw(self, guest: Guest, dst: LabHost,
                           curve: list[tuple[float, int, int]] | None = None) -> raw.Outcome:
        src = guest.qemu
        assert src is not None and self.plan is not None
        label = self.label(guest)
        port = raw.RAW_PORT_BASE + int(label.rsplit(".", 1)[1]) % 50

        async def spawn() -> raw.RawQemu:
            return await raw.RawQemu.spawn(dst, guest.xml, self.run_dir(dst), label, "defer")

        poller = asyncio.create_task(raw.poll_remaining(src, 0.05)) if curve is not None \
            else None  # fmt: skip
        guest.qemu, outcome = await raw.migrate(src, dst, spawn, self.plan, port,
                                                self.scenario.cap_s)
        if poller is not None and curve is not None:
            with contextlib.suppress(Exception):
                curve.extend(await asyncio.wait_for(poller, 5))
        if outcome.converged:
            guest.host = dst
        return outcome

    async def curve_run(self) -> tuple[raw.Outcome, list[tuple[float, int, int]]]:
        """One extra raw migration sampled every 50 ms (not one of the measured runs)."""
        guest = self.raw_set[0]
        await self.resume(guest)
        curve: list[tuple[float, int, int]] = []
        outcome = await self._migrate_raw(guest, self.other(guest.host), curve)
        await self.pause(guest)
        return outcome, curve
