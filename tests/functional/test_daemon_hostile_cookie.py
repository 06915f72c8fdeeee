"""Hostile migration cookies sent to a live pyvirtd (fake QEMU) in a Prepare.

A peer's cookie is not trusted. Each one here is refused with a clear error, quickly, with
bounded memory, leaving no domain behind, while another client's list keeps answering in
under a second and the event-loop lag monitor stays silent (a big cookie is parsed off the
event loop).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pyvirt.client.aio import AsyncConnection
from pyvirt.errors import VirtError
from tests.functional.daemon_util import DaemonHandle, running_daemon
from tests.functional.test_daemon_blocking import list_watcher

DOM_UUID = "5b1f0c9e-7a2d-4e3b-9c8d-1f2e3d4c5b6a"
HOST_UUID = "a1a1a1a1-0000-4000-8000-00000000000a"
XML = f"""<domain type='qemu'><name>c1</name><uuid>{DOM_UUID}</uuid>
<memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><memballoon model='none'/></devices></domain>"""
HEAD = (f"<qemu-migration><name>c1</name><uuid>{DOM_UUID}</uuid><hostname>peer</hostname>"
        f"<hostuuid>{HOST_UUID}</hostuuid>")
TAIL = "</qemu-migration>"
LIVE = 1
#: how much the daemon's peak RSS may grow over all the hostile cookies
RSS_GROWTH_BOUND_KIB = 128 * 1024


def billion_laughs() -> str:
    lol = "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    return (f'<!DOCTYPE qemu-migration [<!ENTITY lol0 "lol">{lol}]>'
            + HEAD.replace("<hostname>peer", "<hostname>&lol9;") + TAIL)


HOSTILE = {
    "billion-laughs": (billion_laughs(), "DTDs and entity declarations are not allowed"),
    "external-entity": ('<!DOCTYPE qemu-migration [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
                        + HEAD.replace("<hostname>peer", "<hostname>&x;") + TAIL,
                        "not allowed"),
    "deep-nesting": (HEAD + "<a>" * 500_000 + "</a>" * 500_000 + TAIL, "nested deeper than"),
    "million-elements": (HEAD + "<a/>" * 1_000_000 + TAIL, "has more than 101000 elements"),
    "huge-value": (HEAD.replace("<hostname>peer", "<hostname>" + "p" * 3_000_000) + TAIL,
                   "a text longer than 65536 characters"),
}


def peak_rss_kib(daemon: DaemonHandle) -> int:
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_hostile_cookies_are_refused_in_prepare() -> None:
    # Checks: each cookie → "malformed migration cookie: <reason>" within 2 s; no domain,
    # run directory or log file of c1 afterwards; peak RSS bounded; list < 1 s; no lag.
    with running_daemon(emulator="fake") as daemon:
        conn = await AsyncConnection.open(daemon.uri)
        try:
            await conn.listAllDomains()
            baseline = peak_rss_kib(daemon)
            async with list_watcher(daemon.uri) as latencies:
                for name, (cookie, reason) in HOSTILE.items():
                    data = cookie.encode() + b"\0"
                    began = time.monotonic()
                    with pytest.raises(VirtError) as info:
                        await conn.migrate_prepare3_params({"destination_xml": XML}, data, LIVE)
                    took = time.monotonic() - began
                    message = str(info.value)
                    assert message.startswith("internal error: malformed migration cookie"), \
                        (name, message)
                    assert reason in message, (name, message)
                    assert len(message) < 400, name
                    assert took < 2.0, (name, took)
                    await asyncio.sleep(0.2)  # let the watcher sample between cookies
            assert await conn.listAllDomains() == []
        finally:
            await conn.close()
        growth = peak_rss_kib(daemon) - baseline
        assert growth < RSS_GROWTH_BOUND_KIB, f"peak RSS grew by {growth >> 10} MiB"
        assert max(latencies) < 1.0, latencies
        assert daemon.lag_lines() == []
        run_dir, log_dir = daemon.root / "run" / "qemu", daemon.root / "log" / "qemu"
        assert not any(p.name.startswith("domain-") for p in run_dir.iterdir())
        assert not log_dir.exists() or not any(log_dir.glob("c1*"))
