"""Live migration of real guests between two lab hosts: modes, refusals, failures, recovery.

Every successful case goes through ``migrate_and_check`` (tests/functional/migrationutil.py);
states and reasons must end as libvirt's: destination running (migrated) or paused with
--suspend, source shut off (migrated) or gone when undefined; persistent definitions follow
--persistent / --undefinesource. Failure cases check that the guest keeps running on the
source and the destination holds no trace of it. Options and their effect on the QEMUs are in
test_lab_migration_options.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LabHost, lab_up
from pyvirt.qemu import owner_xattrs
from pyvirt.qemu.owner_xattrs import Owner
from tests.functional.daemon_util import run
from tests.functional.guestlog import SerialLog
from tests.functional.labutil import serial, two_hosts
from tests.functional.migrationutil import (
    RunnerSampler,
    assert_still_on_source,
    beat,
    cleanup,
    fill_filesystem,
    host_run,
    migrate_and_check,
    migrate_in_thread,
    qemu_pids,
    qmp_status,
    restart_daemon,
    slow_migration,
    small_filesystem,
    source_argv,
    start_guest,
    stop_daemon,
    virsh,
    wait_daemon_gone,
    wait_qemu,
)
from tests.functional.storageutil import (
    SHARED,
    Disk,
    disk_progress,
    make_image,
    on_host,
    remove_images,
    start,
    wait_disk,
)

pytestmark = [pytest.mark.qemu, pytest.mark.lab]


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


def test_migrate_live_normal(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = migrate_and_check(hosts, tmp_path, "m-normal", "--live", "--verbose")
    assert virsh(dst.uri, "domstate", "--reason", "m-normal")[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", "m-normal")[0] == 1  # transient: gone from the source
    cleanup(dst, "m-normal")


def test_migrate_live_p2p_and_back(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = migrate_and_check(hosts, tmp_path, "m-p2p", "--live", "--p2p")
    assert virsh(dst.uri, "domstate", "--reason", "m-p2p")[1] == "running (migrated)\n\n"
    rc, _, err = virsh(dst.uri, "migrate", "--live", "--p2p", "m-p2p", src.uri)
    assert rc == 0, err
    log = serial(src, "m-p2p")
    assert beat(log, above=(log.last().n if log.last() else 0)) > 0  # type: ignore[union-attr]
    assert virsh(src.uri, "domstate", "--reason", "m-p2p")[1] == "running (migrated)\n\n"
    cleanup(src, "m-p2p")


def test_migrate_persistent_undefinesource(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = migrate_and_check(hosts, tmp_path, "m-pers", "--live", "--persistent",
                        "--undefinesource", persistent=True)
    rc, out, _ = virsh(dst.uri, "dominfo", "m-pers")
    assert rc == 0 and "Persistent:     yes" in out
    assert virsh(src.uri, "dominfo", "m-pers")[0] == 1  # undefined on the source
    cleanup(dst, "m-pers")


def test_migrate_keeps_source_definition(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = migrate_and_check(hosts, tmp_path, "m-keep", "--live", persistent=True)
    assert virsh(src.uri, "domstate", "--reason", "m-keep")[1] == "shut off (migrated)\n\n"
    out = virsh(dst.uri, "dominfo", "m-keep")[1]
    assert "Persistent:     no" in out  # no --persistent: transient on the destination
    stats = virsh(src.uri, "domjobinfo", "--completed", "m-keep")[1]
    assert "Completed" in stats and "Outgoing migration" in stats
    assert "Memory total:     256" in stats  # the guest's RAM, as QEMU counted it
    cleanup(dst, "m-keep")
    cleanup(src, "m-keep")


def test_migrate_suspend_leaves_destination_paused(hosts: list[LabHost],
                                                   tmp_path: Path) -> None:
    src, dst = hosts
    start_guest(src, "m-susp", tmp_path)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--suspend", "m-susp", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-susp")[1] == "paused\n\n"
    assert virsh(dst.uri, "resume", "m-susp")[0] == 0
    log = serial(dst, "m-susp")
    beat(log, above=log.last().n if log.last() else 0)  # type: ignore[union-attr]
    cleanup(dst, "m-susp")


def test_migrate_offline_moves_definition(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    xml = tmp_path / "m-off.xml"
    xml.write_text(domain_xml("m-off"))
    assert virsh(src.uri, "define", str(xml))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--offline", "--persistent", "m-off", dst.uri)
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "m-off")[1] == "shut off\n\n"
    assert virsh(src.uri, "domstate", "m-off")[1] == "shut off\n\n"
    cleanup(dst, "m-off")
    cleanup(src, "m-off")


@pytest.mark.parametrize("mode", [[], ["--p2p"]])
def test_refused_same_host(hosts: list[LabHost], tmp_path: Path, mode: list[str]) -> None:
    src = hosts[0]
    start_guest(src, "m-same", tmp_path)
    other_uri = f"qemu+unix:///system?socket={src.dir}/run/sock/libvirt-sock"
    rc, _, err = virsh(src.uri, "migrate", "--live", *mode, "m-same", other_uri)
    assert rc == 1 and "Attempt to migrate guest to the same host" in err, err
    assert virsh(src.uri, "domstate", "m-same")[1] == "running\n\n"
    cleanup(src, "m-same")


def test_refused_destination_unreachable(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    start_guest(src, "m-unreach", tmp_path)
    rc, _, err = virsh(src.uri, "migrate", "--live", "--p2p", "m-unreach",
                       "qemu+tcp://10.77.0.1:1/system")
    assert rc == 1 and "error:" in err
    assert_still_on_source(src, dst, "m-unreach")
    cleanup(src, "m-unreach")


def test_refused_name_clash_on_destination(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    start_guest(src, "m-clash", tmp_path)
    other = tmp_path / "other.xml"
    other.write_text(domain_xml("m-clash"))  # same name, another uuid
    assert virsh(dst.uri, "define", str(other))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--live", "m-clash", dst.uri)
    assert rc == 1 and "already exists" in err, err
    assert virsh(src.uri, "domstate", "m-clash")[1] == "running\n\n"
    assert virsh(dst.uri, "domstate", "m-clash")[1] == "shut off\n\n"
    cleanup(dst, "m-clash")
    cleanup(src, "m-clash")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("mode", [[], ["--p2p"]])
def test_hostile_dname_refused(hosts: list[LabHost], tmp_path: Path, mode: list[str]) -> None:
    # Checks (issue 10's first attack, stock virsh): a --dname that climbs out of the run
    # directory is refused with the name's reason; the victim directory and its canary are
    # untouched, no victim.log appears, the destination holds no object, and its run, log
    # and state directories are as before; the guest still runs on the source.
    src, dst = hosts
    victim = Path(tempfile.mkdtemp(prefix="pyvirt-victim-", dir="/tmp"))
    (victim / "canary").write_text("still here")
    try:
        start_guest(src, "m-dname", tmp_path)
        before = [_files(d) for d in (dst.run_dir, dst.log_dir, dst.state_dir)]
        dname = "x/" + "../" * 30 + str(victim).lstrip("/")
        rc, _, err = virsh(src.uri, "migrate", "--live", *mode, "--dname", dname, "m-dname",
                           dst.uri)
        assert rc == 1 and "cannot contain '/'" in err, err
        assert (victim / "canary").read_text() == "still here"
        assert not Path(f"{victim}.log").exists()
        assert virsh(dst.uri, "list", "--all", "--name")[1].split() == []
        logs = {f for f in _files(dst.log_dir) if f != "pyvirtd.log"}
        assert [_files(dst.run_dir), logs, _files(dst.state_dir)] == \
            [before[0], before[1] - {"pyvirtd.log"}, before[2]]
        assert_still_on_source(src, dst, "m-dname")
    finally:
        cleanup(src, "m-dname")
        shutil.rmtree(victim, ignore_errors=True)
        Path(f"{victim}.log").unlink(missing_ok=True)


def test_destination_qemu_killed_mid_migration(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    migration = slow_migration(src, dst, "m-kill", tmp_path)
    for pid in qemu_pids(dst, "m-kill"):
        os.kill(pid, signal.SIGKILL)
    rc, _, err = migration.finish(120)
    assert rc == 1 and "error:" in err
    assert_still_on_source(src, dst, "m-kill")
    cleanup(src, "m-kill")


def test_domjobabort_cancels(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    migration = slow_migration(src, dst, "m-abort", tmp_path, "--p2p")
    rc, out, _ = virsh(src.uri, "domjobinfo", "m-abort")
    assert rc == 0 and "Unbounded" in out and "Outgoing migration" in out
    assert virsh(src.uri, "domjobabort", "m-abort")[0] == 0
    rc, _, err = migration.finish(120)
    assert rc == 1 and "cancel" in err.lower(), err
    assert_still_on_source(src, dst, "m-abort")
    # never paused before the abort: the reason stays what it was (as libvirt)
    assert virsh(src.uri, "domstate", "--reason", "m-abort")[1] == "running (booted)\n\n"
    cleanup(src, "m-abort")


def test_python_libvirt_migrate_to_uri3_p2p(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    start_guest(src, "m-py", tmp_path)
    script = (
        "import libvirt\n"
        f"c = libvirt.open({src.uri!r})\n"
        "d = c.lookupByName('m-py')\n"
        f"d.migrateToURI3({dst.uri!r}, {{}}, "
        "libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)\n"
        "print('OK')\n")
    proc = run(["/usr/bin/python3", "-c", script], timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    assert virsh(dst.uri, "domstate", "--reason", "m-py")[1] == "running (migrated)\n\n"
    cleanup(dst, "m-py")


def test_unsafe_local_disk_refused(hosts: list[LabHost], tmp_path: Path) -> None:
    src, dst = hosts
    image = Path("/var/lib/pyvirt/images/m-disk.qcow2")
    create = ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"]
    from pyvirt.lab.hosts import host_exec_argv
    assert run(host_exec_argv(src, create)).returncode == 0
    xml = tmp_path / "m-disk.xml"
    xml.write_text(domain_xml("m-disk", disk=image, disk_format="qcow2"))
    assert virsh(src.uri, "create", str(xml))[0] == 0
    rc, _, err = virsh(src.uri, "migrate", "--live", "m-disk", dst.uri)
    assert rc == 1 and "Migration without shared storage is unsafe" in err, err
    assert virsh(src.uri, "domstate", "m-disk")[1] == "running\n\n"
    cleanup(src, "m-disk")
    run(host_exec_argv(src, ["rm", "-f", str(image)]))


def test_shared_disk_ownership_is_left_to_the_destination(hosts: list[LabHost],
                                                          tmp_path: Path) -> None:
    # Checks (dynamic ownership, issue 11): a disk on shared storage owned 4242:4242 mode
    # 0600 is pyvirt-qemu's while the guest runs, its owner recorded once; after a
    # successful migration the source's stop does not give it back (the destination's QEMU
    # uses it): still pyvirt-qemu's, one reference left (the destination's) naming
    # 4242:4242, the guest keeps writing its disk there; destroy on the destination gives
    # 4242:4242 back and removes the record.
    src, dst = hosts
    disk = Disk(f"{SHARED}/m-own.raw", "raw")
    make_image(src, disk.path, "raw", 64)
    image = on_host(src, disk.path)
    os.chown(image, 4242, 4242)
    image.chmod(0o600)
    qemu = pwd.getpwnam("pyvirt-qemu")
    try:
        src_log = start(src, "m-own", tmp_path, [disk])
        assert (image.stat().st_uid, image.stat().st_gid) == (qemu.pw_uid, qemu.pw_gid)
        assert owner_xattrs.read_record(str(image)) == (1, Owner(4242, 4242))
        rc, _, err = virsh(src.uri, "migrate", "--live", "m-own", dst.uri)
        assert rc == 0, err
        assert virsh(dst.uri, "domstate", "--reason", "m-own")[1] == "running (migrated)\n\n"
        assert not qemu_pids(src, "m-own")
        assert (image.stat().st_uid, image.stat().st_gid) == (qemu.pw_uid, qemu.pw_gid)
        assert owner_xattrs.read_record(str(image)) == (1, Owner(4242, 4242))
        at_switch = max(gen for gen, *_ in disk_progress(src_log))
        wait_disk(serial(dst, "m-own"), min_gen=at_switch + 1)
        assert virsh(dst.uri, "destroy", "m-own")[0] == 0
        assert (image.stat().st_uid, image.stat().st_gid) == (4242, 4242)
        assert owner_xattrs.read_record(str(image)) == (0, None)
    finally:
        cleanup(dst, "m-own")
        cleanup(src, "m-own")
        remove_images(hosts, disk.path)


def test_source_daemon_killed_during_perform(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: SIGKILL of the source pyvirtd mid-migration; after its restart the guest
    # runs only on the source and the destination holds nothing.
    src, dst = hosts
    migration = slow_migration(src, dst, "m-srckill", tmp_path, "--p2p")
    stop_daemon(src, signal.SIGKILL)
    assert migration.finish(120)[0] == 1
    lab_up(2)
    assert_still_on_source(src, dst, "m-srckill")
    cleanup(src, "m-srckill")


def test_destination_daemon_killed_during_perform(hosts: list[LabHost],
                                                  tmp_path: Path) -> None:
    # Checks: SIGKILL of the destination pyvirtd mid-migration; the source notices the dead
    # link, cancels and keeps the guest; the restarted destination cleans up its QEMU.
    src, dst = hosts
    migration = slow_migration(src, dst, "m-dstkill", tmp_path, "--p2p")
    stop_daemon(dst, signal.SIGKILL)
    rc, _, err = migration.finish(120)
    assert rc == 1, err
    lab_up(2)
    assert_still_on_source(src, dst, "m-dstkill")
    cleanup(src, "m-dstkill")


def test_source_daemon_dies_after_finish(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: the source pyvirtd dies right after journaling Confirm (the destination has
    # finished); after restart the source QEMU is stopped, the guest runs only on the
    # destination and its heartbeat continues there.
    src, dst = hosts
    restart_daemon(src, crash_at="out:confirm3")
    log = start_guest(src, "m-late", tmp_path)
    rc, _, _ = virsh(src.uri, "migrate", "--live", "--p2p", "m-late", dst.uri)
    assert rc == 1  # the daemon vanished under virsh
    wait_daemon_gone(src)
    lab_up(2)
    assert virsh(dst.uri, "domstate", "--reason", "m-late")[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", "m-late")[0] == 1
    assert not qemu_pids(src, "m-late")
    last = log.last()
    assert last is not None
    assert beat(serial(dst, "m-late"), above=last.n) > last.n
    cleanup(dst, "m-late")


def test_destination_daemon_dies_in_finish(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: the destination pyvirtd dies in Finish (guest received, not yet resumed);
    # the source waits for it, the restarted destination resumes the guest, the source
    # learns it and shuts its copy off: one runner, on the destination.
    src, dst = hosts
    restart_daemon(dst, crash_at="in:finish3")
    start_guest(src, "m-fin", tmp_path)
    result: dict[str, tuple[int, str, str]] = {}
    thread = threading.Thread(target=lambda: result.update(
        r=virsh(src.uri, "migrate", "--live", "--p2p", "m-fin", dst.uri)))
    with RunnerSampler([src.uri], "m-fin"):
        thread.start()
        wait_daemon_gone(dst)
        lab_up(2)
        thread.join(120)
    rc, _, err = result["r"]
    assert rc == 0, err
    assert virsh(dst.uri, "domstate", "--reason", "m-fin")[1] == "running (migrated)\n\n"
    assert virsh(src.uri, "dominfo", "m-fin")[0] == 1
    assert not qemu_pids(src, "m-fin")
    cleanup(dst, "m-fin")


def test_migrate_p2p_tunnelled(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks (besides migrate_and_check's): no migration port is opened on the destination; the
    # data went through the daemons' RPC connection.
    _, dst = migrate_and_check(hosts, tmp_path, "m-tun", "--live", "--p2p", "--tunnelled",
                      "--verbose")
    assert virsh(dst.uri, "domstate", "--reason", "m-tun")[1] == "running (migrated)\n\n"
    cleanup(dst, "m-tun")


def test_pyvirsh_migrate_modes(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks: pyvirsh itself migrates normal, p2p and p2p+tunnelled, back and forth.
    src, dst = hosts
    log = start_guest(src, "m-pv", tmp_path)
    pyvirsh = str(Path(sys.executable).parent / "pyvirsh")
    route = [(src, dst, []), (dst, src, ["--p2p"]), (src, dst, ["--p2p", "--tunnelled"])]
    for frm, to, extra in route:
        proc = run([pyvirsh, "-c", frm.uri, "migrate", "--live", "--verbose", *extra, "m-pv",
                    to.uri], timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "Migration: [100 %]" in proc.stderr
        assert virsh(to.uri, "domstate", "--reason", "m-pv")[1] == "running (migrated)\n\n"
        assert virsh(frm.uri, "dominfo", "m-pv")[0] == 1
    assert log.corrupt_lines() == [] and serial(dst, "m-pv").corrupt_lines() == []
    cleanup(dst, "m-pv")


def test_pyvirsh_direct_to_a_plain_qemu(hosts: list[LabHost], tmp_path: Path) -> None:
    # Checks pyvirt's --direct extension: the source migrates straight to a QEMU someone
    # started with -incoming (no daemon there); the source ends shut off, the destination
    # QEMU reports running, and the guest's counter continues there.
    from pyvirt.lab.hosts import host_exec_argv

    src, dst = hosts
    log = start_guest(src, "m-dir", tmp_path)
    argv = source_argv(src, "m-dir", tmp_path)
    qmp = tmp_path / "dst-qmp.sock"
    dst_log = tmp_path / "dst-serial.log"
    argv = [a.replace(str(src.dir / "log" / "qemu" / "m-dir-serial0.log"), str(dst_log))
            for a in argv]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off", "-incoming", "tcp:10.77.0.2:49999"]
    errors = open(tmp_path / "dst-qemu.err", "wb")  # noqa: SIM115 - QEMU writes it
    dest = subprocess.Popen(host_exec_argv(dst, argv), stdout=subprocess.DEVNULL,
                            stderr=errors)
    try:
        deadline = time.monotonic() + 20
        while not qmp.exists():
            assert time.monotonic() < deadline and dest.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        assert dest.poll() is None, (tmp_path / "dst-qemu.err").read_text()
        assert qmp_status(qmp) == "inmigrate"  # QEMU is up and listening
        pyvirsh = str(Path(sys.executable).parent / "pyvirsh")
        proc = run([pyvirsh, "-c", src.uri, "migrate", "--live", "--direct", "m-dir",
                    "qemu+tcp://unused/system", "--migrateuri", "tcp:10.77.0.2:49999"])
        assert proc.returncode == 0, proc.stderr
        assert virsh(src.uri, "dominfo", "m-dir")[0] == 1  # transient: gone, migrated
        assert qmp_status(qmp) == "running"
        last = log.last()
        assert last is not None
        assert beat(SerialLog(dst_log), above=last.n) > last.n
    finally:
        dest.kill()
        dest.wait()
        errors.close()


def test_abort_on_error_cancels_when_the_guest_hits_an_io_error(hosts: list[LabHost],
                                                                tmp_path: Path) -> None:
    # Checks --abort-on-error: the guest's disk lives on a small filesystem of the source
    # (so --unsafe); mid-migration the filesystem fills up, the guest's next write stops
    # it with an I/O error (QEMU's default werror=enospc), and the migration is cancelled
    # with libvirt's reason. The guest stays on the source, paused (I/O error); the
    # destination holds nothing.
    src, dst = hosts
    directory = "/var/lib/pyvirt/images/m-aoe"
    name = "m-aoe"
    with small_filesystem(src, directory, 48):
        disk = f"{directory}/disk.raw"
        host_run(src, "truncate", "-s", "64M", disk)
        # --unsafe: the operator vouches for the destination's copy of the disk
        host_run(dst, "mkdir", "-p", directory)
        host_run(dst, "truncate", "-s", "64M", disk)
        xml = tmp_path / f"{name}.xml"
        xml.write_text(domain_xml(name, dirty_mb=64, disk=disk, disk_format="raw"))
        assert virsh(src.uri, "create", str(xml))[0] == 0
        beat(serial(src, name), above=2)
        with RunnerSampler([src.uri, dst.uri], name):
            thread, result = migrate_in_thread(src, dst, name, "--unsafe", "--abort-on-error",
                                               "--bandwidth", "1")
            wait_qemu(dst, name)
            fill_filesystem(src, directory)
            thread.join(120)
        rc, _, err = result["r"]
        assert rc == 1 and "failed due to I/O error" in err, err
        assert virsh(src.uri, "domstate", "--reason", name)[1] == "paused (I/O error)\n\n"
        assert virsh(dst.uri, "dominfo", name)[0] == 1
        assert not qemu_pids(dst, name)
        cleanup(src, name)
    host_run(dst, "rm", "-rf", directory)
