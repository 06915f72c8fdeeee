"""Runs → medians, paired ratios, the issue's targets; JSON, a Markdown table and a plot.

Ratios are paired: repetition ``r`` of a mode is divided by repetition ``r`` of raw QEMU
(both in the same round, one after the other), and the median of those ratios is reported
(``wall_ratio_median``), as is the median of the paired pause differences
(``pause_delta_ms_median``). Medians of figures are over the converged runs only.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.raw import Outcome
from bench.scenarios import ALL_MODES, Mode

STAT_KEYS = ("total_ms", "downtime_ms", "setup_ms", "transferred", "dirty_syncs")


@dataclass
class Run:
    """One migration of a scenario's guest set in one mode (several guests: ``many``)."""

    scenario: str
    mode: str
    rep: int
    outcomes: list[Outcome]

    @property
    def converged(self) -> bool:
        return all(o.converged for o in self.outcomes)

    @property
    def wall_s(self) -> float | None:
        """The set's wall time: they start together, so the slowest guest's."""
        walls = [o.wall_s for o in self.outcomes]
        return max(w for w in walls if w is not None) if self.converged and walls else None

    @property
    def pause_ms(self) -> float | None:
        """The longest guest-visible pause of the set."""
        pauses = [o.pause_ms for o in self.outcomes if o.pause_ms is not None]
        return max(pauses) if self.converged and pauses else None

    def as_dict(self) -> dict[str, Any]:
        return {"rep": self.rep, "wall_s": self.wall_s, "pause_ms": self.pause_ms,
                "converged": self.converged,
                "guests": [dataclasses.asdict(o) for o in self.outcomes]}


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def _spread(prefix: str, values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    return {f"{prefix}_median": _median(present),
            f"{prefix}_min": min(present) if present else None,
            f"{prefix}_max": max(present) if present else None}


def _paired(runs: list[Run], raw: dict[int, Run], attr: str, ratio: bool) -> list[float]:
    out = []
    for run in runs:
        base = raw.get(run.rep)
        mine, theirs = getattr(run, attr), getattr(base, attr, None)
        if mine is None or theirs is None or (ratio and not theirs):
            continue
        out.append(mine / theirs if ratio else mine - theirs)
    return out


def _overhead(outcome: Outcome) -> float | None:
    """Wall time not spent in QEMU's migration (start-up, phases, QEMU start and stop)."""
    total = outcome.stats.get("total_ms")
    return None if outcome.wall_s is None or total is None else outcome.wall_s * 1000 - total


def _excess(outcome: Outcome) -> float | None:
    """Pause beyond QEMU's own downtime: the destination's resume latency."""
    downtime = outcome.stats.get("downtime_ms")
    return None if outcome.pause_ms is None or downtime is None else outcome.pause_ms - downtime


def summarize_mode(runs: list[Run], raw_runs: list[Run]) -> dict[str, Any]:
    raw = {r.rep: r for r in raw_runs}
    stats: dict[str, Any] = {**_spread("wall_s", [r.wall_s for r in runs]),
                             **_spread("pause_ms", [r.pause_ms for r in runs])}
    stats["wall_ratio_median"] = _median(_paired(runs, raw, "wall_s", ratio=True))
    stats["pause_delta_ms_median"] = _median(_paired(runs, raw, "pause_ms", ratio=False))
    outcomes = [o for r in runs if r.converged for o in r.outcomes]
    for key in STAT_KEYS:
        stats[f"{key}_median"] = _median([o.stats.get(key) for o in outcomes])
    stats["overhead_ms_median"] = _median([_overhead(o) for o in outcomes])
    stats["pause_excess_ms_median"] = _median([_excess(o) for o in outcomes])
    stats["converged"] = sum(r.converged for r in runs)
    stats["runs"] = [r.as_dict() for r in runs]
    return stats


def summarize(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """``{scenario: {mode: figures}}`` for every scenario and mode that ran."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == scenario]
        raw_runs = [r for r in mine if r.mode == Mode.RAW]
        out[scenario] = {mode.value: summarize_mode([r for r in mine if r.mode == mode],
                                                    raw_runs)
                         for mode in ALL_MODES if any(r.mode == mode for r in mine)}
    return out


# -- targets -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    what: str
    value: float | None
    limit: float
    unit: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit


def _figure(scenarios: dict[str, Any], scenario: str, mode: str, key: str) -> float | None:
    value = scenarios.get(scenario, {}).get(mode, {}).get(key)
    return None if value is None else float(value)


def targets(scenarios: dict[str, Any], startup: dict[str, Any]) -> list[Target]:
    """The issue's targets that this run's scenarios can check."""
    found = [Target("pyvirsh start-up to first RPC", startup["first_rpc_ms"]["median"],
                    100.0, " ms")]
    for scenario, limit in (("idle-256", 1.25), ("dirty-512", 1.10)):
        if scenario in scenarios:
            found.append(Target(f"{scenario}: normal wall / raw",
                                _figure(scenarios, scenario, "normal", "wall_ratio_median"),
                                limit, "x"))
    for scenario, modes in scenarios.items():
        for mode in ("normal", "p2p", "tunnelled"):
            if mode in modes:
                found.append(Target(f"{scenario}: {mode} pause - raw pause",
                                    _figure(scenarios, scenario, mode, "pause_delta_ms_median"),
                                    30.0, " ms"))
        normal = _figure(scenarios, scenario, "normal", "wall_s_median")
        p2p = _figure(scenarios, scenario, "p2p", "wall_s_median")
        if normal and p2p is not None:
            found.append(Target(f"{scenario}: p2p wall / normal wall", round(p2p / normal, 3),
                                1.0, "x"))
        # the same without QEMU's own (bimodal) time: what each mode's orchestration costs
        normal_extra = _figure(scenarios, scenario, "normal", "overhead_ms_median")
        p2p_extra = _figure(scenarios, scenario, "p2p", "overhead_ms_median")
        if normal_extra is not None and p2p_extra is not None:
            found.append(Target(f"{scenario}: p2p - normal, wall minus QEMU total time",
                                round(p2p_extra - normal_extra, 1), 0.0, " ms"))
    if "dirty-512" in scenarios:
        found.append(Target("dirty-512: tunnelled wall / raw (converged)",
                            _figure(scenarios, "dirty-512", "tunnelled", "wall_ratio_median"),
                            1.5, "x"))
    return found


# -- output ------------------------------------------------------------------------------
@dataclass
class Report:
    stamp: str
    meta: dict[str, Any]
    startup: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    curve: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        scenarios = summarize(self.runs)
        return {"stamp": self.stamp, **self.meta, "startup": self.startup,
                "scenarios": scenarios, "curve": self.curve,
                "targets": [{**dataclasses.asdict(t), "met": t.met}
                            for t in targets(scenarios, self.startup)]}

    def write(self, directory: Path) -> list[Path]:
        """``<stamp>.json``, ``<stamp>.md`` and ``<stamp>.png`` in ``directory``."""
        from bench.plot import plot
        from bench.table import markdown

        directory.mkdir(parents=True, exist_ok=True)
        data = self.as_dict()
        paths = [directory / f"{self.stamp}.{ext}" for ext in ("json", "md", "png")]
        paths[0].write_text(json.dumps(data, indent=2) + "\n")
        paths[1].write_text(markdown(data))
        plot(data, paths[2])
        return paths
