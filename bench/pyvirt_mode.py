"""pyvirt's side of the benchmark: ``pyvirsh migrate`` as a user runs it, and its figures.

Wall time is the whole ``pyvirsh`` command, from spawning it to its exit (start-up, both
connections, the five phases, Confirm). QEMU's own figures come from the destination's
``domjobinfo --completed`` (the source's query-migrate, carried in the migration cookie).
The guest-visible pause uses QEMU's event timestamps as in raw mode: the lab daemons run
under :mod:`bench.pyvirtd_qmplog`, which appends every QMP event to a JSON-lines file per
host; the pause is the destination's ``RESUME`` minus the source's ``STOP``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.raw import Outcome, QmpEvent, pause_ms
from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import JobStatsFlags
from pyvirt.lab.hosts import LabHost

PYVIRSH = str(Path(sys.executable).with_name("pyvirsh"))
EVENT_LOG = "qmp-events.jsonl"
#: after a cap, how long pyvirsh gets to abort the migration (SIGINT) and exit
ABORT_GRACE_S = 60.0
#: domjobinfo --completed fields → the report's names
_JOB_FIELDS = {"time_elapsed": "total_ms", "downtime": "downtime_ms", "setup_time": "setup_ms",
               "memory_processed": "transferred", "memory_iteration": "dirty_syncs"}


#: the environment of every pyvirsh the benchmark runs (see bytecode_cache)
PYVIRSH_ENV: dict[str, str] = dict(os.environ)
#: what a migrate command imports, compiled once before anything is measured
_WARM_UP = ("import pyvirt.virsh.main, pyvirt.virsh.shell, pyvirt.virsh.commands_host, "
            "pyvirt.virsh.commands_migrate, pyvirt.virsh.migrate, pyvirt.virsh.progress, "
            "pyvirt.client.sync, pyvirt.client.migrate")


@contextlib.contextmanager
def bytecode_cache() -> Iterator[None]:
    """Run pyvirsh as installed, its modules' bytecode cached. An environment with
    PYTHONDONTWRITEBYTECODE (or a source tree nobody imported from yet) would make every
    pyvirsh compile pyvirt from source first (measured: +25 ms to its first RPC). The
    cache lives in a temporary PYTHONPYCACHEPREFIX, filled before measuring, removed
    after: the source tree is left as it was."""
    with tempfile.TemporaryDirectory(prefix="pyvirt-bench-pyc-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        subprocess.run([sys.executable, "-c", _WARM_UP], env=env, check=True)
        PYVIRSH_ENV.clear()
        PYVIRSH_ENV.update(env)
        try:
            yield
        finally:
            PYVIRSH_ENV.clear()
            PYVIRSH_ENV.update(os.environ)


def daemon_argv() -> list[str]:
    """The lab's daemon template: pyvirtd under the QMP event logger."""
    wrapper = Path(__file__).with_name("pyvirtd_qmplog.py")
    return ["{python}", str(wrapper), "--qmp-event-log", "{hostdir}/log/" + EVENT_LOG,
            "--listen", "--config", "{config}"]


def host_events(host: LabHost, dom: str, since: float) -> list[QmpEvent]:
    """The QMP events of ``dom``'s QEMU on ``host`` stamped at or after ``since``."""
    try:
        lines = (host.log_dir / EVENT_LOG).read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record: dict[str, Any] = json.loads(line)
            if record["dom"] == dom and record["ts"] >= since:
                events.append(QmpEvent(record["event"], record["ts"], record["data"]))
    return events


def first(events: list[QmpEvent], name: str) -> QmpEvent | None:
    return next((e for e in events if e.name == name), None)


@dataclass(frozen=True)
class CommandRun:
    wall_s: float
    returncode: int
    stderr: str
    capped: bool


async def run_pyvirsh(args: list[str], cap_s: float) -> CommandRun:
    """Run pyvirsh; past ``cap_s`` it gets SIGINT (pyvirsh aborts the migration)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYVIRSH, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=PYVIRSH_ENV)
    capped = False
    try:
        _, err = await asyncio.wait_for(proc.communicate(), cap_s)
    except TimeoutError:
        capped = True
        proc.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), ABORT_GRACE_S)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
    wall = time.monotonic() - t0
    assert proc.returncode is not None
    return CommandRun(round(wall, 4), proc.returncode, err.decode(errors="replace"), capped)


async def completed_stats(conn: AsyncConnection, name: str) -> dict[str, int]:
    dom = await conn.lookupByName(name)
    stats = await dom.jobStats(JobStatsFlags.COMPLETED)
    return {ours: int(stats[theirs]) for theirs, ours in _JOB_FIELDS.items() if theirs in stats}


async def guest_pause(src: LabHost, dst: LabHost, name: str, since: float) -> float | None:
    """The destination's RESUME minus the source's STOP (the daemons may log a moment late)."""
    for _ in range(20):
        stop = first(host_events(src, name, since), "STOP")
        resume = first(host_events(dst, name, since), "RESUME")
        if stop is not None and resume is not None:
            return pause_ms(stop, resume)
        await asyncio.sleep(0.05)
    return None


async def migrate(name: str, src: LabHost, dst: LabHost, options: list[str], cap_s: float,
                  dst_conn: AsyncConnection) -> Outcome:
    """``pyvirsh -c SRC migrate --live OPTIONS NAME DST`` and its figures."""
    since = time.time()
    args = ["-c", src.uri, "migrate", "--live", *options, name, dst.uri]
    run = await run_pyvirsh(args, cap_s)
    if run.returncode != 0:
        reason = "not converged within the cap" if run.capped else run.stderr.strip()
        return Outcome(None, None, {}, False, reason or f"pyvirsh exit {run.returncode}")
    stats = await completed_stats(dst_conn, name)
    return Outcome(run.wall_s, await guest_pause(src, dst, name, since), stats, True)
