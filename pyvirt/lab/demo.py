"""``make demo``: two lab hosts, a guest dirtying memory, one live migration.

Every step prints the command it runs and that command's own output, so what the demo
shows is what an operator would see typing the same commands.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyvirt.lab.guest import build_guest, domain_xml, parse_heartbeat
from pyvirt.lab.hosts import LabHost, lab_down, lab_up
from pyvirt.lab.uselock import acquire_lab

GUEST = "guest1"
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def show(*argv: str) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    proc = subprocess.run(argv, text=True, capture_output=True, timeout=300)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"demo: command failed with exit code {proc.returncode}")
    return proc


def pyvirsh(host: LabHost, *args: str) -> subprocess.CompletedProcess[str]:
    return show(str(BIN / "pyvirsh"), "-c", host.uri, *args)


def heartbeats(host: LabHost) -> list[str]:
    log = host.dir / "log" / "qemu" / f"{GUEST}-serial0.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line.strip() for line in lines if parse_heartbeat(line.strip())]


def wait_heartbeats(host: LabHost, count: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(beats := heartbeats(host)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: no heartbeat from {GUEST} on {host.name}")
        time.sleep(0.2)
    return beats


def run_demo() -> None:
    step("building the test guest (cached after the first time)")
    build_guest()
    step("bringing up two lab hosts")
    host1, host2 = lab_up(2)
    for host in (host1, host2):
        print(f"{host.name} {host.address} {host.uri}")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / f"{GUEST}.xml"
        xml.write_text(domain_xml(GUEST, memory_mib=256, dirty_mb=64, dirty_rate=0))
        step(f"starting {GUEST} on host1: 256 MiB, dirtying 64 MiB as fast as it can")
        pyvirsh(host1, "create", str(xml))
    before = wait_heartbeats(host1, 5)
    print(f"{GUEST} heartbeat on host1: {before[-1]}")
    step("list on both hosts")
    pyvirsh(host1, "list", "--all")
    pyvirsh(host2, "list", "--all")
    step("live migration host1 -> host2")
    pyvirsh(host1, "migrate", "--live", "--verbose", GUEST, host2.uri)
    step("list on both hosts")
    pyvirsh(host1, "list", "--all")
    pyvirsh(host2, "list", "--all")
    step("statistics of the completed migration (the destination's record of the job)")
    pyvirsh(host2, "domjobinfo", "--completed", GUEST)
    pyvirsh(host2, "domstate", "--reason", GUEST)
    step(f"{GUEST}'s heartbeat continues on host2 (same counter, no reboot)")
    print(f"last on host1: {heartbeats(host1)[-1]}")
    after = wait_heartbeats(host2, 3)
    for line in after[:3]:
        print(f"on host2:      {line}")


def main() -> int:
    acquire_lab("make demo")  # a test run or benchmark using the lab finishes first
    try:
        run_demo()
    finally:
        step("tearing everything down")
        lab_down()
        print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
