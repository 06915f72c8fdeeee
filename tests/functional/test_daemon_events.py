"""Lifecycle events from pyvirtd to subscribed clients (pyvirt's client and python3-libvirt)."""

from __future__ import annotations

import textwrap
import threading
import time
from typing import Any

import pyvirt
from pyvirt.constants import EventStartedDetail, EventStoppedDetail, LifecycleEvent
from tests.functional.daemon_util import run, running_daemon

XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><memballoon model='none'/></devices></domain>"""


def test_lifecycle_events_reach_pyvirt_client() -> None:
    with running_daemon(emulator="fake") as daemon:
        conn = pyvirt.open(daemon.uri)
        seen: list[tuple[str, int, int]] = []
        arrived = threading.Event()

        def callback(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            seen.append((dom.name(), event, detail))
            if event == LifecycleEvent.UNDEFINED:
                arrived.set()

        handle = conn.domainEventRegisterAny(None, 0, callback, None)
        other = conn.defineXML(XML.format(name="other"))
        dom = conn.defineXML(XML.format(name="ev1"))
        dom.create()
        dom.suspend()
        dom.resume()
        dom.destroy()
        dom.undefine()
        assert arrived.wait(10), seen
        assert [s for s in seen if s[0] == "ev1"] == [
            ("ev1", LifecycleEvent.DEFINED, 0),
            ("ev1", LifecycleEvent.STARTED, EventStartedDetail.BOOTED),
            ("ev1", LifecycleEvent.SUSPENDED, 0),
            ("ev1", LifecycleEvent.RESUMED, 0),
            ("ev1", LifecycleEvent.STOPPED, EventStoppedDetail.DESTROYED),
            ("ev1", LifecycleEvent.UNDEFINED, 0),
        ]
        conn.domainEventDeregisterAny(handle)
        other.create()
        time.sleep(0.5)
        assert ("other", LifecycleEvent.STARTED, 0) not in seen  # deregistered: no more
        other.destroy()
        conn.close()


def test_lifecycle_events_reach_python_libvirt() -> None:
    with running_daemon(emulator="fake") as daemon:
        script = textwrap.dedent(f"""
            import threading, libvirt
            libvirt.virEventRegisterDefaultImpl()
            c = libvirt.open({daemon.uri!r})
            seen = []
            def cb(conn, dom, event, detail, opaque):
                seen.append((dom.name(), event, detail))
            c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
            def loop():
                while True:
                    libvirt.virEventRunDefaultImpl()
            threading.Thread(target=loop, daemon=True).start()
            d = c.createXML({XML.format(name="py-ev")!r}, 0)
            d.destroy()
            import time
            deadline = time.time() + 10
            while len(seen) < 2 and time.time() < deadline:
                time.sleep(0.05)
            print(seen)
            assert seen == [("py-ev", libvirt.VIR_DOMAIN_EVENT_STARTED, 0),
                            ("py-ev", libvirt.VIR_DOMAIN_EVENT_STOPPED, 1)], seen
            print("OK")
            """)
        proc = run(["/usr/bin/python3", "-c", script], timeout=60)
        assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
