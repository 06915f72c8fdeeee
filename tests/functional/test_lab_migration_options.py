"""Every migration option shows its effect on the QEMUs, on real guests between lab hosts.

Capabilities and parameters are read from both QEMUs over QMP (through the daemons'
qemu-monitor-command) while the migration runs; job statistics through domjobinfo.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LabHost
from tests.functional.daemon_util import run
from tests.functional.labutil import serial, two_hosts
from tests.functional.migrationutil import (
    ResumeEvents,
    RunnerSampler,
    admin,
    assert_still_on_source,
    beat,
    cleanup,
    migrate_in_thread,
    migration_capabilities,
    qemu_pids,
    qmp,
    slow_migration,
    start_guest,
    virsh,
    wait_qemu,
    wait_query_migrate,
)

pytestmark = [pytest.mark.qemu, pytest.mark.lab]


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


def test_tuning_commands_reach_qemu(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: migrate-setmaxdowntime / -compcache change QEMU's own parameters (read back
    # from QEMU by the get commands); migrate-setspeed is kept for the next migration.
    src = hosts[0]
    start_guest(src, "m-tune", tmp_path)
    assert virsh(src.uri, "migrate-getmaxdowntime", "m-tune")[1] == "300\n\n"  # QEMU's
    assert virsh(src.uri, "migrate-setmaxdowntime", "m-tune", "1234")[0] == 0
    assert virsh(src.uri, "migrate-getmaxdowntime", "m-tune")[1] == "1234\n\n"
    assert virsh(src.uri, "migrate-compcache", "m-tune", "--size", "1048576")[0] == 0
    rc, out, _ = virsh(src.uri, "migrate-compcache", "m-tune")
    assert rc == 0 and "1.000 MiB" in out, out
    assert virsh(src.uri, "migrate-getspeed", "m-tune")[1] == "8796093022207\n\n"
    assert virsh(src.uri, "migrate-setspeed", "m-tune", "5")[0] == 0
    assert virsh(src.uri, "migrate-getspeed", "m-tune")[1] == "5\n\n"
    cleanup(src, "m-tune")


def test_bandwidth_limits_the_transfer(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --bandwidth 1 reaches QEMU: the job's measured bandwidth stays near 1 MiB/s.
    src, dst = hosts
    migration = slow_migration(src, dst, "m-bw", tmp_path)
    time.sleep(2)
    out = virsh(src.uri, "domjobinfo", "m-bw")[1]
    line = next(ln for ln in out.splitlines() if ln.startswith("Memory bandwidth:"))
    value, unit = line.split()[2], line.split()[3]
    assert unit in ("KiB/s", "MiB/s") and (unit == "KiB/s" or float(value) < 2.5), line
    assert virsh(src.uri, "domjobabort", "m-bw")[0] == 0
    migration.finish(120)
    assert_still_on_source(src, dst, "m-bw")
    cleanup(src, "m-bw")


@dataclass(frozen=True)
class OptionCase:
    """What an option must change: capabilities on both QEMUs or the source only, the
    source's parameters, a ``query-migrate`` counter that must grow while it runs, and
    lines of the destination's ``domjobinfo --completed``."""

    options: tuple[str, ...]
    both: dict[str, bool] = field(default_factory=dict)
    source_only: dict[str, bool] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    growing: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()


OPTION_CASES = {
    "compressed": OptionCase(("--compressed",), both={"xbzrle": True},
                             growing=("xbzrle-cache", "cache-miss"),
                             completed=("Compression cache: 64.000 MiB", "Compressed pages:",
                                        "Compression cache misses:")),
    "xbzrle-cache": OptionCase(("--comp-methods", "xbzrle", "--comp-xbzrle-cache", "8388608"),
                               both={"xbzrle": True}, params={"xbzrle-cache-size": 8388608},
                               growing=("xbzrle-cache", "cache-miss"),
                               completed=("Compression cache: 8.000 MiB",)),
    "parallel": OptionCase(("--parallel", "--parallel-connections", "4"),
                           both={"multifd": True}, params={"multifd-channels": 4},
                           growing=("ram", "multifd-bytes")),
    "parallel-zstd": OptionCase(("--parallel", "--comp-methods", "zstd"),
                                both={"multifd": True}, params={"multifd-compression": "zstd"},
                                growing=("ram", "multifd-bytes")),
    "postcopy": OptionCase(("--postcopy",), both={"postcopy-ram": True}),
}


def _counter(info: dict[str, Any], path: tuple[str, ...]) -> int:
    value: Any = info
    for key in path:
        value = value.get(key, {})
    return int(value) if isinstance(value, int) else 0


@pytest.mark.parametrize("case", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_option_reaches_qemu(hosts: list[LabHost], tmp_path: Path, case: OptionCase) -> None:
    # Checks: while the migration runs, each QEMU has exactly the capabilities and the
    # source the parameters the option implies (asked over QMP through the daemons), and
    # the option's counter in the source's query-migrate grows (xbzrle cache misses,
    # multifd bytes); migrate-setspeed during the migration lifts the 1 MiB/s limit at
    # once; the guest arrives and runs; the destination's completed job shows the
    # option's statistics.
    src, dst = hosts
    name = f"m-opt-{case.options[-1].strip('-')}"
    migration = slow_migration(src, dst, name, tmp_path, "--p2p", *case.options)
    src_caps, dst_caps = migration_capabilities(src, name), migration_capabilities(dst, name)
    for cap, state in {**case.both, **case.source_only}.items():
        assert src_caps[cap] is state, (cap, src_caps)
    for cap, state in case.both.items():
        assert dst_caps[cap] is state, (cap, dst_caps)
    for cap in case.source_only:
        assert dst_caps[cap] is False
    src_params = qmp(src, name, "query-migrate-parameters")
    assert src_params["max-bandwidth"] == 1024 * 1024
    for key, value in case.params.items():
        assert src_params[key] == value, (key, src_params[key])
    if case.growing:  # a second pass must happen: at 40 MiB/s the first takes ~7 s
        assert virsh(src.uri, "migrate-setspeed", name, "40")[0] == 0
        info = wait_query_migrate(src, name, lambda i: _counter(i, case.growing) > 0, 120)
        assert info["status"] == "active"
    assert virsh(src.uri, "migrate-setspeed", name, "100000")[0] == 0
    assert qmp(src, name, "query-migrate-parameters")["max-bandwidth"] == 100000 * 1024 * 1024
    rc, _, err = migration.finish(180)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    completed = virsh(dst.uri, "domjobinfo", "--completed", name)[1]
    for label in case.completed:
        assert label in completed, completed
    cleanup(dst, name)


def test_auto_converge_throttles_the_guest(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --auto-converge with its initial/increment values is on the source QEMU only;
    # a guest dirtying faster than --bandwidth gets throttled (query-migrate's
    # cpu-throttle-percentage, and domjobinfo's "Auto converge throttle"), starting at the
    # initial value and climbing by the increment; the migration then completes.
    src, dst = hosts
    name = "m-ac"
    start_guest(src, name, tmp_path, dirty_mb=96)
    thread, result = migrate_in_thread(src, dst, name, "--bandwidth", "40", "--auto-converge",
                                       "--auto-converge-initial", "30",
                                       "--auto-converge-increment", "15")
    wait_qemu(dst, name)
    wait_query_migrate(src, name, lambda i: i.get("status") == "active")
    assert migration_capabilities(src, name)["auto-converge"] is True
    assert migration_capabilities(dst, name)["auto-converge"] is False
    params = qmp(src, name, "query-migrate-parameters")
    assert (params["cpu-throttle-initial"], params["cpu-throttle-increment"]) == (30, 15)
    info = wait_query_migrate(src, name, lambda i: "cpu-throttle-percentage" in i, 120)
    throttle = info["cpu-throttle-percentage"]
    assert throttle >= 30 and (throttle - 30) % 15 == 0, throttle
    rc, jobinfo, err = virsh(src.uri, "domjobinfo", name)
    assert rc == 0 and "Auto converge throttle:" in jobinfo, (jobinfo, err)
    # under TCG a throttled vCPU still dirties fast: lift the limit rather than wait
    assert virsh(src.uri, "migrate-setspeed", name, "100000")[0] == 0
    thread.join(240)
    assert result["r"][0] == 0, result
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    cleanup(dst, name)


@pytest.mark.parametrize(("client", "action"), [
    ("virsh", "suspend"), ("pyvirsh", "suspend"), ("virsh", "postcopy"),
    ("pyvirsh", "postcopy")])
def test_timeout_acts_on_a_guest_that_dirties_too_fast(hosts: list[LabHost], tmp_path: Path,
                                                       client: str, action: str) -> None:
    # Checks: a guest dirtying faster than --bandwidth allows never converges; after
    # --timeout 3 the client either suspends it on the source (--timeout-suspend, the
    # default) or switches to post-copy (--timeout-postcopy); the migration then completes
    # and the guest runs on the destination (it was running when the migration began),
    # resumed there by post-copy (RESUMED detail 3) only in the second case.
    src, dst = hosts
    name = f"m-to-{client}-{action}"
    log = start_guest(src, name, tmp_path, dirty_mb=96)
    program = "virsh" if client == "virsh" else str(Path(sys.executable).parent / "pyvirsh")
    extra = ["--postcopy", "--timeout-postcopy"] if action == "postcopy" else \
        ["--timeout-suspend"]
    events = ResumeEvents(dst.uri, name)
    began = time.monotonic()
    with RunnerSampler([src.uri, dst.uri], name):
        proc = run([program, "-c", src.uri, "migrate", "--live", "--timeout", "3", *extra,
                    "--bandwidth", "40", name, dst.uri], timeout=240)
    events.close()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began > 3  # it did not converge before the timeout
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", name)[0] == 1
    assert (3 in events.details) is (action == "postcopy"), events.details
    last = log.last()
    assert last is not None
    assert beat(serial(dst, name), above=last.n) > last.n
    cleanup(dst, name)


@pytest.mark.parametrize("how", ["after-precopy", "migrate-postcopy"])
def test_postcopy_switch(hosts: list[LabHost], tmp_path: Path, how: str) -> None:
    # Checks: a guest that cannot converge within --bandwidth moves by post-copy, switched
    # either by --postcopy-after-precopy (virsh reacts to the iteration event) or by
    # `virsh migrate-postcopy` while it runs; the destination resumes it in post-copy mode,
    # the heartbeat continues there, no CORRUPT line, and one runner at every sample.
    src, dst = hosts
    name = f"m-pc-{how}"
    log = start_guest(src, name, tmp_path, dirty_mb=96)
    events = ResumeEvents(dst.uri, name)
    extra = ["--postcopy-after-precopy"] if how == "after-precopy" else []
    result: dict[str, tuple[int, str, str]] = {}
    thread = threading.Thread(target=lambda: result.update(r=virsh(
        src.uri, "migrate", "--live", "--postcopy", "--bandwidth", "40", *extra, name,
        dst.uri)))
    with RunnerSampler([src.uri, dst.uri], name):
        thread.start()
        if how == "migrate-postcopy":
            time.sleep(2)
            assert virsh(src.uri, "migrate-postcopy", name)[0] == 0
        thread.join(180)
    events.close()
    rc, _, err = result["r"]
    assert rc == 0, err
    assert 3 in events.details, events.details  # RESUMED_POSTCOPY on the destination
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    last = log.last()
    assert last is not None
    dst_log = serial(dst, name)
    assert beat(dst_log, above=last.n) > last.n
    assert log.corrupt_lines() == [] and dst_log.corrupt_lines() == []
    cleanup(dst, name)


def test_migrate_postcopy_refused_without_flag(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    migration = slow_migration(src, dst, "m-nopc", tmp_path)
    rc, _, err = virsh(src.uri, "migrate-postcopy", "m-nopc")
    assert rc == 1 and "VIR_MIGRATE_POSTCOPY" in err, err
    assert virsh(src.uri, "domjobabort", "m-nopc")[0] == 0
    migration.finish(120)
    assert_still_on_source(src, dst, "m-nopc")
    cleanup(src, "m-nopc")


def test_dname_listen_address_migrateuri(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --dname renames on arrival; --listen-address and --migrateuri choose where the
    # destination QEMU listens and where the source sends (the migration works through them).
    src, dst = hosts
    start_guest(src, "m-name", tmp_path)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--dname", "m-renamed",
                       "--listen-address", "10.77.0.2", "--migrateuri", "tcp://10.77.0.2:49215",
                       "m-name", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "--reason", "m-renamed")[1] == "running (migrated)\n\n"
    assert virsh(dst.uri, "dominfo", "m-name")[0] == 1
    cleanup(dst, "m-renamed")


def test_xml_host_side_change_accepted_abi_change_refused(hosts: list[LabHost],
                                                          tmp_path: Path) -> None:
    src, dst = hosts
    start_guest(src, "m-xml", tmp_path)
    live = virsh(src.uri, "dumpxml", "--migratable", "m-xml")[1]
    titled = tmp_path / "titled.xml"
    titled.write_text(live.replace("</name>", "</name>\n  <title>moved</title>", 1))
    bigger = tmp_path / "bigger.xml"
    bigger.write_text(live.replace("<vcpu placement='static'>1</vcpu>",
                                   "<vcpu placement='static'>2</vcpu>"))
    rc, _, err = virsh(src.uri, "migrate", "--live", "--xml", str(bigger), "m-xml", dst.uri)
    assert rc == 1 and "guest ABI" in err, err
    assert virsh(src.uri, "domstate", "m-xml")[1] == "running\n\n"
    rc, _, err = virsh(src.uri, "migrate", "--live", "--xml", str(titled), "m-xml", dst.uri)
    assert rc == 0, err
    assert "<title>moved</title>" in virsh(dst.uri, "dumpxml", "m-xml")[1]
    cleanup(dst, "m-xml")


def test_persistent_xml(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    start_guest(src, "m-pxml", tmp_path)
    inactive = virsh(src.uri, "dumpxml", "--migratable", "m-pxml")[1]
    pxml = tmp_path / "persistent.xml"
    pxml.write_text(inactive.replace("</name>", "</name>\n  <description>kept</description>",
                                     1))
    rc, _, err = virsh(src.uri, "migrate", "--live", "--persistent", "--persistent-xml",
                       str(pxml), "m-pxml", dst.uri)
    assert rc == 0, err
    assert "<description>kept</description>" in \
        virsh(dst.uri, "dumpxml", "--inactive", "m-pxml")[1]
    assert "<description>kept</description>" not in virsh(dst.uri, "dumpxml", "m-pxml")[1]
    cleanup(dst, "m-pxml")


def test_change_protection_refuses_redefinition(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    migration = slow_migration(src, dst, "m-prot", tmp_path, "--change-protection")
    xml = tmp_path / "redefine.xml"
    xml.write_text(virsh(src.uri, "dumpxml", "--inactive", "m-prot")[1])
    rc, _, err = virsh(src.uri, "define", str(xml))
    assert rc == 1 and "migration job" in err, err
    assert virsh(src.uri, "domjobabort", "m-prot")[0] == 0
    migration.finish(120)
    assert_still_on_source(src, dst, "m-prot")
    cleanup(src, "m-prot")


def test_unsafe_cache_on_shared_storage(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks libvirt's safety rule: a disk on shared storage with cache=writeback is
    # refused without --unsafe; with --unsafe the migration proceeds and the guest arrives.
    from pyvirt.lab.hosts import host_exec_argv

    src, dst = hosts
    image = Path("/var/lib/pyvirt/shared/m-cache.qcow2")
    create = ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"]
    assert run(host_exec_argv(src, create)).returncode == 0
    xml = tmp_path / "m-cache.xml"
    xml.write_text(domain_xml("m-cache", disk=image, disk_format="qcow2")
                   .replace("cache='none'", "cache='writeback'"))
    assert virsh(src.uri, "create", str(xml))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--live", "m-cache", dst.uri)
    assert rc == 1 and "cache other than none or directsync" in err, err
    rc, _, err = virsh(src.uri, "migrate", "--live", "--unsafe", "m-cache", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-cache")[1] == "running\n\n"
    cleanup(dst, "m-cache")
    run(host_exec_argv(src, ["rm", "-f", str(image)]))


def test_concurrent_migrations_and_max_workers(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks the spec's concurrency rule: a migration holds one source worker during
    # Perform. With the default pool two guests migrate at the same time; with
    # max_workers = 1 (set at run time with virt-admin) the second waits its turn and
    # then succeeds instead of failing.
    src, dst = hosts
    for name in ("m-c1", "m-c2"):
        start_guest(src, name, tmp_path, dirty_mb=8)
    first, r1 = migrate_in_thread(src, dst, "m-c1", "--bandwidth", "30")
    second, r2 = migrate_in_thread(src, dst, "m-c2", "--bandwidth", "30")
    deadline = time.monotonic() + 30
    while not (qemu_pids(dst, "m-c1") and qemu_pids(dst, "m-c2")):
        assert time.monotonic() < deadline, "the two migrations did not run at once"
        time.sleep(0.05)
    first.join(180)
    second.join(180)
    assert r1["r"][0] == 0 and r2["r"][0] == 0, (r1, r2)
    for name in ("m-c1", "m-c2"):  # back to the source with a one-worker pool there
        cleanup(dst, name)
        start_guest(src, name, tmp_path, dirty_mb=8)
    admin(src, "srv-threadpool-set", "libvirtd", "--min-workers", "1", "--max-workers", "1")
    try:
        first, r1 = migrate_in_thread(src, dst, "m-c1", "--bandwidth", "30")
        time.sleep(1.0)
        second, r2 = migrate_in_thread(src, dst, "m-c2", "--bandwidth", "30")
        time.sleep(1.0)
        assert not qemu_pids(dst, "m-c2")  # waiting for the only worker, not failing
        first.join(180)
        second.join(180)
        assert r1["r"][0] == 0 and r2["r"][0] == 0, (r1, r2)
    finally:
        admin(src, "srv-threadpool-set", "libvirtd", "--max-workers", "20",
               "--min-workers", "5")
    for name in ("m-c1", "m-c2"):
        assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
        cleanup(dst, name)


def test_max_clients_on_the_destination_bounds_p2p_migrations(hosts: list[LabHost],
                                                             tmp_path: Path) -> None:
    # Checks the spec's other bound: a p2p migration holds one client connection on the
    # destination. With the destination's max_clients = 1 (virt-admin, at run time) a
    # second migration's connection waits in the listen queue until the first migration
    # ends, then it proceeds and succeeds instead of failing. (Nothing else may connect to
    # the destination meanwhile: the test watches its QEMUs from /proc.)
    src, dst = hosts
    for name in ("m-mc1", "m-mc2"):
        start_guest(src, name, tmp_path, dirty_mb=8)
    admin(dst, "srv-clients-set", "libvirtd", "--max-clients", "1",
          "--max-unauth-clients", "1")
    try:
        first, r1 = migrate_in_thread(src, dst, "m-mc1", "--bandwidth", "30")
        wait_qemu(dst, "m-mc1")
        second, r2 = migrate_in_thread(src, dst, "m-mc2", "--bandwidth", "30")
        time.sleep(2.0)
        assert first.is_alive() and not qemu_pids(dst, "m-mc2")  # waiting, not failing
        first.join(180)
        second.join(180)
        assert r1["r"][0] == 0 and r2["r"][0] == 0, (r1, r2)
        assert r2["s"] > 4, r2  # it waited for the first to finish
    finally:
        admin(dst, "srv-clients-set", "libvirtd", "--max-clients", "5000",
              "--max-unauth-clients", "20")
    for name in ("m-mc1", "m-mc2"):
        assert virsh(dst.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
        cleanup(dst, name)


def test_graphicsuri(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: --graphicsuri reaches QEMU's client_migrate_info for a SPICE guest (QEMU
    # accepts it and the guest moves); an unknown scheme is refused before anything moves.
    src, dst = hosts
    xml = tmp_path / "m-gfx.xml"
    xml.write_text(domain_xml("m-gfx").replace(
        "<memballoon", "<graphics type='spice' autoport='yes'/>\n    <memballoon"))
    assert virsh(src.uri, "create", str(xml))[0] == 0
    beat(serial(src, "m-gfx"), above=1)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--graphicsuri", "ftp://10.77.0.2",
                       "m-gfx", dst.uri)
    assert rc == 1 and "unknown graphics type ftp" in err, err
    assert virsh(src.uri, "domstate", "m-gfx")[1] == "running\n\n"
    rc, _, err = virsh(src.uri, "migrate", "--live", "--graphicsuri",
                       "spice://10.77.0.2:5900", "m-gfx", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-gfx")[1] == "running\n\n"
    cleanup(dst, "m-gfx")


def test_postcopy_link_lost_leaves_both_sides_paused(hosts: list[LabHost],
                                                     tmp_path: Path) -> None:
    # Checks: the link breaks after the post-copy switchover; neither host discards or
    # resumes its part of the guest: both report paused (post-copy failed), both QEMUs
    # still exist, and the migration command reports the failure.
    src, dst = hosts
    name = "m-pcfail"
    start_guest(src, name, tmp_path, dirty_mb=96)
    result: dict[str, tuple[int, str, str]] = {}
    thread = threading.Thread(target=lambda: result.update(r=virsh(
        src.uri, "migrate", "--live", "--p2p", "--postcopy", "--bandwidth", "5",
        "--postcopy-bandwidth", "1", name,
        dst.uri, timeout=240)))
    thread.start()
    deadline = time.monotonic() + 30
    while not qemu_pids(dst, name):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    assert virsh(src.uri, "migrate-postcopy", name)[0] == 0
    time.sleep(1.5)
    link = f"pvlab-h{dst.index}"
    assert run(["ip", "link", "set", link, "down"]).returncode == 0
    try:
        thread.join(200)
    finally:
        run(["ip", "link", "set", link, "up"])
    rc, _, err = result["r"]
    assert rc == 1, err
    time.sleep(6)  # the destination notices the dead client by keepalive
    for host in (src, dst):
        state = virsh(host.uri, "domstate", "--reason", name)[1]
        assert state == "paused (post-copy failed)\n\n", (host.name, state)
        assert qemu_pids(host, name), host.name
    cleanup(src, name)
    cleanup(dst, name)
