"""Dynamic ownership on real files: labelling, the xattr record, restore, refusals.

Runs as root on /tmp (ext4: trusted.* xattrs work); a file system without xattrs is
simulated by making the xattr calls fail with ENOTSUP.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pyvirt.conf.domain import DiskDef, DomainDef
from pyvirt.constants import DomainState, EventStoppedDetail, ShutoffReason
from pyvirt.errors import OperationInvalidError, SystemError_
from pyvirt.qemu import owner_xattrs
from pyvirt.qemu.identity import QemuIdentity
from pyvirt.qemu.owner_xattrs import ATTR_OWNER, ATTR_REFS, ATTR_TIMESTAMP, Owner
from pyvirt.qemu.ownership import DacLabeller, OwnedFile, RememberedBy, fs_magic
from pyvirt.qemu.status import DomainStatus, format_status, parse_status
from tests.conftest import FAKE_QEMU, DriverFactory, make_settings

QEMU = QemuIdentity(5151, 5152)
ORIGINAL = Owner(4242, 4243)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "images" / "disk.qcow2"
    path.parent.mkdir()
    path.write_bytes(b"image")
    os.chown(path, ORIGINAL.uid, ORIGINAL.gid)
    path.chmod(0o600)
    return path


def labeller(root: Path, **overrides: Any) -> DacLabeller:
    return DacLabeller(make_settings(root, "fake", **overrides), QEMU)


def domain(*disks: DiskDef, kernel: str | None = None, initrd: str | None = None) -> DomainDef:
    definition = DomainDef(type="qemu", name="own1", uuid="b3c1d9e2-6f4a-4c2b-9a1d-7e5f3c2b1a09")
    definition.devices.disks = list(disks)
    definition.os.kernel, definition.os.initrd = kernel, initrd
    return definition


def disk(path: Path | str, **kw: Any) -> DiskDef:
    return DiskDef(type=kw.pop("type", "file"), target_dev=kw.pop("dev", "vda"),
                   target_bus="virtio", source=str(path), **kw)


def owner_of(path: Path) -> Owner:
    info = path.stat()
    return Owner(info.st_uid, info.st_gid)


def xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)
            if name.startswith("trusted.libvirt.")}


def test_label_records_owner_in_xattrs_and_restore_gives_it_back(
        tmp_path: Path, image: Path) -> None:
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    assert image.stat().st_mode & 0o777 == 0o600  # the mode is not touched
    assert xattrs(image) == {ATTR_OWNER: b"+4242:+4243", ATTR_REFS: b"1",
                             ATTR_TIMESTAMP: owner_xattrs.boot_time().encode()}
    assert [(o.path, o.remembered, o.original) for o in owned] == [
        (str(image), RememberedBy.XATTR, ORIGINAL)]
    assert (owned[0].dev, owned[0].ino) == (image.stat().st_dev, image.stat().st_ino)
    dac.restore(owned, migrated=False)
    assert owner_of(image) == ORIGINAL
    assert xattrs(image) == {}


def test_symlink_is_followed_to_the_image(tmp_path: Path, image: Path) -> None:
    link = tmp_path / "link.qcow2"
    link.symlink_to(image)
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(link)), owned)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    assert os.lstat(link).st_uid == 0  # the link itself is not what QEMU opens
    dac.restore(owned, migrated=False)
    assert owner_of(image) == ORIGINAL


def test_kernel_and_initrd_are_labelled_and_restored(tmp_path: Path, image: Path) -> None:
    initrd = image.with_name("initrd.img")
    initrd.write_bytes(b"cpio")
    os.chown(initrd, 7, 8)
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(kernel=str(image), initrd=str(initrd)), owned)
    assert owner_of(image) == owner_of(initrd) == Owner(QEMU.uid, QEMU.gid)
    dac.restore(owned, migrated=False)
    assert (owner_of(image), owner_of(initrd)) == (ORIGINAL, Owner(7, 8))


def test_two_users_count_in_xattrs_and_the_last_gives_back(tmp_path: Path,
                                                           image: Path) -> None:
    # two daemons (or hosts) share the file: the second only increments the count
    first, second = labeller(tmp_path / "a"), labeller(tmp_path / "b")
    owned_a: list[OwnedFile] = []
    owned_b: list[OwnedFile] = []
    first.label(domain(disk(image)), owned_a)
    second.label(domain(disk(image)), owned_b)
    assert owner_xattrs.read_record(str(image)) == (2, ORIGINAL)
    assert owned_b[0].original == ORIGINAL  # not the QEMU owner it found
    first.restore(owned_a, migrated=False)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    assert owner_xattrs.read_record(str(image)) == (1, ORIGINAL)
    second.restore(owned_b, migrated=False)
    assert owner_of(image) == ORIGINAL
    assert xattrs(image) == {}


@pytest.mark.parametrize("flags", [{"readonly": True}, {"shareable": True},
                                   {"device": "cdrom"}])
def test_readonly_shareable_and_cdrom_are_labelled_never_restored(
        tmp_path: Path, image: Path, flags: dict[str, Any]) -> None:
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image, **flags)), owned)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    assert owned == [] and xattrs(image) == {}
    dac.restore(owned, migrated=False)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)


def test_empty_cdrom_and_network_disk_are_skipped(tmp_path: Path) -> None:
    owned: list[OwnedFile] = []
    labeller(tmp_path).label(domain(
        DiskDef(type="file", target_dev="hdc", target_bus="ide", device="cdrom"),
        disk("pool/vol", type="network", dev="vdb")), owned)
    assert owned == []


def test_remember_owner_off_gives_back_to_root(tmp_path: Path, image: Path) -> None:
    dac = labeller(tmp_path, remember_owner=False)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    assert xattrs(image) == {}
    assert owned[0].remembered is RememberedBy.ROOT
    dac.restore(owned, migrated=False)
    assert owner_of(image) == Owner(0, 0)


def test_dynamic_ownership_off_touches_nothing(tmp_path: Path, image: Path) -> None:
    owned: list[OwnedFile] = []
    labeller(tmp_path, dynamic_ownership=False).label(domain(disk(image)), owned)
    assert owned == [] and owner_of(image) == ORIGINAL and xattrs(image) == {}


@pytest.fixture
def no_xattrs(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_args: Any) -> Any:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    for name in ("getxattr", "setxattr", "removexattr"):
        monkeypatch.setattr(f"pyvirt.qemu.owner_xattrs.os.{name}", unsupported)


@pytest.mark.usefixtures("no_xattrs")
def test_without_xattrs_the_status_keeps_the_owner(tmp_path: Path, image: Path) -> None:
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    assert [(o.remembered, o.original) for o in owned] == [(RememberedBy.STATUS, ORIGINAL)]
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    # what a restarted daemon reads back from the status file
    status = parse_status(format_status(DomainStatus(
        state=DomainState.RUNNING, reason=1, pid=1, persistent=False, monitor_path="/m",
        run_dir="/r", live=_status_domain(), owned_files=owned)))
    assert status.owned_files == owned
    restarted = labeller(tmp_path)
    restarted.restore(status.owned_files, migrated=False)
    assert owner_of(image) == ORIGINAL


@pytest.mark.usefixtures("no_xattrs")
def test_without_xattrs_guests_of_one_daemon_share_a_count(tmp_path: Path,
                                                           image: Path) -> None:
    dac = labeller(tmp_path)
    owned_a: list[OwnedFile] = []
    owned_b: list[OwnedFile] = []
    dac.label(domain(kernel=str(image)), owned_a)
    dac.label(domain(kernel=str(image)), owned_b)
    assert owned_b[0].original == ORIGINAL  # not QEMU's user, which it found
    dac.restore(owned_a, migrated=False)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)  # the other guest still uses it
    dac.restore(owned_b, migrated=False)
    assert owner_of(image) == ORIGINAL


@pytest.mark.usefixtures("no_xattrs")
def test_without_xattrs_a_restarted_daemon_adopts_the_count(tmp_path: Path,
                                                            image: Path) -> None:
    dac = labeller(tmp_path)
    owned_a: list[OwnedFile] = []
    owned_b: list[OwnedFile] = []
    dac.label(domain(kernel=str(image)), owned_a)
    dac.label(domain(kernel=str(image)), owned_b)
    restarted = labeller(tmp_path)
    restarted.adopt(owned_a)
    restarted.adopt(owned_b)
    restarted.restore(owned_a, migrated=False)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    restarted.restore(owned_b, migrated=False)
    assert owner_of(image) == ORIGINAL


def _status_domain() -> DomainDef:
    from pyvirt.conf.domain_parse import parse_domain_xml

    return parse_domain_xml(
        "<domain type='qemu' id='3'><name>own1</name>"
        "<uuid>b3c1d9e2-6f4a-4c2b-9a1d-7e5f3c2b1a09</uuid><memory>65536</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")


def test_status_round_trips_xattr_records(tmp_path: Path, image: Path) -> None:
    owned = [OwnedFile(str(image), 2049, 77, RememberedBy.XATTR, ORIGINAL),
             OwnedFile("/img/it's <odd>.raw", 1, 2, RememberedBy.ROOT, Owner(0, 0))]
    text = format_status(DomainStatus(
        state=DomainState.RUNNING, reason=1, pid=1, persistent=True, monitor_path="/m",
        run_dir="/r", live=_status_domain(), owned_files=owned))
    assert "<ownership>" in text
    assert parse_status(text).owned_files == owned


def test_stale_record_from_an_earlier_boot_is_dropped(tmp_path: Path, image: Path) -> None:
    # a record left by a guest of a previous boot: its owner is lost, the count restarts
    os.setxattr(image, ATTR_OWNER, b"+1:+1")
    os.setxattr(image, ATTR_REFS, b"3")
    os.setxattr(image, ATTR_TIMESTAMP, b"12345")
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    assert owner_xattrs.read_record(str(image)) == (1, ORIGINAL)
    dac.restore(owned, migrated=False)
    assert owner_of(image) == ORIGINAL and xattrs(image) == {}


def test_a_file_another_identity_holds_is_refused_and_released(tmp_path: Path,
                                                                image: Path) -> None:
    # libvirt's rule: another guest holds the file with a different owner than ours
    other = DacLabeller(make_settings(tmp_path / "o", "fake"), QemuIdentity(6000, 6000))
    held: list[OwnedFile] = []
    other.label(domain(disk(image)), held)
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    with pytest.raises(OperationInvalidError, match="already in use"):
        dac.label(domain(disk(image)), owned)
    assert owner_of(image) == Owner(6000, 6000)
    dac.restore(owned, migrated=False)  # what a failed start does
    assert owner_xattrs.read_record(str(image)) == (1, ORIGINAL)
    other.restore(held, migrated=False)
    assert owner_of(image) == ORIGINAL


def test_a_failed_start_gives_back_what_it_labelled(tmp_path: Path, image: Path) -> None:
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    with pytest.raises(SystemError_, match=r"Cannot access storage file '.*missing.raw' "
                                           r"\(disk vdb\): No such file or directory"):
        dac.label(domain(disk(image), disk(tmp_path / "missing.raw", dev="vdb")), owned)
    assert len(owned) == 1
    dac.restore(owned, migrated=False)
    assert owner_of(image) == ORIGINAL and xattrs(image) == {}


@pytest.mark.parametrize("where", ["state", "run", "log"])
def test_files_in_the_daemons_directories_are_refused(tmp_path: Path, where: str) -> None:
    target = tmp_path / where / "x.status"
    target.parent.mkdir()
    target.write_text("secret")
    link = tmp_path / "innocent.qcow2"
    link.symlink_to(target)
    for path in (target, link):
        with pytest.raises(OperationInvalidError, match=f"is in {tmp_path / where}"):
            labeller(tmp_path).label(domain(disk(path)), [])
    assert target.stat().st_uid == 0 and xattrs(target) == {}


@pytest.mark.parametrize("path,message", [
    ("/proc/self/status", "is in /proc"),
    ("/sys/kernel/notes", "is in /sys"),
    ("/dev/null", "is not a regular file or a block device"),
    ("/tmp", "is not a regular file or a block device"),
])
def test_pseudo_files_and_non_files_are_refused(tmp_path: Path, path: str,
                                                message: str) -> None:
    before = os.stat(path)
    with pytest.raises(OperationInvalidError, match=message):
        labeller(tmp_path).label(domain(disk(path)), [])
    assert os.stat(path).st_uid == before.st_uid


def test_a_block_device_in_dev_is_allowed(tmp_path: Path) -> None:
    block = next((str(p) for p in Path("/dev").iterdir()
                  if p.is_block_device() and p.name.startswith("loop")), None)
    if block is None:
        pytest.skip("no loop block device here")
    before = os.stat(block)
    dac = DacLabeller(make_settings(tmp_path, "fake"),
                      QemuIdentity(before.st_uid, before.st_gid))  # no visible change
    owned: list[OwnedFile] = []
    dac.label(domain(disk(block, type="block")), owned)
    dac.restore(owned, migrated=False)
    assert (os.stat(block).st_uid, os.stat(block).st_gid) == (before.st_uid, before.st_gid)


def test_migrated_stop_leaves_shared_files_to_the_peer(tmp_path: Path, image: Path) -> None:
    # source and destination share the image: after the source's migrated stop the file
    # stays QEMU's and the destination's reference is the only one left
    source = labeller(tmp_path / "src", shared_filesystems=(str(image.parent),))
    destination = labeller(tmp_path / "dst", shared_filesystems=(str(image.parent),))
    on_source: list[OwnedFile] = []
    on_destination: list[OwnedFile] = []
    source.label(domain(disk(image)), on_source)
    destination.label(domain(disk(image)), on_destination)
    source.restore(on_source, migrated=True)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    assert owner_xattrs.read_record(str(image)) == (1, ORIGINAL)
    destination.restore(on_destination, migrated=False)
    assert owner_of(image) == ORIGINAL and xattrs(image) == {}


def test_migrated_stop_restores_files_not_on_shared_storage(tmp_path: Path,
                                                            image: Path) -> None:
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    dac.restore(owned, migrated=True)
    assert owner_of(image) == ORIGINAL


@pytest.mark.usefixtures("no_xattrs")
def test_migrated_stop_without_xattrs_forgets_the_record(tmp_path: Path,
                                                         image: Path) -> None:
    dac = labeller(tmp_path, shared_filesystems=(str(image.parent),))
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    dac.restore(owned, migrated=True)
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    assert dac._ledger._held == {}  # the record is gone, not leaked


def test_a_file_someone_else_took_meanwhile_is_left_alone(tmp_path: Path,
                                                          image: Path) -> None:
    # replaced (the inode number may well be reused) or chowned by the operator: not QEMU's
    # any more, so not ours to give back
    dac = labeller(tmp_path)
    owned: list[OwnedFile] = []
    dac.label(domain(disk(image)), owned)
    image.unlink()
    image.write_bytes(b"new")  # another inode at the same path
    os.chown(image, 99, 99)
    dac.restore(owned, migrated=False)
    assert owner_of(image) == Owner(99, 99)


def test_fs_magic_of_tmp_is_not_shared(image: Path) -> None:
    from pyvirt.qemu.ownership import SHARED_FS_MAGIC

    fd = os.open(image, os.O_PATH)
    try:
        assert fs_magic(fd) not in SHARED_FS_MAGIC
        assert fs_magic(fd) != 0
    finally:
        os.close(fd)


def test_owner_labels() -> None:
    assert Owner.parse("+107:+108") == Owner(107, 108)
    assert Owner.parse("0:0") == Owner(0, 0)
    assert Owner(1, 2).label() == "+1:+2"
    for bad in ("root:root", "+1", "+-1:+2", "+1:+4294967295"):
        with pytest.raises(ValueError):
            Owner.parse(bad)


# -- the runner (fake QEMU, which runs as root: QEMU's "user" is root:root) -----------------
def _fake_guest_xml(name: str, image: Path) -> str:
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>
<source file='{image}'/><target dev='vda' bus='virtio'/></disk>
<memballoon model='none'/></devices></domain>"""


async def test_runner_gives_back_at_destroy_and_not_after_a_migration_out(
        drivers: DriverFactory, short_tmp: Path) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    image = shared / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    os.chown(image, ORIGINAL.uid, ORIGINAL.gid)
    driver = await drivers(str(FAKE_QEMU), shared_filesystems=(str(shared),))
    obj = await driver.create_xml(_fake_guest_xml("own-fake", image))
    assert owner_of(image) == Owner(0, 0)
    assert owner_xattrs.read_record(str(image)) == (1, ORIGINAL)
    status = driver.runner.load_status("own-fake")
    assert [(o.path, o.remembered) for o in status.owned_files] == [
        (str(image), RememberedBy.XATTR)]
    await driver.destroy(obj)
    assert owner_of(image) == ORIGINAL and xattrs(image) == {}
    # the source's stop after a migration out: the file stays with the peer (which held
    # no reference here, so the record goes and the owner stays QEMU's)
    obj = await driver.create_xml(_fake_guest_xml("own-fake", image))
    await driver.runner.stop(obj, ShutoffReason.MIGRATED, EventStoppedDetail.MIGRATED)
    assert owner_of(image) == Owner(0, 0) and xattrs(image) == {}


def test_label_waits_for_another_daemons_lock_on_the_file(
        tmp_path: Path, image: Path) -> None:
    # Another daemon in the middle of its read-modify-write holds an flock of the file:
    # this one waits for it (and goes ahead unlocked after LOCK_WAIT_S, never failing).
    import fcntl
    import threading
    import time

    from pyvirt.qemu import ownership

    other = os.open(image, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_EX)
    released_at: list[float] = []

    def release() -> None:
        time.sleep(0.05)
        released_at.append(time.monotonic())
        os.close(other)

    thread = threading.Thread(target=release)
    thread.start()
    owned: list[OwnedFile] = []
    labeller(tmp_path).label(domain(disk(image)), owned)
    labelled_at = time.monotonic()
    thread.join()
    assert released_at and labelled_at >= released_at[0]
    assert owner_of(image) == Owner(QEMU.uid, QEMU.gid)
    # a lock that is never released only delays the label by LOCK_WAIT_S
    stuck = os.open(image, os.O_RDONLY)
    fcntl.flock(stuck, fcntl.LOCK_EX)
    try:
        start = time.monotonic()
        labeller(tmp_path).restore(owned, migrated=False)
        assert time.monotonic() - start >= ownership.LOCK_WAIT_S
    finally:
        os.close(stuck)
    assert owner_of(image) == ORIGINAL
