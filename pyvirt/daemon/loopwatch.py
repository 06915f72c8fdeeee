"""The event-loop lag monitor: proof that nothing blocks pyvirtd's one event loop.

Every client, QEMU monitor, migration pump and timer of pyvirtd runs on one asyncio loop;
a call that blocks it (a DNS lookup, a ``subprocess.run``, a big synchronous write) stalls
all of them at once.  The watch schedules a tick every ``event_loop_tick_ms`` and measures
how late the loop ran it::

    due = loop.time() + tick          (scheduled with loop.call_at)
    lag = loop.time() - due           (when the callback finally runs)

A tick late by more than ``event_loop_lag_warn_ms`` is logged at WARNING as exactly::

    event loop lag: tick late by <N> ms

(logger ``pyvirt.daemon.loopwatch``, ``N`` an integer).  Tests grep the daemon's log for
``event loop lag:``.  The worst lag and the number of late ticks since start are also
reported by ``virt-admin srv-threadpool-info`` as ``eventLoopLagMaxMs`` and
``eventLoopLateTicks`` (see :mod:`pyvirt.daemon.admin`): pyvirt's "workers" are tasks on
this loop, so its lag is the pool's latency.

A callback costs microseconds; 20 ticks a second is nothing next to QEMU's own timers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: the log line's fixed part, for anyone who greps for it
LAG_MESSAGE_PREFIX = "event loop lag:"
DEFAULT_TICK_MS = 50
DEFAULT_WARN_MS = 100


@dataclass(frozen=True, slots=True)
class LoopLagStats:
    """What the watch saw since it started."""

    ticks: int
    late_ticks: int
    max_lag_ms: int

    def as_admin_fields(self) -> dict[str, int]:
        """The extra ``srv-threadpool-info`` fields (UINT, as virt-admin prints them)."""
        return {"eventLoopLagMaxMs": self.max_lag_ms, "eventLoopLateTicks": self.late_ticks}


class LoopWatch:
    """Ticks on the running loop; logs and counts the ticks that ran late."""

    def __init__(self, tick_ms: int = DEFAULT_TICK_MS, warn_ms: int = DEFAULT_WARN_MS) -> None:
        if tick_ms < 1 or warn_ms < 1:
            raise ValueError(f"loop watch: tick ({tick_ms} ms) and warning threshold "
                             f"({warn_ms} ms) must be at least 1 ms")
        self.tick_s = tick_ms / 1000
        self.warn_s = warn_ms / 1000
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._ticks = 0
        self._late = 0
        self._max_lag_s = 0.0

    def start(self) -> None:
        """Start ticking on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def stats(self) -> LoopLagStats:
        return LoopLagStats(self._ticks, self._late, int(self._max_lag_s * 1000))

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.tick_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self._ticks += 1
        self._max_lag_s = max(self._max_lag_s, lag)
        if lag > self.warn_s:
            self._late += 1
            log.warning("%s tick late by %d ms", LAG_MESSAGE_PREFIX, int(lag * 1000))
        # measured from now, not from the missed due time: one stall is one late tick
        self._schedule(now)
