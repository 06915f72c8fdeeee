"""Migration benchmark: pyvirt (normal, --p2p, --p2p --tunnelled) against raw QEMU, one run.

``python -m bench.migrate [--quick | --scenario NAME ...] [--reps N] [--out DIR]``
(``make bench``, ``make bench-quick``). For each scenario it boots the guests on lab host 1
and migrates them back and forth between host 1 and host 2, the four modes alternating
within each repetition (the starting mode rotates). Results: ``DIR/<stamp>.json``,
``.md`` and ``.png`` (see bench/README.md for what is measured and how).

The lab is held (:func:`pyvirt.lab.uselock.acquire_lab`) from before ``lab up`` until after
``lab down``; everything the benchmark starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import startup
from bench.fleet import Fleet
from bench.pyvirt_mode import bytecode_cache, daemon_argv
from bench.report import Report, Run
from bench.scenarios import QUICK, SCENARIOS, SMOKE, Mode, Scenario, by_name
from pyvirt.client.aio import AsyncConnection
from pyvirt.lab.guest import CORRUPT_MARK, build_guest
from pyvirt.lab.hosts import LabHost, lab_down, lab_up
from pyvirt.lab.uselock import acquire_lab

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: the scenario whose remaining-bytes curve is plotted, in order of preference
CURVE_PREFERENCE = ("dirty-512", "hot-512", "slow-512")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mode_order(modes: Sequence[Mode], rep: int) -> list[Mode]:
    """The modes, the first one rotating with the repetition (no mode always goes first)."""
    shift = rep % len(modes)
    return [*modes[shift:], *modes[:shift]]


async def run_scenario(scenario: Scenario, hosts: list[LabHost],
                       conns: dict[str, AsyncConnection], report: Report, reps: int,
                       curve: bool) -> None:
    fleet = Fleet(scenario, hosts, conns)
    log(f"{scenario.name}: booting {scenario.guests} guest(s) per set")
    try:
        await fleet.start()
        for rep in range(reps):
            for mode in mode_order(scenario.modes, rep):
                outcomes = await fleet.run(mode)
                run = Run(scenario.name, mode.value, rep, outcomes)
                report.runs.append(run)
                log(f"{scenario.name} rep {rep + 1}/{reps} {mode.value:9}: wall "
                    f"{run.wall_s} s pause {run.pause_ms} ms"
                    + ("" if run.converged else f" NOT CONVERGED: {outcomes[0].error}"))
        if curve:
            outcome, samples = await fleet.curve_run()
            report.curve = {"scenario": scenario.name, "mode": "raw", "interval_s": 0.05,
                            "wall_s": outcome.wall_s, "samples": samples}
    finally:
        await fleet.stop()


async def open_conns(hosts: list[LabHost]) -> dict[str, AsyncConnection]:
    return {h.name: await AsyncConnection.open(h.uri) for h in hosts}


async def run_all(scenarios: list[Scenario], reps: int, report: Report) -> None:
    hosts = lab_up(2, daemon_argv=daemon_argv())
    report.startup.update(await startup.measure(hosts[0].uri))
    log(f"pyvirsh first RPC: {report.startup['first_rpc_ms']}")
    conns = await open_conns(hosts)
    curve_name = next((n for n in CURVE_PREFERENCE if n in {s.name for s in scenarios}),
                      scenarios[0].name)
    try:
        for scenario in scenarios:
            await run_scenario(scenario, hosts, conns, report, reps,
                               curve=scenario.name == curve_name)
        report.meta["corrupt_lines"] = corrupt_lines(hosts)
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                await conn.close()


def corrupt_lines(hosts: list[LabHost]) -> list[str]:
    """Every ``PVW CORRUPT`` line any guest printed (the memory oracle; must be none)."""
    found = []
    for host in hosts:
        for path in [*host.log_dir.rglob("*serial*.log"), *host.run_dir.rglob("*serial*.log")]:
            text = path.read_bytes().decode(errors="replace")
            found += [f"{path.name}: {line.strip()}" for line in text.splitlines()
                      if CORRUPT_MARK in line]
    return found


def qemu_version() -> str:
    out = subprocess.run(["/usr/bin/qemu-system-x86_64", "--version"], capture_output=True,
                         text=True, check=False).stdout
    return out.split("\n", 1)[0].removeprefix("QEMU emulator version ").strip()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def benchmark(scenarios: list[Scenario], reps: int, out: Path) -> list[Path]:
    """Run ``scenarios`` (``reps`` repetitions per mode) on a fresh lab; write the results."""
    acquire_lab("bench/migrate.py")  # held until the process exits (re-entrant in tests)
    build_guest()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = Report(stamp, {"repetitions": reps, "cpus": os.cpu_count(),
                            "qemu": qemu_version(), "load_before": load(),
                            "scenario_specs": {s.name: s.describe() for s in scenarios}}, {})
    lab_down()  # ours now: the daemons must be the ones that log QMP events
    try:
        with bytecode_cache():
            asyncio.run(run_all(scenarios, reps, report))
    finally:
        lab_down()
    report.meta["load_after"] = load()
    return report.write(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.migrate", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--smoke", action="store_true",
                        help=f"the smoke test's run: {SMOKE.name}, one repetition")
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        help="run this scenario (repeatable); default: all")
    parser.add_argument("--reps", type=int, default=None, metavar="N",
                        help="repetitions per mode (default 5, --quick 3, --smoke 1)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    return parser.parse_args(argv)


def choose(args: argparse.Namespace) -> tuple[list[Scenario], int]:
    if args.smoke:
        return [SMOKE], args.reps or 1
    if args.scenario:
        return by_name(args.scenario), args.reps or 5
    if args.quick:
        return by_name(list(QUICK)), args.reps or 3
    return list(SCENARIOS), args.reps or 5


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenarios, reps = choose(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: the benchmark needs root (lab hosts)", file=sys.stderr)
        return 1
    for path in benchmark(scenarios, reps, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
