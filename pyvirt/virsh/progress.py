"""Watching a long job from the main thread while a worker thread runs it (virshWatchJob).

virsh 9.0 runs ``migrate`` (and ``save``, ``dump``, ...) in a worker thread; the main
thread watches:

* every 500 ms it polls ``jobInfo()`` on the source connection (calls are pipelined with
  the worker's outstanding one) and, with ``--verbose``, prints on stderr
  ``"\\rLABEL: [ 45 %]"`` from dataRemaining / dataTotal (nothing while dataTotal is 0);
  without ``--verbose`` it stops polling once the job has started;
* ``timeout`` seconds after the start it runs the timeout action, once;
* when the worker is done: ``"\\rLABEL: [100 %]"`` if it succeeded and ``--verbose``.
  Nothing else (no newline: the shell's blank line after each command ends the line).

Ctrl-C: virsh 9.0 aborts the job (``abortJob()``) when the terminal's interrupt character
arrives once the job has started; a SIGINT sent by other means is caught and ignored.
pyvirsh aborts on SIGINT, however it comes (a deliberate difference: ``kill -INT``
stops a migration), until one abortJob() call has gone through.  The job's own failure
(``operation aborted: ...``) is then what the command reports.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Generic, Protocol, TextIO, TypeVar

from pyvirt.constants import JobType
from pyvirt.errors import VirtError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: virsh's polling period (g_timeout_source_new(500))
POLL_INTERVAL = 0.5
_RUNNING = (JobType.BOUNDED, JobType.UNBOUNDED)


class WatchedDomain(Protocol):
    def jobInfo(self) -> list[int]: ...
    def abortJob(self) -> int: ...


def job_progress(remaining: int, total: int) -> int:
    """virshPrintJobProgress's percentage: 100 only when nothing remains."""
    if remaining == 0:
        return 100
    progress = int(100.0 - remaining * 100.0 / total)  # C's (int) truncates towards zero
    return 99 if progress >= 100 else progress


def progress_text(label: str, remaining: int, total: int) -> str:
    return f"\r{label}: [{job_progress(remaining, total):3d} %]"


class _Worker(threading.Thread, Generic[T]):
    """Runs the job; keeps its result or its exception."""

    def __init__(self, job: Callable[[], T], done: threading.Event) -> None:
        super().__init__(name="pyvirsh-job", daemon=True)
        self._job = job
        self._done = done
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._job()
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            self._done.set()


class JobWatcher:
    """virshWatchJob for one job on ``dom`` (anything with jobInfo() and abortJob())."""

    def __init__(self, dom: WatchedDomain, *, label: str, verbose: bool, stdout: TextIO,
                 stderr: TextIO, timeout: int = 0,
                 on_timeout: Callable[[], object] | None = None) -> None:  # fmt: skip
        self.dom = dom
        self.label = label
        self.verbose = verbose
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.job_started = False
        self._done = threading.Event()
        self._interrupted = threading.Event()
        self._aborted = False

    # -- the loop ----------------------------------------------------------------------------
    def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` in a worker thread and watch it; its result, or its exception."""
        worker: _Worker[T] = _Worker(job, self._done)
        restore = self._catch_sigint()
        try:
            worker.start()
            self._watch()
        finally:
            restore()
        worker.join()
        if worker.error is not None:
            raise worker.error
        if self.verbose:
            self._print(0, 1)
        return worker.result  # type: ignore[return-value]  # T, set by a successful job

    def _watch(self) -> None:
        start = time.monotonic()
        next_poll: float | None = start + POLL_INTERVAL
        deadline: float | None = start + self.timeout if self.timeout else None
        while True:
            pending = [t for t in (next_poll, deadline) if t is not None]
            if self._wait_until(min(pending) if pending else None):
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                deadline = None  # the timeout action runs once
                self._timeout_action()
            if next_poll is not None and now >= next_poll:
                next_poll = now + POLL_INTERVAL if self._poll() else None

    def _wait_until(self, when: float | None) -> bool:
        """Sleep until the job is done (True) or ``when``; SIGINT aborts meanwhile."""
        while True:
            left = None if when is None else when - time.monotonic()
            if left is not None and left <= 0:
                return False
            if self._done.wait(0.05 if left is None else min(left, 0.05)):
                return True
            if self._interrupted.is_set():
                self._interrupted.clear()
                self._abort()

    # -- what the loop does ------------------------------------------------------------------
    def _poll(self) -> bool:
        """virshWatchProgress; False when polling should stop."""
        try:
            info = self.dom.jobInfo()
        except VirtError as exc:
            log.debug("job info failed: %s", exc)
            return True
        job_type, total, remaining = info[0], info[3], info[5]
        if self.verbose and total > 0:
            self._print(remaining, total)
        if not self.job_started and job_type in _RUNNING:
            self.job_started = True
            return self.verbose
        return True

    def _print(self, remaining: int, total: int) -> None:
        self.stdout.flush()
        self.stderr.write(progress_text(self.label, remaining, total))
        self.stderr.flush()

    def _timeout_action(self) -> None:
        if self.on_timeout is None:
            return
        try:
            self.on_timeout()
        except VirtError as exc:  # virsh only says so at debug level
            log.debug("timeout action failed: %s", exc)

    def _abort(self) -> None:
        if self._aborted:
            return
        try:
            self.dom.abortJob()
            self._aborted = True
        except VirtError as exc:  # e.g. no job yet: a later Ctrl-C may try again
            log.debug("abortJob failed: %s", exc)

    # -- SIGINT ------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """What SIGINT does: abort the job (from the watching thread)."""
        self._interrupted.set()

    def _catch_sigint(self) -> Callable[[], None]:
        """Install the SIGINT handler; returns what puts the previous one back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # only the main thread may set handlers (pyvirsh runs there)

        def handler(signum: int, frame: FrameType | None) -> None:
            self.interrupt()

        previous = signal.signal(signal.SIGINT, handler)

        def restore() -> None:
            signal.signal(signal.SIGINT, previous)

        return restore
