"""The fast grid for storage migration (NBD + mirror): two real pyvirtd processes, fake QEMUs.

The fake QEMU (``tests/fakes/fake_qemu_block.py``) serves NBD exports on the destination and
runs mirror jobs on the source over a toy protocol, with ``pause-before-switchover`` and
``migrate-continue``; both journal every QMP command, so each test sees exactly what each side
did. Both daemons run on this machine, so the destination's images live in a directory of
their own (``--xml`` changes the disk paths, a host-side detail) and are pre-created by the
destination's Prepare.

Two workers (STYLE habit 10):
  ``_migrate(pair, case)``  a storage migration that succeeds: the guest runs (migrated) on
                            the destination, its images were pre-created with the source's
                            format and size, the source mirrored exactly the copied disks to
                            the destination's exports (sync, copy-mode, speed) and ended each
                            mirror at pre-switchover before migrate-continue, the NBD nodes
                            and server are gone, job statistics count the disk bytes, O5
  ``_fails(pair, case)``    one that fails or is refused: the guest runs on the source with
                            its own disks (no NBD node or mirror left), the destination holds
                            no domain, QEMU, port or pre-created image; then a retry works (O6)
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pyvirt
from pyvirt.constants import MigrateFlags as F
from tests.functional import gridutil as grid
from tests.functional.gridutil import (
    MODES,
    Background,
    Pair,
    assert_destination_clean,
    assert_no_job,
    assert_no_listening_ports,
    daemon_pair,
    domstate,
    emptied_after_test,
    eventually,
    fake_qemus,
    virsh,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with daemon_pair(tmp_path_factory, "grid-storage") as pair:
        yield pair


@pytest.fixture
def pair(daemons: Pair) -> Iterator[Pair]:
    yield from emptied_after_test(daemons)


# -- guests with disks -------------------------------------------------------------------------
@dataclass(frozen=True)
class Disk:
    target: str
    where: str = "local"  # local | shared
    format: str = "raw"
    size: int = MIB
    backing: bool = False  # qcow2 over a raw backing file on shared storage


@dataclass(frozen=True)
class Guest:
    name: str
    uuid: str
    #: target → (source path, destination path)
    paths: Mapping[str, tuple[Path, Path]]
    disks: tuple[Disk, ...]
    dst_xml: Path


_counter = iter(range(1, 10**6))


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _make_image(pair: Pair, disk: Disk, path: Path) -> None:
    if disk.backing:
        base = pair.shared / f"base{next(_counter)}.raw"
        _qemu_img("create", "-q", "-f", "raw", str(base), str(disk.size))
        _qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(path))
    else:
        _qemu_img("create", "-q", "-f", disk.format, str(path), str(disk.size))


def _xml(name: str, uuid: str, disks: tuple[Disk, ...], paths: Mapping[str, Path]) -> str:
    devices = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{d.format}' "
        f"cache='none'/><source file='{paths[d.target]}'/>"
        f"<target dev='{d.target}' bus='virtio'/></disk>" for d in disks)
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{devices}<memballoon model='none'/></devices></domain>")


def new_guest(pair: Pair, disks: tuple[Disk, ...], faults: Mapping[str, Any] | None = None,
              ) -> Guest:
    """A running guest on the source; local disks get a destination path of their own."""
    name, uuid = f"s{next(_counter)}", str(uuidlib.uuid4())
    dst_dir = pair.tmp / "dst"
    dst_dir.mkdir(exist_ok=True)
    paths: dict[str, tuple[Path, Path]] = {}
    for disk in disks:
        here = pair.shared if disk.where == "shared" else pair.tmp
        src_path = here / f"{name}-{disk.target}.img"
        _make_image(pair, disk, src_path)
        dst_path = src_path if disk.where == "shared" else dst_dir / src_path.name
        paths[disk.target] = (src_path, dst_path)
    xml = pair.tmp / f"{name}.xml"
    xml.write_text(_xml(name, uuid, disks, {t: p[0] for t, p in paths.items()}))
    dst_xml = pair.tmp / f"{name}-dst.xml"
    dst_xml.write_text(_xml(name, uuid, disks, {t: p[1] for t, p in paths.items()}))
    pair.src.set_faults(dict(faults or {}))
    try:
        assert virsh(pair.src, "create", str(xml))[0] == 0
    finally:
        pair.src.set_faults({})
    return Guest(name, uuid, paths, disks, dst_xml)


def assert_source_runs(pair: Pair, guest: Guest) -> None:
    grid.assert_source_runs(pair, grid.Guest(guest.name, guest.uuid))


def image_info(path: Path) -> dict[str, Any]:
    import json

    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    info: dict[str, Any] = json.loads(out)
    return info


# -- what each side did ------------------------------------------------------------------------
def entries(daemon: Any, mark: int, name: str) -> list[dict[str, Any]]:
    return list(daemon.journal_entries(mark, name))


def commands(daemon: Any, mark: int, name: str, cmd: str) -> list[dict[str, Any]]:
    return [e["args"] for e in entries(daemon, mark, name) if e["cmd"] == cmd]


def order(daemon: Any, mark: int, name: str) -> list[str]:
    return [e["cmd"] for e in entries(daemon, mark, name)]


def assert_no_nbd_nodes_left(daemon: Any, mark: int, name: str) -> None:
    """Every NBD client node the source added was deleted again."""
    added = {a["node-name"] for a in commands(daemon, mark, name, "blockdev-add")}
    deleted = {a["node-name"] for a in commands(daemon, mark, name, "blockdev-del")}
    assert added == deleted, f"NBD nodes left: {added - deleted}"


# -- worker 1: storage migrations that succeed ---------------------------------------------------
@dataclass(frozen=True)
class Case:
    options: tuple[str, ...] = ("--live", "--copy-storage-all")
    mode: str = "normal"  # a key of MODES, or "api" (pyvirt client, migrate3 with ``api``)
    disks: tuple[Disk, ...] = (Disk("vda"),)
    #: the disks expected to be copied (default: the local ones)
    copied: tuple[str, ...] | None = None
    sync: str = "full"
    copy_mode: str = "background"
    speed: int | None = None
    api: tuple[Mapping[str, Any], int] = ({}, 0)


def _copied(case: Case) -> list[str]:
    if case.copied is not None:
        return list(case.copied)
    return [d.target for d in case.disks if d.where == "local"]


def _migrate(pair: Pair, case: Case, **fmt: str) -> Guest:
    # Checks: see the module docstring (worker 1).
    guest = new_guest(pair, case.disks)
    marks = pair.src.journal_mark(), pair.dst.journal_mark()
    _run(pair, case, guest, **fmt)
    assert domstate(pair.dst, guest.name) == "running (migrated)"
    eventually(lambda: not fake_qemus(pair.src, guest.name), "source QEMU still alive")
    copied = _copied(case)
    _check_images(guest, copied)
    _check_source(pair, marks[0], guest, case, copied)
    _check_destination(pair, marks[1], guest, copied)
    stats = virsh(pair.dst, "domjobinfo", "--completed", guest.name)[1]
    assert "File total:" in stats and "File processed:" in stats, stats
    assert_no_job(pair.dst, guest.name)
    assert_no_listening_ports(pair)
    return guest


def _run(pair: Pair, case: Case, guest: Guest, **fmt: str) -> None:
    if case.mode == "api":
        params, flags = case.api
        src, dst = pyvirt.open(pair.src.uri), pyvirt.open(pair.dst.uri)
        try:
            params = {**params, "destination_xml": guest.dst_xml.read_text()}
            src.lookupByName(guest.name).migrate3(dst, params, flags)
        finally:
            dst.close()
            src.close()
        return
    options = [o.format(**fmt) for o in case.options]
    rc, _, err = virsh(pair.src, "migrate", *options, *MODES[case.mode], "--xml",
                       str(guest.dst_xml), guest.name, pair.dst.uri)
    assert rc == 0, err


def _check_images(guest: Guest, copied: list[str]) -> None:
    for disk in guest.disks:
        src_path, dst_path = guest.paths[disk.target]
        if disk.target not in copied:
            continue
        assert dst_path != src_path and dst_path.exists(), f"{disk.target} not pre-created"
        mine, theirs = image_info(src_path), image_info(dst_path)
        assert (theirs["format"], theirs["virtual-size"]) == \
            (mine["format"], mine["virtual-size"])
        assert theirs.get("backing-filename") == mine.get("backing-filename")
        if disk.format == "raw":
            # sparse (the fake writes no data; qemu-img allocates the first block); one
            # more block while the guest runs: ext4 keeps the ownership record of dynamic
            # ownership (trusted.libvirt.security.* xattrs) in a block of its own
            assert dst_path.stat().st_blocks * 512 <= 2 * 4096


def _check_source(pair: Pair, mark: int, guest: Guest, case: Case, copied: list[str]) -> None:
    name = guest.name
    mirrors = commands(pair.src, mark, name, "blockdev-mirror")
    assert sorted(m["job-id"] for m in mirrors) == sorted(f"migration-{t}" for t in copied)
    for mirror in mirrors:
        assert (mirror["sync"], mirror["copy-mode"]) == (case.sync, case.copy_mode)
        assert mirror.get("speed") == case.speed
    cancels = commands(pair.src, mark, name, "block-job-cancel")
    assert sorted(c["device"] for c in cancels) == sorted(m["job-id"] for m in mirrors)
    assert not any(c["force"] for c in cancels)
    sent = order(pair.src, mark, name)
    assert sent.index("blockdev-mirror") < sent.index("migrate") \
        < sent.index("block-job-cancel") < sent.index("migrate-continue"), sent
    caps = [c for a in commands(pair.src, mark, name, "migrate-set-capabilities")
            for c in a["capabilities"] if c["capability"] == "pause-before-switchover"]
    assert caps and caps[-1]["state"] is True
    assert_no_nbd_nodes_left(pair.src, mark, name)


def _check_destination(pair: Pair, mark: int, guest: Guest, copied: list[str]) -> None:
    name = guest.name
    exports = commands(pair.dst, mark, name, "block-export-add")
    assert sorted(e["name"] for e in exports) == \
        sorted(f"drive-virtio-disk{ord(t[-1]) - ord('a')}" for t in copied)
    assert all(e["writable"] for e in exports)
    sent = order(pair.dst, mark, name)
    assert sent.index("nbd-server-start") < sent.index("migrate-incoming")
    assert sent.index("nbd-server-stop") < sent.index("cont"), sent
    # discard=unmap while the copy runs (holes stay holes), the argv's setting afterwards
    raw = len([d for d in guest.disks if d.target in copied and d.format == "raw"])
    reopened = [o["discard"] for a in commands(pair.dst, mark, name, "blockdev-reopen")
                for o in a["options"]]
    assert reopened == ["unmap"] * raw + ["ignore"] * raw, reopened


LOCAL_AND_SHARED = (Disk("vda"), Disk("vdb", where="shared"))
TWO_LOCAL = (Disk("vda", format="qcow2", size=2 * MIB), Disk("vdb"))

GRID = {
    "all-raw": Case(),
    "all-qcow2-two-disks": Case(disks=TWO_LOCAL),
    "all-p2p": Case(mode="p2p", disks=TWO_LOCAL),
    "inc-backing-on-shared": Case(("--live", "--copy-storage-inc"), mode="p2p",
                                  disks=(Disk("vda", format="qcow2", backing=True),),
                                  sync="top"),
    "synchronous-writes": Case(("--live", "--copy-storage-all",
                                "--copy-storage-synchronous-writes"),
                               copy_mode="write-blocking"),
    "migrate-disks-subset": Case(("--live", "--copy-storage-all", "--migrate-disks", "vda"),
                                 disks=LOCAL_AND_SHARED),
    "migrate-disks-p2p": Case(("--live", "--copy-storage-all", "--migrate-disks", "vdb"),
                              mode="p2p", disks=(Disk("vda", where="shared"), Disk("vdb"))),
    "default-skips-shared": Case(disks=LOCAL_AND_SHARED),
    "bandwidth-limits-mirrors": Case(("--live", "--copy-storage-all", "--bandwidth", "64"),
                                     speed=64 * MIB),
    "api-migrate3": Case(mode="api", api=({"migrate_disks": ["vda"]},
                                          F.LIVE | F.NON_SHARED_DISK),
                         disks=LOCAL_AND_SHARED),
}


@pytest.mark.parametrize("case", GRID.values(), ids=GRID.keys())
def test_storage_migrate(pair: Pair, case: Case) -> None:
    _migrate(pair, case)


def test_storage_disks_port(pair: Pair) -> None:
    # _migrate with --disks-port: the destination's NBD server listens on that port.
    port = str((pair.dst.migration_ports or range(0))[-1])
    mark = pair.dst.journal_mark()
    guest = _migrate(pair, Case(("--live", "--copy-storage-all", "--disks-port", port),
                                mode="p2p"))
    started = commands(pair.dst, mark, guest.name, "nbd-server-start")
    assert started[0]["addr"]["data"]["port"] == port


def test_storage_disks_uri(pair: Pair) -> None:
    # _migrate with --disks-uri tcp://ADDR:PORT: the destination listens there and the source
    # connects there.
    port = (pair.dst.migration_ports or range(0))[-2]
    marks = pair.src.journal_mark(), pair.dst.journal_mark()
    guest = _migrate(pair, Case(("--live", "--copy-storage-all", "--disks-uri",
                                 f"tcp://{pair.address}:{port}")))
    started = commands(pair.dst, marks[1], guest.name, "nbd-server-start")
    assert started[0]["addr"]["data"] == {"host": pair.address, "port": str(port)}
    nbd = [a for a in commands(pair.src, marks[0], guest.name, "blockdev-add")
           if a["driver"] == "nbd"]
    assert nbd[0]["server"] == {"type": "inet", "host": pair.address, "port": str(port)}


def test_storage_progress_counts_disk_bytes(pair: Pair) -> None:
    # While the mirror copies (8 MiB over 2 s), domjobinfo on the source shows the disk
    # bytes (File total/processed) and counts them in the data total.
    guest = new_guest(pair, (Disk("vda", size=8 * MIB),),
                      faults={"mirror_duration_s": 2.0})
    running = _background(pair, guest, "--live", "--copy-storage-all")
    eventually(lambda: "File processed:" in virsh(pair.src, "domjobinfo", guest.name)[1],
               "no disk progress", timeout=5)
    info = virsh(pair.src, "domjobinfo", guest.name)[1]
    assert "File total:       8.000 MiB" in info and "Data total:       8.000 MiB" in info, info
    rc, _, err = running.wait()
    assert rc == 0, err
    stats = virsh(pair.dst, "domjobinfo", "--completed", guest.name)[1]
    assert "File processed:   8.000 MiB" in stats, stats


# -- worker 2: storage migrations that fail -----------------------------------------------------
@dataclass(frozen=True)
class Failure:
    error: str
    options: tuple[str, ...] = ("--live", "--copy-storage-all")
    mode: str = "normal"
    disks: tuple[Disk, ...] = (Disk("vda"),)
    src_faults: Mapping[str, Any] = field(default_factory=dict)
    dst_faults: Mapping[str, Any] = field(default_factory=dict)
    #: a destination image that exists before (its size in bytes)
    existing: int | None = None
    with_xml: bool = True
    retry: tuple[str, ...] = ("--live", "--copy-storage-all")
    retry_mode: str | None = None  # default: the same mode


def _fails(pair: Pair, case: Failure) -> None:
    # Checks: see the module docstring (worker 2).
    guest = new_guest(pair, case.disks, faults=case.src_faults)
    _, dst_path = guest.paths["vda"]
    if case.existing is not None:
        _qemu_img("create", "-q", "-f", "raw", str(dst_path), str(case.existing))
    pair.dst.set_faults(dict(case.dst_faults))
    mark = pair.src.journal_mark()
    xml = ("--xml", str(guest.dst_xml)) if case.with_xml else ()
    rc, _, err = virsh(pair.src, "migrate", *case.options, *MODES[case.mode], *xml,
                       guest.name, pair.dst.uri)
    assert rc == 1 and any(part in err for part in case.error.split("|")), err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)
    assert_no_nbd_nodes_left(pair.src, mark, guest.name)
    if "migrate-continue" not in str(case.src_faults) and "cont" not in str(case.dst_faults):
        assert not commands(pair.src, mark, guest.name, "migrate-continue")  # never switched
    if case.existing is None:
        assert not dst_path.exists() or dst_path == guest.paths["vda"][0], \
            "pre-created image left behind"
    else:
        assert image_info(dst_path)["virtual-size"] == case.existing  # untouched
        dst_path.unlink()
    pair.dst.set_faults({})
    if case.src_faults:
        pair.src.control(guest.uuid, {"faults": {}})
    retry_mode = MODES[case.retry_mode or case.mode]
    rc, _, err = virsh(pair.src, "migrate", *case.retry, *retry_mode, "--xml",
                       str(guest.dst_xml), guest.name, pair.dst.uri)
    assert rc == 0, err
    assert domstate(pair.dst, guest.name) == "running (migrated)"


SLOW_MIRROR = {"mirror_duration_s": 1.0}
FAILURES = {
    "mirror-error": Failure("Input/output error", src_faults={"mirror_error":
                                                                "Input/output error"}),
    "mirror-error-p2p": Failure("Input/output error", mode="p2p",
                                src_faults={"mirror_error": "Input/output error"}),
    "destination-full": Failure("No space left on device",
                                disks=(Disk("vda", size=4 * MIB),),
                                dst_faults={"nbd_full_after_bytes": MIB}),
    "destination-full-p2p": Failure("No space left on device", mode="p2p",
                                    disks=(Disk("vda", size=4 * MIB),),
                                    dst_faults={"nbd_full_after_bytes": MIB}),
    "existing-image-wrong-size": Failure("virtual size", existing=2 * MIB),
    "nbd-server-refused": Failure("fake: no NBD", dst_faults={
        "fail_commands": {"nbd-server-start": "fake: no NBD"}}),
    "export-refused-p2p": Failure("fake: no export", mode="p2p", dst_faults={
        "fail_commands": {"block-export-add": "fake: no export"}}),
    "mirror-refused": Failure("fake: no mirror", src_faults={
        "fail_commands": {"blockdev-mirror": "fake: no mirror"}}),
    "migrate-continue-fails": Failure("fake: cannot continue", src_faults={
        "fail_commands": {"migrate-continue": "fake: cannot continue"}}),
    # the copy completed, but the destination cannot resume: Confirm resumes the source
    "finish-fails": Failure("fake: cannot resume", dst_faults={
        "fail_commands": {"cont": "fake: cannot resume"}}),
    "finish-fails-p2p": Failure("fake: cannot resume", mode="p2p", dst_faults={
        "fail_commands": {"cont": "fake: cannot resume"}}),
    "unknown-disk": Failure("disk target vdz not found",
                            options=("--live", "--copy-storage-all", "--migrate-disks", "vdz")),
    "other-local-disk-unsafe": Failure(
        "Migration without shared storage is unsafe",
        options=("--live", "--copy-storage-all", "--migrate-disks", "vda"),
        disks=(Disk("vda"), Disk("vdb")),
        retry=("--live", "--copy-storage-all")),
    "shared-disk-listed": Failure("on shared storage",
                                  options=("--live", "--copy-storage-all", "--migrate-disks",
                                           "vda,vdb"), disks=LOCAL_AND_SHARED),
    "tunnelled": Failure("not supported with tunnelled migration", mode="tunnelled",
                         retry_mode="p2p"),
    "no-copy-option": Failure("Migration without shared storage is unsafe",
                              options=("--live",)),
    "postcopy": Failure("post-copy with storage migration",
                        options=("--live", "--postcopy", "--copy-storage-all")),
}


@pytest.mark.parametrize("key", FAILURES)
def test_storage_migration_fails(pair: Pair, key: str) -> None:
    _fails(pair, FAILURES[key])


def test_storage_refused_offline_and_direct(pair: Pair) -> None:
    # --offline and --direct cannot copy storage (libvirt's / pyvirt's refusals): nothing
    # happens on either side.
    guest = new_guest(pair, (Disk("vda"),))
    rc, _, err = virsh(pair.src, "migrate", "--offline", "--persistent", "--copy-storage-all",
                       guest.name, pair.dst.uri)
    assert rc == 1 and "offline migration cannot handle non-shared storage" in err, err
    rc, _, err = virsh(pair.src, "migrate", "--live", "--direct", "--copy-storage-all",
                       "--migrateuri", f"tcp:{pair.address}:1", guest.name, pair.dst.uri)
    assert rc == 1 and "direct migration cannot honour" in err, err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)


# -- a storage migration in progress ----------------------------------------------------------
def _background(pair: Pair, guest: Guest, *options: str) -> Background:
    result: list[tuple[int, str, str]] = []
    argv = ("migrate", *options, "--xml", str(guest.dst_xml), guest.name, pair.dst.uri)
    thread = threading.Thread(target=lambda: result.append(virsh(pair.src, *argv)))
    thread.start()
    return Background(thread, result)


def _mirroring(pair: Pair, guest: Guest) -> None:
    eventually(lambda: "File processed:" in virsh(pair.src, "domjobinfo", guest.name)[1]
               and bool(fake_qemus(pair.dst, guest.name)), "the mirror did not start")


@pytest.mark.parametrize("mode", ["normal", "p2p"])
def test_storage_domjobabort_during_mirror(pair: Pair, mode: str) -> None:
    # _fails's checks, for domjobabort while the disks are copied (before QMP migrate):
    # virsh reports the cancellation, the mirrors are cancelled (forced) and their nodes go.
    guest = new_guest(pair, (Disk("vda", size=8 * MIB),), faults={"mirror_duration_s": 4.0})
    mark = pair.src.journal_mark()
    running = _background(pair, guest, "--live", "--copy-storage-all", *MODES[mode])
    _mirroring(pair, guest)
    assert virsh(pair.src, "domjobabort", guest.name)[0] == 0
    rc, _, err = running.wait()
    assert rc == 1 and "cancel" in err.lower(), err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)
    assert [c["force"] for c in commands(pair.src, mark, guest.name, "block-job-cancel")] \
        == [True]
    assert "migrate" not in order(pair.src, mark, guest.name)
    assert_no_nbd_nodes_left(pair.src, mark, guest.name)
    assert not guest.paths["vda"][1].exists()


def test_storage_destination_qemu_dies_during_mirror(pair: Pair) -> None:
    # _fails's checks, for a destination QEMU killed while the disks are copied.
    guest = new_guest(pair, (Disk("vda", size=8 * MIB),), faults={"mirror_duration_s": 4.0})
    mark = pair.src.journal_mark()
    running = _background(pair, guest, "--live", "--copy-storage-all", "--p2p")
    _mirroring(pair, guest)
    for pid in fake_qemus(pair.dst, guest.name):
        os.kill(pid, signal.SIGKILL)
    rc, _, err = running.wait()
    # whichever the source notices first: its mirror's broken NBD connection, or the
    # destination's answer that its incoming QEMU is gone (p2p checks every 2 s)
    assert rc == 1 and ("mirroring disk vda failed" in err
                        or "the destination QEMU exited during migration" in err), err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)
    assert_no_nbd_nodes_left(pair.src, mark, guest.name)
    eventually(lambda: not guest.paths["vda"][1].exists(), "pre-created image left behind")
    pair.src.control(guest.uuid, {"faults": {}})
    rc, _, err = virsh(pair.src, "migrate", "--live", "--copy-storage-all", "--p2p", "--xml",
                       str(guest.dst_xml), guest.name, pair.dst.uri)
    assert rc == 0, err
