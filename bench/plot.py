"""The PNG: wall time and guest-visible pause per scenario and mode (medians, min-max
bars), and one migration's remaining-bytes curve over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.scenarios import ALL_MODES

MIB = 1024 * 1024
COLOURS = {"normal": "tab:blue", "p2p": "tab:orange", "tunnelled": "tab:green", "raw": "tab:grey"}


def _bars(ax: Axes, scenarios: dict[str, Any], key: str, title: str, unit: str) -> None:
    names = list(scenarios)
    width = 0.8 / len(ALL_MODES)
    for i, mode in enumerate(m.value for m in ALL_MODES):
        xs, ys, low, high = [], [], [], []
        for x, name in enumerate(names):
            figures = scenarios[name].get(mode, {})
            median = figures.get(f"{key}_median")
            if median is None:
                continue
            xs.append(x + (i - (len(ALL_MODES) - 1) / 2) * width)
            ys.append(median)
            low.append(median - figures[f"{key}_min"])
            high.append(figures[f"{key}_max"] - median)
        ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=mode, color=COLOURS[mode])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def _curve(ax: Axes, curve: dict[str, Any]) -> None:
    samples = curve.get("samples", [])
    if samples:
        ax.plot([s[0] for s in samples], [s[1] / MIB for s in samples], marker=".",
                markersize=3, color=COLOURS["raw"])
    ax.set_xlabel("s since migrate")
    ax.set_ylabel("remaining MiB")
    ax.set_title(f"remaining bytes: {curve.get('scenario', '-')} ({curve.get('mode', 'raw')})",
                 fontsize=10)


def plot(data: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _bars(axes[0], data["scenarios"], "wall_s", "wall time (median, min-max)", "s")
    _bars(axes[1], data["scenarios"], "pause_ms", "guest-visible pause", "ms")
    _curve(axes[2], data.get("curve", {}))
    fig.suptitle(f"pyvirt vs raw QEMU migration, {data['stamp']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
