"""Host name lookups that never block the daemon's event loop.

The C library's resolver (``getaddrinfo``) blocks its caller for as long as DNS takes, often
seconds (a 5 s timeout per server and attempt by default). pyvirtd serves every client from
one event loop, so a lookup there would stall them all. :class:`NameResolver` runs lookups
on a few threads of its own and waits for each at most ``timeout_s``:

* the threads are bounded (``threads``): a flood of lookups queues instead of making
  threads, and a queued lookup whose caller gave up is dropped before it runs;
* a lookup stuck in the C library cannot be interrupted; it keeps its thread until the
  resolver answers, but its caller has long moved on (libvirt's fallback for a failed
  lookup, e.g. the short host name);
* the threads are daemon threads: a stuck lookup never delays the daemon's exit.

Callers in the daemon: ``virConnectGetHostname`` (:meth:`NameResolver.host_name`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: qemu.conf's defaults (dns_lookup_timeout, dns_lookup_threads)
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_THREADS = 4

_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class NameResolver:
    """Runs blocking resolver calls on ``threads`` daemon threads, each waited ``timeout_s``."""

    def __init__(self, threads: int = DEFAULT_THREADS,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if threads < 1 or timeout_s <= 0:
            raise ValueError("a resolver needs at least one thread and a positive timeout")
        self.threads = threads
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on a resolver thread; TimeoutError after ``timeout_s``."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._start_thread()
        self._jobs.put((future, call))
        # on timeout wait_for cancels the wrapper, which cancels a job not yet running
        return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)

    def _start_thread(self) -> None:
        with self._lock:
            if self._started < self.threads:
                self._started += 1
                threading.Thread(target=self._serve, name=f"resolver-{self._started}",
                                 daemon=True).start()

    def _serve(self) -> None:
        while True:
            future, call = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it queued
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the awaiting caller
                future.set_exception(exc)

    async def canonical_name(self, name: str) -> str | None:
        """The canonical name DNS (or /etc/hosts) gives ``name``; None if it cannot tell."""
        def lookup() -> list[Any]:
            return socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                      socket.AI_CANONNAME)

        try:
            infos = await self.run(lookup)
        except TimeoutError:
            log.warning("host name lookup of '%s' took more than %g s", name, self.timeout_s)
            return None
        except (OSError, UnicodeError) as exc:
            log.warning("getaddrinfo failed for '%s': %s", name, exc)
            return None
        return next((info[3] for info in infos if info[3]), None)

    async def host_name(self) -> str:
        """libvirt's virGetHostname: this host's name, fully qualified when DNS knows it.

        A name with a dot is taken as is; otherwise the canonical name from the resolver,
        unless it is a "localhost" one or the lookup fails or times out (then the short name).
        """
        name = socket.gethostname()  # uname(2): no I/O
        if "." in name:
            return name
        canonical = await self.canonical_name(name)
        if canonical is None or canonical.startswith("localhost"):
            return name
        return canonical
