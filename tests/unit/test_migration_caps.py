"""plan(): request → QEMU migration capabilities/parameters per side; table coverage; real QEMU."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from pyvirt.client.names import MIGRATE_PARAMS
from pyvirt.constants import UNLIMITED_BANDWIDTH_BYTES, MigrateFlags
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.qemu.migration import capabilities as mc
from pyvirt.qemu.migration import params as mp
from pyvirt.qemu.migration.capabilities import QemuMigrationSetup, plan
from pyvirt.qemu.migration.params import MigrationRequest, parse_request
from pyvirt.rpc.remote_types import TypedParam

F = MigrateFlags
S = TypedParam.of_string
I = TypedParam.of_int  # noqa: E741
U = TypedParam.of_ullong
LIVE_P2P = F.LIVE | F.PEER2PEER
MIB = 1024 * 1024

#: QEMU 10.0.2 as probed over QMP (reference/migration.md §0)
QEMU10_CAPS = frozenset({
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram",
    "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd",
    "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
    "switchover-ack", "dirty-limit", "mapped-ram",
})  # fmt: skip
QEMU10_PARAMS = frozenset({
    "downtime-limit", "max-bandwidth", "avail-switchover-bandwidth", "xbzrle-cache-size",
    "multifd-channels", "multifd-compression", "multifd-zlib-level", "multifd-zstd-level",
    "zero-page-detection", "cpu-throttle-initial", "cpu-throttle-increment", "max-cpu-throttle",
    "throttle-trigger-threshold", "vcpu-dirty-limit", "max-postcopy-bandwidth",
    "announce-initial", "announce-max", "announce-rounds", "announce-step", "mode", "direct-io",
    "tls-creds", "tls-hostname", "tls-authz",
})  # fmt: skip


def request(flags: int, params: Sequence[TypedParam] = (), side: str = "source",
            direct: bool = False) -> MigrationRequest:
    return parse_request(flags, params, side=side, direct=direct)


def plan10(req: MigrationRequest, side: str | None = None, **kw: Any) -> QemuMigrationSetup:
    return plan(req, side or req.side.value, QEMU10_CAPS, QEMU10_PARAMS, **kw)


def enabled(setup: QemuMigrationSetup) -> set[str]:
    return {name for name, state in setup.capabilities.items() if state}


# -- coverage: nothing a caller sends is silently ignored -------------------------------------
def test_every_flag_is_mapped_handled_elsewhere_or_refused() -> None:
    mapped = mc.mapped_flags()
    for flag in MigrateFlags:
        places = [flag in mapped, flag in mc.FLAGS_HANDLED_ELSEWHERE, flag in mp.REFUSED_FLAGS]
        assert places.count(True) == 1, f"{flag.name}: {places}"


def test_every_parameter_is_mapped_handled_elsewhere_or_refused() -> None:
    for field, _ in MIGRATE_PARAMS.values():
        places = [field in mc.mapped_params(), field in mc.PARAMS_HANDLED_ELSEWHERE,
                  field in mp.REFUSED_PARAMS]
        assert places.count(True) == 1, f"{field}: {places}"


def test_every_reason_is_named() -> None:
    reasons = [*mc.FLAGS_HANDLED_ELSEWHERE.values(), *mc.PARAMS_HANDLED_ELSEWHERE.values(),
               *mp.REFUSED_FLAGS.values(), *mp.REFUSED_PARAMS.values(),
               *(r.needed_for for r in mc.CAPABILITY_RULES),
               *(r.needed_for for r in mc.PARAMETER_RULES)]
    assert all(len(reason) > 5 for reason in reasons)


def test_every_emitted_name_exists_in_qemu_10() -> None:
    assert mc.managed_capabilities() <= QEMU10_CAPS
    assert mc.managed_parameters() <= QEMU10_PARAMS
    assert "downtime-limit" not in mc.managed_parameters()  # migrate-setmaxdowntime's job
    for first, second, _ in mc.CAPABILITY_CONFLICTS:
        assert {first, second} <= mc.managed_capabilities()


# -- plans --------------------------------------------------------------------------------
def test_plain_live_migration() -> None:
    req = request(LIVE_P2P)
    source = plan10(req)
    assert enabled(source) == {"events", "return-path"}
    assert set(source.capabilities) == mc.managed_capabilities()  # the rest explicitly off
    assert source.parameters == {"max-bandwidth": UNLIMITED_BANDWIDTH_BYTES}
    destination = plan10(request(LIVE_P2P, side="destination"))
    assert enabled(destination) == {"events", "return-path", "late-block-activate"}
    assert destination.parameters == {}


def test_tunnelled_has_no_return_path() -> None:
    setup = plan10(request(LIVE_P2P | F.TUNNELLED))
    assert setup.capabilities["return-path"] is False and setup.capabilities["events"]


def test_bandwidth_in_bytes_and_the_domains_speed() -> None:
    assert plan10(request(LIVE_P2P, [U("bandwidth", 100)])).parameters["max-bandwidth"] \
        == 100 * MIB
    assert plan10(request(LIVE_P2P), max_speed_mib=32).parameters["max-bandwidth"] == 32 * MIB
    # libvirt: bandwidth 0 means "not given"
    assert plan10(request(LIVE_P2P, [U("bandwidth", 0)])).parameters["max-bandwidth"] \
        == UNLIMITED_BANDWIDTH_BYTES


def test_postcopy_on_both_sides_with_its_bandwidth() -> None:
    for side in ("source", "destination"):
        setup = plan10(request(LIVE_P2P | F.POSTCOPY, [U("bandwidth.postcopy", 10)], side))
        assert "postcopy-ram" in enabled(setup)
        assert setup.parameters["max-postcopy-bandwidth"] == 10 * MIB


def test_xbzrle_and_auto_converge() -> None:
    req = request(LIVE_P2P | F.COMPRESSED | F.AUTO_CONVERGE,
                  [S("compression", "xbzrle"), U("compression.xbzrle.cache", 1 << 28),
                   I("auto_converge.initial", 30), I("auto_converge.increment", 15)])
    source = plan10(req)
    assert {"xbzrle", "auto-converge"} <= enabled(source)
    assert source.parameters == {"max-bandwidth": UNLIMITED_BANDWIDTH_BYTES,
                                 "xbzrle-cache-size": 1 << 28, "cpu-throttle-initial": 30,
                                 "cpu-throttle-increment": 15}
    destination = plan10(req, "destination")
    assert "auto-converge" not in enabled(destination) and "xbzrle" in enabled(destination)
    assert destination.parameters == {"xbzrle-cache-size": 1 << 28}


def test_parallel_with_zstd_and_zerocopy() -> None:
    req = request(LIVE_P2P | F.PARALLEL, [S("compression", "zstd"), I("compression.zstd.level", 5),
                                          I("parallel.connections", 8)])
    for side in ("source", "destination"):
        setup = plan10(req, side)
        assert "multifd" in enabled(setup)
        assert {k: setup.parameters[k] for k in ("multifd-channels", "multifd-compression",
                                                 "multifd-zstd-level")} \
            == {"multifd-channels": 8, "multifd-compression": "zstd", "multifd-zstd-level": 5}
    zerocopy = request(LIVE_P2P | F.PARALLEL | F.ZEROCOPY)
    assert "zero-copy-send" in enabled(plan10(zerocopy))
    assert "zero-copy-send" not in enabled(plan10(zerocopy, "destination"))


def test_each_side_only_applies_its_own_rows() -> None:
    req = request(LIVE_P2P | F.POSTCOPY | F.AUTO_CONVERGE | F.COMPRESSED)
    for side, party in (("source", mc.Party.SOURCE), ("destination", mc.Party.DESTINATION)):
        setup = plan10(req, side)
        for rule in mc.CAPABILITY_RULES:
            if setup.capabilities.get(rule.capability):
                assert rule.party & party, rule.capability
        for param_rule in mc.PARAMETER_RULES:
            if param_rule.parameter in setup.parameters:
                assert param_rule.party & party, param_rule.parameter


def test_capabilities_argument_for_qmp() -> None:
    arg = plan10(request(LIVE_P2P)).capabilities_arg()
    assert {"capability": "events", "state": True} in arg
    assert {"capability": "postcopy-ram", "state": False} in arg


def test_qmp_commands_clear_then_parameters_then_capabilities() -> None:
    setup = plan10(request(LIVE_P2P | F.PARALLEL | F.ZEROCOPY))
    commands = setup.qmp_commands()
    assert [name for name, _ in commands] == [
        "migrate-set-capabilities", "migrate-set-parameters", "migrate-set-capabilities"]
    cleared, parameters, final = (arguments for _, arguments in commands)
    assert cleared == {"capabilities": setup.capabilities_arg(cleared=True)}
    assert not any(c["state"] for c in setup.capabilities_arg(cleared=True))
    assert parameters == {"max-bandwidth": UNLIMITED_BANDWIDTH_BYTES, "multifd-channels": 2,
                          "multifd-compression": "none"}
    assert final == {"capabilities": setup.capabilities_arg()}


def test_features_on_get_explicit_defaults() -> None:
    """Nothing an earlier attempt left in the source QEMU may leak into this migration."""
    setup = plan10(request(LIVE_P2P | F.AUTO_CONVERGE | F.COMPRESSED | F.POSTCOPY))
    assert setup.parameters == {
        "max-bandwidth": UNLIMITED_BANDWIDTH_BYTES, "max-postcopy-bandwidth": 0,
        "xbzrle-cache-size": 64 * MIB, "cpu-throttle-initial": 20, "cpu-throttle-increment": 10}


# -- what this QEMU cannot do fails before anything moves ------------------------------------
def test_missing_capability_names_the_option() -> None:
    with pytest.raises(VirtError) as info:
        plan(request(LIVE_P2P | F.POSTCOPY), "source", QEMU10_CAPS - {"postcopy-ram"},
             QEMU10_PARAMS)
    assert info.value.code == ErrorCode.ARGUMENT_UNSUPPORTED
    assert str(info.value) == ("argument unsupported: this QEMU does not support migration "
                               "capability 'postcopy-ram' needed for --postcopy")


def test_missing_parameter_names_the_option() -> None:
    with pytest.raises(VirtError) as info:
        plan(request(LIVE_P2P | F.PARALLEL, [I("parallel.connections", 4)]), "destination",
             QEMU10_CAPS, QEMU10_PARAMS - {"multifd-channels"})
    assert str(info.value) == ("argument unsupported: this QEMU does not support migration "
                               "parameter 'multifd-channels' needed for --parallel-connections")


def test_optional_capability_is_skipped_when_missing() -> None:
    setup = plan(request(LIVE_P2P, side="destination"), "destination",
                 QEMU10_CAPS - {"late-block-activate"}, QEMU10_PARAMS)
    assert "late-block-activate" not in setup.capabilities


def test_unused_capability_may_be_missing() -> None:
    setup = plan(request(LIVE_P2P), "source", QEMU10_CAPS - {"zero-copy-send"}, QEMU10_PARAMS)
    assert "zero-copy-send" not in setup.capabilities


def test_events_are_required() -> None:
    with pytest.raises(VirtError, match="'events' needed for migration events"):
        plan(request(LIVE_P2P), "source", QEMU10_CAPS - {"events"}, QEMU10_PARAMS)


def test_postcopy_with_parallel_is_refused_for_qemu_10() -> None:
    with pytest.raises(VirtError) as info:
        plan10(request(LIVE_P2P | F.POSTCOPY | F.PARALLEL))
    assert info.value.code == ErrorCode.ARGUMENT_UNSUPPORTED
    assert "--postcopy with --parallel" in str(info.value)


# -- real QEMU -------------------------------------------------------------------------------
EMULATOR = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


class StdioQMP:
    """QMP over a QEMU's stdio: enough for capability probes, with a deadline per reply."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buffer = b""
        self.read_reply()  # greeting
        self.ok("qmp_capabilities")

    def _line(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "QEMU did not answer in time"
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, "QEMU closed its monitor"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def read_reply(self) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            message = self._line(deadline)
            if "event" not in message:
                return message

    def command(self, name: str, **arguments: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"execute": name, "arguments": arguments}).encode()
                              + b"\n")
        self.proc.stdin.flush()
        return self.read_reply()

    def ok(self, name: str, **arguments: Any) -> Any:
        reply = self.command(name, **arguments)
        assert "return" in reply, f"{name} {arguments}: {reply}"
        return reply["return"]

    def refused(self, name: str, **arguments: Any) -> str:
        reply = self.command(name, **arguments)
        assert "error" in reply, f"{name} {arguments} was accepted"
        return str(reply["error"]["desc"])


@contextmanager
def qemu() -> Iterator[StdioQMP]:
    proc = subprocess.Popen(
        [EMULATOR, "-S", "-display", "none", "-machine", "none", "-nodefaults", "-qmp", "stdio"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield StdioQMP(proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _apply(qmp: StdioQMP, setup: QemuMigrationSetup) -> None:
    """One QEMU takes every plan in a row: leftovers from the previous one must not matter."""
    for command, arguments in setup.qmp_commands():
        qmp.ok(command, **arguments)
    states = {c["capability"]: c["state"] for c in qmp.ok("query-migrate-capabilities")}
    assert {name: states[name] for name in setup.capabilities} == setup.capabilities
    current = qmp.ok("query-migrate-parameters")
    assert {name: current[name] for name in setup.parameters} == setup.parameters


REPRESENTATIVE = [
    (LIVE_P2P, []),
    (LIVE_P2P | F.TUNNELLED, [U("bandwidth", 100)]),
    (LIVE_P2P | F.POSTCOPY, [U("bandwidth.postcopy", 20)]),
    (LIVE_P2P | F.COMPRESSED | F.AUTO_CONVERGE,
     [S("compression", "xbzrle"), U("compression.xbzrle.cache", 1 << 27),
      I("auto_converge.initial", 10), I("auto_converge.increment", 20)]),
    (LIVE_P2P | F.PARALLEL, [S("compression", "zlib"), I("compression.zlib.level", 9),
                             I("parallel.connections", 4)]),
    (LIVE_P2P | F.PARALLEL, [S("compression", "zstd"), I("compression.zstd.level", 20)]),
    (LIVE_P2P | F.PARALLEL | F.ZEROCOPY, [I("parallel.connections", 2)]),
    (LIVE_P2P, [U("bandwidth.avail.switchover", 1000)]),
]

needs_qemu = pytest.mark.skipif(not os.path.exists(EMULATOR), reason="QEMU not installed")


@pytest.mark.qemu
@needs_qemu
def test_installed_qemu_takes_every_plan() -> None:
    """Every name exists in this QEMU, and QEMU accepts each side's plan as a whole."""
    with qemu() as qmp:
        caps = {c["capability"] for c in qmp.ok("query-migrate-capabilities")}
        params = set(qmp.ok("query-migrate-parameters"))
        assert mc.managed_capabilities() <= caps
        assert mc.managed_parameters() <= params
        assert not QEMU10_CAPS - caps and not QEMU10_PARAMS - params  # test data is true
        for flags, typed in REPRESENTATIVE:
            for side in ("source", "destination"):
                req = request(flags, typed, side)
                _apply(qmp, plan(req, side, caps, params))


@pytest.mark.qemu
@needs_qemu
def test_installed_qemu_agrees_with_the_ranges() -> None:
    """params.RANGES and the xbzrle cache rule are exactly what QEMU accepts."""
    qemu_param = {r.typed_param: r.parameter for r in mc.PARAMETER_RULES}
    with qemu() as qmp:
        for field, (low, high) in mp.RANGES.items():
            if field not in qemu_param:
                continue  # disks_port: not a migration parameter
            name = qemu_param[field]
            for value in (low, high):
                qmp.ok("migrate-set-parameters", **{name: value})
            for value in (low - 1, high + 1):
                qmp.refused("migrate-set-parameters", **{name: value})
        qmp.ok("migrate-set-parameters", **{"xbzrle-cache-size": mp.XBZRLE_MIN_CACHE})
        for size in (mp.XBZRLE_MIN_CACHE - 1, 3 * mp.XBZRLE_MIN_CACHE):
            qmp.refused("migrate-set-parameters", **{"xbzrle-cache-size": size})


@pytest.mark.qemu
@needs_qemu
def test_installed_qemu_still_refuses_what_pyvirt_refuses() -> None:
    """When QEMU lifts these limits, the tests say so and the rules can go."""
    with qemu() as qmp:
        for first, second, _ in mc.CAPABILITY_CONFLICTS:
            both = [{"capability": first, "state": True}, {"capability": second, "state": True}]
            qmp.refused("migrate-set-capabilities", capabilities=both)
        qmp.ok("migrate-set-parameters", **{"multifd-compression": "zstd"})
        zerocopy = [{"capability": "multifd", "state": True},
                    {"capability": "zero-copy-send", "state": True}]
        assert "Zero copy" in qmp.refused("migrate-set-capabilities", capabilities=zerocopy)
        assert "compress" not in {c["capability"] for c in qmp.ok("query-migrate-capabilities")}
