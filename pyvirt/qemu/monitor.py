"""A domain's QMP monitor, through the ``qemu.qmp`` library.

One :class:`Monitor` per running QEMU. It connects to the monitor socket (retrying while
QEMU is still starting), executes commands with a timeout, forwards every QMP event (name,
data, host timestamp) to a callback, and reports end-of-file once when QEMU goes away, so
the driver learns of a dead QEMU from the monitor as libvirt does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError, Runstate

from pyvirt.errors import OperationFailedError, OperationTimeoutError, VirtError

log = logging.getLogger(__name__)

#: (event name, event data, host timestamp in seconds)
EventCallback = Callable[[str, dict[str, Any], float], None]
EofCallback = Callable[[], Awaitable[None]]

DEFAULT_COMMAND_TIMEOUT_S = 60.0
#: how often the monitor socket's path is checked while QEMU starts: a migration's Prepare
#: waits for it while the client waits (QEMU takes ~30-40 ms to bind it; checking a path
#: is cheap)
MONITOR_POLL_S = 0.002
#: how long close() lets the EOF watcher finish its part of the disconnect
CLOSE_WAIT_S = 5.0


class MonitorError(OperationFailedError):
    """QEMU answered a command with an error (class and description kept)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU command '{command}' failed: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class Monitor:
    def __init__(self, name: str, on_event: EventCallback, on_eof: EofCallback) -> None:
        self._qmp = QMPClient(name)
        self._on_event = on_event
        self._on_eof = on_eof
        self._pump: asyncio.Task[None] | None = None
        self._eof_watch: asyncio.Task[None] | None = None
        self._closing = False
        self.name = name

    @property
    def connected(self) -> bool:
        return self._qmp.runstate == Runstate.RUNNING

    async def connect(
        self, path: str, timeout: float, process_alive: Callable[[], bool]
    ) -> None:
        """Connect, retrying until QEMU listens, QEMU dies, or ``timeout`` passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if not os.path.exists(path):
                # QEMU creates the socket when it binds it; polling the path first keeps
                # qemu.qmp from logging a failed connection for every early attempt.
                await self._wait_retry(deadline, process_alive, None)
                continue
            try:
                await self._qmp.connect(path)
                break
            except ConnectError as exc:
                await self._wait_retry(deadline, process_alive, exc)
            except AssertionError as exc:
                # qemu.qmp asserts it is RUNNING once the handshake is done; a QEMU that
                # closed the socket just after it already moved it to DISCONNECTING
                with contextlib.suppress(QMPError, OSError, EOFError, Exception):
                    await self._qmp.disconnect()
                raise OperationFailedError(
                    f"QEMU monitor of '{self.name}' closed right after connecting") from exc
        self._pump = asyncio.create_task(self._pump_events(), name=f"qmp-ev-{self.name}")
        self._eof_watch = asyncio.create_task(self._watch_eof(), name=f"qmp-eof-{self.name}")

    async def _wait_retry(self, deadline: float, process_alive: Callable[[], bool],
                          cause: Exception | None) -> None:
        if not process_alive():
            raise OperationFailedError(
                f"QEMU for '{self.name}' exited before its monitor came up") from cause
        if asyncio.get_running_loop().time() > deadline:
            raise OperationTimeoutError(
                f"QEMU monitor of '{self.name}' did not come up in time") from cause
        await asyncio.sleep(MONITOR_POLL_S)

    async def execute(
        self, command: str, args: dict[str, Any] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> Any:
        if not self.connected:
            raise OperationFailedError(f"QEMU monitor of '{self.name}' is not connected")
        try:
            return await asyncio.wait_for(self._qmp.execute(command, args), timeout)
        except ExecuteError as exc:
            raise MonitorError(command, exc.error_class, str(exc)) from exc
        except TimeoutError as exc:
            raise OperationTimeoutError(
                f"QEMU command '{command}' on '{self.name}' took longer than {timeout:.0f} s"
            ) from exc
        except (QMPError, OSError, EOFError) as exc:
            raise OperationFailedError(
                f"QEMU monitor of '{self.name}' failed during '{command}': {exc}"
            ) from exc

    async def send_fd(self, name: str, fd: int) -> None:
        """Hand ``fd`` to QEMU (SCM_RIGHTS) under ``name``, for ``fd:NAME`` URIs."""
        if not self.connected:
            raise OperationFailedError(f"QEMU monitor of '{self.name}' is not connected")
        try:
            self._qmp.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise OperationFailedError(f"cannot pass a file descriptor to QEMU: {exc}") \
                from exc
        await self.execute("getfd", {"fdname": name})

    async def close(self) -> None:
        """Disconnect without reporting EOF (the driver is letting go, not QEMU dying)."""
        self._closing = True
        # Disconnect, then let the EOF watcher end by itself: it may be inside qemu.qmp's
        # disconnect() too, and cancelling it there leaves the library's gathered
        # reader/writer failure unretrieved ("_GatheringFuture exception was never
        # retrieved"). The event pump waits for events that will not come: cancelled.
        with contextlib.suppress(QMPError, OSError, EOFError, Exception):
            await self._qmp.disconnect()
        # On QEMU's EOF the watcher itself tears the domain down and calls close(): it
        # neither waits for nor cancels itself, and goes on once close() returns.
        current = asyncio.current_task()
        watcher = self._eof_watch
        if watcher is not None and watcher is not current:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(watcher), CLOSE_WAIT_S)
        for task in (self._pump, watcher):
            if task is not None and task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._pump = self._eof_watch = None

    async def _pump_events(self) -> None:
        async for message in self._qmp.events:
            event: dict[str, Any] = dict(message)  # a qemu.qmp Message is a mapping
            stamp = event.get("timestamp", {})
            when = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
            try:
                self._on_event(str(event["event"]), dict(event.get("data", {})), when)
            except Exception:  # one bad handler must not stop the event stream
                log.exception("[dom=%s] QMP event handler failed", self.name)

    async def _watch_eof(self) -> None:
        while self._qmp.runstate == Runstate.RUNNING:
            await self._qmp.runstate_changed()
        with contextlib.suppress(QMPError, OSError, EOFError, Exception):
            await self._qmp.disconnect()
        if not self._closing:
            # Let queued events be delivered before the EOF handler tears state down.
            await asyncio.sleep(0)
            try:
                await self._on_eof()
            except VirtError as exc:
                log.error("[dom=%s] handling monitor EOF failed: %s", self.name, exc)
