"""Storage migration's pure parts: which disks move, image decisions, NBD addresses, the
cookie's ``<nbd>`` section with pyvirt's attributes, job statistics, the QEMU plan."""

from __future__ import annotations

import pytest

from pyvirt.conf.domain import DiskDef
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.constants import MigrateFlags as F
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.qemu.migration import images
from pyvirt.qemu.migration.capabilities import plan
from pyvirt.qemu.migration.cookie import CookieNBD, CookieNBDDisk, MigrationCookie
from pyvirt.qemu.migration.images import Decision, ImageInfo, ImageSpec
from pyvirt.qemu.migration.job import OutgoingJob
from pyvirt.qemu.migration.jobstats import job_info, job_stats
from pyvirt.qemu.migration.params import parse_request
from pyvirt.qemu.migration.phases import SourcePhase
from pyvirt.qemu.migration.storage import (
    DiskCopy,
    NbdAddress,
    StorageCopy,
    disks_to_copy,
    parse_disks_uri,
)
from pyvirt.qemu.migration.storage_src import mirror_args, nbd_disk, server_address

SHARED = ("/srv/shared",)
MIB = 1024 * 1024


def domain(*disks: str) -> str:
    return ("<domain type='qemu'><name>g</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            + "".join(disks) + "</devices></domain>")


def disk(target: str, path: str | None, extra: str = "", device: str = "disk") -> str:
    source = f"<source file='{path}'/>" if path else ""
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='qcow2'/>{source}"
            f"<target dev='{target}' bus='{'virtio' if device == 'disk' else 'sata'}'/>"
            f"{extra}</disk>")


DOM = parse_domain_xml(domain(
    disk("vda", "/var/lib/images/a.qcow2"), disk("vdb", "/srv/shared/b.qcow2"),
    disk("vdc", "/var/lib/images/c.qcow2", "<readonly/>"),
    disk("vdd", "/var/lib/images/d.qcow2", "<shareable/>"), disk("sda", None, device="cdrom")))


# -- which disks move -------------------------------------------------------------------------
def targets(found: list[DiskDef]) -> list[str]:
    return [d.target_dev for d in found]


def test_default_set_is_writable_local_unshared_disks() -> None:
    assert targets(disks_to_copy(DOM, (), SHARED)) == ["vda"]


def test_migrate_disks_chooses_exactly() -> None:
    assert targets(disks_to_copy(DOM, ("vda",), SHARED)) == ["vda"]


@pytest.mark.parametrize(("chosen", "code", "words"), [
    (("vdz",), ErrorCode.INVALID_ARG, "disk target vdz not found"),
    (("vdb",), ErrorCode.OPERATION_INVALID, "on shared storage"),
    (("vdc",), ErrorCode.OPERATION_INVALID, "only writable disks"),
    (("sda",), ErrorCode.OPERATION_INVALID, "only writable disks"),
])
def test_migrate_disks_refusals(chosen: tuple[str, ...], code: int, words: str) -> None:
    with pytest.raises(VirtError) as info:
        disks_to_copy(DOM, chosen, SHARED)
    assert info.value.code == code and words in str(info.value)


# -- destination images ---------------------------------------------------------------------
SPEC = ImageSpec("vda", "/var/lib/images/a.qcow2", "qcow2", 64 * MIB, allocation=8 * MIB)


@pytest.mark.parametrize(("existing", "free", "incremental", "expected"), [
    (ImageInfo("qcow2", 64 * MIB), None, False, Decision.USE),
    (None, 9 * MIB, False, Decision.CREATE),
])
def test_image_decisions(existing: ImageInfo | None, free: int | None, incremental: bool,
                         expected: Decision) -> None:
    assert images.decide(SPEC, existing, free, incremental) is expected


@pytest.mark.parametrize(("existing", "free", "incremental", "words"), [
    (ImageInfo("qcow2", 32 * MIB), None, False, "virtual size of 33554432 bytes"),
    (ImageInfo("raw", 64 * MIB), None, False, "is raw, the source's is qcow2"),
    (None, 7 * MIB, False, "not enough free space"),
    (None, None, False, "directory does not exist"),
    (None, 100 * MIB, True, "has no backing file"),
])
def test_image_refusals(existing: ImageInfo | None, free: int | None, incremental: bool,
                        words: str) -> None:
    with pytest.raises(VirtError, match=words):
        images.decide(SPEC, existing, free, incremental)


def test_create_commands() -> None:
    assert images.create_argv(SPEC, False) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "--", "/var/lib/images/a.qcow2",
        str(64 * MIB)]
    inc = ImageSpec("vda", "/i/top.qcow2", "qcow2", MIB, backing="/srv/shared/base.raw",
                    backing_format="raw")
    assert images.create_argv(inc, True) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "/srv/shared/base.raw", "-F", "raw",
        "--", "/i/top.qcow2", str(MIB)]
    raw = ImageSpec("vda", "/i/a.raw", "raw", MIB)  # no preallocation: sparse
    assert images.create_argv(raw, False) == ["qemu-img", "create", "-q", "-f", "raw", "--",
                                              "/i/a.raw", str(MIB)]


# -- NBD addresses ----------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "address"), [
    ("tcp://10.0.0.2:5000", NbdAddress("10.0.0.2", 5000)),
    ("tcp://10.0.0.2", NbdAddress("10.0.0.2", None)),
    ("tcp://[fd00::2]:5000", NbdAddress("fd00::2", 5000)),
    ("unix:///run/nbd.sock", NbdAddress(path="/run/nbd.sock")),
    ("unix:/run/nbd.sock", NbdAddress(path="/run/nbd.sock")),
])
def test_disks_uri(uri: str, address: NbdAddress) -> None:
    assert parse_disks_uri(uri) == address


@pytest.mark.parametrize("uri", ["nbd://h:1", "tcp://h:0", "tcp://h:x", "unix:rel"])
def test_bad_disks_uri(uri: str) -> None:
    with pytest.raises(VirtError):
        parse_disks_uri(uri)


def test_source_connects_to_the_migration_host_and_the_cookies_port() -> None:
    request = parse_request(F.LIVE | F.NON_SHARED_DISK, [], side="source")
    assert server_address(request, CookieNBD(49153), "10.77.0.2") == \
        NbdAddress("10.77.0.2", 49153)
    with pytest.raises(VirtError, match="no <nbd>"):
        server_address(request, None, "10.77.0.2")
    assert NbdAddress("h", 1).client() == {"type": "inet", "host": "h", "port": "1"}
    assert NbdAddress("h", 1).qmp() == {"type": "inet", "data": {"host": "h", "port": "1"}}


def test_mirror_arguments() -> None:
    live = parse_domain_xml(domain(disk("vda", "/i/a.qcow2")))
    inc = parse_request(F.LIVE | F.NON_SHARED_INC | F.NON_SHARED_SYNCHRONOUS_WRITES, [],
                        side="source")
    assert mirror_args(inc, live, live.devices.disks[0], 2 * MIB) == {
        "job-id": "migration-vda", "device": "libvirt-1-format",
        "target": "migration-vda-format", "sync": "top", "copy-mode": "write-blocking",
        "auto-finalize": True, "auto-dismiss": True, "speed": 2 * MIB}


# -- cookie and statistics ----------------------------------------------------------------------
def test_cookie_nbd_round_trip_with_pyvirt_attributes() -> None:
    nbd = CookieNBD(49153, (CookieNBDDisk("vda", 64 * MIB, "qcow2", 8 * MIB,
                                          "/srv/shared/base.raw", "raw"),
                            CookieNBDDisk("vdb", MIB)))
    cookie = MigrationCookie("g", "c7a5fdbd-edaf-9455-926a-d65c16db1809", "h",
                             "a1a1a1a1-0000-4000-8000-00000000000a", nbd=nbd)
    xml = cookie.to_xml()
    assert ("<disk target='vda' capacity='67108864' format='qcow2' allocation='8388608' "
            "backing='/srv/shared/base.raw' backingFormat='raw'/>") in xml
    assert "<disk target='vdb' capacity='1048576'/>" in xml
    assert MigrationCookie.from_xml(xml) == cookie


def test_nbd_disk_from_qemu_image_info() -> None:
    image = {"virtual-size": 64 * MIB, "actual-size": MIB, "format": "qcow2",
             "backing-filename": "base.raw", "full-backing-filename": "/s/base.raw",
             "backing-filename-format": "raw",
             "backing-image": {"actual-size": 5 * MIB}}
    assert nbd_disk(image, "vda", incremental=True) == CookieNBDDisk(
        "vda", 64 * MIB, "qcow2", MIB, "/s/base.raw", "raw")
    assert nbd_disk(image, "vda", incremental=False).allocation == 6 * MIB


def test_job_statistics_count_disk_bytes() -> None:
    job = OutgoingJob(source_phase=SourcePhase.PERFORM3)
    job.info = {"ram": {"total": 100, "transferred": 40, "remaining": 60}}
    job.storage = StorageCopy([DiskCopy("vda", length=1000, offset=250),
                               DiskCopy("vdb", length=24, offset=24)])
    stats = job_stats(job, completed=False)
    assert (stats["disk_total"], stats["disk_processed"], stats["disk_remaining"]) == \
        (1024, 274, 750)
    assert (stats["data_total"], stats["data_processed"], stats["data_remaining"]) == \
        (1124, 314, 810)
    assert job_stats(job, completed=True)["disk_remaining"] == 0
    info = job_info(job)
    assert (info["file_total"], info["file_processed"], info["data_total"]) == (1024, 274, 1124)


def test_mirror_events() -> None:
    storage = StorageCopy([DiskCopy("vda")])
    assert not storage.on_event("BLOCK_JOB_READY", {"device": "other"})
    storage.on_event("BLOCK_JOB_READY", {"device": "migration-vda", "len": 5, "offset": 5})
    assert storage.all_ready and storage.failure() is None
    storage.on_event("BLOCK_JOB_COMPLETED", {"device": "migration-vda", "error": "ENOSPC"})
    assert storage.failure() == "mirroring disk vda failed: ENOSPC"


def test_plan_pauses_before_switchover_only_with_a_storage_copy() -> None:
    caps = {"events", "return-path", "pause-before-switchover", "late-block-activate"}
    params = {"max-bandwidth"}
    copy = parse_request(F.LIVE | F.NON_SHARED_DISK, [], side="source")
    assert plan(copy, "source", caps, params).capabilities["pause-before-switchover"]
    plain = parse_request(F.LIVE, [], side="source")
    assert not plan(plain, "source", caps, params).capabilities["pause-before-switchover"]
    dst = parse_request(F.LIVE | F.NON_SHARED_DISK, [], side="destination")
    assert "pause-before-switchover" not in plan(dst, "destination", caps, set()).capabilities \
        or not plan(dst, "destination", caps, set()).capabilities["pause-before-switchover"]
