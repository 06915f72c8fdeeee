"""The fast migration grid: two real pyvirtd processes with fake QEMUs, every mode x option,
and a fault injected at every phase.

Both daemons run on this machine (``daemon_util.running_daemon_pair``); the fake QEMU
(``tests/fakes/fake_qemu.py``) migrates a toy stream between them over TCP and journals every
QMP command it ran, so each test sees exactly which migration capabilities and parameters
each side set. Clients: the stock virsh (normal, ``--p2p``, ``--p2p --tunnelled``,
``--direct``), the pyvirt client
(``migrate3``/``migrateToURI3``) and raw phase calls (direct mode, a client that vanishes).

Two workers (STYLE habit 10), each named in the tests that use it:
  ``_migrate(pair, case)``  a migration that succeeds: states, definitions, QEMU setup, O5
                            (GRID: modes normal, p2p, tunnelled, offline, pyvirt client)
  ``_fails(pair, case)``    a migration that fails at one phase, then a retry (O5, O6, O8)
                            (FAILURES x MODES: Begin, Prepare, Perform, Finish)
and named tests for what needs more than a table row: files (--xml, --persistent-xml),
addresses (--listen-address, --migrateuri), --bandwidth, --direct, a migration in
progress (change protection, domjobabort), a client or a destination QEMU that vanishes
between phases, the source's state reason, the migration port range.
Oracles: reference/migration.md section 4. The daemons live for the module; every test
uses fresh guests and the ``pair`` fixture removes every domain, fault and QEMU after it
(tests that need other daemon settings run their own pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pyvirt
from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import MigrateFlags as F
from tests.functional.daemon_util import (
    FAKE_QEMU,
    DaemonHandle,
    local_address,
    running_daemon_pair,
)
from tests.functional.gridutil import (
    DST_CAPS,
    MIB,
    MODES,
    SRC_CAPS,
    SRC_PARAMS,
    Background,
    Case,
    Guest,
    Pair,
    Setup,
    _migrate,
    _write_xml,
    assert_destination_clean,
    assert_no_job,
    assert_no_listening_ports,
    assert_source_runs,
    commands,
    daemon_pair,
    disk_image,
    domstate,
    dst_setup,
    emptied_after_test,
    eventually,
    fake_qemus,
    guest_xml,
    new_guest,
    observed_setup,
    persistent,
    src_setup,
    virsh,
)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with daemon_pair(tmp_path_factory, "grid") as pair:
        yield pair


@pytest.fixture
def pair(daemons: Pair) -> Iterator[Pair]:
    yield from emptied_after_test(daemons)


_Extra = tuple[tuple[str, ...], Mapping[str, object]]


XBZRLE: _Extra = (("xbzrle",), {"xbzrle_cache_size": 64 * MIB})


MULTIFD: _Extra = (("multifd",), {"multifd_channels": 2, "multifd_compression": "none"})


POSTCOPY: _Extra = (("postcopy-ram",), {"max_postcopy_bandwidth": 0})


#: libvirt turns the return path off for tunnelled migration (QEMU's stream is one-way)
TUNNELLED_SRC = Setup(SRC_CAPS - {"return-path"}, SRC_PARAMS)


TUNNELLED_DST = Setup(DST_CAPS - {"return-path"}, {})


GRID = {
    # -- normal (the client drives the five phases) --
    "live": Case(),
    "persistent": Case(("--live", "--persistent"), defined=True, dst_persistent=True,
                       src_kept=True),
    "persistent-undefinesource": Case(("--live", "--persistent", "--undefinesource"),
                                      defined=True, dst_persistent=True),
    "keep-source-definition": Case(defined=True, src_kept=True),
    "suspend": Case(("--live", "--suspend"), dst_state="paused (user)"),
    "paused-source": Case(suspended=True, dst_state="paused (user)"),
    "compressed": Case(("--live", "--compressed"), src=src_setup(*XBZRLE),
                       dst=dst_setup(*XBZRLE)),
    "comp-xbzrle-cache": Case(
        ("--live", "--comp-methods", "xbzrle", "--comp-xbzrle-cache", "1048576"),
        src=src_setup(("xbzrle",), xbzrle_cache_size=MIB),
        dst=dst_setup(("xbzrle",), xbzrle_cache_size=MIB)),
    "auto-converge": Case(("--live", "--auto-converge"), src=src_setup(
        ("auto-converge",), cpu_throttle_initial=20, cpu_throttle_increment=10)),
    "auto-converge-tuned": Case(
        ("--live", "--auto-converge", "--auto-converge-initial", "30",
         "--auto-converge-increment", "5"),
        src=src_setup(("auto-converge",), cpu_throttle_initial=30, cpu_throttle_increment=5)),
    "parallel": Case(("--live", "--parallel"), src=src_setup(*MULTIFD),
                     dst=dst_setup(*MULTIFD)),
    "parallel-zstd": Case(
        ("--live", "--parallel", "--parallel-connections", "4", "--comp-methods", "zstd"),
        src=src_setup(("multifd",), multifd_channels=4, multifd_compression="zstd",
                      multifd_zstd_level=1),
        dst=dst_setup(("multifd",), multifd_channels=4, multifd_compression="zstd",
                      multifd_zstd_level=1)),
    "postcopy": Case(("--live", "--postcopy"), src=src_setup(*POSTCOPY),
                     dst=dst_setup(*POSTCOPY)),
    "dname": Case(("--live", "--dname", "renamed"), dname="renamed"),
    "abort-on-error": Case(("--live", "--abort-on-error")),
    "change-protection": Case(("--live", "--change-protection")),
    "unsafe-local-disk": Case(("--live", "--unsafe"), disk="local"),
    "shared-disk": Case(disk="shared"),
    # -- peer-to-peer (the source daemon drives the destination) --
    "p2p-live": Case(mode="p2p"),
    "p2p-persistent-undefinesource": Case(("--live", "--persistent", "--undefinesource"),
                                          mode="p2p", defined=True, dst_persistent=True),
    "p2p-suspend": Case(("--live", "--suspend"), mode="p2p", dst_state="paused (user)"),
    "p2p-parallel": Case(("--live", "--parallel", "--parallel-connections", "3"), mode="p2p",
                         src=src_setup(("multifd",), multifd_channels=3,
                                       multifd_compression="none"),
                         dst=dst_setup(("multifd",), multifd_channels=3,
                                       multifd_compression="none")),
    "p2p-auto-converge": Case(("--live", "--auto-converge"), mode="p2p", src=src_setup(
        ("auto-converge",), cpu_throttle_initial=20, cpu_throttle_increment=10)),
    "p2p-compressed-bandwidth": Case(
        ("--live", "--compressed", "--bandwidth", "512"), mode="p2p",
        src=src_setup(("xbzrle",), xbzrle_cache_size=64 * MIB, max_bandwidth=512 * MIB),
        dst=dst_setup(*XBZRLE)),
    "p2p-dname": Case(("--live", "--dname", "renamed"), mode="p2p", dname="renamed"),
    "p2p-postcopy": Case(("--live", "--postcopy"), mode="p2p", src=src_setup(*POSTCOPY),
                         dst=dst_setup(*POSTCOPY)),
    # -- tunnelled (the stream inside the daemons' RPC link: no return path, no port) --
    "tunnelled": Case(mode="tunnelled", src=TUNNELLED_SRC, dst=TUNNELLED_DST),
    "tunnelled-persistent-undefinesource": Case(
        ("--live", "--persistent", "--undefinesource"), mode="tunnelled", defined=True,
        dst_persistent=True, src=TUNNELLED_SRC, dst=TUNNELLED_DST),
    "tunnelled-compressed-suspend": Case(
        ("--live", "--compressed", "--suspend"), mode="tunnelled", dst_state="paused (user)",
        src=Setup(TUNNELLED_SRC.caps | {"xbzrle"},
                  {**SRC_PARAMS, "xbzrle-cache-size": 64 * MIB}),
        dst=Setup(TUNNELLED_DST.caps | {"xbzrle"}, {"xbzrle-cache-size": 64 * MIB})),
    "tunnelled-dname-bandwidth": Case(
        ("--live", "--dname", "renamed", "--bandwidth", "64"), mode="tunnelled",
        dname="renamed", src=Setup(TUNNELLED_SRC.caps, {"max-bandwidth": 64 * MIB}),
        dst=TUNNELLED_DST),
    # -- offline (only the definition moves) --
    # a defined, never started domain is "shut off (unknown)" on both (libvirt's reason)
    "offline": Case(("--offline", "--persistent"), defined=True, running=False,
                    dst_state="shut off (unknown)", dst_persistent=True, src_kept=True),
    "offline-undefinesource": Case(("--offline", "--persistent", "--undefinesource"),
                                   defined=True, running=False,
                                   dst_state="shut off (unknown)", dst_persistent=True),
    "p2p-offline": Case(("--offline", "--persistent"), mode="p2p", defined=True,
                        running=False, dst_state="shut off (unknown)", dst_persistent=True,
                        src_kept=True),
    # -- the pyvirt client --
    "api-migrate3": Case(mode="api", api=({}, F.LIVE)),
    "api-migrate3-params": Case(
        mode="api", api=({"destination_name": "renamed", "bandwidth": 256}, F.LIVE),
        dname="renamed", src=src_setup(max_bandwidth=256 * MIB)),
    "api-p2p-persistent": Case(mode="api-p2p", api=({}, F.LIVE | F.PERSIST_DEST),
                               defined=True, dst_persistent=True, src_kept=True),
    "api-p2p-compressed": Case(
        mode="api-p2p", api=({"compression": ["xbzrle"],
                              "compression.xbzrle.cache": 4 * MIB}, F.LIVE | F.COMPRESSED),
        src=src_setup(("xbzrle",), xbzrle_cache_size=4 * MIB),
        dst=dst_setup(("xbzrle",), xbzrle_cache_size=4 * MIB)),
}


@pytest.mark.parametrize("case", GRID.values(), ids=GRID.keys())
def test_migrate(pair: Pair, case: Case) -> None:
    _migrate(pair, case)


def test_migrate_non_live_pauses_first(pair: Pair) -> None:
    # _migrate without --live; libvirt stops the guest's CPUs before QMP migrate
    # (qemuMigrationSrcRun: "if (!(flags & VIR_MIGRATE_LIVE)) qemuMigrationSrcSetOffline").
    outcome = _migrate(pair, Case(options=()))
    sent = commands(pair.src, outcome.src_mark, outcome.guest.name)
    assert "stop" in sent and sent.index("stop") < sent.index("migrate"), sent


# -- options that need a file, an address or a measurement -------------------------------------
@pytest.mark.parametrize("mode", ["normal", "p2p"])
def test_migrate_xml_host_side_change(pair: Pair, mode: str) -> None:
    # _migrate with --xml: a definition differing only in host-side details (description)
    # is what the destination runs.
    guest = new_guest(pair)
    xml = _write_xml(pair, guest, "host", description="moved by the grid")
    rc, _, err = virsh(pair.src, "migrate", "--live", *MODES[mode], "--xml", xml, guest.name,
                       pair.dst.uri)
    assert rc == 0, err
    assert "<description>moved by the grid</description>" in \
        virsh(pair.dst, "dumpxml", guest.name)[1]
    assert domstate(pair.dst, guest.name) == "running (migrated)"


def test_migrate_persistent_xml(pair: Pair) -> None:
    # _migrate with --persistent-xml: the destination's persistent definition is the given
    # one (here: more memory for the next boot), the running guest keeps its own.
    outcome = _migrate(pair, Case(("--live", "--persistent", "--persistent-xml", "{xml}"),
                                  defined=True, dst_persistent=True, src_kept=True),
                       xml_changes={"memory_mib": 128})
    inactive = virsh(pair.dst, "dumpxml", "--inactive", outcome.name_on_dst)[1]
    live = virsh(pair.dst, "dumpxml", outcome.name_on_dst)[1]
    assert "<memory unit='KiB'>131072</memory>" in inactive, inactive
    assert "<memory unit='KiB'>65536</memory>" in live, live


@pytest.mark.parametrize("mode", ["normal", "p2p"])
def test_migrate_listen_address(pair: Pair, mode: str) -> None:
    # _migrate with --listen-address: the destination QEMU listens there, on a port of its
    # migration range, and the source connects to it.
    address = local_address() or "0.0.0.0"
    outcome = _migrate(pair, Case(("--live", "--listen-address", address), mode=mode))
    incoming = _uri_of(pair.dst, outcome.dst_mark, outcome.name_on_dst, "migrate-incoming")
    host, port = incoming.removeprefix("tcp:").rsplit(":", 1)
    assert host == address and int(port) in (pair.dst.migration_ports or ())


def _uri_of(daemon: DaemonHandle, mark: int, name: str, command: str) -> str:
    uris = [e["args"]["uri"] for e in daemon.journal_entries(mark, name) if e["cmd"] == command]
    assert len(uris) == 1, uris
    return str(uris[0])


@pytest.mark.parametrize("mode", ["normal", "p2p"])
def test_migrate_migrateuri_port(pair: Pair, mode: str) -> None:
    # _migrate with --migrateuri tcp://HOST:PORT: libvirt's destination listens on PORT
    # (qemuMigrationDstPrepareDirect takes the port of uri_in) and the source QEMU goes there.
    port = (pair.dst.migration_ports or range(0))[-1]
    outcome = _migrate(pair, Case(("--live", "--migrateuri", f"tcp://{pair.address}:{port}"),
                                  mode=mode))
    incoming = _uri_of(pair.dst, outcome.dst_mark, outcome.name_on_dst, "migrate-incoming")
    assert incoming.endswith(f":{port}"), incoming
    assert _uri_of(pair.src, outcome.src_mark, outcome.guest.name, "migrate") == \
        f"tcp:{pair.address}:{port}"


def test_migrate_migrateuri_host_only(pair: Pair) -> None:
    # _migrate with --migrateuri tcp://HOST (no port): the destination picks the port and
    # keeps HOST in uri_out (as libvirt does), so the source QEMU connects to HOST.
    host = socket.gethostname()
    outcome = _migrate(pair, Case(("--live", "--migrateuri", f"tcp://{host}")))
    uri = _uri_of(pair.src, outcome.src_mark, outcome.guest.name, "migrate")
    assert uri.startswith(f"tcp:{host}:"), uri


def test_migrate_bandwidth_limits_the_transfer(pair: Pair) -> None:
    # _migrate with --bandwidth 8 (MiB/s) and 4 MiB of RAM: QEMU gets max-bandwidth, the
    # copy takes about half a second, and the completed job reports about 8 MiB/s.
    began = time.monotonic()
    outcome = _migrate(pair, Case(("--live", "--bandwidth", "8"), defined=True, src_kept=True,
                                  faults={"ram_bytes": 4 * MIB},
                                  src=src_setup(max_bandwidth=8 * MIB)))
    assert time.monotonic() - began >= 0.45
    for daemon, name in ((pair.src, outcome.guest.name), (pair.dst, outcome.name_on_dst)):
        stats = virsh(daemon, "domjobinfo", "--completed", name)[1]
        line = next(ln for ln in stats.splitlines() if ln.startswith("Memory bandwidth:"))
        value, unit = line.split()[2:4]
        assert unit == "MiB/s" and 5 < float(value) <= 8.5, line


# -- direct: no daemon on the destination -------------------------------------------------------
def start_direct_destination(pair: Pair, guest: Guest, port: int) -> Path:
    """A fake QEMU waiting for ``guest`` on ``port`` (``-incoming tcp:``); its monitor."""
    monitor = pair.tmp / f"{guest.name}-direct.sock"
    argv = [sys.executable, str(FAKE_QEMU), "-name", f"guest={guest.name},debug-threads=on",
            "-uuid", guest.uuid, "-m", "size=65536k", "-chardev",
            f"socket,id=charmonitor,path={monitor},server=on,wait=off",
            "-incoming", f"tcp:0.0.0.0:{port}"]
    env = {**os.environ, "FAKE_QEMU_JOURNAL": str(pair.tmp / "direct-journal.jsonl")}
    pair.extra.append(subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL))
    eventually(monitor.exists, "the direct destination QEMU did not come up")
    return monitor


def qmp(monitor: Path, command: str) -> Any:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(monitor))
        stream = sock.makefile("rwb")
        stream.readline()  # greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            while "event" in (reply := json.loads(stream.readline())):
                pass
        return reply["return"]


async def _perform_direct(uri: str, name: str, migrate_uri: str, flags: int) -> None:
    conn = await AsyncConnection.open(uri)
    try:
        dom = await conn.lookupByName(name)
        await dom.migrate_perform3_params(None, {"migrate_uri": migrate_uri}, b"", flags)
    finally:
        await conn.close()


def test_migrate_direct(pair: Pair) -> None:
    # pyvirt's --direct (Perform without p2p and without Begin): the source QEMU migrates
    # straight to a QEMU started by hand with -incoming tcp:; the source ends as after
    # Confirm (transient: gone; its QEMU gone), set up as for a normal migration, and the
    # destination QEMU runs the guest (no -S: QEMU starts it when the stream completes).
    guest = new_guest(pair)
    port = (pair.dst.migration_ports or range(0))[-1]
    monitor = start_direct_destination(pair, guest, port)
    mark = pair.src.journal_mark()
    asyncio.run(_perform_direct(pair.src.uri, guest.name, f"tcp://{pair.address}:{port}",
                                F.LIVE))
    assert domstate(pair.src, guest.name) == "absent"
    eventually(lambda: not fake_qemus(pair.src, guest.name), "source QEMU still alive")
    assert observed_setup(pair.src, mark, guest.name) == src_setup()
    eventually(lambda: qmp(monitor, "query-status")["status"] == "running",
               "the direct destination does not run the guest")
    assert qmp(monitor, "query-migrate")["status"] == "completed"


def test_migrate_direct_stock_virsh(pair: Pair) -> None:
    # test_migrate_direct's checks, driven by the stock virsh --direct (libvirt's client
    # sends the non-params MIGRATE_PERFORM3, procedure 216, for it).
    guest = new_guest(pair)
    port = (pair.dst.migration_ports or range(0))[-1]
    monitor = start_direct_destination(pair, guest, port)
    uri = f"tcp://{pair.address}:{port}"
    rc, _, err = virsh(pair.src, "migrate", "--live", "--direct", "--migrateuri", uri,
                       guest.name, uri)
    assert rc == 0, err
    assert domstate(pair.src, guest.name) == "absent"
    eventually(lambda: qmp(monitor, "query-status")["status"] == "running", "not running")


# -- worker 2: migrations that fail -----------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    error: str  # what virsh's error message must say ("A|B": one of them)
    options: tuple[str, ...] = ("--live",)
    mode: str = "normal"  # a key of MODES
    src_faults: Mapping[str, Any] = field(default_factory=dict)  # the guest's QEMU
    dst_faults: Mapping[str, Any] = field(default_factory=dict)  # QEMUs Prepare starts
    disk: str | None = None
    same_host: bool = False  # the destination URI is the source daemon's
    retry: tuple[str, ...] = ("--live",)
    xml: Mapping[str, Any] | None = None  # changes to the guest's XML given as "{xml}"


def _fails(pair: Pair, case: Failure) -> Guest:
    # Checks: virsh fails and says why (O8: the cause, not a cleanup step's message); the
    # guest still runs on the source, its one QEMU alive and no job left; the destination
    # holds no domain of that name and no fake QEMU for it, and no migration port listens
    # on either daemon (O5); once the fault is removed, the same guest migrates and runs
    # (migrated) on the destination (O6).
    guest = new_guest(pair, faults=case.src_faults, disk=disk_image(pair, case.disk))
    pair.dst.set_faults(dict(case.dst_faults))
    target = pair.src if case.same_host else pair.dst
    p2p = MODES[case.mode]
    context = {"xml": _write_xml(pair, guest, "given", **case.xml)} if case.xml else {}
    options = [option.format(**context) for option in case.options]
    rc, _, err = virsh(pair.src, "migrate", *options, *p2p, guest.name, target.uri)
    assert rc == 1 and any(part in err for part in case.error.split("|")), err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)
    pair.dst.set_faults({})
    if case.src_faults:
        pair.src.control(guest.uuid, {"faults": {}})
    rc, _, err = virsh(pair.src, "migrate", *case.retry, *p2p, guest.name, pair.dst.uri)
    assert rc == 0, err
    assert domstate(pair.dst, guest.name) == "running (migrated)"
    eventually(lambda: not fake_qemus(pair.src, guest.name), "source QEMU still alive")
    return guest


SLOW = {"migrate_duration_s": 1.0}


FAILURES = {
    # Begin refuses
    "begin-unsafe-disk": Failure("Migration without shared storage is unsafe", disk="local",
                                 retry=("--live", "--unsafe")),
    # (tunnelled: the flag check comes first, as in libvirt)
    "begin-transient-offline": Failure("transient|tunnelled offline migration does not make",
                                       options=("--offline", "--persistent")),
    # --xml may change host-side details only (libvirt's ABI stability check)
    "begin-xml-changes-abi": Failure("Target domain", options=("--live", "--xml", "{xml}"),
                                     xml={"memory_mib": 128}),
    # Prepare fails
    "prepare-same-host": Failure("Attempt to migrate guest to the same host", same_host=True),
    "prepare-qemu-does-not-start": Failure("process exited while connecting to monitor",
                                           dst_faults={"exit_before_monitor": 1}),
    "prepare-migrate-incoming-fails": Failure("Failed to bind socket", dst_faults={
        "fail_commands": {"migrate-incoming": "Failed to bind socket: Address in use"}}),
    # Perform fails
    "perform-migrate-refused": Failure("fake: migrate refused", src_faults={
        "fail_commands": {"migrate": "fake: migrate refused"}}),
    "perform-fails-midway": Failure("injected migration failure",
                                    src_faults={**SLOW, "migrate_fail_after_s": 0.3}),
    # the cause: the source's Perform error, or the destination's saved one (libvirt)
    "perform-destination-dies": Failure("migration out job|migration in job", src_faults=SLOW,
                                        dst_faults={"incoming_die_after_bytes": 16 * MIB}),
    # Finish fails (the source QEMU completed; Confirm resumes it)
    "finish-fails": Failure("fake: cannot resume",
                            dst_faults={"fail_commands": {"cont": "fake: cannot resume"}}),
}


def _failure(key: str, mode: str) -> Failure:
    return Failure(**{**FAILURES[key].__dict__, "mode": mode})


#: covered by a test of its own (a race makes the grid's version flaky)
ELSEWHERE = {("perform-destination-dies", "tunnelled"): "test_tunnelled_destination_killed"}


@pytest.mark.parametrize(("key", "mode"), [
    pytest.param(key, mode, id=f"{key}-{mode}")
    for key in FAILURES for mode in MODES if (key, mode) not in ELSEWHERE])
def test_migration_fails(pair: Pair, key: str, mode: str) -> None:
    _fails(pair, _failure(key, mode))


def test_name_clash_on_destination(pair: Pair) -> None:
    # _fails's checks, when the destination has another domain of the same name: Prepare
    # refuses and leaves that domain alone (still defined, shut off).
    guest = new_guest(pair)
    other = pair.tmp / "clash.xml"
    other.write_text(guest_xml(guest.name, str(uuidlib.uuid4())))
    assert virsh(pair.dst, "define", str(other))[0] == 0
    rc, _, err = virsh(pair.src, "migrate", "--live", guest.name, pair.dst.uri)
    assert rc == 1 and "already exists" in err, err
    assert_source_runs(pair, guest)
    assert domstate(pair.dst, guest.name) == "shut off (unknown)"
    assert not fake_qemus(pair.dst, guest.name)
    assert_no_listening_ports(pair)
    assert virsh(pair.dst, "undefine", guest.name)[0] == 0
    rc, _, err = virsh(pair.src, "migrate", "--live", guest.name, pair.dst.uri)
    assert rc == 0 and domstate(pair.dst, guest.name) == "running (migrated)", err


# -- a migration in progress ----------------------------------------------------------------
def slow_migration(pair: Pair, guest: Guest, *options: str, timeout: float = 60) -> Background:
    """Start migrating ``guest`` (whose QEMU copies slowly) and wait until it copies."""
    result: list[tuple[int, str, str]] = []
    argv = ("migrate", "--live", *options, guest.name, pair.dst.uri)

    def migrate() -> None:
        try:
            result.append(virsh(pair.src, *argv, timeout=timeout))
        except subprocess.TimeoutExpired:
            result.append((-1, "", f"virsh migrate still running after {timeout} s"))

    thread = threading.Thread(target=migrate)
    thread.start()
    eventually(lambda: "Unbounded" in virsh(pair.src, "domjobinfo", guest.name)[1]
               and bool(fake_qemus(pair.dst, guest.name)), "the migration did not start")
    return Background(thread, result)


def test_migration_in_progress_refuses_changes(pair: Pair) -> None:
    # While a migration copies: domjobinfo shows the outgoing job; a second migration of
    # the guest (Begin: already migrating) and a new definition (--change-protection) are
    # refused; then the first migration completes untouched.
    guest = new_guest(pair, faults={"migrate_duration_s": 1.5})
    running = slow_migration(pair, guest, "--change-protection")
    out = virsh(pair.src, "domjobinfo", guest.name)[1]
    assert "Outgoing migration" in out, out
    rc, _, err = virsh(pair.src, "migrate", "--live", "--p2p", guest.name, pair.dst.uri)
    assert rc == 1 and "migration job" in err, err
    definition = pair.tmp / f"{guest.name}.xml"
    rc, _, err = virsh(pair.src, "define", str(definition))
    assert rc == 1 and "migration job" in err, err
    rc, _, err = running.wait()
    assert rc == 0, err
    assert domstate(pair.dst, guest.name) == "running (migrated)"
    assert not persistent(pair.dst, guest.name)


@pytest.mark.parametrize("mode", MODES)
def test_domjobabort(pair: Pair, mode: str) -> None:
    # _fails's checks, for domjobabort during the copy: virsh reports the cancellation.
    guest = new_guest(pair, faults={"migrate_duration_s": 3.0})
    running = slow_migration(pair, guest, *MODES[mode])
    assert virsh(pair.src, "domjobabort", guest.name)[0] == 0
    rc, _, err = running.wait()
    assert rc == 1 and "cancel" in err.lower(), err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)
    pair.src.control(guest.uuid, {"faults": {}})
    rc, _, err = virsh(pair.src, "migrate", "--live", guest.name, pair.dst.uri)
    assert rc == 0 and domstate(pair.dst, guest.name) == "running (migrated)", err


# -- a client that goes away ------------------------------------------------------------------
async def _begin_prepare_and_vanish(pair: Pair, guest: Guest) -> None:
    """Run Begin and Prepare as libvirt's client does, then drop both connections."""
    src = await AsyncConnection.open(pair.src.uri)
    dst = await AsyncConnection.open(pair.dst.uri)
    try:
        dom = await src.lookupByName(guest.name)
        cookie, xml = await dom.migrate_begin3_params({}, F.LIVE | F.CHANGE_PROTECTION)
        _, uri_out = await dst.migrate_prepare3_params({"destination_xml": xml}, cookie,
                                                       F.LIVE)
        assert uri_out and fake_qemus(pair.dst, guest.name)
    finally:
        await dst.close()
        await src.close()


def test_client_gone_after_prepare_cleans_destination(pair: Pair) -> None:
    # The client dies between Prepare and Perform: the destination kills its incoming QEMU,
    # forgets the half-created domain and stops listening (libvirt's autodestroy); the
    # guest keeps running on the source.
    guest = new_guest(pair)
    asyncio.run(_begin_prepare_and_vanish(pair, guest))
    assert_destination_clean(pair, guest.name)
    assert domstate(pair.src, guest.name).startswith("running")


def test_client_gone_after_prepare_then_retry(pair: Pair) -> None:
    # After the client died between Prepare and Perform, the source has no job left
    # (libvirt ends it with its connection: qemuMigrationAnyConnectionClosed) and the same
    # guest migrates (O6).
    guest = new_guest(pair)
    asyncio.run(_begin_prepare_and_vanish(pair, guest))
    assert_destination_clean(pair, guest.name)
    assert_no_job(pair.src, guest.name)
    rc, _, err = virsh(pair.src, "migrate", "--live", guest.name, pair.dst.uri)
    assert rc == 0, err


# -- the source's state reason after a failure -------------------------------------------------
@pytest.mark.parametrize(("key", "mode", "reason"), [
    ("prepare-qemu-does-not-start", "normal", "running (booted)"),
    ("perform-fails-midway", "p2p", "running (booted)"),
    ("begin-unsafe-disk", "normal", "running (booted)"),
    ("finish-fails", "normal", "running (migration canceled)"),
    ("finish-fails", "p2p", "running (migration canceled)"),
])
def test_source_reason_after_failure(pair: Pair, key: str, mode: str, reason: str) -> None:
    # The source guest's state reason after a failed migration, as libvirt sets it
    # (qemuMigrationSrcRestoreDomainState): kept when the guest never paused, "migration
    # canceled" when it was resumed after the switchover had stopped it.
    case = _failure(key, mode)
    guest = new_guest(pair, faults=case.src_faults, disk=disk_image(pair, case.disk))
    pair.dst.set_faults(dict(case.dst_faults))
    assert virsh(pair.src, "migrate", *case.options, *MODES[mode], guest.name,
                 pair.dst.uri)[0] == 1
    eventually(lambda: domstate(pair.src, guest.name) == reason,
               f"source: {domstate(pair.src, guest.name)}")


# -- the migration port range -----------------------------------------------------------------
async def _destination_dies_after_prepare(pair: Pair, guest: Guest) -> None:
    """libvirt's client phases, with the destination QEMU killed between Prepare and
    Perform (and its domain gone) so Finish surely comes after the destination noticed."""
    src = await AsyncConnection.open(pair.src.uri)
    dst = await AsyncConnection.open(pair.dst.uri)
    flags = F.LIVE | F.CHANGE_PROTECTION
    try:
        dom = await src.lookupByName(guest.name)
        cookie, xml = await dom.migrate_begin3_params({}, flags)
        cookie, uri = await dst.migrate_prepare3_params({"destination_xml": xml}, cookie, F.LIVE)
        for pid in fake_qemus(pair.dst, guest.name):
            os.kill(pid, signal.SIGKILL)
        eventually(lambda: domstate(pair.dst, guest.name) == "absent", "destination domain")
        params = {"destination_xml": xml, "migrate_uri": uri or ""}
        with pytest.raises(pyvirt.libvirtError):
            await dom.migrate_perform3_params(None, params, cookie, flags)
        with contextlib.suppress(pyvirt.libvirtError):  # then no Confirm, as libvirt's client
            await dst.migrate_finish3_params(params, b"", F.LIVE, True)
    finally:
        await dst.close()
        await src.close()


def test_destination_killed_after_prepare(pair: Pair) -> None:
    # _fails's checks, for a destination QEMU killed between Prepare and Perform.
    guest = new_guest(pair)
    asyncio.run(_destination_dies_after_prepare(pair, guest))
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)
    rc, _, err = virsh(pair.src, "migrate", "--live", guest.name, pair.dst.uri)
    assert rc == 0 and domstate(pair.dst, guest.name) == "running (migrated)", err


def test_failed_migrations_give_their_ports_back(tmp_path: Path) -> None:
    # Two migration ports on the destination, three migrations whose destination QEMU was
    # killed after Prepare, then one that must still find a port (O5 for the allocator, O6).
    with running_daemon_pair(ports=2) as (src, dst):
        pair = Pair(src, dst, tmp_path, tmp_path)
        guest = new_guest(pair)
        for _ in range(3):
            asyncio.run(_destination_dies_after_prepare(pair, guest))
            assert_destination_clean(pair, guest.name)
        rc, _, err = virsh(src, "migrate", "--live", guest.name, dst.uri)
        assert rc == 0, err


def _memory_processed(daemon: DaemonHandle, guest: Guest) -> float:
    """``Memory processed`` of the guest's job (domjobinfo), 0 when not shown yet."""
    for line in virsh(daemon, "domjobinfo", guest.name)[1].splitlines():
        if line.startswith("Memory processed:"):
            return float(line.split()[2])
    return 0.0


def test_tunnelled_destination_killed(tmp_path: Path) -> None:
    # _fails's checks for a tunnelled migration whose destination QEMU is killed mid-copy
    # while no data is in flight (2 MiB copied over 4 s): the source fails promptly, before
    # its keepalive (1 s x (2 + 1)) could, and says why; the guest runs on the source, the
    # destination is clean, a retry works. Own daemons: a hung tunnel must not leak.
    conf = {"keepalive_interval": 1, "keepalive_count": 2}
    with running_daemon_pair(qemu_conf=conf) as (src, dst):
        pair = Pair(src, dst, tmp_path, tmp_path)
        guest = new_guest(pair, faults={"ram_bytes": 2 * MIB, "migrate_duration_s": 4.0})
        running = slow_migration(pair, guest, *MODES["tunnelled"], timeout=5)
        eventually(lambda: _memory_processed(src, guest) > 0, "no data moved")
        killed = time.monotonic()  # just after a chunk: the tunnel is idle for 0.5 s
        for pid in fake_qemus(dst, guest.name):
            os.kill(pid, signal.SIGKILL)
        rc, _, err = running.wait()
        assert rc == 1 and "keepalive" not in err, err
        assert time.monotonic() - killed < 2.5
        assert_source_runs(pair, guest)
        assert_destination_clean(pair, guest.name)
        pair.src.control(guest.uuid, {"faults": {}})
        rc, _, err = virsh(src, "migrate", "--live", *MODES["tunnelled"], guest.name, dst.uri)
        assert rc == 0, err
