"""The Markdown report beside the JSON: medians with min-max, paired ratios, targets."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024

_HEADER = ("| scenario | mode | wall s: median (min-max) | wall / raw | pause ms: median "
           "(min-max) | pause - raw ms | QEMU total ms | downtime ms | setup ms | "
           "transferred MiB | dirty syncs | wall - QEMU total ms | pause - downtime ms | "
           "converged |")


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _range(figures: dict[str, Any], key: str, digits: int) -> str:
    median = figures.get(f"{key}_median")
    if median is None:
        return "-"
    low, high = figures.get(f"{key}_min"), figures.get(f"{key}_max")
    return f"{_num(median, digits)} ({_num(low, digits)}-{_num(high, digits)})"


def _row(scenario: str, mode: str, f: dict[str, Any]) -> str:
    transferred = f.get("transferred_median")
    cells = [scenario, mode, _range(f, "wall_s", 3),
             _num(f.get("wall_ratio_median"), 3) if mode != "raw" else "1",
             _range(f, "pause_ms", 1),
             _num(f.get("pause_delta_ms_median"), 1) if mode != "raw" else "0",
             _num(f.get("total_ms_median"), 0), _num(f.get("downtime_ms_median"), 0),
             _num(f.get("setup_ms_median"), 0),
             "-" if transferred is None else f"{transferred / MIB:.1f}",
             _num(f.get("dirty_syncs_median"), 0), _num(f.get("overhead_ms_median"), 0),
             _num(f.get("pause_excess_ms_median"), 0),
             f"{f.get('converged', 0)}/{len(f.get('runs', []))}"]
    return "| " + " | ".join(cells) + " |"


def _targets(data: dict[str, Any]) -> list[str]:
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    for t in data["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['what']} | {_num(t['value'], 3)}{t['unit']} | "
                     f"≤ {t['limit']}{t['unit']} | {met} |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    startup = data["startup"]
    lines = [f"# Migration benchmark {data['stamp']}", "",
             f"{data.get('repetitions')} repetition(s) per mode, modes alternating; "
             f"load average before/after: {data.get('load_before')} / "
             f"{data.get('load_after')}; {data.get('cpus')} CPUs; QEMU {data.get('qemu')}.",
             "", _HEADER, "|" + "---|" * 14]
    for scenario, modes in data["scenarios"].items():
        lines += [_row(scenario, mode, figures) for mode, figures in modes.items()]
    first = startup["first_rpc_ms"]
    lines += ["", f"pyvirsh start-up to first RPC: {first['median']} ms median "
              f"({first['min']}-{first['max']}, n={first['n']})."]
    if "uri_command_ms" in startup:
        whole = startup["uri_command_ms"]
        lines.append(f"`pyvirsh -c URI uri`, start to exit: {whole['median']} ms median "
                     f"({whole['min']}-{whole['max']}).")
    lines += ["", "## Targets", "", *_targets(data), ""]
    return "\n".join(lines)
