"""Storage migration on real QEMU: crashes and failures during the disk copy, and what each
storage option does (lab hosts, QEMU 10, TCG).

The guest writes a verifiable pattern to its local disk throughout (see
test_lab_storage_migration.py). Every failure case checks:
  - the migration fails (exit code 1) with a clear error, and at every ~100 ms sample at
    most one host runs the guest (RunnerSampler);
  - the guest keeps running on the source, on its own disk, and the disk pattern keeps
    writing and verifying (no ``CORRUPT``);
  - nothing is left (storageutil.assert_nothing_left): on the destination no domain, no
    QEMU, no image it pre-created, no listening migration/NBD port in its namespace, the
    same definitions as before; in the source's QEMU no block job and no ``migration-*``
    NBD client node (``query-block-jobs``, ``query-named-block-nodes``).
The options test checks each option's effect in QEMU or in the destination's namespace
while the copy runs.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyvirt.lab.hosts import LAB_ROOT, LabHost, lab_up
from tests.functional.labutil import serial, two_hosts
from tests.functional.migrationutil import (
    RunnerSampler,
    SlowMigration,
    assert_still_on_source,
    beat,
    cleanup,
    qemu_pids,
    qmp,
    stop_daemon,
    virsh,
)
from tests.functional.storageutil import (
    IMAGES,
    MIGRATION_PORTS,
    SHARED,
    Disk,
    assert_disk_verifies,
    assert_no_corruption,
    assert_nothing_left,
    definitions,
    disk_progress,
    listening_ports,
    make_image,
    qmp_direct,
    remove_images,
    start,
    wait_disk,
    when_copying,
)

pytestmark = [pytest.mark.qemu, pytest.mark.lab]

PYVIRSH = str(Path(sys.executable).parent / "pyvirsh")
FILE_PROCESSED = re.compile(r"File processed:\s+([\d.]+) (B|KiB|MiB|GiB)\n")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
PROGRESS = re.compile(r"Migration: \[\s*(\d+) %\]")


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


# -- failures during the disk copy -------------------------------------------------------------
Hosts = Callable[[LabHost, LabHost, str], None]


def _fail_during_copy(hosts: list[LabHost], tmp: Path, name: str, strike: Hosts, error: str,
                      before_restart: Hosts | None = None) -> None:
    """Start a p2p storage migration copying at 1 MiB/s (16 MiB of data: the mirror is far
    from ready), ``strike`` while the disk is copied, then check the failure (module doc);
    ``before_restart`` checks the hosts after the failure, before a killed daemon restarts."""
    src, dst = hosts
    disk = Disk(f"{IMAGES}/{name}.qcow2", "qcow2")
    make_image(src, disk.path, "qcow2", 64, seed_mib=16)
    before = definitions(dst)
    try:
        log = start(src, name, tmp, [disk])
        src_before = definitions(src)
        migration = SlowMigration(src, dst, name, ("--p2p", "--copy-storage-all"))
        migration.start()
        try:
            when_copying(src, dst, name)
            strike(src, dst, name)
        finally:
            rc, _, err = migration.finish(120)
        assert rc == 1 and error in err, err
        if before_restart is not None:
            before_restart(src, dst, name)
        lab_up(2)  # restarts a daemon that was killed (its recovery runs)
        assert_still_on_source(src, dst, name)
        assert_disk_verifies(log)
        assert_nothing_left(src, dst, name, created=(disk.path,), dst_domains=before)
        assert definitions(src) == src_before
    finally:
        lab_up(2)  # never leave a host without its daemon
        cleanup(dst, name)
        cleanup(src, name)
        remove_images(hosts, disk.path)


def _kill_daemon(host: Callable[[LabHost, LabHost], LabHost]) -> Hosts:
    return lambda src, dst, name: stop_daemon(host(src, dst), signal.SIGKILL)


def _source_qemu_on_its_own(src: LabHost, dst: LabHost, name: str) -> None:
    # no daemon on the source: its QEMU runs the guest and still holds the NBD client nodes
    # of the dead daemon's mirror (what the restarted daemon has to remove)
    assert qmp_direct(src, name, "query-status")["status"] == "running"
    nodes = {n["node-name"] for n in qmp_direct(src, name, "query-named-block-nodes")}
    assert {"migration-vda-storage", "migration-vda-format"} <= nodes, nodes


def test_source_daemon_killed_during_disk_copy(hosts: list[LabHost], tmp_path: Path) -> None:
    # SIGKILL of the source pyvirtd while its mirror copies the disk (before any memory
    # moves): the destination drops the incoming guest when the p2p connection dies; the
    # restarted source resolves its journal (perform3): the mirror and NBD client nodes
    # gone, the guest running on its own disk.
    _fail_during_copy(hosts, tmp_path, "sf-srckill", _kill_daemon(lambda s, d: s),
                      "End of file while reading data", _source_qemu_on_its_own)


def _destination_qemu_orphaned(src: LabHost, dst: LabHost, name: str) -> None:
    # no daemon on the destination: its incoming QEMU still runs and listens (migration
    # and NBD ports): what the restarted daemon has to clean up
    assert qemu_pids(dst, name)
    assert len(listening_ports(dst) & set(MIGRATION_PORTS)) >= 2, listening_ports(dst)


def test_destination_daemon_killed_during_disk_copy(hosts: list[LabHost],
                                                    tmp_path: Path) -> None:
    # SIGKILL of the destination pyvirtd during the disk copy: the source sees the p2p link
    # die (keepalive), cancels its mirror and keeps the guest; the restarted destination
    # resolves its journal (prepare): its QEMU killed, the NBD port closed, the pre-created
    # image removed.
    _fail_during_copy(hosts, tmp_path, "sf-dstkill", _kill_daemon(lambda s, d: d),
                      "Lost connection to destination host", _destination_qemu_orphaned)


def _kill_destination_qemu(src: LabHost, dst: LabHost, name: str) -> None:
    for pid in qemu_pids(dst, name):
        subprocess.run(["kill", "-9", str(pid)], check=True)


def test_destination_qemu_killed_during_disk_copy(hosts: list[LabHost],
                                                  tmp_path: Path) -> None:
    # The destination's QEMU is SIGKILLed during the disk copy (1 MiB/s: the mirror would
    # notice its dead NBD target only at its next write, up to ~20 s later): the source
    # learns it from the destination within seconds and the migration fails saying so;
    # the destination daemon drops the incoming guest and the image it pre-created.
    _fail_during_copy(hosts, tmp_path, "sf-dstqemu", _kill_destination_qemu,
                      "the destination QEMU exited during migration")


def test_tunnelled_storage_copy_refused(hosts: list[LabHost], tmp_path: Path) -> None:
    # --p2p --tunnelled --copy-storage-all: refused with the engine's message before
    # anything moves; the guest is untouched, the destination holds nothing.
    src, dst = hosts
    name = "sf-tun"
    disk = Disk(f"{IMAGES}/{name}.qcow2", "qcow2")
    make_image(src, disk.path, "qcow2", 64)
    before = definitions(dst)
    try:
        log = start(src, name, tmp_path, [disk])
        last = log.last()
        assert last is not None
        with RunnerSampler([src.uri, dst.uri], name):
            rc, _, err = virsh(src.uri, "migrate", "--live", "--p2p", "--tunnelled",
                               "--copy-storage-all", name, dst.uri)
        assert rc == 1, err
        assert "migration of non-shared storage is not supported with tunnelled migration" \
            in err, err
        assert virsh(src.uri, "domstate", "--reason", name)[1] == "running (booted)\n\n"
        assert beat(log, above=last.n) > last.n  # same boot, not paused
        assert re.match(r"Job type:\s+None", virsh(src.uri, "domjobinfo", name)[1])
        assert_disk_verifies(log)
        assert_nothing_left(src, dst, name, created=(disk.path,), dst_domains=before)
    finally:
        cleanup(src, name)
        remove_images(hosts, disk.path)


# -- the options' effects ----------------------------------------------------------------------
def _mirror(host: LabHost, name: str) -> dict[str, object] | None:
    jobs = [j for j in qmp(host, name, "query-block-jobs") if j["device"] == "migration-vda"]
    return jobs[0] if jobs else None


def _hop(frm: LabHost, to: LabHost, name: str, tmp: Path, client: str, options: list[str],
         while_copying: Callable[[], None], synchronous: bool = False) -> str:
    """Migrate ``name`` (--live --verbose, copy at 4 MiB/s) from ``frm`` to ``to``;
    ``while_copying`` runs during the disk copy; once the mirror is ready its copy mode is
    checked, the bandwidth is lifted so memory converges. Returns the client's stderr."""
    errfile = tmp / f"migrate-{frm.name}.err"
    argv = [client, "-c", frm.uri, "migrate", "--live", "--verbose", "--bandwidth", "4",
            *options, name, to.uri]
    with RunnerSampler([frm.uri, to.uri], name), errfile.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            when_copying(frm, to, name)
            while_copying()
            deadline = time.monotonic() + 60
            while not ((mirror := _mirror(frm, name)) and mirror.get("ready")):
                assert time.monotonic() < deadline, mirror
                time.sleep(0.2)
            # QEMU's mirror job reports actively-synced only in write-blocking copy mode
            # (--copy-storage-synchronous-writes), once source and target are in sync
            assert mirror["type"] == "mirror" and mirror["actively-synced"] is synchronous, \
                mirror
            assert virsh(frm.uri, "migrate-setspeed", name, "8000")[0] == 0
            assert proc.wait(120) == 0, errfile.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return errfile.read_text()


def _file_processed_grows(frm: LabHost, name: str) -> None:
    """domjobinfo during the disk copy: the file (disk) bytes processed keep growing."""
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while len(set(seen)) < 3:
        assert time.monotonic() < deadline, seen
        out = virsh(frm.uri, "domjobinfo", name)[1]
        m = FILE_PROCESSED.search(out)  # virsh scales: 0.000 B at the start, then KiB, MiB
        assert m is not None, out
        seen.append(float(m.group(1)) * UNITS[m.group(2)])
        time.sleep(0.3)
    assert seen == sorted(seen), seen


def _listens(host: LabHost, port: int) -> Callable[[], None]:
    def check() -> None:
        assert port in listening_ports(host), f"nothing listens on {host.name}:{port}"
    return check


def test_storage_options_show_in_qemu(hosts: list[LabHost], tmp_path: Path) -> None:
    # Three hops of one guest, each option's effect checked while its disk is copied:
    # 1. pyvirsh --p2p --disks-port 49214 --copy-storage-synchronous-writes --verbose:
    #    the destination's NBD server listens on 49214 (ss in its namespace), domjobinfo's
    #    file bytes grow, the mirror runs write-blocking (actively-synced), pyvirsh prints
    #    intermediate percentages and reaches 100 %;
    # 2. back with --disks-uri unix:///var/lib/pyvirt/shared/...: the socket exists (the
    #    shared directory: both hosts see it) and the source's NBD client node connects to
    #    it; the mirror runs in the background mode;
    # 3. again with --disks-uri tcp://10.77.0.2:49213: the port listens there.
    # After each hop the guest keeps writing and verifying its disk on the new host, and no
    # port or socket is left.
    src, dst = hosts
    name = "sf-opt"
    disk = Disk(f"{IMAGES}/{name}.qcow2", "qcow2")
    sock = f"{SHARED}/{name}-nbd.sock"
    make_image(src, disk.path, "qcow2", 64, seed_mib=16)
    try:
        start(src, name, tmp_path, [disk])

        def first() -> None:
            _listens(dst, 49214)()
            _file_processed_grows(src, name)

        err = _hop(src, dst, name, tmp_path, PYVIRSH,
                   ["--p2p", "--copy-storage-all", "--disks-port", "49214",
                    "--copy-storage-synchronous-writes"], first, synchronous=True)
        percents = [int(p) for p in PROGRESS.findall(err)]
        assert percents and percents[-1] == 100 and any(0 < p < 100 for p in percents), err
        _arrived(dst, name)
        assert 49214 not in listening_ports(dst)

        def second() -> None:
            assert (LAB_ROOT / "shared" / sock[len(SHARED) + 1:]).is_socket()
            nodes = {n["node-name"]: n for n in qmp(dst, name, "query-named-block-nodes")}
            assert sock in str(nodes["migration-vda-storage"]["image"]["filename"]), nodes

        _hop(dst, src, name, tmp_path, "virsh",
             ["--copy-storage-all", "--disks-uri", f"unix://{sock}"], second)
        _arrived(src, name)
        assert not (LAB_ROOT / "shared" / sock[len(SHARED) + 1:]).exists()

        _hop(src, dst, name, tmp_path, "virsh",
             ["--copy-storage-all", "--disks-uri", f"tcp://{dst.address}:49213"],
             _listens(dst, 49213))
        _arrived(dst, name)
        assert not {49214, 49213} & listening_ports(dst)
    finally:
        cleanup(dst, name)
        cleanup(src, name)
        remove_images(hosts, disk.path, sock)


def _arrived(host: LabHost, name: str) -> None:
    """The guest runs on ``host`` and its disk pattern keeps verifying there."""
    assert virsh(host.uri, "domstate", "--reason", name)[1] == "running (migrated)\n\n"
    log = serial(host, name)
    beat(log, above=2)
    gens = [gen for gen, *_ in disk_progress(log)]
    wait_disk(log, min_gen=(max(gens) if gens else 0) + 2)
    assert_no_corruption(log)
