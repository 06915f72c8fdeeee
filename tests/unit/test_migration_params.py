"""parse_request: every flag and typed parameter, libvirt's checks and words, the round trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyvirt.client.names import MIGRATE_PARAMS, MULTI_VALUED_PARAMS
from pyvirt.constants import UNLIMITED_BANDWIDTH_BYTES, MigrateFlags
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.qemu.migration import params as mp
from pyvirt.qemu.migration.params import MigrationRequest, Side, parse_request
from pyvirt.rpc.remote_types import TypedParam, TypedParamType

F = MigrateFlags
S = TypedParam.of_string
I = TypedParam.of_int  # noqa: E741
U = TypedParam.of_ullong
LIVE_P2P = F.LIVE | F.PEER2PEER


def parse(flags: int, params: Sequence[TypedParam] = (), side: str = "source",
          direct: bool = False) -> MigrationRequest:
    return parse_request(flags, params, side=side, direct=direct)


def refused(flags: int, params: Sequence[TypedParam] = (), side: str = "source",
            direct: bool = False) -> VirtError:
    with pytest.raises(VirtError) as info:
        parse(flags, params, side, direct)
    return info.value


# -- the tables ------------------------------------------------------------------------------
def test_every_libvirt_parameter_is_parsed_or_refused() -> None:
    fields = {field for field, _ in MIGRATE_PARAMS.values()}
    assert fields == set(mp.PARAM_ATTRS) | set(mp.REFUSED_PARAMS)
    assert not set(mp.PARAM_ATTRS) & set(mp.REFUSED_PARAMS)


def test_every_parameter_attribute_exists() -> None:
    attrs = {f.name for f in dataclasses.fields(MigrationRequest)}
    assert set(mp.PARAM_ATTRS.values()) <= attrs
    multi = {mp.PARAM_ATTRS[f] for f in MULTI_VALUED_PARAMS}
    for field in dataclasses.fields(MigrationRequest):
        if field.name in multi:
            assert field.default == ()


def test_every_flag_has_a_virsh_option() -> None:
    assert set(mp.FLAG_OPTIONS) == set(MigrateFlags)


def test_unlimited_bandwidth_is_libvirts_maximum() -> None:
    assert mp.BANDWIDTH_MAX_MIB * mp.MIB == UNLIMITED_BANDWIDTH_BYTES == 9223372036853727232


# -- accepted requests -----------------------------------------------------------------------
def test_plain_p2p_live() -> None:
    request = parse(LIVE_P2P)
    assert request.live and request.peer2peer and not request.tunnelled
    assert request.compression == () and request.bandwidth_mib is None
    assert request.side is Side.SOURCE and not request.direct


def test_every_supported_parameter_lands_in_its_field() -> None:
    params = [S("migrate_uri", "tcp://10.77.0.2:49152"), S("destination_name", "web2"),
              S("destination_xml", "<domain/>"), S("persistent_xml", "<domain/>"),
              U("bandwidth", 100), U("bandwidth.postcopy", 50),
              U("bandwidth.avail.switchover", 200), S("graphics_uri", "spice://h:5900"),
              S("listen_address", "10.77.0.2"), S("compression", "zstd"),
              I("compression.zstd.level", 3), I("auto_converge.initial", 30),
              I("auto_converge.increment", 5), I("parallel.connections", 4)]
    request = parse(LIVE_P2P | F.PARALLEL | F.AUTO_CONVERGE | F.PERSIST_DEST, params)
    assert (request.migrate_uri, request.destination_name) == ("tcp://10.77.0.2:49152", "web2")
    assert (request.bandwidth_mib, request.postcopy_bandwidth_mib) == (100, 50)
    assert request.avail_switchover_bandwidth_mib == 200
    assert request.compression == ("zstd",) and request.multifd_compression == "zstd"
    assert (request.zstd_level, request.parallel_connections) == (3, 4)
    assert (request.auto_converge_initial, request.auto_converge_increment) == (30, 5)
    assert request.listen_address == "10.77.0.2"


def test_compressed_alone_means_xbzrle() -> None:
    request = parse(LIVE_P2P | F.COMPRESSED)
    assert request.compression == ("xbzrle",) and request.multifd_compression is None


def test_compression_methods_without_the_flag_still_apply() -> None:
    """libvirt reads the compression parameters whether or not COMPRESSED is set."""
    request = parse(LIVE_P2P, [S("compression", "xbzrle"), U("compression.xbzrle.cache", 1 << 26)])
    assert request.compression == ("xbzrle",) and request.xbzrle_cache_bytes == 1 << 26


def test_offline_persistent() -> None:
    request = parse(F.OFFLINE | F.PERSIST_DEST | F.PEER2PEER)
    assert request.offline and not request.live


def test_zerocopy_with_parallel() -> None:
    request = parse(LIVE_P2P | F.PARALLEL | F.ZEROCOPY)
    assert request.zerocopy and request.needs_locked_memory


def test_direct_to_a_migration_uri() -> None:
    request = parse(F.LIVE, [S("migrate_uri", "tcp:10.77.0.2:4444")], direct=True)
    assert request.direct and request.migrate_uri == "tcp:10.77.0.2:4444"


def test_auto_converge_tuning_is_only_checked_on_the_source() -> None:
    """libvirt reads auto_converge.* for the source party only (and strips the flag)."""
    request = parse(LIVE_P2P, [I("auto_converge.initial", 30)], side="destination")
    assert request.auto_converge_initial == 30


# -- refused requests: (flags, params, side, direct) → (code, message) -------------------------
ARG = ErrorCode.ARGUMENT_UNSUPPORTED
INV = ErrorCode.INVALID_ARG
OPI = ErrorCode.OPERATION_INVALID
STORAGE = "storage migration is not supported yet"

REFUSALS: list[tuple[str, int, list[TypedParam], str, bool, int, str]] = [
    # (id, flags, params, side, direct, code, message)
    ("unknown-flag", LIVE_P2P | 0x200000, [], "source", False, INV,
     "invalid argument: unsupported flags (0x200000) in function "
     "qemuDomainMigratePerform3Params"),
    ("unknown-flag-dst", 0x400000, [], "destination", False, INV,
     "invalid argument: unsupported flags (0x400000) in function "
     "qemuDomainMigratePrepare3Params"),
    ("unknown-param", LIVE_P2P, [S("foo", "x")], "source", False, ARG,
     "argument unsupported: parameter 'foo' not supported"),
    ("wrong-type", LIVE_P2P, [I("bandwidth", 10)], "source", False, INV,
     "invalid argument: invalid type 'int' for parameter 'bandwidth', expected 'ullong'"),
    ("wrong-type-string", LIVE_P2P, [U("migrate_uri", 1)], "source", False, INV,
     "invalid argument: invalid type 'ullong' for parameter 'migrate_uri', expected 'string'"),
    ("duplicate", LIVE_P2P, [U("bandwidth", 1), U("bandwidth", 2)], "source", False, INV,
     "invalid argument: parameter 'bandwidth' occurs multiple times"),
    ("tls", LIVE_P2P | F.TLS, [], "source", False, ARG,
     "argument unsupported: TLS migration is not supported yet (VIR_MIGRATE_TLS (--tls))"),
    ("tls-destination", LIVE_P2P, [S("tls.destination", "h")], "source", False, ARG,
     "argument unsupported: TLS migration is not supported yet (parameter 'tls.destination')"),
    ("rdma", LIVE_P2P | F.RDMA_PIN_ALL, [], "source", False, ARG,
     "argument unsupported: RDMA migration is not supported: pyvirt has no RDMA transport "
     "(VIR_MIGRATE_RDMA_PIN_ALL (--rdma-pin-all))"),
    ("postcopy-resume", LIVE_P2P | F.POSTCOPY | F.POSTCOPY_RESUME, [], "source", False, ARG,
     "argument unsupported: resuming a failed post-copy migration is not supported yet "
     "(VIR_MIGRATE_POSTCOPY_RESUME (--postcopy-resume))"),
    ("mt-level", LIVE_P2P, [I("compression.mt.threads", 4)], "source", False, ARG,
     f"argument unsupported: {mp._MT_REASON} (parameter 'compression.mt.threads')"),
    ("mt-method", LIVE_P2P | F.COMPRESSED, [S("compression", "mt")], "source", False, ARG,
     f"argument unsupported: {mp._MT_REASON} (compression method 'mt')"),
    ("disks-uri-scheme", LIVE_P2P | F.NON_SHARED_DISK, [S("disks_uri", "nbd://h")], "source",
     False, INV, "invalid argument: Unsupported scheme in disks URI: nbd://h"),
    ("postcopy-storage", LIVE_P2P | F.POSTCOPY | F.NON_SHARED_DISK, [], "source", False, ARG,
     "argument unsupported: post-copy with storage migration (--copy-storage-*) is not "
     "supported yet"),
    ("auto-converge-tune", LIVE_P2P, [I("auto_converge.increment", 5)], "source", False, INV,
     "invalid argument: Turn auto convergence on to tune it"),
    ("parallel-tune", LIVE_P2P, [I("parallel.connections", 4)], "source", False, INV,
     "invalid argument: Turn parallel migration on to tune it"),
    ("bad-method", LIVE_P2P, [S("compression", "lz4")], "source", False, INV,
     "invalid argument: Unsupported compression method 'lz4'"),
    ("method-twice", LIVE_P2P, [S("compression", "xbzrle"), S("compression", "xbzrle")],
     "source", False, INV, "invalid argument: Compression method 'xbzrle' is specified twice"),
    ("xbzrle-parallel", LIVE_P2P | F.PARALLEL, [S("compression", "xbzrle")], "source", False,
     INV, "invalid argument: Compression method 'xbzrle' isn't supported with parallel "
     "migration"),
    ("zstd-no-parallel", LIVE_P2P, [S("compression", "zstd")], "source", False, INV,
     "invalid argument: Compression method 'zstd' is only supported with parallel migration"),
    ("two-multifd-methods", LIVE_P2P | F.PARALLEL,
     [S("compression", "zstd"), S("compression", "zlib")], "source", False, INV,
     "invalid argument: Only one compression method could be specified with parallel "
     "compression"),
    ("xbzrle-cache-alone", LIVE_P2P | F.COMPRESSED, [U("compression.xbzrle.cache", 1 << 26)],
     "source", False, INV, "invalid argument: Turn xbzrle compression on to tune it"),
    ("zlib-level-alone", LIVE_P2P | F.PARALLEL, [I("compression.zlib.level", 3)], "source",
     False, INV, "invalid argument: Turn zlib compression on to tune it"),
    ("compressed-parallel", LIVE_P2P | F.PARALLEL | F.COMPRESSED, [], "source", False, INV,
     "invalid argument: No compression algorithm selected for parallel migration"),
    ("connections-range", LIVE_P2P | F.PARALLEL, [I("parallel.connections", 0)], "source",
     False, INV, "invalid argument: parameter 'parallel.connections' must be between 1 and "
     "255, got 0"),
    ("zstd-range", LIVE_P2P | F.PARALLEL, [S("compression", "zstd"),
                                           I("compression.zstd.level", 21)], "source", False,
     INV, "invalid argument: parameter 'compression.zstd.level' must be between 0 and 20, "
     "got 21"),
    ("throttle-range", LIVE_P2P | F.AUTO_CONVERGE, [I("auto_converge.initial", 100)], "source",
     False, INV, "invalid argument: parameter 'auto_converge.initial' must be between 1 and "
     "99, got 100"),
    ("bandwidth-overflow", LIVE_P2P, [U("bandwidth", mp.BANDWIDTH_MAX_MIB + 1)], "source",
     False, ErrorCode.OVERFLOW, "bandwidth must be less than 8796093022208"),
    ("postcopy-bandwidth-overflow", LIVE_P2P, [U("bandwidth.postcopy", 1 << 44)], "source",
     False, ErrorCode.OVERFLOW,
     "migration parameter 'bandwidth.postcopy' must be less than 17592186044416"),
    ("xbzrle-cache-power", LIVE_P2P, [S("compression", "xbzrle"),
                                      U("compression.xbzrle.cache", 12288)], "source", False,
     INV, "invalid argument: parameter 'compression.xbzrle.cache' must be a power of two of "
     "at least 4096 bytes, got 12288"),
    ("tunnelled-no-p2p", F.LIVE | F.TUNNELLED, [], "source", False, INV,
     "invalid argument: cannot perform tunnelled migration without using peer2peer flag"),
    ("tunnelled-parallel", LIVE_P2P | F.TUNNELLED | F.PARALLEL, [], "source", False, INV,
     "invalid argument: Flags 'VIR_MIGRATE_TUNNELLED' and 'VIR_MIGRATE_PARALLEL' are mutually "
     "exclusive"),
    ("tunnelled-uri", LIVE_P2P | F.TUNNELLED, [S("migrate_uri", "tcp:h:1")], "source", False,
     ARG, "argument unsupported: migration URI is not supported by tunnelled migration"),
    ("tunnelled-listen", LIVE_P2P | F.TUNNELLED, [S("listen_address", "::")], "source", False,
     ARG, "argument unsupported: listen address is not supported by tunnelled migration"),
    ("offline-live", F.OFFLINE | F.LIVE | F.PERSIST_DEST, [], "source", False, OPI,
     "Requested operation is not valid: offline migration cannot be live: --offline moves "
     "only the definition"),
    ("postcopy-not-live", F.PEER2PEER | F.POSTCOPY, [], "source", False, ARG,
     "argument unsupported: post-copy migration is not supported with non-live or paused "
     "migration"),
    ("postcopy-paused", LIVE_P2P | F.POSTCOPY | F.PAUSED, [], "source", False, ARG,
     "argument unsupported: post-copy migration is not supported with non-live or paused "
     "migration"),
    ("postcopy-tunnelled", LIVE_P2P | F.TUNNELLED | F.POSTCOPY, [], "source", False, ARG,
     "argument unsupported: post-copy is not supported with tunnelled migration"),
    ("offline-not-persistent", F.OFFLINE | F.PEER2PEER, [], "source", False, OPI,
     "Requested operation is not valid: offline migration must be specified with the "
     "persistent flag set"),
    ("offline-tunnelled", F.OFFLINE | F.PERSIST_DEST | F.PEER2PEER | F.TUNNELLED, [], "source",
     False, OPI, "Requested operation is not valid: tunnelled offline migration does not make "
     "sense"),
    ("zerocopy-serial", LIVE_P2P | F.ZEROCOPY, [], "source", False, OPI,
     "Requested operation is not valid: zero-copy is only available for parallel migration"),
    ("zerocopy-compressed", LIVE_P2P | F.PARALLEL | F.ZEROCOPY, [S("compression", "zstd")],
     "source", False, ARG,
     "argument unsupported: zero-copy is not supported with compressed parallel migration"),
    ("direct-destination", F.LIVE, [S("migrate_uri", "tcp:h:1")], "destination", True, INV,
     "invalid argument: direct migration is a source-only mode"),
    ("direct-no-uri", F.LIVE, [], "source", True, INV,
     "invalid argument: direct migration needs a migration URI (parameter 'migrate_uri'): "
     "QEMU migrates straight to it"),
    ("direct-persist", F.LIVE | F.PERSIST_DEST, [S("migrate_uri", "tcp:h:1")], "source", True,
     ARG, "argument unsupported: direct migration cannot honour VIR_MIGRATE_PERSIST_DEST "
     "(--persistent): with --direct no pyvirtd runs on the destination to define the domain "
     "on the destination"),
    ("direct-dname", F.LIVE, [S("migrate_uri", "tcp:h:1"), S("destination_name", "b")],
     "source", True, ARG, "argument unsupported: direct migration cannot honour parameter "
     "'destination_name': with --direct no pyvirtd runs on the destination to rename the "
     "domain on the destination"),
]


@pytest.mark.parametrize(("flags", "params", "side", "direct", "code", "message"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused(flags: int, params: list[TypedParam], side: str, direct: bool, code: int,
                 message: str) -> None:
    error = refused(flags, params, side, direct)
    assert (int(error.code), str(error)) == (int(code), message)


@pytest.mark.parametrize(
    "flag", [f for f in mp.DIRECT_REFUSED_FLAGS if not f & F.OFFLINE])
def test_direct_refuses_what_needs_a_destination_daemon(flag: MigrateFlags) -> None:
    """Offline: see the next test."""
    error = refused(F.LIVE | flag, [S("migrate_uri", "tcp:h:1")], direct=True)
    assert error.code == ErrorCode.ARGUMENT_UNSUPPORTED
    assert f"VIR_MIGRATE_{flag.name}" in str(error)


def test_direct_refuses_offline() -> None:
    error = refused(F.OFFLINE | F.PERSIST_DEST, [S("migrate_uri", "tcp:h:1")], direct=True)
    assert "VIR_MIGRATE_PERSIST_DEST" in str(error)  # the first refusal in table order


def test_first_error_is_the_first_parameter_by_name() -> None:
    """libvirt validates a sorted copy: 'bandwidth' (b) is checked before 'zzz' (z)."""
    error = refused(LIVE_P2P, [S("zzz", "x"), I("bandwidth", 1)])
    assert "invalid type 'int' for parameter 'bandwidth'" in str(error)
    error = refused(LIVE_P2P, [S("aaa", "x"), I("bandwidth", 1)])
    assert str(error) == "argument unsupported: parameter 'aaa' not supported"


def test_values_that_do_not_fit_their_type() -> None:
    error = refused(LIVE_P2P, [TypedParam("parallel.connections", TypedParamType.INT, 1 << 40)])
    assert error.code == ErrorCode.INVALID_ARG and "invalid int value" in str(error)
    error = refused(LIVE_P2P, [TypedParam("migrate_uri", TypedParamType.STRING, 5)])
    assert error.code == ErrorCode.INVALID_ARG


def test_negative_flags() -> None:
    assert refused(-1).code == ErrorCode.INVALID_ARG


@pytest.mark.parametrize(("flags", "params", "message"), [
    (LIVE_P2P | F.NON_SHARED_DISK, [],
     f"argument unsupported: VIR_MIGRATE_NON_SHARED_DISK (--copy-storage-all): {STORAGE}"),
    (LIVE_P2P, [S("disks_uri", "unix:/x")],
     f"argument unsupported: parameter 'disks_uri': {STORAGE}"),
])
def test_storage_refused_when_switched_off(monkeypatch: pytest.MonkeyPatch, flags: int,
                                           params: list[TypedParam], message: str) -> None:
    monkeypatch.setattr(mp, "STORAGE_MIGRATION_SUPPORTED", False)
    error = refused(flags, params)
    assert (int(error.code), str(error)) == (int(ARG), message)


def test_direct_refuses_storage_params() -> None:
    error = refused(F.LIVE, [S("migrate_uri", "tcp:h:1"), I("disks_port", 5)], direct=True)
    assert error.code == ErrorCode.ARGUMENT_UNSUPPORTED and "'disks_port'" in str(error)


# -- storage migration: libvirt's rules ---------------------------------------------------------
STORAGE_ON_RULES = [
    (LIVE_P2P | F.NON_SHARED_DISK | F.NON_SHARED_INC, [], INV,
     "invalid argument: Flags 'VIR_MIGRATE_NON_SHARED_DISK' and 'VIR_MIGRATE_NON_SHARED_INC' "
     "are mutually exclusive"),
    (LIVE_P2P | F.NON_SHARED_SYNCHRONOUS_WRITES, [], INV,
     "invalid argument: VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES requires "
     "VIR_MIGRATE_NON_SHARED_DISK or VIR_MIGRATE_NON_SHARED_INC"),
    (LIVE_P2P | F.TUNNELLED | F.NON_SHARED_DISK, [], ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: migration of non-shared storage is not supported with "
     "tunnelled migration and this QEMU"),
    (LIVE_P2P, [S("migrate_disks", "vda")], ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: use of 'VIR_MIGRATE_PARAM_MIGRATE_DISKS' requires use of "
     "'VIR_MIGRATE_NON_SHARED_DISK' or 'VIR_MIGRATE_NON_SHARED_INC' flag"),
    (LIVE_P2P | F.NON_SHARED_DISK, [I("disks_port", 1), S("disks_uri", "unix:/s")], INV,
     "invalid argument: Both port and URI requested for disk migration while being mutually "
     "exclusive"),
    (F.OFFLINE | F.PERSIST_DEST | F.NON_SHARED_DISK, [], OPI,
     "Requested operation is not valid: offline migration cannot handle non-shared storage"),
    (LIVE_P2P, [S("migrate_disks_detect_zeroes", "vda")], ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: use of 'VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES' "
     "requires use of 'VIR_MIGRATE_NON_SHARED_DISK' or 'VIR_MIGRATE_NON_SHARED_INC' flag"),
]


@pytest.mark.parametrize(("flags", "params", "code", "message"), STORAGE_ON_RULES)
def test_storage_rules(flags: int, params: list[TypedParam], code: int, message: str) -> None:
    error = refused(flags, params)
    assert (int(error.code), str(error)) == (int(code), message)


def test_storage_accepted() -> None:
    request = parse(LIVE_P2P | F.NON_SHARED_INC,
                    [S("migrate_disks", "vda"), S("migrate_disks", "vdb"), I("disks_port", 1)])
    assert request.storage_copy and request.migrate_disks == ("vda", "vdb")
    assert request.storage_incremental and not request.synchronous_writes
    assert parse(request.flags, request.to_params()) == request
    synchronous = parse(LIVE_P2P | F.NON_SHARED_DISK | F.NON_SHARED_SYNCHRONOUS_WRITES,
                        [S("disks_uri", "tcp://10.0.0.2:5000")])
    assert synchronous.synchronous_writes and synchronous.disks_uri == "tcp://10.0.0.2:5000"


# -- to_params: the round trip ------------------------------------------------------------------
def test_to_params_of_a_full_request() -> None:
    request = parse(LIVE_P2P | F.PARALLEL | F.AUTO_CONVERGE | F.ABORT_ON_ERROR,
                    [U("bandwidth", 0), S("compression", "zlib"), I("compression.zlib.level", 9),
                     I("auto_converge.initial", 40), S("destination_name", "b")])
    assert parse(request.flags, request.to_params()) == request
    fields = [p.field for p in request.destination_params()]
    assert "auto_converge.initial" not in fields and "compression" in fields
    assert request.destination_flags == LIVE_P2P | F.PARALLEL
    destination = parse(request.destination_flags, request.destination_params(),
                        side="destination")
    assert destination.compression == ("zlib",) and destination.zlib_level == 9


_FLAG_POOL = [F.LIVE, F.PEER2PEER, F.TUNNELLED, F.PERSIST_DEST, F.UNDEFINE_SOURCE, F.PAUSED,
              F.CHANGE_PROTECTION, F.UNSAFE, F.OFFLINE, F.COMPRESSED, F.ABORT_ON_ERROR,
              F.AUTO_CONVERGE, F.POSTCOPY, F.PARALLEL, F.ZEROCOPY]
_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
_PARAM_VALUES: dict[str, st.SearchStrategy[TypedParam]] = {
    "migrate_uri": _texts.map(lambda v: S("migrate_uri", v)),
    "destination_name": _texts.map(lambda v: S("destination_name", v)),
    "destination_xml": _texts.map(lambda v: S("destination_xml", v)),
    "persistent_xml": _texts.map(lambda v: S("persistent_xml", v)),
    "graphics_uri": _texts.map(lambda v: S("graphics_uri", v)),
    "listen_address": _texts.map(lambda v: S("listen_address", v)),
    "bandwidth": st.integers(0, mp.BANDWIDTH_MAX_MIB).map(lambda v: U("bandwidth", v)),
    "bandwidth.postcopy": st.integers(0, 1 << 20).map(lambda v: U("bandwidth.postcopy", v)),
    "compression": st.sampled_from(["xbzrle", "zlib", "zstd"]).map(
        lambda v: S("compression", v)),
    "compression.xbzrle.cache": st.integers(12, 40).map(
        lambda v: U("compression.xbzrle.cache", 1 << v)),
    "compression.zstd.level": st.integers(0, 20).map(lambda v: I("compression.zstd.level", v)),
    "auto_converge.initial": st.integers(1, 99).map(lambda v: I("auto_converge.initial", v)),
    "parallel.connections": st.integers(1, 255).map(lambda v: I("parallel.connections", v)),
}


@st.composite
def valid_requests(draw: st.DrawFn) -> MigrationRequest:
    flags = MigrateFlags(0)
    for flag in draw(st.lists(st.sampled_from(_FLAG_POOL), max_size=6)):
        flags |= flag
    names = draw(st.lists(st.sampled_from(sorted(_PARAM_VALUES)), max_size=5, unique=True))
    params = [draw(_PARAM_VALUES[name]) for name in names]
    side = draw(st.sampled_from(["source", "destination"]))
    try:
        request = parse(flags, params, side)
    except VirtError:
        assume(False)
        raise
    return request


@settings(max_examples=300, suppress_health_check=[HealthCheck.filter_too_much,
                                                   HealthCheck.too_slow])
@given(valid_requests())
def test_to_params_round_trip(request: MigrationRequest) -> None:
    assert parse(request.flags, request.to_params(), request.side.value) == request


@settings(max_examples=200, suppress_health_check=[HealthCheck.filter_too_much,
                                                   HealthCheck.too_slow])
@given(valid_requests())
def test_what_a_source_forwards_the_destination_accepts(request: MigrationRequest) -> None:
    assume(request.side is Side.SOURCE)
    destination = parse(request.destination_flags, request.destination_params(), "destination")
    for field in set(mp.PARAM_ATTRS) - mp.SOURCE_ONLY_PARAMS:
        attr = mp.PARAM_ATTRS[field]
        assert getattr(destination, attr) == getattr(request, attr)


_any_field = st.sampled_from([*sorted(mp.PARAM_TYPES), "bogus", ""])
_any_param = st.builds(
    TypedParam, _any_field, st.sampled_from(list(TypedParamType)),
    st.one_of(st.integers(-(1 << 65), 1 << 65), st.text(max_size=5), st.booleans()))


@settings(max_examples=500)
@given(st.integers(-5, (1 << 22)), st.lists(_any_param, max_size=6),
       st.sampled_from(["source", "destination"]), st.booleans())
def test_anything_is_a_request_or_a_virt_error(flags: int, params: list[TypedParam], side: str,
                                               direct: bool) -> None:
    try:
        request = parse(flags, params, side, direct)
    except VirtError as error:
        assert error.expected and str(error)
        return
    assert parse(request.flags, request.to_params(), side, direct) == request
