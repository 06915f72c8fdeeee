"""The event-loop lag monitor: late ticks are logged with the fixed prefix and counted."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from pyvirt.daemon.loopwatch import LAG_MESSAGE_PREFIX, LoopWatch


async def test_a_blocked_loop_is_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    watch = LoopWatch(tick_ms=10, warn_ms=50)
    watch.start()
    try:
        await asyncio.sleep(0.05)
        assert watch.stats().late_ticks == 0
        with caplog.at_level(logging.WARNING, logger="pyvirt.daemon.loopwatch"):
            time.sleep(0.2)  # blocks the loop, as a synchronous call on it would
            await asyncio.sleep(0.05)
        stats = watch.stats()
        assert stats.late_ticks == 1  # one stall, one late tick (not one per missed tick)
        assert 150 <= stats.max_lag_ms < 1000
        lines = [r.getMessage() for r in caplog.records if LAG_MESSAGE_PREFIX in r.getMessage()]
        assert len(lines) == 1
        assert lines[0].startswith("event loop lag: tick late by ")
        assert lines[0].endswith(" ms")
        assert int(lines[0].split()[-2]) == stats.max_lag_ms
    finally:
        watch.stop()
    assert not watch.running


async def test_an_idle_loop_is_never_late(caplog: pytest.LogCaptureFixture) -> None:
    watch = LoopWatch(tick_ms=5, warn_ms=100)
    with caplog.at_level(logging.WARNING, logger="pyvirt.daemon.loopwatch"):
        watch.start()
        await asyncio.sleep(0.2)
        watch.stop()
    assert watch.stats().ticks >= 10
    assert watch.stats().late_ticks == 0
    assert not caplog.records


def test_admin_fields() -> None:
    watch = LoopWatch()
    assert watch.stats().as_admin_fields() == {"eventLoopLagMaxMs": 0, "eventLoopLateTicks": 0}


def test_bad_parameters_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 ms"):
        LoopWatch(tick_ms=0)
