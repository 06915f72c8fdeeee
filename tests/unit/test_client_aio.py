"""The async client core against an in-process fake daemon: handshake, calls, errors, events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pyvirt.client.aio import AsyncConnection, AsyncDomain, ConnectionLostError
from pyvirt.client.error import libvirtError
from pyvirt.client.names import CloseReason, EventID
from pyvirt.errors import ErrorCode, ErrorDomain, NoDomainError, OperationFailedError
from pyvirt.rpc.packet import MessageStatus, MessageType, encode_packet, read_packet
from pyvirt.rpc.remote_types import TypedParam, TypedParamType
from pyvirt.rpc.stream import Stream
from tests.fakes.fake_remote import Served, serve

TIMEOUT = 5.0

HANDSHAKE = [
    ("AUTH_LIST", None),
    ("CONNECT_SUPPORTS_FEATURE", {"feature": 10}),
    ("CONNECT_OPEN", {"name": "qemu:///system", "flags": 0}),
    ("CONNECT_SUPPORTS_FEATURE", {"feature": 14}),
    ("CONNECT_SUPPORTS_FEATURE", {"feature": 15}),
    ("CONNECT_REGISTER_CLOSE_CALLBACK", None),
]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serve() as s:
        s.fake.add("g1", running=True)
        s.fake.add("g2")
        yield s


@pytest.fixture
async def conn(served: Served) -> AsyncIterator[AsyncConnection]:
    c = await AsyncConnection.open(served.uri())
    yield c
    await c.close()


async def g1(conn: AsyncConnection) -> AsyncDomain:
    return await conn.lookupByName("g1")


# -- handshake -------------------------------------------------------------------------------
async def test_handshake_order_and_close(served: Served) -> None:
    conn = await AsyncConnection.open(served.uri())
    assert served.fake.calls == HANDSHAKE
    assert conn.rpc.keepalive.active
    assert (conn.rpc.keepalive.interval, conn.rpc.keepalive.count) == (5.0, 6)
    served.fake.calls.clear()
    assert await conn.close() == 0
    assert served.fake.names() == ["CONNECT_UNREGISTER_CLOSE_CALLBACK", "CONNECT_CLOSE"]
    assert not conn.isAlive()
    assert await conn.close() == 0  # idempotent


async def test_readonly_sends_ro_flag(served: Served) -> None:
    conn = await AsyncConnection.open(served.uri(), readonly=True)
    try:
        assert served.fake.last("CONNECT_OPEN") == {"name": "qemu:///system", "flags": 1}
        assert conn.readonly
    finally:
        await conn.close()


async def test_open_flags_are_passed(served: Served) -> None:
    conn = await AsyncConnection.open(served.uri(), flags=2)  # VIR_CONNECT_NO_ALIASES (p2p)
    await conn.close()
    assert served.fake.last("CONNECT_OPEN")["flags"] == 2


async def test_no_keepalive_when_feature_10_is_off(served: Served) -> None:
    served.fake.features[10] = 0
    conn = await AsyncConnection.open(served.uri())
    try:
        assert not conn.rpc.keepalive.active
        assert await conn.setKeepAlive(5, 5) == 1  # libvirt: 1 = unsupported by the server
    finally:
        await conn.close()


async def test_keepalive_none_skips_the_probe(served: Served) -> None:
    conn = await AsyncConnection.open(served.uri(), keepalive=None)
    try:
        assert ("CONNECT_SUPPORTS_FEATURE", {"feature": 10}) not in served.fake.calls
        assert not conn.rpc.keepalive.active
        assert await conn.setKeepAlive(2, 3) == 0
        assert (conn.rpc.keepalive.interval, conn.rpc.keepalive.count) == (2, 3)
        assert await conn.setKeepAlive(0, 0) == 0
        assert not conn.rpc.keepalive.active
    finally:
        await conn.close()


async def test_no_close_callback_feature_skips_360_and_361(served: Served) -> None:
    served.fake.features[15] = 0
    conn = await AsyncConnection.open(served.uri())
    await conn.close()
    assert "CONNECT_REGISTER_CLOSE_CALLBACK" not in served.fake.names()
    assert "CONNECT_UNREGISTER_CLOSE_CALLBACK" not in served.fake.names()


async def test_auth_list_unknown_procedure_means_no_auth(served: Served) -> None:
    served.fake.auth_types = None
    conn = await AsyncConnection.open(served.uri())
    await conn.close()
    assert "CONNECT_OPEN" in served.fake.names()


async def test_polkit_auth_calls_auth_polkit(served: Served) -> None:
    served.fake.auth_types = [2]
    conn = await AsyncConnection.open(served.uri())
    await conn.close()
    assert served.fake.names()[:3] == ["AUTH_LIST", "AUTH_POLKIT", "CONNECT_SUPPORTS_FEATURE"]


async def test_sasl_is_authentication_unavailable(served: Served) -> None:
    served.fake.auth_types = [1]
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open(served.uri())
    assert info.value.get_error_code() == 94  # AUTH_UNAVAILABLE
    assert info.value.get_error_domain() == ErrorDomain.REMOTE
    assert "authentication unavailable" in str(info.value) and "SASL" in str(info.value)
    assert "CONNECT_OPEN" not in served.fake.names()


async def test_open_refused_by_daemon(served: Served) -> None:
    served.fake.errors["CONNECT_OPEN"] = libvirtError(
        "no connection driver available for qemu:///system", code=ErrorCode.NO_CONNECT,
        domain=ErrorDomain.REMOTE)  # fmt: skip
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open(served.uri())
    assert info.value.get_error_code() == ErrorCode.NO_CONNECT
    assert str(info.value) == "no connection driver available for qemu:///system"


async def test_bad_uri_is_libvirt_error() -> None:
    with pytest.raises(libvirtError) as info:
        await AsyncConnection.open("xen:///system")
    assert info.value.get_error_code() == ErrorCode.NO_CONNECT


async def test_get_uri_is_what_the_caller_gave(served: Served, conn: AsyncConnection) -> None:
    assert conn.getURI() == served.uri()


# -- method → procedure mapping --------------------------------------------------------------
Call = Callable[[AsyncConnection, AsyncDomain], Any]

CONN_CASES: list[tuple[str, Call, str, Any, Any]] = [
    ("getType", lambda c, d: c.getType(), "CONNECT_GET_TYPE", None, "QEMU"),
    ("getVersion", lambda c, d: c.getVersion(), "CONNECT_GET_VERSION", None, 10_000_000),
    ("getLibVersion", lambda c, d: c.getLibVersion(), "CONNECT_GET_LIB_VERSION", None, 9_000_000),
    ("getHostname", lambda c, d: c.getHostname(), "CONNECT_GET_HOSTNAME", None, "fakehost"),
    ("getCapabilities", lambda c, d: c.getCapabilities(), "CONNECT_GET_CAPABILITIES", None,
     "<capabilities/>"),
    ("getMaxVcpus", lambda c, d: c.getMaxVcpus("kvm"), "CONNECT_GET_MAX_VCPUS",
     {"type": "kvm"}, 255),
    ("getInfo", lambda c, d: c.getInfo(), "NODE_GET_INFO", None,
     ["x86_64", 8192, 4, 2000, 1, 1, 2, 2]),
    ("numOfDomains", lambda c, d: c.numOfDomains(), "CONNECT_NUM_OF_DOMAINS", None, 1),
    ("numOfDefinedDomains", lambda c, d: c.numOfDefinedDomains(),
     "CONNECT_NUM_OF_DEFINED_DOMAINS", None, 1),
    ("listDomainsID", lambda c, d: c.listDomainsID(), "CONNECT_LIST_DOMAINS", {"maxids": 1}, [1]),
    ("listDefinedDomains", lambda c, d: c.listDefinedDomains(), "CONNECT_LIST_DEFINED_DOMAINS",
     {"maxnames": 1}, ["g2"]),
]  # fmt: skip

DOM_CASES: list[tuple[str, Call, str, dict[str, Any], Any]] = [
    ("OSType", lambda c, d: d.OSType(), "DOMAIN_GET_OS_TYPE", {}, "hvm"),
    ("info", lambda c, d: d.info(), "DOMAIN_GET_INFO", {}, [1, 1048576, 524288, 2, 123456789]),
    ("state", lambda c, d: d.state(0), "DOMAIN_GET_STATE", {"flags": 0}, [1, 1]),
    ("controlInfo", lambda c, d: d.controlInfo(), "DOMAIN_GET_CONTROL_INFO", {"flags": 0},
     [0, 0, 0]),
    ("XMLDesc", lambda c, d: d.XMLDesc(8), "DOMAIN_GET_XML_DESC", {"flags": 8},
     "<domain type='kvm'><name>g1</name></domain>"),
    ("isActive", lambda c, d: d.isActive(), "DOMAIN_IS_ACTIVE", {}, 1),
    ("isPersistent", lambda c, d: d.isPersistent(), "DOMAIN_IS_PERSISTENT", {}, 1),
    ("autostart", lambda c, d: d.autostart(), "DOMAIN_GET_AUTOSTART", {}, 0),
    ("setAutostart", lambda c, d: d.setAutostart(1), "DOMAIN_SET_AUTOSTART", {"autostart": 1}, 0),
    ("hasManagedSaveImage", lambda c, d: d.hasManagedSaveImage(0),
     "DOMAIN_HAS_MANAGED_SAVE_IMAGE", {"flags": 0}, 0),
    ("shutdown", lambda c, d: d.shutdown(), "DOMAIN_SHUTDOWN", {}, 0),
    ("shutdownFlags", lambda c, d: d.shutdownFlags(1), "DOMAIN_SHUTDOWN_FLAGS", {"flags": 1}, 0),
    ("reboot", lambda c, d: d.reboot(2), "DOMAIN_REBOOT", {"flags": 2}, 0),
    ("suspend", lambda c, d: d.suspend(), "DOMAIN_SUSPEND", {}, 0),
    ("resume", lambda c, d: d.resume(), "DOMAIN_RESUME", {}, 0),
    ("undefine", lambda c, d: d.undefine(), "DOMAIN_UNDEFINE", {}, 0),
    ("undefineFlags", lambda c, d: d.undefineFlags(4), "DOMAIN_UNDEFINE_FLAGS", {"flags": 4}, 0),
    ("jobInfo", lambda c, d: d.jobInfo(), "DOMAIN_GET_JOB_INFO", {}, [2, *range(1, 12)]),
    ("migrateSetMaxDowntime", lambda c, d: d.migrateSetMaxDowntime(50),
     "DOMAIN_MIGRATE_SET_MAX_DOWNTIME", {"downtime": 50, "flags": 0}, 0),
    ("migrateGetMaxDowntime", lambda c, d: d.migrateGetMaxDowntime(),
     "DOMAIN_MIGRATE_GET_MAX_DOWNTIME", {"flags": 0}, 300),
    ("migrateSetMaxSpeed", lambda c, d: d.migrateSetMaxSpeed(100, 1),
     "DOMAIN_MIGRATE_SET_MAX_SPEED", {"bandwidth": 100, "flags": 1}, 0),
    ("migrateGetMaxSpeed", lambda c, d: d.migrateGetMaxSpeed(1),
     "DOMAIN_MIGRATE_GET_MAX_SPEED", {"flags": 1}, 8796093022207),
    ("migrateSetCompressionCache", lambda c, d: d.migrateSetCompressionCache(1 << 20),
     "DOMAIN_MIGRATE_SET_COMPRESSION_CACHE", {"cache_size": 1 << 20, "flags": 0}, 0),
    ("migrateGetCompressionCache", lambda c, d: d.migrateGetCompressionCache(),
     "DOMAIN_MIGRATE_GET_COMPRESSION_CACHE", {"flags": 0}, 67108864),
    ("migrateStartPostCopy", lambda c, d: d.migrateStartPostCopy(),
     "DOMAIN_MIGRATE_START_POST_COPY", {"flags": 0}, 0),
]  # fmt: skip


@pytest.mark.parametrize(("method", "invoke", "proc", "args", "expected"), CONN_CASES,
                         ids=[case[0] for case in CONN_CASES])  # fmt: skip
async def test_connection_methods(
    served: Served, conn: AsyncConnection, method: str, invoke: Call, proc: str, args: Any,
    expected: Any,
) -> None:  # fmt: skip
    dom = await g1(conn)
    served.fake.calls.clear()
    assert await invoke(conn, dom) == expected
    assert served.fake.calls[-1] == (proc, args)


@pytest.mark.parametrize(("method", "invoke", "proc", "args", "expected"), DOM_CASES,
                         ids=[case[0] for case in DOM_CASES])  # fmt: skip
async def test_domain_methods(served: Served, conn: AsyncConnection, method: str, invoke: Call,
                              proc: str, args: dict[str, Any], expected: Any) -> None:  # fmt: skip
    dom = await g1(conn)
    served.fake.calls.clear()
    assert await invoke(conn, dom) == expected
    name, sent = served.fake.calls[-1]
    assert name == proc
    assert sent == {"dom": dom.handle, **args}


async def test_domain_handle_accessors(served: Served, conn: AsyncConnection) -> None:
    dom = await g1(conn)
    fake = served.fake.domains["g1"]
    assert (dom.name(), dom.UUID(), dom.ID()) == ("g1", fake.uuid, 1)
    assert dom.UUIDString() == str(uuid.UUID(bytes=fake.uuid))
    assert dom.connect() is conn


async def test_lookups(served: Served, conn: AsyncConnection) -> None:
    fake = served.fake.domains["g1"]
    assert (await conn.lookupByID(1)).name() == "g1"
    assert (await conn.lookupByUUID(fake.uuid)).name() == "g1"
    assert served.fake.last("DOMAIN_LOOKUP_BY_UUID") == {"uuid": fake.uuid}
    text = str(uuid.UUID(bytes=fake.uuid))
    assert (await conn.lookupByUUIDString(text)).name() == "g1"
    assert (await conn.lookupByUUIDString(text.replace("-", ""))).name() == "g1"


async def test_lookup_argument_errors(conn: AsyncConnection) -> None:
    with pytest.raises(libvirtError) as info:
        await conn.lookupByUUIDString("not-a-uuid")
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG
    with pytest.raises(libvirtError) as info:
        await conn.lookupByUUID(b"short")
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG


async def test_list_all_domains(served: Served, conn: AsyncConnection) -> None:
    assert [d.name() for d in await conn.listAllDomains()] == ["g1", "g2"]
    assert served.fake.last("CONNECT_LIST_ALL_DOMAINS") == {"need_results": 1, "flags": 0}
    active = await conn.listAllDomains(1)
    assert [(d.name(), d.ID()) for d in active] == [("g1", 1)]
    assert [d.ID() for d in await conn.listAllDomains(2)] == [-1]


async def test_define_create_start_destroy_updates_id(served: Served,
                                                      conn: AsyncConnection) -> None:  # fmt: skip
    xml = "<domain type='kvm'><name>new</name></domain>"
    dom = await conn.defineXML(xml)
    assert served.fake.last("DOMAIN_DEFINE_XML") == {"xml": xml}
    assert dom.ID() == -1
    served.fake.calls.clear()
    assert await dom.create() == 0
    # DOMAIN_CREATE returns nothing: the id comes from a LOOKUP_BY_UUID, as libvirt does it
    assert served.fake.names() == ["DOMAIN_CREATE", "DOMAIN_LOOKUP_BY_UUID"]
    assert dom.ID() == served.fake.domains["new"].id != -1
    assert await dom.destroy() == 0
    assert dom.ID() == -1
    assert await dom.createWithFlags(0) == 0
    assert dom.ID() == served.fake.domains["new"].id != -1
    assert served.fake.last("DOMAIN_CREATE_WITH_FLAGS")["flags"] == 0
    assert await dom.destroyFlags(1) == 0
    assert dom.ID() == -1 and served.fake.last("DOMAIN_DESTROY_FLAGS")["flags"] == 1


async def test_define_flags_and_create_xml(served: Served, conn: AsyncConnection) -> None:
    xml = "<domain type='kvm'><name>t</name></domain>"
    dom = await conn.defineXMLFlags(xml, 1)
    assert served.fake.last("DOMAIN_DEFINE_XML_FLAGS") == {"xml": xml, "flags": 1}
    await dom.undefine()
    dom = await conn.createXML(xml, 1)
    assert served.fake.last("DOMAIN_CREATE_XML") == {"xml_desc": xml, "flags": 1}
    assert dom.ID() != -1


async def test_job_stats_dict(served: Served, conn: AsyncConnection) -> None:
    served.fake.job_stats = [
        TypedParam.of_int("operation", 5), TypedParam.of_ullong("time_elapsed", 1234),
        TypedParam.of_ullong("memory_total", 1 << 30), TypedParam.of_double("ratio", 0.5),
        TypedParam.of_bool("flag", True), TypedParam.of_string("name", "x"),
    ]  # fmt: skip
    stats = await (await g1(conn)).jobStats(1)
    assert stats == {"type": 3, "operation": 5, "time_elapsed": 1234, "memory_total": 1 << 30,
                     "ratio": 0.5, "flag": True, "name": "x"}  # fmt: skip
    assert stats["flag"] is True
    assert served.fake.last("DOMAIN_GET_JOB_STATS")["flags"] == 1


# -- errors ----------------------------------------------------------------------------------
async def test_daemon_error_keeps_code_domain_message(conn: AsyncConnection) -> None:
    with pytest.raises(libvirtError) as info:
        await conn.lookupByName("nosuchdomain")
    err = info.value
    assert err.get_error_code() == 42  # NO_DOMAIN
    assert err.get_error_domain() == 10  # QEMU
    assert str(err) == "Domain not found: no domain with matching name 'nosuchdomain'"
    assert err.get_error_message() == str(err) and err.get_error_level() == 2
    assert err.err[:4] == (42, 10, str(err), 2)


async def test_abort_job_without_job(conn: AsyncConnection) -> None:
    with pytest.raises(libvirtError) as info:
        await (await g1(conn)).abortJob()
    assert info.value.get_error_code() == 55  # OPERATION_INVALID


async def test_unknown_procedure_is_no_support(served: Served, conn: AsyncConnection) -> None:
    served.fake.unsupported.add("CONNECT_GET_HOSTNAME")
    with pytest.raises(libvirtError) as info:
        await conn.getHostname()
    assert info.value.get_error_code() == ErrorCode.NO_SUPPORT
    assert info.value.get_error_domain() == ErrorDomain.RPC
    assert str(info.value) == "unknown procedure: 59"


async def test_injected_error(served: Served, conn: AsyncConnection) -> None:
    served.fake.errors["DOMAIN_SUSPEND"] = OperationFailedError("nope")
    with pytest.raises(libvirtError, match="operation failed: nope") as info:
        await (await g1(conn)).suspend()
    assert info.value.get_error_code() == ErrorCode.OPERATION_FAILED


async def test_wire_type_mismatch_is_invalid_arg(served: Served, conn: AsyncConnection) -> None:
    dom = await g1(conn)
    with pytest.raises(libvirtError) as info:
        await dom.migrateSetMaxSpeed(-1)
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG
    assert "virDomainMigrateSetMaxSpeed" in str(info.value)
    assert "DOMAIN_MIGRATE_SET_MAX_SPEED" not in served.fake.names()


async def test_calls_after_close_are_invalid_conn(served: Served) -> None:
    conn = await AsyncConnection.open(served.uri())
    dom = await g1(conn)
    await conn.close()
    with pytest.raises(libvirtError) as info:
        await dom.info()
    assert info.value.get_error_code() == ErrorCode.INVALID_CONN
    assert str(info.value) == "invalid connection pointer in virDomainGetInfo"


async def test_connection_loss(served: Served, conn: AsyncConnection) -> None:
    reasons: asyncio.Queue[tuple[Any, int, Any]] = asyncio.Queue()
    conn.registerCloseCallback(lambda c, reason, op: reasons.put_nowait((c, reason, op)), "op")
    for client in served.server.clients:
        client.abort("test kills the client")
    got_conn, reason, opaque = await asyncio.wait_for(reasons.get(), TIMEOUT)
    assert (got_conn, reason, opaque) == (conn, CloseReason.EOF, "op")
    with pytest.raises(ConnectionLostError) as info:
        await conn.getType()
    err = info.value
    assert isinstance(err, libvirtError)
    assert (err.get_error_code(), err.get_error_domain()) == (38, 7)  # SYSTEM_ERROR, RPC
    assert str(err) == "End of file while reading data: Input/output error"
    assert not conn.isAlive()


async def test_close_callback_registration_rules(conn: AsyncConnection) -> None:
    assert conn.registerCloseCallback(lambda *a: None) == 0
    with pytest.raises(libvirtError):
        conn.registerCloseCallback(lambda *a: None)
    assert conn.unregisterCloseCallback() == 0
    with pytest.raises(libvirtError):
        conn.unregisterCloseCallback()


async def _silent_server(path: str) -> asyncio.AbstractServer:
    """Answers the handshake (auth none, every feature 1), then ignores everything."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (packet := await read_packet(reader)) is not None:
            hdr = packet.header
            if hdr.type != MessageType.CALL or hdr.proc == 2:
                continue
            payload = {66: b"\0\0\0\0", 60: b"\0\0\0\1"}.get(hdr.proc, b"")
            writer.write(encode_packet(hdr.reply(MessageStatus.OK), payload))
        writer.close()

    return await asyncio.start_unix_server(handle, path)


async def test_keepalive_timeout_closes_and_reports(served: Served) -> None:
    path = f"{served.dir}/silent"
    server = await _silent_server(path)
    try:
        conn = await AsyncConnection.open(f"qemu+unix:///system?socket={path}",
                                          keepalive=(0.05, 1))  # fmt: skip
        reasons: asyncio.Queue[int] = asyncio.Queue()
        conn.registerCloseCallback(lambda c, reason, op: reasons.put_nowait(reason))
        assert await asyncio.wait_for(reasons.get(), TIMEOUT) == CloseReason.KEEPALIVE
        with pytest.raises(ConnectionLostError, match="keepalive timeout"):
            await conn.getType()
        await conn.close()
    finally:
        server.close()
        await server.wait_closed()


# -- events ----------------------------------------------------------------------------------
async def test_lifecycle_event_reaches_callback(served: Served, conn: AsyncConnection) -> None:
    got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    cb_id = await conn.domainEventRegisterAny(
        None, EventID.LIFECYCLE, lambda *args: got.put_nowait(args), "opaque")  # fmt: skip
    assert served.fake.last("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY") == {
        "event_id": 0, "dom": None}  # fmt: skip
    assert await served.fake.emit_lifecycle("g1", 3, 0) == 1
    c, dom, event, detail, opaque = await asyncio.wait_for(got.get(), TIMEOUT)
    assert (c, dom.name(), event, detail, opaque) == (conn, "g1", 3, 0, "opaque")
    assert await conn.domainEventDeregisterAny(cb_id) == 0
    remote_id = served.fake.last("CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY")["callback_id"]
    assert remote_id >= 100 and remote_id != cb_id  # the daemon's ID stays inside the client
    assert await served.fake.emit_lifecycle("g1", 4, 0) == 0


async def test_event_filter_by_domain(served: Served, conn: AsyncConnection) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    dom = await g1(conn)
    await conn.domainEventRegisterAny(
        dom, EventID.LIFECYCLE, lambda c, d, e, det, op: got.put_nowait(d.name()))  # fmt: skip
    assert served.fake.last("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY")["dom"] == dom.handle
    await served.fake.emit_lifecycle("g2", 2, 0)
    await served.fake.emit_lifecycle("g1", 2, 0)
    assert await asyncio.wait_for(got.get(), TIMEOUT) == "g1"
    assert got.empty()


async def test_migration_iteration_and_job_completed(served: Served,
                                                     conn: AsyncConnection) -> None:  # fmt: skip
    got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def async_cb(c: AsyncConnection, d: AsyncDomain, value: Any, op: Any) -> None:
        got.put_nowait((d.name(), value, op))  # an async callback runs as a task

    await conn.domainEventRegisterAny(None, EventID.MIGRATION_ITERATION, async_cb, 1)
    await conn.domainEventRegisterAny(None, EventID.JOB_COMPLETED, async_cb, 2)
    await served.fake.emit_iteration("g1", 2)
    assert await asyncio.wait_for(got.get(), TIMEOUT) == ("g1", 2, 1)
    await served.fake.emit_job_completed("g1", [TypedParam.of_ullong("downtime", 12),
                                                TypedParam.of_int("operation", 5)])  # fmt: skip
    assert await asyncio.wait_for(got.get(), TIMEOUT) == (
        "g1", {"downtime": 12, "operation": 5}, 2)  # fmt: skip


async def test_event_registration_errors(served: Served, conn: AsyncConnection) -> None:
    with pytest.raises(libvirtError) as info:
        await conn.domainEventDeregisterAny(42)
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG
    with pytest.raises(libvirtError) as info:
        await conn.domainEventRegisterAny(None, 5, lambda *a: None)
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG


async def test_events_need_remote_event_callback_feature(served: Served) -> None:
    served.fake.features[14] = 0
    conn = await AsyncConnection.open(served.uri())
    try:
        with pytest.raises(libvirtError) as info:
            await conn.domainEventRegisterAny(None, 0, lambda *a: None)
        assert info.value.get_error_code() == ErrorCode.NO_SUPPORT
    finally:
        await conn.close()


# -- migration phase wrappers ----------------------------------------------------------------
async def test_migration_phase_wrappers(served: Served, conn: AsyncConnection) -> None:
    dom = await g1(conn)
    cookie, xml = await dom.migrate_begin3_params({"bandwidth": 100}, 0x101)
    assert (cookie, xml) == (b"<cookie-begin/>\0", "<domain><name>g1</name></domain>")
    sent = served.fake.last("DOMAIN_MIGRATE_BEGIN3_PARAMS")
    assert sent["params"] == [TypedParam("bandwidth", TypedParamType.ULLONG, 100)]
    assert sent["flags"] == 0x101

    cookie, uri_out = await conn.migrate_prepare3_params({"destination_xml": xml}, cookie, 1)
    assert (cookie, uri_out) == (b"<cookie-prepare/>\0", "tcp://127.0.0.1:49152")
    assert served.fake.last("DOMAIN_MIGRATE_PREPARE3_PARAMS") == {
        "params": [TypedParam.of_string("destination_xml", xml)],
        "cookie_in": b"<cookie-begin/>\0", "flags": 1}  # fmt: skip

    params = {"migrate_uri": uri_out, "migrate_disks": ["vda", "vdb"]}
    cookie = await dom.migrate_perform3_params(None, params, cookie, 0x101)
    assert cookie == b"<cookie-perform/>\0"
    sent = served.fake.last("DOMAIN_MIGRATE_PERFORM3_PARAMS")
    assert sent["dconnuri"] is None and [p.field for p in sent["params"]] == [
        "migrate_uri", "migrate_disks", "migrate_disks"]  # fmt: skip

    new_dom, cookie = await conn.migrate_finish3_params(params, cookie, 1, False)
    assert (new_dom.name(), cookie) == ("migrated", b"<cookie-finish/>\0")
    assert served.fake.last("DOMAIN_MIGRATE_FINISH3_PARAMS")["cancelled"] == 0

    await dom.migrate_confirm3_params(params, cookie, 0x101, True)
    assert served.fake.last("DOMAIN_MIGRATE_CONFIRM3_PARAMS")["cancelled"] == 1


async def test_migration_params_pass_typed_lists_through(
    served: Served, conn: AsyncConnection
) -> None:
    typed = [TypedParam.of_string("destination_xml", "<x/>"), TypedParam.of_int("unknown.x", 1)]
    await conn.migrate_prepare3_params(typed)
    assert served.fake.last("DOMAIN_MIGRATE_PREPARE3_PARAMS")["params"] == typed


async def test_migration_params_errors_are_libvirt_errors(
    served: Served, conn: AsyncConnection
) -> None:
    dom = await g1(conn)
    with pytest.raises(libvirtError) as info:
        await dom.migrate_begin3_params({"no_such_param": 1})
    assert info.value.get_error_code() == ErrorCode.INVALID_ARG
    assert "DOMAIN_MIGRATE_BEGIN3_PARAMS" not in served.fake.names()


async def test_prepare_tunnel_stream(served: Served, conn: AsyncConnection) -> None:
    cookie, stream = await conn.migrate_prepare_tunnel3_params({"destination_xml": "<d/>"},
                                                               b"c\0", 7)  # fmt: skip
    assert cookie == b"<cookie-tunnel/>\0" and isinstance(stream, Stream)
    await stream.send(b"QEVM" + bytes(100_000))
    await stream.finish()
    assert served.fake.tunnel_done is not None
    assert await asyncio.wait_for(served.fake.tunnel_done, TIMEOUT) == "finished"
    assert bytes(served.fake.tunnel_data[:4]) == b"QEVM" and len(served.fake.tunnel_data) == 100_004


async def test_domain_not_found_after_undefine(served: Served, conn: AsyncConnection) -> None:
    dom = await conn.lookupByName("g2")
    await dom.undefine()
    with pytest.raises(libvirtError) as info:
        await dom.info()
    assert info.value.get_error_code() == NoDomainError.code


async def test_concurrent_calls_on_one_connection(conn: AsyncConnection) -> None:
    dom = await g1(conn)
    results = await asyncio.gather(*(dom.state() for _ in range(20)), conn.getHostname())
    assert results[:-1] == [[1, 1]] * 20 and results[-1] == "fakehost"
