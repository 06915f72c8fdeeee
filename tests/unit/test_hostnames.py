"""Host name lookups off the event loop: bounded threads, bounded waits, libvirt's fallback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from pyvirt.hostnames import NameResolver


class SlowResolver:
    """A getaddrinfo that answers after ``delay`` seconds and counts concurrent calls."""

    def __init__(self, delay: float, canonical: str = "vm.example.test") -> None:
        self.delay = delay
        self.canonical = canonical
        self.running = 0
        self.most = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, host: str, *args: Any, **kwargs: Any) -> list[Any]:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, self.canonical, ("10.0.0.1", 0))]


async def ticks_late_by(work: Any) -> tuple[Any, float]:
    """Run ``work`` while a 10 ms ticker measures how late the loop gets."""
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            due = time.monotonic() + 0.01
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - due)

    task = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        stop.set()
        await task
    return result, worst


async def test_fqdn_from_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(socket, "getaddrinfo", SlowResolver(0.0))
    assert await NameResolver(timeout_s=1).host_name() == "vm.example.test"


@pytest.mark.parametrize(("name", "canonical", "expected"), [
    ("vm.example.org", "other", "vm.example.org"),  # a dotted name is taken as is
    ("vm", "localhost.localdomain", "vm"),           # libvirt ignores localhost answers
])
async def test_libvirts_rules(monkeypatch: pytest.MonkeyPatch, name: str, canonical: str,
                              expected: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: name)
    monkeypatch.setattr(socket, "getaddrinfo", SlowResolver(0.0, canonical))
    assert await NameResolver(timeout_s=1).host_name() == expected


async def test_a_failed_lookup_gives_the_short_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    assert await NameResolver(timeout_s=1).host_name() == "vm"


async def test_a_slow_resolver_gives_the_short_name_in_time_without_blocking_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(socket, "getaddrinfo", SlowResolver(1.0))
    started = time.monotonic()
    name, late = await ticks_late_by(NameResolver(timeout_s=0.3).host_name())
    assert name == "vm"
    assert time.monotonic() - started < 0.8
    assert late < 0.1


async def test_a_flood_of_lookups_uses_at_most_the_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slow = SlowResolver(0.5)
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(socket, "getaddrinfo", slow)
    resolver = NameResolver(threads=2, timeout_s=0.2)
    names, late = await ticks_late_by(asyncio.gather(
        *(resolver.host_name() for _ in range(50))))
    assert names == ["vm"] * 50  # every caller got an answer when its wait ran out
    assert late < 0.1
    await asyncio.sleep(0.6)  # the two stuck lookups finish; the queued ones never ran
    assert slow.most <= 2
    assert slow.calls == 2
