"""The blocking facade (``pyvirt.open`` …) from plain threads, against a daemon thread.

The fake daemon runs on its own thread and event loop, as a real daemon would be in
another process; the facade runs its own loop thread; the tests are plain blocking code.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import pyvirt
from pyvirt.client.sync import virConnect, virDomain
from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.uri import resolve_default_uri
from tests.fakes.fake_remote import FakeRemoteDispatcher, Served, install_fake_ssh, serve

TIMEOUT = 5.0
T = TypeVar("T")


class DaemonThread:
    """The fake daemon on its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = serve()
        self.served: Served = self.run(self._cm.__aenter__())

    @property
    def fake(self) -> FakeRemoteDispatcher:
        return self.served.fake

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def drop_clients(self) -> None:
        async def drop() -> None:
            for client in self.served.server.clients:
                client.abort("the test drops every client")

        self.run(drop())

    def stop(self) -> None:
        self.run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def daemon() -> Iterator[DaemonThread]:
    d = DaemonThread()
    d.fake.add("g1", running=True)
    d.fake.add("g2")
    yield d
    d.stop()


@pytest.fixture
def conn(daemon: DaemonThread) -> Iterator[virConnect]:
    c = pyvirt.open(daemon.served.uri())
    yield c
    c.close()


def wait_for(pred: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh plain thread; return its result or re-raise its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(TIMEOUT)
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


# -- calls -----------------------------------------------------------------------------------
def test_open_and_use_from_a_plain_thread(daemon: DaemonThread) -> None:
    def work() -> tuple[Any, ...]:
        conn = pyvirt.open(daemon.served.uri())
        try:
            dom = conn.lookupByName("g1")
            names = [d.name() for d in conn.listAllDomains(pyvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
            return (conn.getType(), conn.getHostname(), dom.info(), dom.state(), dom.ID(),
                    names, isinstance(dom, virDomain), dom.connect() is conn)  # fmt: skip
        finally:
            conn.close()

    assert in_thread(work) == ("QEMU", "fakehost", [1, 1048576, 524288, 2, 123456789],
                               [pyvirt.VIR_DOMAIN_RUNNING, 1], 1, ["g1"], True, True)  # fmt: skip
    assert daemon.fake.names()[-1] == "CONNECT_CLOSE"


def test_lifecycle_and_tuning(daemon: DaemonThread, conn: virConnect) -> None:
    dom = conn.lookupByName("g2")
    assert dom.create() == 0 and dom.ID() > 0 and dom.isActive() == 1
    assert dom.suspend() == 0 and dom.state()[0] == pyvirt.VIR_DOMAIN_PAUSED
    assert dom.resume() == 0
    assert dom.migrateSetMaxDowntime(42) == 0 and dom.migrateGetMaxDowntime() == 42
    assert dom.migrateSetMaxSpeed(100) == 0 and dom.migrateGetMaxSpeed() == 100
    assert dom.jobStats() == {"type": pyvirt.VIR_DOMAIN_JOB_COMPLETED}
    assert dom.destroy() == 0 and dom.ID() == -1
    assert conn.getInfo()[0] == "x86_64"


def test_errors_are_libvirt_errors(conn: virConnect) -> None:
    with pytest.raises(pyvirt.libvirtError) as info:
        conn.lookupByName("nosuchdomain")
    err = info.value
    assert isinstance(err, VirtError)
    assert err.get_error_code() == pyvirt.VIR_ERR_NO_DOMAIN
    assert err.get_error_domain() == pyvirt.VIR_FROM_QEMU
    assert str(err) == "Domain not found: no domain with matching name 'nosuchdomain'"
    with pytest.raises(pyvirt.libvirtError) as info:
        conn.lookupByName("g1").abortJob()
    assert info.value.get_error_code() == pyvirt.VIR_ERR_OPERATION_INVALID


def test_open_failure() -> None:
    with pytest.raises(pyvirt.libvirtError) as info:
        pyvirt.open("qemu+unix:///system?socket=/nonexistent/sock")
    assert info.value.get_error_code() == pyvirt.VIR_ERR_SYSTEM_ERROR
    assert info.value.get_error_domain() == pyvirt.VIR_FROM_RPC


def test_connection_loss(daemon: DaemonThread, conn: virConnect) -> None:
    reasons: list[tuple[Any, int, Any]] = []
    conn.registerCloseCallback(lambda c, reason, op: reasons.append((c, reason, op)), "x")
    daemon.drop_clients()
    wait_for(lambda: bool(reasons))
    assert reasons == [(conn, pyvirt.VIR_CONNECT_CLOSE_REASON_EOF, "x")]
    with pytest.raises(pyvirt.libvirtError) as info:
        conn.getType()
    assert info.value.get_error_code() == ErrorCode.SYSTEM_ERROR
    assert str(info.value) == "End of file while reading data: Input/output error"
    assert conn.isAlive() == 0


def test_readonly_variants(daemon: DaemonThread) -> None:
    pyvirt.openReadOnly(daemon.served.uri()).close()
    assert daemon.fake.last("CONNECT_OPEN")["flags"] == pyvirt.VIR_CONNECT_RO
    pyvirt.openAuth(daemon.served.uri(), None, pyvirt.VIR_CONNECT_RO).close()
    assert daemon.fake.last("CONNECT_OPEN")["flags"] == pyvirt.VIR_CONNECT_RO
    pyvirt.openAuth(daemon.served.uri(), None, 0).close()
    assert daemon.fake.last("CONNECT_OPEN")["flags"] == 0


def test_context_manager_closes(daemon: DaemonThread) -> None:
    with pyvirt.open(daemon.served.uri()) as conn:
        assert conn.isAlive() == 1
    assert conn.isAlive() == 0
    assert daemon.fake.names()[-1] == "CONNECT_CLOSE"


def test_dropped_connection_is_closed(daemon: DaemonThread) -> None:
    conn = pyvirt.open(daemon.served.uri())
    del conn
    gc.collect()
    wait_for(lambda: "CONNECT_CLOSE" in daemon.fake.names())


# -- default URI -----------------------------------------------------------------------------
def test_default_uri_from_environment(daemon: DaemonThread,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("PYVIRT_DEFAULT_URI", raising=False)
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", daemon.served.uri())
    with pyvirt.open() as conn:
        assert conn.getURI() == daemon.served.uri()
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+unix:///system?socket=/nonexistent")
    monkeypatch.setenv("PYVIRT_DEFAULT_URI", daemon.served.uri())  # pyvirt's own wins
    with pyvirt.open("") as conn:
        assert conn.getURI() == daemon.served.uri()


def test_default_uri_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYVIRT_DEFAULT_URI", raising=False)
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert resolve_default_uri(None) == resolve_default_uri("") == "qemu:///system"
    assert resolve_default_uri("qemu+tcp://h/system") == "qemu+tcp://h/system"


# -- callbacks -------------------------------------------------------------------------------
def test_event_callback_runs_off_the_loop_and_may_call_the_api(
    daemon: DaemonThread, conn: virConnect
) -> None:
    seen: list[Any] = []
    done = threading.Event()

    def callback(c: virConnect, dom: virDomain, event: int, detail: int, opaque: Any) -> None:
        # libvirt lets callbacks call the API (virsh starts post-copy from one)
        seen.append((c is conn, dom.name(), event, detail, opaque, dom.state(),
                     threading.current_thread().name))  # fmt: skip
        done.set()

    g1 = conn.lookupByName("g1")
    cb_id = conn.domainEventRegisterAny(g1, pyvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, 7)
    daemon.run(daemon.fake.emit_lifecycle("g1", pyvirt.VIR_DOMAIN_EVENT_SUSPENDED, 0))
    assert done.wait(TIMEOUT)
    assert seen == [(True, "g1", pyvirt.VIR_DOMAIN_EVENT_SUSPENDED, 0, 7, [1, 1],
                     "pyvirt-client-events")]  # fmt: skip
    assert conn.domainEventDeregisterAny(cb_id) == 0
    assert daemon.fake.registrations == {}


def test_failing_callback_does_not_stop_later_events(daemon: DaemonThread,
                                                     conn: virConnect) -> None:  # fmt: skip
    got: list[int] = []

    def callback(c: virConnect, dom: virDomain, iteration: int, opaque: Any) -> None:
        got.append(iteration)
        if iteration == 1:
            raise RuntimeError("callback bug")

    conn.domainEventRegisterAny(None, pyvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, callback)
    daemon.run(daemon.fake.emit_iteration("g1", 1))
    daemon.run(daemon.fake.emit_iteration("g1", 2))
    wait_for(lambda: got == [1, 2])


def test_blocking_call_on_the_loop_thread_is_refused(conn: virConnect) -> None:
    loop_errors: list[BaseException] = []

    async def misuse() -> None:
        try:
            conn.getType()  # a blocking call from inside the client's own loop
        except pyvirt.libvirtError as exc:
            loop_errors.append(exc)

    from pyvirt.client import sync

    asyncio.run_coroutine_threadsafe(misuse(), sync._LOOP.loop()).result(TIMEOUT)
    assert len(loop_errors) == 1
    assert "event loop thread" in str(loop_errors[0])
    assert conn.getType() == "QEMU"  # and the connection is fine


# -- ssh via $PYVIRT_SSH ---------------------------------------------------------------------
def test_ssh_through_environment_program(daemon: DaemonThread,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    program = install_fake_ssh(daemon.served.dir, monkeypatch.setenv)
    monkeypatch.setenv("PYVIRT_SSH", program)
    with pyvirt.open(f"qemu+ssh://root@host2/system?socket={daemon.served.sock}") as conn:
        assert conn.lookupByName("g1").isActive() == 1


# -- module surface --------------------------------------------------------------------------
def test_import_is_lazy() -> None:
    code = ("import sys, pyvirt; print(sorted(m for m in ('asyncio', 'pyvirt.rpc.client', "
            "'pyvirt.client.aio') if m in sys.modules)); pyvirt.virConnect; "
            "print('pyvirt.client.aio' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split("\n")  # fmt: skip
    assert out[:2] == ["[]", "True"]


@pytest.mark.parametrize(("name", "value"), [
    ("VIR_DOMAIN_NOSTATE", 0), ("VIR_DOMAIN_RUNNING", 1), ("VIR_DOMAIN_PAUSED", 3),
    ("VIR_DOMAIN_SHUTOFF", 5), ("VIR_DOMAIN_PMSUSPENDED", 7),
    ("VIR_DOMAIN_RUNNING_MIGRATED", 2), ("VIR_DOMAIN_PAUSED_POSTCOPY", 12),
    ("VIR_DOMAIN_SHUTOFF_MIGRATED", 4),
    ("VIR_CONNECT_LIST_DOMAINS_ACTIVE", 1), ("VIR_CONNECT_LIST_DOMAINS_INACTIVE", 2),
    ("VIR_CONNECT_LIST_DOMAINS_OTHER", 128), ("VIR_DOMAIN_XML_SECURE", 1),
    ("VIR_DOMAIN_XML_INACTIVE", 2), ("VIR_DOMAIN_XML_MIGRATABLE", 8),
    ("VIR_MIGRATE_LIVE", 1), ("VIR_MIGRATE_PEER2PEER", 2), ("VIR_MIGRATE_TUNNELLED", 4),
    ("VIR_MIGRATE_PERSIST_DEST", 8), ("VIR_MIGRATE_POSTCOPY", 0x8000),
    ("VIR_MIGRATE_ZEROCOPY", 0x100000),
    ("VIR_ERR_OK", 0), ("VIR_ERR_NO_SUPPORT", 3), ("VIR_ERR_NO_DOMAIN", 42),
    ("VIR_ERR_OPERATION_INVALID", 55), ("VIR_ERR_AUTH_UNAVAILABLE", 94),
    ("VIR_ERR_NONE", 0), ("VIR_ERR_WARNING", 1), ("VIR_ERR_ERROR", 2),
    ("VIR_FROM_NONE", 0), ("VIR_FROM_RPC", 7), ("VIR_FROM_QEMU", 10), ("VIR_FROM_REMOTE", 13),
    ("VIR_FROM_DOMAIN", 20), ("VIR_FROM_STREAMS", 38),
    ("VIR_DOMAIN_EVENT_DEFINED", 0), ("VIR_DOMAIN_EVENT_STOPPED", 5),
    ("VIR_DOMAIN_EVENT_CRASHED", 8), ("VIR_DOMAIN_EVENT_STARTED_MIGRATED", 1),
    ("VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY", 7), ("VIR_DOMAIN_EVENT_RESUMED_POSTCOPY", 3),
    ("VIR_DOMAIN_EVENT_STOPPED_FAILED", 5), ("VIR_DOMAIN_EVENT_SHUTDOWN_GUEST", 1),
    ("VIR_DOMAIN_EVENT_ID_LIFECYCLE", 0), ("VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION", 20),
    ("VIR_DOMAIN_EVENT_ID_JOB_COMPLETED", 21),
    ("VIR_DOMAIN_JOB_NONE", 0), ("VIR_DOMAIN_JOB_UNBOUNDED", 2), ("VIR_DOMAIN_JOB_CANCELLED", 5),
    ("VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT", 5), ("VIR_DOMAIN_JOB_STATS_COMPLETED", 1),
    ("VIR_DOMAIN_NONE", 0), ("VIR_DOMAIN_START_PAUSED", 1), ("VIR_DOMAIN_UNDEFINE_NVRAM", 4),
    ("VIR_DOMAIN_DEFINE_VALIDATE", 1), ("VIR_DOMAIN_DESTROY_GRACEFUL", 1),
    ("VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN", 1), ("VIR_DOMAIN_SHUTDOWN_USER", 1),
    ("VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY", 1), ("VIR_CONNECT_RO", 1),
    ("VIR_CONNECT_CLOSE_REASON_KEEPALIVE", 2),
    ("VIR_MIGRATE_PARAM_URI", "migrate_uri"), ("VIR_MIGRATE_PARAM_BANDWIDTH", "bandwidth"),
    ("VIR_MIGRATE_PARAM_MIGRATE_DISKS", "migrate_disks"),
])  # fmt: skip
def test_flat_constants_have_libvirt_values(name: str, value: int | str) -> None:
    assert getattr(pyvirt, name) == value


def test_module_surface() -> None:
    for name in pyvirt.__all__:
        assert hasattr(pyvirt, name), name
    assert pyvirt.virConnect is virConnect and pyvirt.virDomain is virDomain
    with pytest.raises(AttributeError):
        pyvirt.no_such_name  # noqa: B018
    assert issubclass(pyvirt.libvirtError, VirtError)
    err = pyvirt.libvirtError("boom", code=ErrorCode.OPERATION_FAILED, domain=ErrorDomain.QEMU)
    assert (str(err), err.get_error_code(), err.get_error_domain(), err.get_error_level()) == (
        "boom", 9, 10, 2)  # fmt: skip
    assert err.get_str1() is None and err.get_int1() == -1
