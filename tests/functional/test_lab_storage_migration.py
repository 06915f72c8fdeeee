"""Storage migration of real guests between lab hosts (NBD + mirror, QEMU 10, TCG).

Local disks live in each host's private ``/var/lib/pyvirt/images`` (the same path, another
directory on every host), so a copy really has to happen. The guest's workload writes a
verifiable pattern to ``/dev/vda`` throughout (4 MiB cycled at 4 MiB/s: every block is
re-verified about once a second, so writes made on the source are checked on the destination).

The worker ``_migrate`` checks:
  - at every ~100 ms sample at most one host runs the guest (RunnerSampler);
  - each copied disk's destination image is another file than the source's (different
    host directories) and ``qemu-img compare`` finds it identical to the source image: the
    migration runs with ``--suspend``, so the destination guest is paused at the end and
    has written nothing since the switchover, while the source QEMU is gone (its image final);
  - the completed job's statistics count the disk bytes (``File total``/``File processed``);
  - after ``resume`` the heartbeat continues from where it stopped (same boot) and the disk
    writer keeps writing and verifying on the destination; no ``CORRUPT`` line anywhere.
Failure cases check: the guest keeps running on the source with its disk verifying, the
destination holds no domain, QEMU, pre-created image or listening migration/NBD port, the
source's QEMU no mirror job or NBD client node (storageutil.assert_nothing_left), and (loop
filesystems) nothing is left mounted. Crashes and more failures: test_lab_storage_failures.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.lab.hosts import LabHost, host_exec_argv
from tests.functional.guestlog import SerialLog
from tests.functional.labutil import serial, two_hosts
from tests.functional.migrationutil import (
    RunnerSampler,
    assert_still_on_source,
    beat,
    cleanup,
    fill_filesystem,
    host_run,
    qemu_pids,
    small_filesystem,
    virsh,
)
from tests.functional.storageutil import (
    IMAGES,
    MIB,
    SHARED,
    Disk,
    assert_no_corruption,
    assert_nothing_left,
    disk_progress,
    make_image,
    on_host,
    remove_images,
    start,
    wait_disk,
    when_copying,
)

pytestmark = [pytest.mark.qemu, pytest.mark.lab]



@pytest.fixture(scope="module")
def hosts() -> Iterator[list[LabHost]]:
    yield from two_hosts()


# -- images ------------------------------------------------------------------------------------
def compare(src: LabHost, dst: LabHost, path: str, fmt: str) -> None:
    mine, theirs = on_host(src, path), on_host(dst, path)
    assert mine.exists() and theirs.exists()
    assert os.stat(mine).st_ino != os.stat(theirs).st_ino  # another file on another host
    if path.startswith(IMAGES):
        assert mine != theirs
    # inside the source's namespace, where backing files resolve as the hosts name them
    proc = subprocess.run(host_exec_argv(src, ["qemu-img", "compare", "-U", "-f", fmt, "-F",
                                               fmt, path, str(theirs)]),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- worker: a storage migration that succeeds -------------------------------------------------
def _migrate(hosts: list[LabHost], tmp: Path, name: str, disks: list[Disk], *options: str,
             copied: tuple[str, ...] = ("vda",), client: str = "virsh") -> None:
    # Checks: see the module docstring (the worker).
    src, dst = hosts
    try:
        _migrate_checked(hosts, tmp, name, disks, options, copied, client)
    finally:
        cleanup(dst, name)
        cleanup(src, name)


def _migrate_checked(hosts: list[LabHost], tmp: Path, name: str, disks: list[Disk],
                     options: tuple[str, ...], copied: tuple[str, ...], client: str) -> None:
    src, dst = hosts
    src_log = start(src, name, tmp, disks)
    argv = [client, "-c", src.uri, "migrate", "--live", "--suspend", "--verbose", *options,
            name, dst.uri]
    with RunnerSampler([src.uri, dst.uri], name):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "Migration: [100 %]" in proc.stderr
    assert virsh(dst.uri, "domstate", "--reason", name)[1] == "paused (user)\n\n"
    assert not qemu_pids(src, name)
    for disk in disks:
        if disk.target in copied:
            compare(src, dst, disk.path, disk.fmt)
        elif disk.path.startswith(IMAGES):
            assert not on_host(dst, disk.path).exists()
    stats = virsh(dst.uri, "domjobinfo", "--completed", name)[1]
    total = re.search(r"File total:\s+([\d.]+) MiB", stats)
    processed = re.search(r"File processed:\s+([\d.]+) MiB", stats)
    assert total and processed and float(total.group(1)) >= 4, stats  # what the mirrors moved
    assert processed.group(1) == total.group(1), stats
    last = src_log.last()
    assert last is not None
    gen_at_switch = max(gen for gen, *_ in disk_progress(src_log))
    assert virsh(dst.uri, "resume", name)[0] == 0
    dst_log = serial(dst, name)
    assert beat(dst_log, above=last.n + 5) > last.n
    wait_disk(dst_log, min_gen=gen_at_switch + 2)  # blocks written on the source re-verified
    assert_no_corruption(src_log, dst_log)


def test_storage_all_qcow2_stock_virsh(hosts: list[LabHost], tmp_path: Path) -> None:
    # _migrate with the stock virsh, --copy-storage-all, one local qcow2 disk.
    disk = Disk(f"{IMAGES}/s-q.qcow2", "qcow2")
    make_image(hosts[0], disk.path, "qcow2", 64)
    try:
        _migrate(hosts, tmp_path, "s-q", [disk], "--copy-storage-all")
    finally:
        remove_images(hosts, disk.path)


def test_storage_all_raw_p2p_pyvirsh(hosts: list[LabHost], tmp_path: Path) -> None:
    # _migrate with pyvirsh --p2p, a local raw disk; the destination image stays sparse.
    disk = Disk(f"{IMAGES}/s-r.raw", "raw")
    make_image(hosts[0], disk.path, "raw", 64)
    try:
        _migrate(hosts, tmp_path, "s-r", [disk], "--p2p", "--copy-storage-all",
                 client=str(Path(sys.executable).parent / "pyvirsh"))
        src_blocks = on_host(hosts[0], disk.path).stat().st_blocks
        dst_blocks = on_host(hosts[1], disk.path).stat().st_blocks
        assert dst_blocks * 512 <= src_blocks * 512 + 16 * MIB, (src_blocks, dst_blocks)
    finally:
        remove_images(hosts, disk.path)


def test_storage_migrate_disks_subset(hosts: list[LabHost], tmp_path: Path) -> None:
    # _migrate with --migrate-disks vda: the local vda is copied, vdb (on shared storage)
    # is not (no image appears in the destination's private directory).
    vda = Disk(f"{IMAGES}/s-sub.qcow2", "qcow2")
    vdb = Disk(f"{SHARED}/s-sub-b.raw", "raw", "vdb")
    make_image(hosts[0], vda.path, "qcow2", 64)
    make_image(hosts[0], vdb.path, "raw", 64, seed_mib=1)
    try:
        _migrate(hosts, tmp_path, "s-sub", [vda, vdb], "--copy-storage-all",
                 "--migrate-disks", "vda")
    finally:
        remove_images(hosts, vda.path, vdb.path)


def test_storage_inc_shared_backing(hosts: list[LabHost], tmp_path: Path) -> None:
    # _migrate with --copy-storage-inc: a local qcow2 overlay over a raw backing file on
    # shared storage; the destination pre-creates the overlay over the same backing file.
    base = f"{SHARED}/s-inc-base.raw"
    top = Disk(f"{IMAGES}/s-inc.qcow2", "qcow2")
    make_image(hosts[0], base, "raw", 64, seed_mib=16)
    make_image(hosts[0], top.path, "qcow2", 64, backing=base)
    try:
        _migrate(hosts, tmp_path, "s-inc", [top], "--copy-storage-inc")
        info = subprocess.run(["qemu-img", "info", "-U", str(on_host(hosts[1], top.path))],
                              capture_output=True, text=True).stdout
        assert f"backing file: {base}" in info, info
    finally:
        remove_images(hosts, top.path, base)


# -- failures ---------------------------------------------------------------------------------
def _refused_or_failed(hosts: list[LabHost], name: str, log: SerialLog, error: str,
                       result: tuple[int, str, str], dst_path: str | None) -> None:
    rc, _, err = result
    assert rc == 1 and error in err, err
    src, dst = hosts
    assert_still_on_source(src, dst, name)
    last = max(gen for gen, *_ in disk_progress(log))
    wait_disk(log, min_gen=last + 1)  # still writing and verifying on its own disk
    assert_no_corruption(log)
    # no domain, QEMU, pre-created image or listening port on the destination, no mirror
    # or NBD client node left in the source's QEMU
    assert_nothing_left(src, dst, name, created=(dst_path,) if dst_path else ())


def test_storage_destination_too_small(hosts: list[LabHost], tmp_path: Path) -> None:
    # The destination filesystem (16 MiB) cannot hold the image's 24 MiB of data: Prepare
    # refuses before anything moves, with a clear error, and creates nothing.
    src, dst = hosts
    disk = Disk(f"{IMAGES}/small/s-small.raw", "raw")
    make_image(src, disk.path, "raw", 64, seed_mib=24)
    try:
        with small_filesystem(dst, f"{IMAGES}/small", 16):
            log = start(src, "s-small", tmp_path, [disk])
            with RunnerSampler([src.uri, dst.uri], "s-small"):
                result = virsh(src.uri, "migrate", "--live", "--copy-storage-all", "s-small",
                               dst.uri)
            _refused_or_failed(hosts, "s-small", log, "not enough free space", result,
                               disk.path)
    finally:
        cleanup(src, disk.path.rsplit("/", 1)[1].split(".")[0])
        remove_images([src], disk.path)


def test_storage_destination_fills_up(hosts: list[LabHost], tmp_path: Path) -> None:
    # The destination filesystem fills up while the disk is copied (slowed to 4 MiB/s; a
    # filler takes the room after Prepare): the mirror fails with ENOSPC, the migration
    # fails, the guest runs on with its own disk, the pre-created image is gone.
    src, dst = hosts
    disk = Disk(f"{IMAGES}/small/s-full.raw", "raw")
    make_image(src, disk.path, "raw", 64, seed_mib=24)
    try:
        with small_filesystem(dst, f"{IMAGES}/small", 48) as mountpoint:
            log = start(src, "s-full", tmp_path, [disk])
            result: list[tuple[int, str, str]] = []
            thread = threading.Thread(target=lambda: result.append(virsh(
                src.uri, "migrate", "--live", "--copy-storage-all", "--bandwidth", "4",
                "s-full", dst.uri)))
            with RunnerSampler([src.uri, dst.uri], "s-full"):
                thread.start()
                try:
                    when_copying(src, dst, "s-full")
                    fill_filesystem(dst, mountpoint)
                finally:
                    thread.join(120)
            host_run(dst, "rm", "-f", f"{mountpoint}/filler")
            _refused_or_failed(hosts, "s-full", log, "No space left on device", result[0],
                               disk.path)
    finally:
        cleanup(src, disk.path.rsplit("/", 1)[1].split(".")[0])
        remove_images([src], disk.path)


def test_storage_abort_during_disk_copy(hosts: list[LabHost], tmp_path: Path) -> None:
    # domjobabort while the disk is copied (2 MiB/s): the mirror is cancelled, the guest
    # runs on with its own disk and every write, the destination is clean.
    src, dst = hosts
    disk = Disk(f"{IMAGES}/s-abort.qcow2", "qcow2")
    make_image(src, disk.path, "qcow2", 64, seed_mib=16)
    try:
        log = start(src, "s-abort", tmp_path, [disk])
        result: list[tuple[int, str, str]] = []
        thread = threading.Thread(target=lambda: result.append(virsh(
            src.uri, "migrate", "--live", "--p2p", "--copy-storage-all", "--bandwidth", "2",
            "s-abort", dst.uri)))
        with RunnerSampler([src.uri, dst.uri], "s-abort"):
            thread.start()
            try:
                when_copying(src, dst, "s-abort")
                assert virsh(src.uri, "domjobabort", "s-abort")[0] == 0
            finally:
                thread.join(120)
        _refused_or_failed(hosts, "s-abort", log, "cancel", result[0], disk.path)
    finally:
        cleanup(src, disk.path.rsplit("/", 1)[1].split(".")[0])
        remove_images(hosts, disk.path)


def test_storage_local_disk_refused_without_copy(hosts: list[LabHost], tmp_path: Path) -> None:
    # A local disk and no --copy-storage-*: refused as unsafe, nothing happens.
    src, dst = hosts
    disk = Disk(f"{IMAGES}/s-unsafe.qcow2", "qcow2")
    make_image(src, disk.path, "qcow2", 64)
    try:
        log = start(src, "s-unsafe", tmp_path, [disk])
        result = virsh(src.uri, "migrate", "--live", "s-unsafe", dst.uri)
        _refused_or_failed(hosts, "s-unsafe", log, "Migration without shared storage is unsafe",
                           result, disk.path)
    finally:
        cleanup(src, disk.path.rsplit("/", 1)[1].split(".")[0])
        remove_images(hosts, disk.path)
