"""Post-copy migrations with the fake QEMU: the switch to post-copy, and a link that breaks
after it (the guest is split between the hosts).

The fake QEMU models post-copy (tests/fakes/fake_qemu.py): ``virsh migrate-postcopy`` during
the copy makes the source hand the guest over ("postcopy-active" on both ends) and send the
rest of its RAM while the destination runs it; the fault ``postcopy_break_after_s`` breaks
the link that long after the switch, and both QEMUs go ``postcopy-paused``, alive.
Each test runs its own daemon pair whose destination has exactly ONE migration port, so a
port an incoming job kept shows as a refused next migration.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyvirt
from pyvirt.constants import EventSuspendedDetail, LifecycleEvent
from tests.functional.daemon_util import DaemonHandle, running_daemon_pair
from tests.functional.gridutil import (
    MODES,
    Background,
    Guest,
    Pair,
    assert_no_job,
    assert_no_listening_ports,
    domstate,
    emptied_after_test,
    eventually,
    fake_qemus,
    new_guest,
    virsh,
)

#: a copy slow enough for migrate-postcopy to land during it (64 MiB over 4 s)
SLOW = {"migrate_duration_s": 4.0}
POSTCOPY_MODES = ("normal", "p2p")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with running_daemon_pair(ports=1) as (src, dst):
        yield from emptied_after_test(Pair(src, dst, tmp_path, tmp_path))


class LifecycleEvents:
    """The (event, detail) lifecycle events one daemon sent for one guest."""

    def __init__(self, daemon: DaemonHandle, name: str) -> None:
        self.seen: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._conn = pyvirt.open(daemon.uri)

        def callback(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            if dom.name() == name:
                with self._lock:
                    self.seen.append((event, detail))

        self._handle = self._conn.domainEventRegisterAny(None, 0, callback, None)

    def count(self, event: int, detail: int) -> int:
        with self._lock:
            return self.seen.count((event, detail))

    def wait_for(self, event: int, detail: int) -> None:
        eventually(lambda: self.count(event, detail) >= 1, f"no {event}/{detail}: {self.seen}")

    def close(self) -> None:
        with contextlib.suppress(pyvirt.libvirtError):
            self._conn.domainEventDeregisterAny(self._handle)
        self._conn.close()


def settles(daemon: DaemonHandle, name: str, state: str) -> None:
    eventually(lambda: domstate(daemon, name) == state,
               f"{daemon.root}: {name} is {domstate(daemon, name)}, not {state}")


def _memory_processed(daemon: DaemonHandle, guest: Guest) -> float:
    """``Memory processed`` of the guest's job (domjobinfo), 0 when not shown yet."""
    for line in virsh(daemon, "domjobinfo", guest.name)[1].splitlines():
        if line.startswith("Memory processed:"):
            return float(line.split()[2])
    return 0.0


def switch_to_postcopy(pair: Pair, guest: Guest, mode: str) -> Background:
    """``virsh migrate --postcopy`` in the background, switched by ``migrate-postcopy``
    once the pre-copy moves data."""
    result: list[tuple[int, str, str]] = []
    argv = ("migrate", "--live", "--postcopy", *MODES[mode], guest.name, pair.dst.uri)
    thread = threading.Thread(target=lambda: result.append(virsh(pair.src, *argv)))
    thread.start()
    eventually(lambda: _memory_processed(pair.src, guest) > 0, "no data moved")
    rc, _, err = virsh(pair.src, "migrate-postcopy", guest.name)
    assert rc == 0, err
    return Background(thread, result)


@pytest.mark.parametrize("mode", POSTCOPY_MODES)
def test_postcopy_switch_completes(pair: Pair, mode: str) -> None:
    # Checks: after migrate-postcopy the migration succeeds; the guest runs (migrated) on
    # the destination, the source's QEMU is gone; no job and no listening port are left.
    guest = new_guest(pair, faults=SLOW)
    rc, _, err = switch_to_postcopy(pair, guest, mode).wait()
    assert rc == 0, err
    eventually(lambda: domstate(pair.dst, guest.name) == "running (migrated)",
               f"destination: {domstate(pair.dst, guest.name)}")
    assert domstate(pair.src, guest.name) == "absent"
    eventually(lambda: not fake_qemus(pair.src, guest.name), "source QEMU still alive")
    assert_no_job(pair.dst, guest.name)
    assert_no_listening_ports(pair)


@pytest.mark.parametrize("mode", POSTCOPY_MODES)
def test_postcopy_broken_in_finish_keeps_both_halves_and_frees_the_port(
        pair: Pair, mode: str) -> None:
    # Checks: the link breaks after the switch, while the destination's Finish waits for
    # the last pages. virsh reports the post-copy failure; both hosts keep their half of the
    # guest, paused (post-copy failed), their QEMUs alive, and each says so with exactly one
    # SUSPENDED/POSTCOPY_FAILED event; the destination's job is over and its (only)
    # migration port is free again: another guest migrates in on it.
    guest = new_guest(pair, faults={**SLOW, "postcopy_break_after_s": 1.0})
    events = {side: LifecycleEvents(daemon, guest.name)
              for side, daemon in (("src", pair.src), ("dst", pair.dst))}
    try:
        rc, _, err = switch_to_postcopy(pair, guest, mode).wait()
        assert rc == 1 and "post-copy" in err, err
        for daemon in (pair.src, pair.dst):
            settles(daemon, guest.name, "paused (post-copy failed)")
            assert len(fake_qemus(daemon, guest.name)) == 1
            assert_no_job(daemon, guest.name)
        failed = (LifecycleEvent.SUSPENDED, EventSuspendedDetail.POSTCOPY_FAILED)
        for recorded in events.values():
            recorded.wait_for(*failed)
        time.sleep(0.3)  # a second one would have been sent with the first
        for side, recorded in events.items():
            assert recorded.count(*failed) == 1, (side, recorded.seen)
    finally:
        for recorded in events.values():
            recorded.close()
    other = new_guest(pair)
    rc, _, err = virsh(pair.src, "migrate", "--live", other.name, pair.dst.uri)
    assert rc == 0, err
    assert domstate(pair.dst, other.name) == "running (migrated)"
