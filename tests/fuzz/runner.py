"""The fuzzing run: an isolated daemon, workers, housekeeping, a watchdog, the verdict.

::

    report = run_fuzz(FuzzConfig(seconds=600, seed=1234, min_frames=200))
    print(report.text())    # per-procedure counts, throughput, latency, RSS, failures

A run fails when the daemon dies, a reply breaks an oracle (:mod:`tests.fuzz.session`),
the daemon's log shows an escaped exception, the watchdog waited more than ``max_latency``
for a listing, the daemon's RSS grew by more than ``max_rss_growth_mib`` after warm-up,
a canary changed, or a procedure had fewer than ``min_frames`` frames reach its argument
decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pyvirt.rpc.admin_protocol import ADMIN
from pyvirt.rpc.qemu_protocol import QEMU
from pyvirt.rpc.remote_protocol import REMOTE
from tests.fuzz.gen import World
from tests.fuzz.harness import (
    FuzzTarget,
    LogWatch,
    canary_changes,
    deliberate_drops,
    fuzz_target,
    rss_kib,
    snapshot,
)
from tests.fuzz.hostile import HostileCorpus
from tests.fuzz.keeper import Keeper
from tests.fuzz.report import FuzzReport, Latency
from tests.fuzz.scenarios import Sockets, Worker, callable_procs
from tests.fuzz.session import Failure, Stats

#: session kinds and their weights: the read-write table is the largest
SESSION_WEIGHTS = {"rw": 0.55, "ro": 0.12, "admin": 0.23, "stream": 0.10}
HOUSEKEEPING_S = 2.0


@dataclass
class FuzzConfig:
    seconds: float
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(1 << 32))
    #: frames that must reach each procedure's argument decoder
    min_frames: int = 20
    workers: int = 3
    max_latency: float = 1.0
    max_rss_growth_mib: float = 50.0
    #: the RSS baseline is read this long after the start (allocator high-water marks)
    warmup: float = 10.0
    #: log the RPC layer's debug lines (with the tracebacks of escaped exceptions)
    daemon_debug: bool = False
    #: where a failed run leaves its failing frames and the daemon's logs
    dump_dir: Path | None = None


def run_fuzz(config: FuzzConfig, out: TextIO | None = None) -> FuzzReport:
    """Run the fuzzer; the seed is printed first (to ``out``, default stdout)."""
    print(f"fuzz seed: {config.seed} (FUZZ_SEED={config.seed} make fuzz replays it), "
          f"{config.seconds:.0f} s, {config.workers} workers", file=out or sys.stdout,
          flush=True)
    conf = {"log_filters": "1:pyvirt.rpc.server_client"} if config.daemon_debug else {}
    with fuzz_target(conf) as target:
        report = asyncio.run(_Run(config, target).run())
        if not report.ok:
            report.dump_dir = dump_failure(report, target, config.dump_dir)
        return report


def dump_failure(report: FuzzReport, target: FuzzTarget, where: Path | None) -> Path:
    """Failing frames (raw and hex) and the daemon's logs, kept after the run's root goes."""
    where = where or Path(f"/tmp/pyvirt-fuzz-{report.seed}")
    where.mkdir(parents=True, exist_ok=True)
    for index, failure in enumerate(report.stats.failures):
        (where / f"failure-{index:03}.txt").write_text(failure.report(limit=1 << 20) + "\n")
        if failure.frame is not None:
            (where / f"failure-{index:03}.bin").write_bytes(failure.frame.data)
    for log in target.log_files():
        with contextlib.suppress(OSError):
            shutil.copy(log, where / log.name)
    (where / "report.txt").write_text(report.text() + "\n")
    return where


class _Run:
    def __init__(self, config: FuzzConfig, target: FuzzTarget) -> None:
        self.config = config
        self.target = target
        self.stats = Stats()
        self.world = World()
        daemon = target.daemon
        self.sockets = Sockets(str(daemon.sock), str(daemon.ro_sock), str(daemon.admin_sock))
        self.corpus = HostileCorpus(target.canary, daemon.sock)
        self.logs = LogWatch(target.log_files())
        self.keeper = Keeper(self.sockets, self.world, self.corpus)
        self.workers = [Worker(i, config.seed, self.sockets, self.corpus, self.world,
                               self.stats) for i in range(config.workers)]
        self.rss: dict[str, int] = {}
        self.rss_timeline: list[tuple[float, int]] = []
        self.watch_file = target.fuzzer_dir / "watchdog.jsonl"
        self.dead = False

    async def run(self) -> FuzzReport:
        watchdog = _start_watchdog(self.sockets.rw, self.watch_file)
        started = time.monotonic()
        try:
            await self.keeper.start()
            self.rss["start"] = rss_kib(self.target.pid)
            deadline = started + self.config.seconds
            tasks = [asyncio.create_task(self._work(w, deadline)) for w in self.workers]
            await self._monitor(started, deadline, tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.keeper.close()
            self.rss["end"] = await self._settled_rss()
        finally:
            watchdog.kill()
            watchdog.wait(5)
        elapsed = time.monotonic() - started
        return self._verdict(elapsed)

    async def _work(self, worker: Worker, deadline: float) -> None:
        kinds, weights = list(SESSION_WEIGHTS), list(SESSION_WEIGHTS.values())
        while time.monotonic() < deadline and not self.dead:
            kind = worker.rng.choices(kinds, weights)[0]
            try:
                await worker.session(kind)
            except (ConnectionError, OSError) as exc:
                if not self.target.alive():
                    return
                self.stats.sessions[f"connect-failed:{type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
            if kind == "admin":
                await self.keeper.restore_admin()

    async def _monitor(self, started: float, deadline: float,
                       tasks: list[asyncio.Task[None]]) -> None:
        last_housekeeping = 0.0
        while time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.5)
            now = time.monotonic()
            rss = rss_kib(self.target.pid)
            self.rss["peak"] = max(self.rss.get("peak", 0), rss)
            if not self.rss_timeline or now - started >= self.rss_timeline[-1][0] + 30:
                self.rss_timeline.append((now - started, rss))
            if "warm" not in self.rss and now - started >= self._warmup():
                self.rss["warm"] = rss
            for line in self.logs.poll():
                self._fail(f"daemon log: {line}")
            if not self.target.alive():
                self._fail(f"the daemon died (exit status {self.target.daemon.proc.poll()})",
                           with_frames=True)
                self.dead = True
                return
            if now - last_housekeeping >= HOUSEKEEPING_S:
                last_housekeeping = now
                await self.keeper.housekeeping(self.stats)

    async def _settled_rss(self) -> int:
        """RSS once the last calls are done: the lowest of a few samples over 2 s (a reply
        still being encoded is not growth)."""
        samples = []
        for _ in range(5):
            await asyncio.sleep(0.4)
            samples.append(rss_kib(self.target.pid))
        return min(samples)

    def _warmup(self) -> float:
        return min(self.config.warmup, self.config.seconds / 4)

    def _fail(self, what: str, with_frames: bool = False) -> None:
        """A failure seen outside a reply (log, death): the frames in flight as context."""
        recent = [frame for worker in self.workers for session in worker.active
                  for frame in session.sent] if with_frames else []
        self.stats.add_failure(Failure(what, None, recent))

    # -- verdict --------------------------------------------------------------------------------
    def _verdict(self, elapsed: float) -> FuzzReport:
        for line in self.logs.poll():
            self._fail(f"daemon log: {line}")
        alive = self.target.alive()
        if not alive and not self.dead:
            self._fail("the daemon died")
        cut = len(self.stats.truncated)
        if cut > deliberate_drops(self.target.log_files()):
            # a packet cut short with no limit to explain it: a daemon that stopped writing
            self._fail(f"the daemon sent a malformed packet: {self.stats.truncated[0]} "
                       f"({cut} connections ended inside a packet, not all of them "
                       "dropped for a logged reason)")
        changes = canary_changes(self.target.canary_before, snapshot(self.target.root))
        expected = [(program.name, spec.number, spec.name)
                    for program, spec in callable_procs(REMOTE, QEMU, ADMIN)]
        return FuzzReport(self.config.seed, self.config.seconds, self.config.min_frames,
                          self.config.max_latency, self.config.max_rss_growth_mib, elapsed,
                          self.stats, expected, _read_latencies(self.watch_file), dict(self.rss),
                          changes, alive, list(self.keeper.errors),
                          rss_timeline=list(self.rss_timeline))


def _start_watchdog(sock: str, out: Path) -> subprocess.Popen[bytes]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen([sys.executable, "-m", "tests.fuzz.watchdog", sock, str(out), "0.5"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _read_latencies(path: Path) -> Latency:
    samples: list[float] = []
    errors: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                samples.append(float(record["latency"]))
                if "error" in record:
                    errors.append(str(record["error"]))
    return Latency(samples, errors)
