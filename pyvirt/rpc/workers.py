"""A worker pool of asyncio tasks with libvirt's min/max/priority semantics.

Mirrors ``virThreadPool`` (``src/util/virthreadpool.c``):

* ``min_workers`` normal workers are started up front; a submit that finds no free worker
  adds one, up to ``max_workers``;
* ``prio_workers`` extra workers only ever run *priority* jobs (procedures marked
  ``@priority: high``), so DESTROY or GET_STATE still run when every normal worker is
  stuck in a long call such as a migration Perform;
* normal workers take any job, oldest first;
* the parameters can be changed at run time (the admin API); surplus workers retire when
  they next become idle.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from pyvirt.errors import InvalidArgError

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


@dataclasses.dataclass(eq=False)
class _Entry:
    run: Job
    priority: bool
    taken: bool = False


class WorkerPool:
    def __init__(
        self, min_workers: int, max_workers: int, prio_workers: int, *, name: str = "workers"
    ) -> None:
        _validate(min_workers, max_workers, prio_workers)
        self.name = name
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.prio_workers = prio_workers
        self._cond = asyncio.Condition()
        # one queue for normal workers (all jobs), one for priority workers (priority jobs);
        # a job taken from one queue stays in the other, marked taken (lazy deletion)
        self._jobs: collections.deque[_Entry] = collections.deque()
        self._prio_jobs: collections.deque[_Entry] = collections.deque()
        self._depth = 0
        self._n_workers = 0
        self._n_prio = 0
        self._free = 0
        self._free_prio = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._quit = False
        self._seq = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn_up_to_targets()

    async def close(self) -> None:
        """Stop all workers; jobs still running are cancelled."""
        self._quit = True
        async with self._cond:
            self._cond.notify_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._jobs.clear()
        self._prio_jobs.clear()
        self._depth = self._n_workers = self._n_prio = self._free = self._free_prio = 0

    # -- jobs --------------------------------------------------------------------------------
    async def submit(self, run: Job, *, priority: bool = False) -> None:
        """Queue a job; it runs as soon as a suitable worker is free."""
        if self._quit:
            raise RuntimeError(f"{self.name}: pool is closed")
        async with self._cond:
            if self._free - self._depth <= 0 and self._n_workers < self.max_workers:
                self._spawn(prio=False)
            entry = _Entry(run, priority)
            self._jobs.append(entry)
            if priority:
                self._prio_jobs.append(entry)
            self._depth += 1
            self._cond.notify_all()

    def info(self) -> dict[str, int]:
        """Current parameters and state, with libvirt's admin field names."""
        return {
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "prioWorkers": self._n_prio,
            "freeWorkers": self._free,
            "nWorkers": self._n_workers,
            "jobQueueDepth": self._depth,
        }

    async def set_params(
        self,
        *,
        min_workers: int | None = None,
        max_workers: int | None = None,
        prio_workers: int | None = None,
    ) -> None:
        """Change the limits at run time (libvirt's ``virAdmServerSetThreadPoolParameters``)."""
        new_min = self.min_workers if min_workers is None else min_workers
        new_max = self.max_workers if max_workers is None else max_workers
        new_prio = self.prio_workers if prio_workers is None else prio_workers
        _validate(new_min, new_max, new_prio)
        async with self._cond:
            self.min_workers, self.max_workers, self.prio_workers = new_min, new_max, new_prio
            self._spawn_up_to_targets()
            self._cond.notify_all()  # idle surplus workers retire

    # -- workers -----------------------------------------------------------------------------
    def _spawn_up_to_targets(self) -> None:
        while self._n_workers < self.min_workers:
            self._spawn(prio=False)
        while self._n_prio < self.prio_workers:
            self._spawn(prio=True)

    def _spawn(self, *, prio: bool) -> None:
        if prio:
            self._n_prio += 1
        else:
            self._n_workers += 1
        self._seq += 1
        kind = "prio" if prio else "worker"
        task = asyncio.create_task(self._worker(prio), name=f"{self.name} {kind} {self._seq}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self, prio: bool) -> None:
        while True:
            async with self._cond:
                entry = await self._next_job(prio)
            if entry is None:
                return
            try:
                await entry.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # jobs report their own errors; this is a safety net
                log.error("%s: job failed: %s", self.name, exc)
                log.debug("job traceback", exc_info=True)

    async def _next_job(self, prio: bool) -> _Entry | None:
        """With the condition held: wait for a job this worker may run, or retire."""
        while True:
            if self._quit or self._retire(prio):
                return None
            entry = self._take(prio)
            if entry is not None:
                return entry
            if prio:
                self._free_prio += 1
            else:
                self._free += 1
            try:
                await self._cond.wait()
            finally:
                if prio:
                    self._free_prio -= 1
                else:
                    self._free -= 1

    def _retire(self, prio: bool) -> bool:
        if prio and self._n_prio > self.prio_workers:
            self._n_prio -= 1
            return True
        if not prio and self._n_workers > self.max_workers:
            self._n_workers -= 1
            return True
        return False

    def _take(self, prio: bool) -> _Entry | None:
        queue = self._prio_jobs if prio else self._jobs
        while queue:
            entry = queue.popleft()
            if not entry.taken:
                entry.taken = True
                self._depth -= 1
                return entry
        return None


def _validate(min_workers: int, max_workers: int, prio_workers: int) -> None:
    if max_workers < 1:
        raise InvalidArgError(f"maxWorkers must be at least 1, got {max_workers}")
    if not 0 <= min_workers <= max_workers:
        raise InvalidArgError(
            f"minWorkers ({min_workers}) must be between 0 and maxWorkers ({max_workers})"
        )
    if prio_workers < 0:
        raise InvalidArgError(f"prioWorkers must not be negative, got {prio_workers}")
