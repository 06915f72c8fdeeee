"""The blocking facade: libvirt-python's ``virConnect`` / ``virDomain`` over the async core.

::

    conn = pyvirt.open("qemu+tcp://10.77.0.1/system")
    dom = conn.lookupByName("g1")
    print(dom.info())

One event loop per process runs on a daemon thread, started by the first call; each
method submits its coroutine there and waits for the result
(``asyncio.run_coroutine_threadsafe(...).result()``), like qemu.qmp's sync facade.  Any
failure comes out as :class:`~pyvirt.client.error.libvirtError`.

Event and close callbacks are relayed from the loop thread to one *callback thread*, in
arrival order.  They must not run on the loop thread itself: libvirt lets a callback call
the API (virsh calls ``migrateStartPostCopy`` from its migration-iteration callback), and
a blocking call made on the loop thread would wait for itself forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from pyvirt.client.aio import AsyncConnection, AsyncDomain
from pyvirt.client.error import libvirtError
from pyvirt.constants import ConnectFlags
from pyvirt.errors import ErrorCode, ErrorDomain

log = logging.getLogger(__name__)

T = TypeVar("T")


class _LoopThread:
    """The process's client event loop, on a daemon thread started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="pyvirt-client-loop",
                                          daemon=True)  # fmt: skip
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and wait; every failure is a libvirtError."""
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise libvirtError("internal error: blocking pyvirt call on the client's event loop "
                               "thread (use pyvirt.client.aio there)",
                               code=ErrorCode.INTERNAL_ERROR, domain=ErrorDomain.NONE)  # fmt: skip
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result()
        except libvirtError:
            raise
        except Exception as exc:
            raise libvirtError.from_exception(exc) from exc
        except BaseException:  # KeyboardInterrupt while waiting: stop the call too
            future.cancel()
            raise

    def spawn(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``factory()`` on the loop without waiting (safe from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._start_background, loop, factory)

    def _start_background(self, loop: asyncio.AbstractEventLoop,
                          factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:  # fmt: skip
        # the loop keeps only weak references to tasks: hold one until it is done
        task = loop.create_task(factory())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def reset_after_fork(self) -> None:
        # the child has no loop thread: start a fresh one on its first call
        self._lock = threading.Lock()
        self._loop = self._thread = None
        self._background = set()


class _CallbackThread:
    """Runs event/close callbacks one at a time, in order, off the loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pyvirt-client-events",
                                                daemon=True)  # fmt: skip
                self._thread.start()
        self._queue.put((fn, args))

    def _run(self) -> None:
        while True:
            fn, args = self._queue.get()
            try:
                fn(*args)
            except Exception as exc:  # a faulty callback must not stop later events
                log.error("event callback %r failed: %s", fn, exc)
                log.debug("event callback traceback", exc_info=True)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._thread = None


_LOOP = _LoopThread()
_CALLBACKS = _CallbackThread()


def _reset_after_fork() -> None:
    _LOOP.reset_after_fork()
    _CALLBACKS.reset_after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return _LOOP.run(coro)


class virConnect:  # libvirt-python's name
    """A connection (libvirt-python's ``virConnect``); get one from :func:`open`."""

    def __init__(self, aconn: AsyncConnection) -> None:
        self._a = aconn

    def __repr__(self) -> str:
        return f"<virConnect {self._a.getURI()}>"

    def __enter__(self) -> virConnect:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def __del__(self) -> None:
        # libvirt-python closes a connection nobody references any more; never block here
        aconn = getattr(self, "_a", None)
        if aconn is not None and aconn.isAlive():
            # at interpreter shutdown this may fail: the OS closes the socket then
            with contextlib.suppress(Exception):
                _LOOP.spawn(aconn.close)

    @property
    def aio(self) -> AsyncConnection:
        """The async connection underneath (for code that wants both)."""
        return self._a

    def _dom(self, adom: AsyncDomain) -> virDomain:
        return virDomain(self, adom)

    # -- connection --------------------------------------------------------------------------
    def close(self) -> int:
        return _run(self._a.close())

    def isAlive(self) -> int:
        return self._a.isAlive()

    def getURI(self) -> str:
        return self._a.getURI()

    def getType(self) -> str:
        return _run(self._a.getType())

    def getVersion(self) -> int:
        return _run(self._a.getVersion())

    def getLibVersion(self) -> int:
        return _run(self._a.getLibVersion())

    def getHostname(self) -> str:
        return _run(self._a.getHostname())

    def getCapabilities(self) -> str:
        return _run(self._a.getCapabilities())

    def getMaxVcpus(self, type: str | None = None) -> int:
        return _run(self._a.getMaxVcpus(type))

    def getInfo(self) -> list[Any]:
        return _run(self._a.getInfo())

    def setKeepAlive(self, interval: float, count: int) -> int:
        return _run(self._a.setKeepAlive(interval, count))

    # -- domains -----------------------------------------------------------------------------
    def listAllDomains(self, flags: int = 0) -> list[virDomain]:
        return [self._dom(d) for d in _run(self._a.listAllDomains(flags))]

    def listDomainsID(self) -> list[int]:
        return _run(self._a.listDomainsID())

    def listDefinedDomains(self) -> list[str]:
        return _run(self._a.listDefinedDomains())

    def numOfDomains(self) -> int:
        return _run(self._a.numOfDomains())

    def numOfDefinedDomains(self) -> int:
        return _run(self._a.numOfDefinedDomains())

    def lookupByName(self, name: str) -> virDomain:
        return self._dom(_run(self._a.lookupByName(name)))

    def lookupByID(self, id: int) -> virDomain:
        return self._dom(_run(self._a.lookupByID(id)))

    def lookupByUUID(self, uuid: bytes) -> virDomain:
        return self._dom(_run(self._a.lookupByUUID(uuid)))

    def lookupByUUIDString(self, uuidstr: str) -> virDomain:
        return self._dom(_run(self._a.lookupByUUIDString(uuidstr)))

    def defineXML(self, xml: str) -> virDomain:
        return self._dom(_run(self._a.defineXML(xml)))

    def defineXMLFlags(self, xml: str, flags: int = 0) -> virDomain:
        return self._dom(_run(self._a.defineXMLFlags(xml, flags)))

    def createXML(self, xmlDesc: str, flags: int = 0) -> virDomain:
        return self._dom(_run(self._a.createXML(xmlDesc, flags)))

    # -- callbacks (run on the callback thread, in order) ------------------------------------
    def domainEventRegisterAny(
        self, dom: virDomain | None, eventID: int, cb: Callable[..., object],
        opaque: object = None,
    ) -> int:  # fmt: skip
        """``cb(conn, dom, *event_args, opaque)`` with libvirt-python's arguments."""

        def relay(_aconn: AsyncConnection, adom: AsyncDomain, *rest: object) -> None:
            _CALLBACKS.submit(cb, self, virDomain(self, adom), *rest)

        adom = dom.aio if dom is not None else None
        return _run(self._a.domainEventRegisterAny(adom, eventID, relay, opaque))

    def domainEventDeregisterAny(self, callbackID: int) -> int:
        return _run(self._a.domainEventDeregisterAny(callbackID))

    def registerCloseCallback(self, cb: Callable[[virConnect, int, object], object],
                              opaque: object = None) -> int:  # fmt: skip
        """``cb(conn, reason, opaque)`` when the connection is lost (not on close())."""

        def relay(_aconn: AsyncConnection, reason: int, op: object) -> None:
            _CALLBACKS.submit(cb, self, reason, op)

        return self._a.registerCloseCallback(relay, opaque)

    def unregisterCloseCallback(self) -> int:
        return self._a.unregisterCloseCallback()


class virDomain:  # libvirt-python's name
    """A domain on a :class:`virConnect` (libvirt-python's ``virDomain``)."""

    def __init__(self, conn: virConnect, adom: AsyncDomain) -> None:
        self._conn = conn
        self._a = adom

    def __repr__(self) -> str:
        return f"<virDomain {self._a.name()} id={self._a.ID()}>"

    @property
    def aio(self) -> AsyncDomain:
        return self._a

    def connect(self) -> virConnect:
        return self._conn

    def name(self) -> str:
        return self._a.name()

    def UUID(self) -> bytes:
        return self._a.UUID()

    def UUIDString(self) -> str:
        return self._a.UUIDString()

    def ID(self) -> int:
        return self._a.ID()

    # -- information -------------------------------------------------------------------------
    def OSType(self) -> str:
        return _run(self._a.OSType())

    def info(self) -> list[int]:
        return _run(self._a.info())

    def state(self, flags: int = 0) -> list[int]:
        return _run(self._a.state(flags))

    def controlInfo(self, flags: int = 0) -> list[int]:
        return _run(self._a.controlInfo(flags))

    def XMLDesc(self, flags: int = 0) -> str:
        return _run(self._a.XMLDesc(flags))

    def isActive(self) -> int:
        return _run(self._a.isActive())

    def isPersistent(self) -> int:
        return _run(self._a.isPersistent())

    def autostart(self) -> int:
        return _run(self._a.autostart())

    def setAutostart(self, autostart: int) -> int:
        return _run(self._a.setAutostart(autostart))

    def hasManagedSaveImage(self, flags: int = 0) -> int:
        return _run(self._a.hasManagedSaveImage(flags))

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self) -> int:
        return _run(self._a.create())

    def createWithFlags(self, flags: int = 0) -> int:
        return _run(self._a.createWithFlags(flags))

    def destroy(self) -> int:
        return _run(self._a.destroy())

    def destroyFlags(self, flags: int = 0) -> int:
        return _run(self._a.destroyFlags(flags))

    def shutdown(self) -> int:
        return _run(self._a.shutdown())

    def shutdownFlags(self, flags: int = 0) -> int:
        return _run(self._a.shutdownFlags(flags))

    def reboot(self, flags: int = 0) -> int:
        return _run(self._a.reboot(flags))

    def suspend(self) -> int:
        return _run(self._a.suspend())

    def resume(self) -> int:
        return _run(self._a.resume())

    def undefine(self) -> int:
        return _run(self._a.undefine())

    def undefineFlags(self, flags: int = 0) -> int:
        return _run(self._a.undefineFlags(flags))

    # -- jobs and migration tuning -----------------------------------------------------------
    def jobInfo(self) -> list[int]:
        return _run(self._a.jobInfo())

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        return _run(self._a.jobStats(flags))

    def abortJob(self) -> int:
        return _run(self._a.abortJob())

    def abortJobFlags(self, flags: int = 0) -> int:
        return _run(self._a.abortJobFlags(flags))

    def migrateSetMaxDowntime(self, downtime: int, flags: int = 0) -> int:
        return _run(self._a.migrateSetMaxDowntime(downtime, flags))

    def migrateGetMaxDowntime(self, flags: int = 0) -> int:
        return _run(self._a.migrateGetMaxDowntime(flags))

    def migrateSetMaxSpeed(self, bandwidth: int, flags: int = 0) -> int:
        return _run(self._a.migrateSetMaxSpeed(bandwidth, flags))

    def migrateGetMaxSpeed(self, flags: int = 0) -> int:
        return _run(self._a.migrateGetMaxSpeed(flags))

    def migrateSetCompressionCache(self, cacheSize: int, flags: int = 0) -> int:
        return _run(self._a.migrateSetCompressionCache(cacheSize, flags))

    def migrateGetCompressionCache(self, flags: int = 0) -> int:
        return _run(self._a.migrateGetCompressionCache(flags))

    def migrateStartPostCopy(self, flags: int = 0) -> int:
        return _run(self._a.migrateStartPostCopy(flags))

    # -- migration (pyvirt.client.migrate has libvirt's rules) -------------------------------
    def migrate3(self, dconn: virConnect, params: dict[str, Any] | None = None,
                 flags: int = 0) -> virDomain:  # fmt: skip
        """Managed migration to ``dconn``; the domain there (on ``dconn``)."""
        return dconn._dom(_run(self._a.migrate3(dconn.aio, params, flags)))

    def migrateToURI3(self, dconnuri: str | None, params: dict[str, Any] | None = None,
                      flags: int = 0) -> int:  # fmt: skip
        """Peer-to-peer (or direct) migration driven by the source; 0 on success."""
        return _run(self._a.migrateToURI3(dconnuri, params, flags))

    def migrate(self, dconn: virConnect, flags: int = 0, dname: str | None = None,
                uri: str | None = None, bandwidth: int = 0) -> virDomain:  # fmt: skip
        return dconn._dom(_run(self._a.migrate(dconn.aio, flags, dname, uri, bandwidth)))

    def migrateToURI(self, duri: str, flags: int = 0, dname: str | None = None,
                     bandwidth: int = 0) -> int:  # fmt: skip
        return _run(self._a.migrateToURI(duri, flags, dname, bandwidth))


# -- opening ---------------------------------------------------------------------------------
def open(name: str | None = None) -> virConnect:
    """libvirt-python's ``libvirt.open``: None → $PYVIRT_DEFAULT_URI, $LIBVIRT_DEFAULT_URI,
    qemu:///system."""
    return virConnect(_run(AsyncConnection.open(name)))


def openReadOnly(name: str | None = None) -> virConnect:
    return virConnect(_run(AsyncConnection.open(name, readonly=True)))


def openAuth(uri: str | None, auth: object = None, flags: int = 0) -> virConnect:
    """``auth`` (credential callbacks) is unused: pyvirt speaks no SASL."""
    readonly = bool(flags & ConnectFlags.RO)
    return virConnect(_run(AsyncConnection.open(uri, readonly, flags=flags & ~ConnectFlags.RO)))
