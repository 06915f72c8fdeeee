"""The verdict of a fuzzing run and its printout: per-procedure counts, throughput,
watchdog latency, RSS, canaries, failures (each with its frame in hex)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.session import Stats

MIB = 1024


@dataclass
class Latency:
    """The watchdog's samples (seconds) and the errors it met."""

    samples: list[float]
    errors: list[str] = field(default_factory=list)

    def worst(self) -> float:
        return max(self.samples, default=0.0)

    def over(self, limit: float) -> int:
        return sum(1 for s in self.samples if s > limit)

    def percentile(self, fraction: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class FuzzReport:
    seed: int
    seconds: float
    min_frames: int
    max_latency: float
    max_rss_growth_mib: float
    elapsed: float
    stats: Stats
    #: (program, number, name) of every procedure that must reach its decoder
    expected: list[tuple[str, int, str]]
    latency: Latency
    rss_kib: dict[str, int]
    canary_changes: list[str]
    daemon_alive: bool
    extra_problems: list[str] = field(default_factory=list)
    dump_dir: Path | None = None
    #: (seconds since the start, RSS KiB) every 30 s
    rss_timeline: list[tuple[float, int]] = field(default_factory=list)

    # -- verdict --------------------------------------------------------------------------------
    def low_procs(self) -> list[str]:
        return [f"{prog}.{name}" for prog, number, name in self.expected
                if self._reached(prog, number) < self.min_frames]

    def _reached(self, program: str, number: int) -> int:
        count = self.stats.procs.get((program, number))
        return count.reached if count is not None else 0

    def rss_growth_mib(self) -> float:
        base = self.rss_kib.get("warm") or self.rss_kib.get("start", 0)
        return (self.rss_kib.get("end", 0) - base) / MIB

    def problems(self) -> list[str]:
        found = [failure.what for failure in self.stats.failures]
        if self.stats.more_failures:
            found.append(f"{self.stats.more_failures} more failures (not kept)")
        found += self.extra_problems
        if not self.daemon_alive:
            found.append("the daemon is not running at the end")
        if self.canary_changes:
            found.append("canaries changed: " + "; ".join(self.canary_changes[:20]))
        if self.latency.over(self.max_latency):
            found.append(f"the watchdog waited more than {self.max_latency} s "
                         f"{self.latency.over(self.max_latency)} times "
                         f"(worst {self.latency.worst():.2f} s)")
        if self.latency.errors:
            found.append(f"the watchdog's calls failed {len(self.latency.errors)} times: "
                         f"{self.latency.errors[:3]}")
        if len(self.latency.samples) < self.elapsed / 2:  # one sample per 0.5 s expected
            found.append(f"the watchdog took only {len(self.latency.samples)} samples")
        if self.rss_growth_mib() > self.max_rss_growth_mib:
            found.append(f"the daemon's RSS grew by {self.rss_growth_mib():.1f} MiB")
        low = self.low_procs()
        if low:
            found.append(f"{len(low)} procedures had fewer than {self.min_frames} frames "
                         f"reach their decoder: {', '.join(low)}")
        return found

    def summary(self) -> list[str]:
        """The problems, one line each, repeats counted."""
        counts: dict[str, int] = {}
        for problem in self.problems():
            line = problem.splitlines()[0][:300]
            counts[line] = counts.get(line, 0) + 1
        return [line + (f" (x{n})" if n > 1 else "") for line, n in counts.items()]

    @property
    def ok(self) -> bool:
        return not self.problems()

    # -- printout -------------------------------------------------------------------------------
    def text(self) -> str:
        stats = self.stats
        rate = stats.frames / self.elapsed if self.elapsed else 0.0
        lines = [
            f"fuzz seed {self.seed}: {stats.frames} frames ({stats.bytes / MIB / MIB:.1f} MiB) "
            f"in {self.elapsed:.0f} s = {rate:.0f} frames/s, {stats.replies} replies, "
            f"{stats.unanswered} unanswered (connection ended first)",
            "frame kinds: " + _counter(stats.kinds),
            "sessions: " + _counter(stats.sessions),
            f"watchdog: {len(self.latency.samples)} listings, p50 "
            f"{self.latency.percentile(0.5) * 1000:.0f} ms, p99 "
            f"{self.latency.percentile(0.99) * 1000:.0f} ms, worst "
            f"{self.latency.worst() * 1000:.0f} ms",
            "daemon RSS (MiB): " + ", ".join(f"{k} {v / MIB:.1f}" for k, v in
                                             self.rss_kib.items())
            + f"; growth after warm-up {self.rss_growth_mib():.1f}; over time: "
            + " ".join(f"{t:.0f}s:{kib / MIB:.0f}" for t, kib in self.rss_timeline),
            f"canaries: {'unchanged' if not self.canary_changes else self.canary_changes}",
            "per procedure: reached decoder (decoded OK) / sent",
        ]
        lines += self._proc_lines()
        if stats.slow:
            lines.append(f"slow calls ({len(stats.slow)}): " + "; ".join(stats.slow[:5]))
        reported: set[str] = set()
        for failure in stats.failures:  # the first frame of each kind of failure
            if failure.what not in reported and len(reported) < 12:
                reported.add(failure.what)
                lines.append(failure.report())
        problems = self.summary()
        lines.append("RESULT: " + ("PASS" if not problems else "FAIL\n  " + "\n  ".join(problems)))
        if self.dump_dir is not None:
            lines.append(f"failing frames and daemon logs: {self.dump_dir}")
        if problems:
            lines.append(f"reproduce: FUZZ_SEED={self.seed} FUZZ_SECONDS={self.seconds:.0f} "
                         "make fuzz")
        return "\n".join(lines)

    def _proc_lines(self) -> list[str]:
        lines = []
        for program, number, name in self.expected:
            count = self.stats.procs.get((program, number))
            reached, decoded, sent = ((count.reached, count.decoded, count.sent)
                                      if count is not None else (0, 0, 0))
            low = "  LOW" if reached < self.min_frames else ""
            lines.append(f"  {program:6} {number:4} {name:45} {reached:6} ({decoded:6}) "
                         f"/ {sent:6}{low}")
        return lines


def _counter(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
