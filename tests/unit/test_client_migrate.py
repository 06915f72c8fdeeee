"""Client-driven migration (pyvirt.client.migrate) against two in-process fake daemons.

Each test reads the calls both daemons received, in their order across the two, and
checks them against libvirt 9.0's client library (src/libvirt-domain.c): which features
are asked, which phases run with which flags, parameters, cookies and ``cancelled``, and
which error comes out.  The expected sequences for the normal, failure and offline cases
are also what the stock virsh sent to the same fakes (test_virsh_migrate_run.py compares
the two directly).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pyvirt
from pyvirt.client.aio import AsyncConnection, AsyncDomain
from pyvirt.client.error import libvirtError
from pyvirt.client.migrate import check_not_local, replace_string
from pyvirt.constants import DomainState, MigrateFlags
from pyvirt.errors import (
    ErrorCode,
    ErrorDomain,
    InternalError,
    OperationFailedError,
    VirtError,
)
from pyvirt.rpc.remote_types import TypedParam
from tests.fakes.fake_remote import FakeMigration, Served, ServedPair, serve

F = MigrateFlags
XML = "<domain><name>g1</name></domain>"
BEGIN, PREPARE = b"<cookie-begin/>\0", b"<cookie-prepare/>\0"
PERFORM, FINISH = b"<cookie-perform/>\0", b"<cookie-finish/>\0"
URI_OUT = "tcp://127.0.0.1:49152"
DX, MU, DN = ("destination_xml", XML), ("migrate_uri", URI_OUT), ("destination_name", "g1")
P2P_URI = "qemu+tcp://10.77.0.2/system"

_PHASES = {
    "DOMAIN_MIGRATE_BEGIN3_PARAMS": ("begin", ("params", "flags")),
    "DOMAIN_MIGRATE_PREPARE3_PARAMS": ("prepare", ("params", "cookie_in", "flags")),
    "DOMAIN_MIGRATE_PERFORM3_PARAMS": ("perform", ("dconnuri", "params", "cookie_in", "flags")),
    "DOMAIN_MIGRATE_FINISH3_PARAMS": ("finish", ("params", "cookie_in", "flags", "cancelled")),
    "DOMAIN_MIGRATE_CONFIRM3_PARAMS": ("confirm", ("params", "cookie_in", "flags", "cancelled")),
}
_SHORTS = {short for short, _ in _PHASES.values()}


def steps(journal: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
    """The journal, readable: features by number, phases with their arguments."""
    out: list[tuple[Any, ...]] = []
    for side, name, args in journal:
        if name == "CONNECT_SUPPORTS_FEATURE":
            out.append((side, "feature", args["feature"]))
        elif name in _PHASES:
            short, fields = _PHASES[name]
            values = [tuple((p.field, p.value) for p in args[f]) if f == "params" else args[f]
                      for f in fields]  # fmt: skip
            out.append((side, short, *values))
        else:
            out.append((side, name))
    return out


@dataclasses.dataclass
class Pair:
    src: Served
    dst: Served
    journal: list[tuple[str, str, Any]]
    sconn: AsyncConnection
    dconn: AsyncConnection
    dom: AsyncDomain

    def steps(self) -> list[tuple[Any, ...]]:
        return steps(self.journal)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """g1 running on the source; both daemons scripted; the source has change protection
    (as a real QEMU libvirtd); the journal starts after the lookup."""
    journal: list[tuple[str, str, Any]] = []
    async with serve() as src, serve() as dst:
        for side, served in (("SRC", src), ("DST", dst)):
            served.fake.journal, served.fake.side = journal, side
            served.fake.migration = FakeMigration()
            served.fake.features[7] = 1
        src.fake.add("g1", running=True)
        sconn = await AsyncConnection.open(src.uri())
        dconn = await AsyncConnection.open(dst.uri())
        dom = await sconn.lookupByName("g1")
        journal.clear()
        yield Pair(src, dst, journal, sconn, dconn, dom)
        await sconn.close()
        await dconn.close()


NORMAL = [
    ("SRC", "feature", 13), ("DST", "feature", 13), ("SRC", "feature", 7),
    ("SRC", "begin", (), 0x101),
    ("SRC", "DOMAIN_GET_STATE"),
    ("DST", "prepare", (DX,), BEGIN, 0x1),
    ("SRC", "perform", None, (DX, MU), PREPARE, 0x101),
    ("DST", "finish", (DX, MU, DN), PERFORM, 0x1, 0),
    ("SRC", "confirm", (DX, MU, DN), FINISH, 0x101, 0),
]  # fmt: skip


async def failure(call: Any) -> libvirtError:
    with pytest.raises(libvirtError) as info:
        await call
    return info.value


# -- managed (normal) migration: virDomainMigrateVersion3Full --------------------------------
async def test_normal_sequence_and_the_domain_on_the_destination(pair: Pair) -> None:
    ddom = await pair.dom.migrate3(pair.dconn, None, F.LIVE)
    assert pair.steps() == NORMAL
    assert ddom.connect() is pair.dconn and ddom.name() == "g1"
    assert pair.src.fake.domains["g1"].state == DomainState.SHUTOFF  # confirmed


async def test_destination_flags_drop_source_only_flags(pair: Pair) -> None:
    flags = F.LIVE | F.PERSIST_DEST | F.ABORT_ON_ERROR | F.AUTO_CONVERGE
    await pair.dom.migrate3(pair.dconn, {}, flags)
    sent = {step[1]: step[-2 if step[1] in ("finish", "confirm") else -1]
            for step in pair.steps() if step[1] in ("begin", "prepare", "perform", "finish",
                                                    "confirm")}  # fmt: skip
    src, dst = flags | F.CHANGE_PROTECTION, F.LIVE | F.PERSIST_DEST
    assert sent == {"begin": src, "prepare": dst, "perform": src, "finish": dst, "confirm": src}


async def test_given_parameters_keep_their_place_and_new_ones_go_last(pair: Pair) -> None:
    params = {"destination_xml": "<mine/>", "migrate_uri": "tcp://10.77.0.2:49200",
              "bandwidth": 100, "destination_name": "g2"}  # fmt: skip
    ddom = await pair.dom.migrate3(pair.dconn, params, F.LIVE)
    by_phase = {step[1]: step for step in pair.steps()}
    assert by_phase["begin"][2] == (("destination_xml", "<mine/>"),
                                    ("migrate_uri", "tcp://10.77.0.2:49200"), ("bandwidth", 100),
                                    ("destination_name", "g2"))  # fmt: skip
    expected = (DX, MU, ("bandwidth", 100), ("destination_name", "g2"))
    assert by_phase["perform"][3] == by_phase["finish"][2] == by_phase["confirm"][2] == expected
    assert ddom.name() == "g2"


async def test_paused_source_adds_paused_after_begin(pair: Pair) -> None:
    pair.src.fake.domains["g1"].state = DomainState.PAUSED
    await pair.dom.migrate3(pair.dconn, None, F.LIVE)
    flags = [step[-1] if step[1] in ("begin", "prepare", "perform") else step[-2]
             for step in pair.steps() if step[1] in _SHORTS]  # fmt: skip
    assert flags == [0x101, 0x21, 0x121, 0x21, 0x121]
    assert pair.dst.fake.domains["g1"].state == DomainState.PAUSED


async def test_without_change_protection_on_the_source(pair: Pair) -> None:
    pair.src.fake.features[7] = 0
    await pair.dom.migrate3(pair.dconn, None, F.LIVE)
    assert [s for s in pair.steps() if s[1] == "begin"] == [("SRC", "begin", (), 0x1)]
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE | F.CHANGE_PROTECTION))
    assert error.message == "argument unsupported: cannot enforce change protection"
    assert error.code == ErrorCode.ARGUMENT_UNSUPPORTED


async def test_explicit_change_protection_is_sent_to_the_source_only(pair: Pair) -> None:
    await pair.dom.migrate3(pair.dconn, None, F.LIVE | F.CHANGE_PROTECTION)
    # asked twice, as libvirt does: once for the flag, once for the protection itself
    assert pair.steps()[:4] == [("SRC", "feature", 7), ("SRC", "feature", 13),
                                ("DST", "feature", 13), ("SRC", "feature", 7)]  # fmt: skip
    assert pair.steps()[4:] == NORMAL[3:]


# -- failures and cancellation -----------------------------------------------------------------
async def test_perform_fails_finish_cancelled_no_confirm(pair: Pair) -> None:
    pair.src.fake.migration = FakeMigration(
        perform_error=OperationFailedError("migration out job: unexpectedly failed"))
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert error.message == "operation failed: migration out job: unexpectedly failed"
    assert pair.steps()[-2:] == [("SRC", "perform", None, (DX, MU), PREPARE, 0x101),
                                 ("DST", "finish", (DX, MU, DN), b"", 0x1, 1)]  # fmt: skip


async def test_perform_generic_failure_gives_way_to_finish_error(pair: Pair) -> None:
    """Perform's QEMU OPERATION_FAILED is replaced by a real Finish error (domain died)."""
    pair.src.fake.migration = FakeMigration(perform_error=OperationFailedError("generic"))
    pair.dst.fake.errors["DOMAIN_MIGRATE_FINISH3_PARAMS"] = OperationFailedError("it died")
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert error.message == "operation failed: it died"


async def test_perform_error_kept_over_other_finish_errors(pair: Pair) -> None:
    pair.src.fake.migration = FakeMigration(
        perform_error=VirtError("operation aborted: x", code=ErrorCode.OPERATION_ABORTED))
    pair.dst.fake.errors["DOMAIN_MIGRATE_FINISH3_PARAMS"] = OperationFailedError("it died")
    assert (await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))).message == \
        "operation aborted: x"


async def test_finish_fails_confirm_cancelled(pair: Pair) -> None:
    pair.dst.fake.errors["DOMAIN_MIGRATE_FINISH3_PARAMS"] = OperationFailedError("finish says no")
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert error.message == "operation failed: finish says no"
    assert pair.steps()[-2:] == [("DST", "finish", (DX, MU, DN), PERFORM, 0x1, 0),
                                 ("SRC", "confirm", (DX, MU, DN), b"", 0x101, 1)]  # fmt: skip


async def test_prepare_fails_with_protection_confirm_cancels_the_begin_job(pair: Pair) -> None:
    pair.dst.fake.errors["DOMAIN_MIGRATE_PREPARE3_PARAMS"] = OperationFailedError("no room")
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert error.message == "operation failed: no room"
    assert pair.steps()[-2:] == [("DST", "prepare", (DX,), BEGIN, 0x1),
                                 ("SRC", "confirm", (DX,), b"", 0x101, 1)]  # fmt: skip


async def test_prepare_fails_without_protection_nothing_more(pair: Pair) -> None:
    pair.src.fake.features[7] = 0
    pair.dst.fake.errors["DOMAIN_MIGRATE_PREPARE3_PARAMS"] = OperationFailedError("no room")
    await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert pair.steps()[-1] == ("DST", "prepare", (DX,), BEGIN, 0x1)


async def test_begin_fails_nothing_more(pair: Pair) -> None:
    pair.src.fake.errors["DOMAIN_MIGRATE_BEGIN3_PARAMS"] = OperationFailedError("blocked")
    assert (await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))).message == \
        "operation failed: blocked"
    assert pair.steps()[-1] == ("SRC", "begin", (), 0x101)


async def test_no_uri_from_prepare(pair: Pair) -> None:
    pair.dst.fake.migration = FakeMigration(uri_out=None)
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert error.message == "internal error: domainMigratePrepare3 did not set uri"
    assert pair.steps()[-2:] == [("DST", "finish", (DX, DN), PREPARE, 0x1, 1),
                                 ("SRC", "confirm", (DX, DN), b"", 0x101, 1)]  # fmt: skip


async def test_no_uri_from_prepare_but_one_given(pair: Pair) -> None:
    pair.dst.fake.migration = FakeMigration(uri_out=None)
    await pair.dom.migrate3(pair.dconn, {"migrate_uri": "tcp://b:1"}, F.LIVE)
    perform = next(s for s in pair.steps() if s[1] == "perform")
    assert perform[3] == (("migrate_uri", "tcp://b:1"), DX)


async def test_confirm_failure_after_success_is_a_warning(
        pair: Pair, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    pair.src.fake.errors["DOMAIN_MIGRATE_CONFIRM3_PARAMS"] = InternalError("confirm failed")
    with caplog.at_level(logging.WARNING, logger="pyvirt.client.migrate"):
        ddom = await pair.dom.migrate3(pair.dconn, None, F.LIVE)
    assert ddom.name() == "g1"
    assert "Guest g1 probably left in 'paused' state on source" in caplog.text


# -- offline ---------------------------------------------------------------------------------
async def test_offline_skips_perform(pair: Pair) -> None:
    for served in (pair.src, pair.dst):
        served.fake.features[12] = 1
    flags = F.OFFLINE | F.PERSIST_DEST
    ddom = await pair.dom.migrate3(pair.dconn, None, flags)
    assert pair.steps() == [
        ("SRC", "feature", 12), ("DST", "feature", 12),
        ("SRC", "feature", 13), ("DST", "feature", 13), ("SRC", "feature", 7),
        ("SRC", "begin", (), flags | F.CHANGE_PROTECTION), ("SRC", "DOMAIN_GET_STATE"),
        ("DST", "prepare", (DX,), BEGIN, flags),
        ("DST", "finish", (DX, MU, DN), b"", flags, 0),
        ("SRC", "confirm", (DX, MU, DN), FINISH, flags | F.CHANGE_PROTECTION, 0),
    ]  # fmt: skip
    assert not await ddom.isActive()


@pytest.mark.parametrize(("side", "message"), [
    ("src", "argument unsupported: offline migration is not supported by the source host"),
    ("dst", "argument unsupported: offline migration is not supported by the destination host"),
])  # fmt: skip
async def test_offline_needs_both_ends(pair: Pair, side: str, message: str) -> None:
    (pair.dst if side == "src" else pair.src).fake.features[12] = 1
    assert (await failure(pair.dom.migrate3(pair.dconn, None, F.OFFLINE))).message == message


# -- refusals before any phase -----------------------------------------------------------------
@pytest.mark.parametrize(("flags", "message", "code"), [
    (F.PEER2PEER, "use virDomainMigrateToURI3 for peer-to-peer migration", ErrorCode.INVALID_ARG),
    (F.TUNNELLED, "cannot perform tunnelled migration without using peer2peer flag",
     ErrorCode.INVALID_ARG),
    (F.NON_SHARED_DISK | F.NON_SHARED_INC, "Flags 'VIR_MIGRATE_NON_SHARED_DISK' and "
     "'VIR_MIGRATE_NON_SHARED_INC' are mutually exclusive", ErrorCode.INVALID_ARG),
])  # fmt: skip
async def test_migrate3_refusals(pair: Pair, flags: int, message: str, code: int) -> None:
    error = await failure(pair.dom.migrate3(pair.dconn, None, flags))
    assert (error.message, error.code) == (message, code)
    assert pair.steps() == []


async def test_read_only_source_is_refused(pair: Pair) -> None:
    ro = await AsyncConnection.open(pair.src.uri(), readonly=True)
    try:
        dom = await ro.lookupByName("g1")
        error = await failure(dom.migrate3(pair.dconn, None, F.LIVE))
    finally:
        await ro.close()
    assert error.message == "operation forbidden: read only access prevents virDomainMigrate3"
    assert error.code == ErrorCode.OPERATION_DENIED


async def test_destination_without_params_support(pair: Pair) -> None:
    pair.dst.fake.features[13] = 0
    error = await failure(pair.dom.migrate3(pair.dconn, {"migrate_disks": ["vda"]}, F.LIVE))
    assert error.message == ("argument unsupported: Migration APIs with extensible parameters "
                             "are not supported but extended parameters were passed")
    error = await failure(pair.dom.migrate3(pair.dconn, None, F.LIVE))
    assert error.code == ErrorCode.NO_SUPPORT
    assert error.message.endswith("virDomainMigrate3")


async def test_bad_parameter_refused_before_anything(pair: Pair) -> None:
    error = await failure(pair.dom.migrate3(pair.dconn, {"bandwidth": "fast"}, F.PEER2PEER))
    assert error.code == ErrorCode.INVALID_ARG and "bandwidth" in error.message


# -- peer-to-peer and direct: virDomainMigrateToURI3 -------------------------------------------
@pytest.mark.parametrize("flags", [F.LIVE | F.PEER2PEER, F.LIVE | F.PEER2PEER | F.TUNNELLED])
async def test_p2p_is_one_perform_on_the_source(pair: Pair, flags: int) -> None:
    params = {"migrate_uri": "tcp://10.77.0.2:49200", "bandwidth": 10}
    assert await pair.dom.migrateToURI3(P2P_URI, params, flags) == 0
    assert pair.steps() == [
        ("SRC", "feature", 4), ("SRC", "feature", 13),
        ("SRC", "perform", P2P_URI, (("migrate_uri", "tcp://10.77.0.2:49200"),
                                     ("bandwidth", 10)), b"", flags),
    ]  # fmt: skip


@pytest.mark.parametrize(("setup", "flags", "uri", "message"), [
    ({4: 0}, F.PEER2PEER, P2P_URI,
     "argument unsupported: p2p migration is not supported by the source host"),
    ({}, F.PEER2PEER, None, "dconnuri in virDomainMigrateToURI3 must not be NULL"),
    ({}, F.PEER2PEER, "qemu+tcp://localhost/system", "Attempt to migrate guest to the same host"),
    ({}, F.PEER2PEER | F.OFFLINE, P2P_URI,
     "argument unsupported: offline migration is not supported by the source host"),
    ({}, F.PEER2PEER | F.TUNNELLED | F.PARALLEL, P2P_URI,
     "Flags 'VIR_MIGRATE_TUNNELLED' and 'VIR_MIGRATE_PARALLEL' are mutually exclusive"),
    ({}, F.LIVE, None,
     "argument unsupported: direct migration is not supported by the source host"),
])  # fmt: skip
async def test_migrate_to_uri3_refusals(pair: Pair, setup: dict[int, int], flags: int,
                                        uri: str | None, message: str) -> None:  # fmt: skip
    pair.src.fake.features.update(setup)
    assert (await failure(pair.dom.migrateToURI3(uri, None, flags))).message == message
    assert not [s for s in pair.steps() if s[1] == "perform"]


async def test_p2p_unix_destination_is_not_local() -> None:
    check_not_local("qemu+unix:///system?socket=/run/x")  # 9.0 refuses only "localhost…"
    check_not_local("qemu+tcp://user@10.0.0.1:16509/system")
    for uri in ("qemu+ssh://root@localhost/system", "qemu+tcp://localhost.localdomain/system"):
        with pytest.raises(libvirtError, match="Attempt to migrate guest to the same host"):
            check_not_local(uri)


async def test_p2p_reply_cookie_must_be_empty(pair: Pair) -> None:
    pair.src.fake.migration = None  # the canned answers carry a cookie
    error = await failure(pair.dom.migrateToURI3(P2P_URI, None, F.PEER2PEER))
    assert error.message == "internal error: caller ignores cookieout or cookieoutlen"
    assert error.domain == ErrorDomain.REMOTE


async def test_direct_is_one_perform_without_dconnuri(pair: Pair) -> None:
    """pyvirt's --direct (pyvirtd answers feature 5): PERFORM3_PARAMS, no dconnuri."""
    pair.src.fake.features[5] = 1
    params = {"migrate_uri": "tcp://10.77.0.2:49152"}
    assert await pair.dom.migrateToURI3(P2P_URI, params, F.LIVE) == 0
    assert pair.steps() == [
        ("SRC", "feature", 5), ("SRC", "feature", 13),
        ("SRC", "perform", None, (("migrate_uri", "tcp://10.77.0.2:49152"),), b"", F.LIVE),
    ]  # fmt: skip


async def test_direct_without_params_support(pair: Pair) -> None:
    pair.src.fake.features.update({5: 1, 13: 0})
    error = await failure(pair.dom.migrateToURI3(None, {"migrate_uri": "tcp://b:1"}, 0))
    assert error.code == ErrorCode.NO_SUPPORT
    error = await failure(pair.dom.migrateToURI3(None, {"compression": ["xbzrle"]}, 0))
    assert error.message == ("argument unsupported: Some parameters are not supported by "
                             "migration protocol 3")


# -- the older APIs ----------------------------------------------------------------------------
async def test_old_migrate_p2p_uses_the_destination_uri_then_looks_up(pair: Pair) -> None:
    pair.dst.fake.add("g1", running=True)
    ddom = await pair.dom.migrate(pair.dconn, F.LIVE | F.PEER2PEER, None, None, 0)
    assert ddom.name() == "g1" and ddom.connect() is pair.dconn
    assert pair.steps() == [
        ("SRC", "feature", 4), ("SRC", "feature", 13),
        ("SRC", "perform", pair.dst.uri(), (("bandwidth", 0),), b"", 0x3),
        ("DST", "DOMAIN_LOOKUP_BY_NAME"),
    ]  # fmt: skip


async def test_old_migrate_managed(pair: Pair) -> None:
    ddom = await pair.dom.migrate(pair.dconn, F.LIVE, "g2", None, 0)
    assert ddom.name() == "g2"
    begin = next(s for s in pair.steps() if s[1] == "begin")
    assert begin == ("SRC", "begin", (("destination_name", "g2"),), 0x101)


async def test_old_migrate_to_uri(pair: Pair) -> None:
    assert await pair.dom.migrateToURI(P2P_URI, F.PEER2PEER, "g2", 5) == 0
    assert pair.steps()[-1] == ("SRC", "perform", P2P_URI,
                                (("destination_name", "g2"), ("bandwidth", 5)), b"", 0x2)


def test_replace_string_in_place_or_appended() -> None:
    params = [TypedParam.of_string("migrate_uri", "a"), TypedParam.of_ullong("bandwidth", 1)]
    assert replace_string(params, "migrate_uri", "b")[0] == TypedParam.of_string("migrate_uri", "b")
    assert replace_string(params, "destination_xml", "x")[2].field == "destination_xml"
    assert params[0].value == "a"  # the caller's list is not changed


# -- the blocking facade -----------------------------------------------------------------------
def test_sync_facade() -> None:
    pair = ServedPair()
    try:
        pair.run(_setup_sync(pair))
        with pyvirt.open(pair.src.uri()) as src, pyvirt.open(pair.dst.uri()) as dst:
            ddom = src.lookupByName("g1").migrate3(dst, {"bandwidth": 10}, F.LIVE)
            assert ddom.connect() is dst and ddom.name() == "g1" and ddom.isActive() == 1
            assert src.lookupByName("g2").migrateToURI3(pair.dst_tcp_uri, {}, F.PEER2PEER) == 0
    finally:
        pair.close()
    assert [s[1] for s in steps(pair.journal) if s[1] in _SHORTS] == \
        ["begin", "prepare", "perform", "finish", "confirm", "perform"]


async def _setup_sync(pair: ServedPair) -> None:
    for served in (pair.src, pair.dst):
        served.fake.migration = FakeMigration()
    pair.src.fake.add("g1", running=True)
    pair.src.fake.add("g2", running=True)
