"""An in-memory client connection with libvirt-python's names and libvirt's error semantics.

For pyvirsh's tests (and anyone needing a stand-in for ``pyvirt.open()``): a
:class:`FakeHost` holds the domains; :meth:`FakeHost.connect` opens a
:class:`FakeConnection` on it (the signature pyvirsh's ``connect=`` factory wants), and
every connection sees the same host, as connections to one daemon do.

Errors are :class:`pyvirt.client.error.libvirtError` with libvirt's codes and messages
(``Domain not found: no domain with matching name 'x'``, ``Requested operation is not
valid: domain is not running``, ``operation forbidden: read only access prevents ...``).

``host.faults["suspend"] = error`` makes the next ``suspend()`` raise ``error``;
``host.calls`` records every call as ``(method, args)``.

:func:`default_host` holds the same domain as libvirt's ``test:///default`` driver,
so that pyvirsh's output can be compared byte for byte with the stock virsh's.
"""

from __future__ import annotations

import socket
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from pyvirt.client.error import libvirtError
from pyvirt.constants import (
    CreateFlags,
    DomainState,
    ListFlags,
    PausedReason,
    RunningReason,
    ShutoffReason,
)
from pyvirt.errors import ErrorCode, ErrorDomain

TEST_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
UNREACHABLE_MESSAGE = ("Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
                       "No such file or directory")  # fmt: skip


def error(code: ErrorCode, message: str, domain: ErrorDomain = ErrorDomain.QEMU) -> libvirtError:
    return libvirtError(message, code=code, domain=domain)


def not_running() -> libvirtError:
    return error(ErrorCode.OPERATION_INVALID,
                 "Requested operation is not valid: domain is not running")  # fmt: skip


class DomainRecord:
    """A domain as the fake daemon holds it."""

    def __init__(self, name: str, uuid: str | None = None, *, max_mem: int = 1048576,
                 memory: int | None = None, vcpus: int = 1, os_type: str = "hvm") -> None:
        self.name = name
        self.uuid = uuid or str(uuidlib.uuid4())
        self.id = -1
        self.os_type = os_type
        self.max_mem = max_mem
        self.memory = max_mem if memory is None else memory
        self.vcpus = vcpus
        self.cpu_time = 0
        self.state = DomainState.SHUTOFF
        self.reason = int(ShutoffReason.UNKNOWN)
        self.persistent = True
        self.autostart = False
        self.managed_save = False
        self.title: str | None = None
        self.job: dict[str, Any] = {"type": 0}
        self.completed_job: dict[str, Any] = {"type": 0}
        self.downtime = 300
        self.speed = 8796093022207
        self.postcopy_speed = 0
        self.compression_cache = 67108864

    @property
    def active(self) -> bool:
        return self.id != -1

    def start(self, host: FakeHost, paused: bool = False) -> None:
        self.id = host.next_id
        host.next_id += 1
        self.cpu_time = 1_234_567_890_000
        if paused:
            self.state, self.reason = DomainState.PAUSED, int(PausedReason.USER)
        else:
            self.state, self.reason = DomainState.RUNNING, int(RunningReason.BOOTED)

    def stop(self, host: FakeHost, reason: ShutoffReason) -> None:
        self.id = -1
        self.cpu_time = 0
        self.state, self.reason = DomainState.SHUTOFF, int(reason)
        if not self.persistent:
            host.domains.remove(self)

    def xml(self) -> str:
        return (f"<domain type='kvm'>\n  <name>{self.name}</name>\n"
                f"  <uuid>{self.uuid}</uuid>\n"
                f"  <memory unit='KiB'>{self.max_mem}</memory>\n"
                f"  <currentMemory unit='KiB'>{self.memory}</currentMemory>\n"
                f"  <vcpu placement='static'>{self.vcpus}</vcpu>\n"
                f"  <os>\n    <type arch='x86_64'>{self.os_type}</type>\n  </os>\n"
                "</domain>\n")  # fmt: skip


def parse_domain_xml(text: str) -> DomainRecord:
    """Enough of the domain XML for the fake: name, uuid, memory, vcpus."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise error(ErrorCode.XML_DETAIL, f"XML error: {exc}", ErrorDomain.DOMAIN) from None
    name = root.findtext("name")
    if not name:
        raise error(ErrorCode.NO_NAME, "missing name information in domain", ErrorDomain.DOMAIN)
    memory = int(root.findtext("memory") or 1048576)
    current = root.findtext("currentMemory")
    return DomainRecord(name, root.findtext("uuid"), max_mem=memory,
                        memory=int(current) if current else None,
                        vcpus=int(root.findtext("vcpu") or 1))  # fmt: skip


class FakeHost:
    """The fake daemon's state, shared by all connections opened on it."""

    def __init__(self) -> None:
        self.domains: list[DomainRecord] = []
        self.next_id = 1
        self.hostname = socket.gethostname()
        self.hv_type = "QEMU"
        self.hv_version = 10000002  # QEMU 10.0.2
        self.lib_version = 9000000
        self.capabilities = "<capabilities>\n  <host/>\n</capabilities>\n"
        self.faults: dict[str, BaseException] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        #: URIs whose daemon is down (connecting fails like libvirt's remote driver)
        self.unreachable: set[str] = set()
        #: method → libvirt API name, for calls the "driver" does not support (NO_SUPPORT)
        self.unsupported: dict[str, str] = {}
        self.connections: list[FakeConnection] = []

    def add(self, record: DomainRecord, *, running: bool = False) -> DomainRecord:
        self.domains.append(record)
        if running:
            record.start(self)
        return record

    def connect(self, uri: str, readonly: bool = False) -> FakeConnection:
        self.enter("open", (uri, readonly))
        if uri in self.unreachable:
            raise error(ErrorCode.SYSTEM_ERROR, UNREACHABLE_MESSAGE, ErrorDomain.RPC)
        conn = FakeConnection(self, uri, readonly)
        self.connections.append(conn)
        return conn

    def enter(self, method: str, args: tuple[Any, ...]) -> None:
        """Record a call and raise its injected fault, if any (once)."""
        self.calls.append((method, args))
        fault = self.faults.pop(method, None)
        if fault is not None:
            raise fault
        if method in self.unsupported:
            raise error(ErrorCode.NO_SUPPORT, "this function is not supported by the "
                        f"connection driver: {self.unsupported[method]}")

    def find(self, match: Any, what: str) -> DomainRecord:
        for record in self.domains:
            if match(record):
                return record
        raise error(ErrorCode.NO_DOMAIN, f"Domain not found: no domain with matching {what}")

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]


def default_host() -> FakeHost:
    """The domain libvirt's test:///default driver starts with."""
    host = FakeHost()
    record = host.add(DomainRecord("test", TEST_UUID, max_mem=8388608, memory=2097152,
                                   vcpus=2, os_type="linux"), running=True)  # fmt: skip
    record.reason = int(RunningReason.UNKNOWN)  # what the test driver reports
    return host


#: what libvirt's test driver does not implement, among the calls pyvirsh makes
TEST_DRIVER_UNSUPPORTED = {
    "jobStats": "virDomainGetJobStats", "jobInfo": "virDomainGetJobInfo",
    "abortJob": "virDomainAbortJob",
    "migrateGetMaxDowntime": "virDomainMigrateGetMaxDowntime",
    "migrateSetMaxDowntime": "virDomainMigrateSetMaxDowntime",
    "migrateGetCompressionCache": "virDomainMigrateGetCompressionCache",
    "migrateSetCompressionCache": "virDomainMigrateSetCompressionCache",
    "migrateGetMaxSpeed": "virDomainMigrateGetMaxSpeed",
    "migrateSetMaxSpeed": "virDomainMigrateSetMaxSpeed",
    "migrateStartPostCopy": "virDomainMigrateStartPostCopy",
}  # fmt: skip


def like_test_driver() -> FakeHost:
    """:func:`default_host` that also lacks what the test driver lacks."""
    host = default_host()
    host.unsupported.update(TEST_DRIVER_UNSUPPORTED)
    return host


# -- running pyvirsh and the stock virsh in tests ------------------------------------------------
class Result:
    """An exit status with the exact text written to stdout and stderr."""

    def __init__(self, status: int, out: str, err: str) -> None:
        self.status = status
        self.out = out
        self.err = err

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and (self.status, self.out, self.err) == (
            other.status, other.out, other.err)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Result({self.status}, out={self.out!r}, err={self.err!r})"


def run_pyvirsh(args: list[str], host: FakeHost | None = None, *, stdin: str = "",
                progname: str = "pyvirsh") -> Result:  # fmt: skip
    """Run pyvirsh in this process on ``host`` (a fresh :func:`default_host` if None)."""
    import io

    from pyvirt.virsh.main import main

    host = host or default_host()
    out, err = io.StringIO(), io.StringIO()
    status = main([progname, *args], host.connect, stdin=io.StringIO(stdin), stdout=out,
                  stderr=err)  # fmt: skip
    return Result(status, out.getvalue(), err.getvalue())


def run_virsh(args: list[str], *, stdin: str = "", timeout: float = 10) -> Result:
    """Run the stock virsh (C locale, no default URI from the environment)."""
    import os
    import subprocess

    env = {key: value for key, value in os.environ.items()
           if key not in ("LIBVIRT_DEFAULT_URI", "VIRSH_DEFAULT_CONNECT_URI")}  # fmt: skip
    env.update(LC_ALL="C", LANG="C")
    proc = subprocess.run(["virsh", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr)


#: libvirt's name for each write method, as read-only refusals quote it
_WRITE_APIS = {
    "defineXML": "virDomainDefineXML", "defineXMLFlags": "virDomainDefineXMLFlags",
    "createXML": "virDomainCreateXML", "create": "virDomainCreate",
    "createWithFlags": "virDomainCreateWithFlags", "destroy": "virDomainDestroy",
    "destroyFlags": "virDomainDestroyFlags", "shutdown": "virDomainShutdown",
    "shutdownFlags": "virDomainShutdownFlags", "reboot": "virDomainReboot",
    "suspend": "virDomainSuspend", "resume": "virDomainResume",
    "undefine": "virDomainUndefine", "undefineFlags": "virDomainUndefineFlags",
    "setAutostart": "virDomainSetAutostart", "abortJob": "virDomainAbortJob",
    "abortJobFlags": "virDomainAbortJobFlags",
    "migrateSetMaxDowntime": "virDomainMigrateSetMaxDowntime",
    "migrateSetMaxSpeed": "virDomainMigrateSetMaxSpeed",
    "migrateSetCompressionCache": "virDomainMigrateSetCompressionCache",
    "migrateStartPostCopy": "virDomainMigrateStartPostCopy",
}  # fmt: skip

_Match = Callable[[DomainRecord, ListFlags], bool]
_LIST_GROUPS: tuple[tuple[ListFlags, _Match], ...] = (
    (ListFlags.ACTIVE | ListFlags.INACTIVE,
     lambda r, f: (ListFlags.ACTIVE in f and r.active) or (ListFlags.INACTIVE in f
                                                           and not r.active)),
    (ListFlags.PERSISTENT | ListFlags.TRANSIENT,
     lambda r, f: (ListFlags.PERSISTENT in f and r.persistent)
     or (ListFlags.TRANSIENT in f and not r.persistent)),
    (ListFlags.RUNNING | ListFlags.PAUSED | ListFlags.SHUTOFF | ListFlags.OTHER,
     lambda r, f: (ListFlags.RUNNING in f and r.state == DomainState.RUNNING)
     or (ListFlags.PAUSED in f and r.state == DomainState.PAUSED)
     or (ListFlags.SHUTOFF in f and r.state == DomainState.SHUTOFF)
     or (ListFlags.OTHER in f and r.state not in (DomainState.RUNNING, DomainState.PAUSED,
                                                  DomainState.SHUTOFF))),
    (ListFlags.MANAGEDSAVE | ListFlags.NO_MANAGEDSAVE,
     lambda r, f: (ListFlags.MANAGEDSAVE in f and r.managed_save)
     or (ListFlags.NO_MANAGEDSAVE in f and not r.managed_save)),
    (ListFlags.AUTOSTART | ListFlags.NO_AUTOSTART,
     lambda r, f: (ListFlags.AUTOSTART in f and r.autostart)
     or (ListFlags.NO_AUTOSTART in f and not r.autostart)),
    (ListFlags.HAS_SNAPSHOT | ListFlags.NO_SNAPSHOT, lambda r, f: ListFlags.NO_SNAPSHOT in f),
    (ListFlags.HAS_CHECKPOINT | ListFlags.NO_CHECKPOINT,
     lambda r, f: ListFlags.NO_CHECKPOINT in f),
)


def list_matches(record: DomainRecord, flags: int) -> bool:
    """virConnectListAllDomains' filter: within a group, any set bit may match."""
    given = ListFlags(flags)
    for group, match in _LIST_GROUPS:
        if given & group and not match(record, given & group):
            return False
    return True


class FakeConnection:
    def __init__(self, host: FakeHost, uri: str, readonly: bool) -> None:
        self.host = host
        self.uri = uri
        self.readonly = readonly
        self.closed = False

    def _enter(self, method: str, *args: Any) -> None:
        self.host.enter(method, args)
        if self.readonly and method in _WRITE_APIS:
            raise error(ErrorCode.OPERATION_DENIED,
                        f"operation forbidden: read only access prevents {_WRITE_APIS[method]}")

    def getType(self) -> str:
        self._enter("getType")
        return self.host.hv_type

    def getVersion(self) -> int:
        self._enter("getVersion")
        return self.host.hv_version

    def getLibVersion(self) -> int:
        self._enter("getLibVersion")
        return self.host.lib_version

    def getHostname(self) -> str:
        self._enter("getHostname")
        return self.host.hostname

    def getURI(self) -> str:
        self._enter("getURI")
        return self.uri

    def getCapabilities(self) -> str:
        self._enter("getCapabilities")
        return self.host.capabilities

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:
        self._enter("listAllDomains", flags)
        return [FakeDomain(self, r) for r in self.host.domains if list_matches(r, flags)]

    def lookupByName(self, name: str) -> FakeDomain:
        self._enter("lookupByName", name)
        return FakeDomain(self, self.host.find(lambda r: r.name == name,
                                               f"name '{name}'"))  # fmt: skip

    def lookupByUUIDString(self, uuidstr: str) -> FakeDomain:
        self._enter("lookupByUUIDString", uuidstr)
        return FakeDomain(self, self.host.find(lambda r: r.uuid == uuidstr.lower(),
                                               f"uuid '{uuidstr}'"))  # fmt: skip

    def lookupByID(self, id: int) -> FakeDomain:
        self._enter("lookupByID", id)
        return FakeDomain(self, self.host.find(lambda r: r.active and r.id == id,
                                               f"id {id}"))  # fmt: skip

    def defineXML(self, xml: str) -> FakeDomain:
        self._enter("defineXML", xml)
        return self._define(xml)

    def defineXMLFlags(self, xml: str, flags: int = 0) -> FakeDomain:
        self._enter("defineXMLFlags", xml, flags)
        return self._define(xml)

    def _define(self, xml: str) -> FakeDomain:
        new = parse_domain_xml(xml)
        for record in self.host.domains:
            if record.name == new.name:
                if xml.find("<uuid>") >= 0 and record.uuid != new.uuid:
                    raise error(ErrorCode.OPERATION_FAILED, f"operation failed: domain "
                                f"'{new.name}' already exists with uuid {record.uuid}")
                record.persistent = True
                record.max_mem, record.memory, record.vcpus = new.max_mem, new.memory, new.vcpus
                return FakeDomain(self, record)
        return FakeDomain(self, self.host.add(new))

    def createXML(self, xmlDesc: str, flags: int = 0) -> FakeDomain:
        self._enter("createXML", xmlDesc, flags)
        new = parse_domain_xml(xmlDesc)
        for record in self.host.domains:
            if record.name == new.name:
                if record.active:
                    raise error(ErrorCode.OPERATION_INVALID, "Requested operation is not "
                                f"valid: domain '{new.name}' is already active")
                record.start(self.host, bool(flags & CreateFlags.START_PAUSED))
                return FakeDomain(self, record)
        new.persistent = False
        self.host.add(new).start(self.host, bool(flags & CreateFlags.START_PAUSED))
        return FakeDomain(self, new)

    def close(self) -> int:
        self._enter("close")
        self.closed = True
        return 0


class FakeDomain:
    """A handle on a domain; like libvirt's, it goes stale when the domain disappears."""

    def __init__(self, conn: FakeConnection, record: DomainRecord) -> None:
        self.conn = conn
        self.record = record

    def _live(self, method: str, *args: Any) -> DomainRecord:
        self.conn._enter(method, *args)
        if self.record not in self.conn.host.domains:
            raise error(ErrorCode.NO_DOMAIN, "Domain not found: no domain with matching "
                        f"uuid '{self.record.uuid}' ({self.record.name})")
        return self.record

    def _active(self, method: str, *args: Any) -> DomainRecord:
        record = self._live(method, *args)
        if not record.active:
            raise not_running()
        return record

    # -- identity and state ------------------------------------------------------------------
    def name(self) -> str:
        return self.record.name

    def UUIDString(self) -> str:
        return self.record.uuid

    def ID(self) -> int:
        return self.record.id

    def OSType(self) -> str:
        return self._live("OSType").os_type

    def info(self) -> list[int]:
        r = self._live("info")
        return [int(r.state), r.max_mem, r.memory, r.vcpus, r.cpu_time]

    def state(self, flags: int = 0) -> list[int]:
        r = self._live("state", flags)
        return [int(r.state), r.reason]

    def XMLDesc(self, flags: int = 0) -> str:
        return self._live("XMLDesc", flags).xml()

    def isActive(self) -> int:
        return int(self._live("isActive").active)

    def isPersistent(self) -> int:
        return int(self._live("isPersistent").persistent)

    def autostart(self) -> int:
        return int(self._live("autostart").autostart)

    def hasManagedSaveImage(self, flags: int = 0) -> int:
        return int(self._live("hasManagedSaveImage", flags).managed_save)

    def metadata(self, type: int, uri: str | None, flags: int = 0) -> str:
        title = self._live("metadata", type, uri, flags).title
        if type != 0 or title is None:
            raise error(ErrorCode.NO_DOMAIN_METADATA,
                        "metadata not found: Requested metadata element is not present")
        return title

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self) -> int:
        return self._start(0, "create")

    def createWithFlags(self, flags: int = 0) -> int:
        return self._start(flags, "createWithFlags", flags)

    def _start(self, flags: int, method: str, *args: Any) -> int:
        record = self._live(method, *args)
        if record.active:
            raise error(ErrorCode.OPERATION_INVALID,
                        "Requested operation is not valid: domain is already running")
        record.start(self.conn.host, bool(flags & CreateFlags.START_PAUSED))
        return 0

    def destroy(self) -> int:
        self._active("destroy").stop(self.conn.host, ShutoffReason.DESTROYED)
        return 0

    def destroyFlags(self, flags: int = 0) -> int:
        self._active("destroyFlags", flags).stop(self.conn.host, ShutoffReason.DESTROYED)
        return 0

    def shutdown(self) -> int:
        self._active("shutdown").stop(self.conn.host, ShutoffReason.SHUTDOWN)
        return 0

    def shutdownFlags(self, flags: int = 0) -> int:
        self._active("shutdownFlags", flags).stop(self.conn.host, ShutoffReason.SHUTDOWN)
        return 0

    def reboot(self, flags: int = 0) -> int:
        self._active("reboot", flags)
        return 0

    def suspend(self) -> int:
        record = self._active("suspend")
        record.state, record.reason = DomainState.PAUSED, int(PausedReason.USER)
        return 0

    def resume(self) -> int:
        record = self._active("resume")
        if record.state == DomainState.PAUSED:
            record.state, record.reason = DomainState.RUNNING, int(RunningReason.UNPAUSED)
        return 0

    def undefine(self) -> int:
        return self._undefine("undefine")

    def undefineFlags(self, flags: int = 0) -> int:
        return self._undefine("undefineFlags", flags)

    def _undefine(self, method: str, *args: Any) -> int:
        record = self._live(method, *args)
        if not record.persistent:
            raise error(ErrorCode.OPERATION_INVALID,
                        "Requested operation is not valid: cannot undefine transient domain")
        if record.active:
            record.persistent = False
        else:
            self.conn.host.domains.remove(record)
        return 0

    def setAutostart(self, autostart: int) -> int:
        record = self._live("setAutostart", autostart)
        if not record.persistent:
            raise error(ErrorCode.OPERATION_INVALID, "Requested operation is not valid: "
                        "cannot set autostart for transient domain")
        record.autostart = bool(autostart)
        return 0

    # -- jobs and migration tuning -------------------------------------------------------------
    def jobInfo(self) -> list[int]:
        job = self._live("jobInfo").job
        fields = ("time_elapsed", "time_remaining", "data_total", "data_processed",
                  "data_remaining", "memory_total", "memory_processed", "memory_remaining",
                  "disk_total", "disk_processed", "disk_remaining")  # fmt: skip
        return [int(job.get("type", 0)), *(int(job.get(f, 0)) for f in fields)]

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        record = self._live("jobStats", flags)
        return dict(record.completed_job if flags & 1 else record.job)

    def abortJob(self) -> int:
        return self._abort("abortJob")

    def abortJobFlags(self, flags: int = 0) -> int:
        return self._abort("abortJobFlags", flags)

    def _abort(self, method: str, *args: Any) -> int:
        record = self._active(method, *args)
        if record.job.get("type", 0) not in (1, 2):
            raise error(ErrorCode.OPERATION_INVALID,
                        "Requested operation is not valid: no job is active on the domain")
        record.job = {"type": 0}
        return 0

    def migrateSetMaxDowntime(self, downtime: int, flags: int = 0) -> int:
        self._active("migrateSetMaxDowntime", downtime, flags).downtime = downtime
        return 0

    def migrateGetMaxDowntime(self, flags: int = 0) -> int:
        return self._active("migrateGetMaxDowntime", flags).downtime

    def migrateSetMaxSpeed(self, bandwidth: int, flags: int = 0) -> int:
        record = self._live("migrateSetMaxSpeed", bandwidth, flags)
        if flags & 1:
            record.postcopy_speed = bandwidth
        else:
            record.speed = bandwidth
        return 0

    def migrateGetMaxSpeed(self, flags: int = 0) -> int:
        record = self._live("migrateGetMaxSpeed", flags)
        return record.postcopy_speed if flags & 1 else record.speed

    def migrateSetCompressionCache(self, cacheSize: int, flags: int = 0) -> int:
        self._active("migrateSetCompressionCache", cacheSize, flags).compression_cache = cacheSize
        return 0

    def migrateGetCompressionCache(self, flags: int = 0) -> int:
        return self._active("migrateGetCompressionCache", flags).compression_cache

    def migrateStartPostCopy(self, flags: int = 0) -> int:
        record = self._active("migrateStartPostCopy", flags)
        if record.job.get("operation") != 5:
            raise error(ErrorCode.OPERATION_INVALID, "Requested operation is not valid: "
                        "post-copy can only be started while outgoing migration is in progress")
        return 0
