"""POSIX ACLs for QEMU's devices: the xattr format, the merge, and real grants.

The format and merge are checked on values; the grant on a scratch file (ext4 and tmpfs
take the xattr as a device node would: the kernel validates and normalises it alike), then
on a private node of the userfaultfd device and on ``/dev/userfaultfd`` itself, where QEMU's
user must afterwards get a userfaultfd (``USERFAULTFD_IOC_NEW``) with the global sysctl
untouched. Whatever the host's device carried before the test is put back at the end.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.errors import OperationFailedError
from pyvirt.qemu import devacl
from pyvirt.qemu.devacl import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_UNDEFINED_ID,
    ACL_USER,
    ACL_USER_OBJ,
    ACL_XATTR,
    AclEntry,
)
from pyvirt.qemu.identity import DEFAULT_QEMU_GROUP, DEFAULT_QEMU_USER, QemuIdentity
from tests.conftest import UNPRIVILEGED_PYTHON

NOBODY = ACL_UNDEFINED_ID
UID = 4242
RW, R = 6, 4
#: a process of QEMU's user asks /dev/userfaultfd for a userfaultfd, as QEMU 10 does
UFFD_PROBE = (
    "import fcntl, os\n"
    "import sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CLOEXEC)\n"
    "uffd = fcntl.ioctl(fd, 0xAA00, os.O_CLOEXEC | os.O_NONBLOCK)\n"  # USERFAULTFD_IOC_NEW
    "print(os.readlink(f'/proc/self/fd/{uffd}'))\n"
)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def entry(tag: int, perm: int, qualifier: int = NOBODY) -> AclEntry:
    return AclEntry(tag, qualifier, perm)


def test_encode_is_the_kernel_format() -> None:
    # version 2, then (tag, perm, id) little-endian, in tag order whatever the input order
    acl = [entry(ACL_OTHER, 0), entry(ACL_USER, RW, 999), entry(ACL_USER_OBJ, RW),
           entry(ACL_MASK, RW), entry(ACL_GROUP_OBJ, 0)]
    data = devacl.encode_acl(acl)
    assert data.hex() == ("02000000" "01000600ffffffff" "02000600e7030000"
                          "04000000ffffffff" "10000600ffffffff" "20000000ffffffff")
    assert devacl.decode_acl(data) == sorted(acl)


@pytest.mark.parametrize("data", [
    b"", b"\x02\x00\x00", b"\x01\x00\x00\x00",  # short, short, version 1
    devacl.encode_acl([entry(ACL_USER_OBJ, RW)])[:-1],  # a truncated entry
    b"\x02\x00\x00\x00" + b"\x40\x00\x06\x00\xff\xff\xff\xff",  # unknown tag
    b"\x02\x00\x00\x00" + b"\x01\x00\x10\x00\xff\xff\xff\xff",  # unknown permission bit
])
def test_decode_refuses_what_it_does_not_understand(data: bytes) -> None:
    with pytest.raises(OperationFailedError, match="ACL"):
        devacl.decode_acl(data)


def test_acl_from_mode() -> None:
    assert devacl.acl_from_mode(stat.S_IFCHR | 0o640) == [
        entry(ACL_USER_OBJ, RW), entry(ACL_GROUP_OBJ, R), entry(ACL_OTHER, 0)]


def test_merge_adds_our_entry_and_a_mask() -> None:
    merged = devacl.with_user(devacl.acl_from_mode(0o600), UID, RW)
    assert merged == [entry(ACL_USER_OBJ, RW), entry(ACL_USER, RW, UID),
                      entry(ACL_GROUP_OBJ, 0), entry(ACL_MASK, RW), entry(ACL_OTHER, 0)]


def test_merge_keeps_every_other_entry_and_recomputes_the_mask() -> None:
    # someone else's named user and group stay; our old r-- entry is widened, not doubled;
    # the narrow mask (a chmod g-rw) becomes the union of the group class again
    existing = [entry(ACL_USER_OBJ, 7), entry(ACL_USER, R, 1000), entry(ACL_USER, R, UID),
                entry(ACL_GROUP_OBJ, R), entry(ACL_GROUP, 1, 50), entry(ACL_MASK, 0),
                entry(ACL_OTHER, 1)]
    assert devacl.with_user(existing, UID, RW) == [
        entry(ACL_USER_OBJ, 7), entry(ACL_USER, R, 1000), entry(ACL_USER, RW, UID),
        entry(ACL_GROUP_OBJ, R), entry(ACL_GROUP, 1, 50), entry(ACL_MASK, 7),
        entry(ACL_OTHER, 1)]
    # more than asked for is kept (a grant only adds)
    wide = devacl.with_user([*existing[:2], entry(ACL_USER, 7, UID), *existing[3:]], UID, RW)
    assert entry(ACL_USER, 7, UID) in wide


def test_merge_refuses_an_incomplete_acl() -> None:
    with pytest.raises(OperationFailedError, match="invalid POSIX ACL"):
        devacl.with_user([entry(ACL_USER_OBJ, RW), entry(ACL_OTHER, 0)], UID, RW)


@pytest.fixture(params=["ext4", "tmpfs"])
def scratch(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Path]:
    """An empty 0600 file where QEMU's user may pass (``short_tmp`` is 0711)."""
    base = short_tmp if request.param == "ext4" else Path("/dev/shm")
    path = base / f"pv-devacl-{os.getpid()}"
    path.write_bytes(b"")
    path.chmod(0o600)
    try:
        os.getxattr(path, ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            path.unlink()
            pytest.skip(f"no POSIX ACLs on {request.param} here")
    try:
        yield path
    finally:
        path.unlink()


@root_only
def test_grant_on_a_file_the_kernel_accepts(scratch: Path) -> None:
    assert devacl.read_acl(str(scratch)) is None
    assert devacl.grant_user(str(scratch), UID) is True
    acl = devacl.read_acl(str(scratch))
    assert acl == devacl.with_user(devacl.acl_from_mode(0o600), UID, RW)
    # setting an ACL shows the mask in the group bits: why a grant is never taken back
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o660
    before = os.getxattr(scratch, ACL_XATTR)
    assert devacl.grant_user(str(scratch), UID) is False  # idempotent: nothing written
    assert os.getxattr(scratch, ACL_XATTR) == before


@root_only
def test_grant_keeps_an_existing_acl(scratch: Path) -> None:
    theirs = [entry(ACL_USER_OBJ, RW), entry(ACL_USER, R, 1000), entry(ACL_GROUP_OBJ, R),
              entry(ACL_GROUP, R, 50), entry(ACL_MASK, R), entry(ACL_OTHER, 0)]
    os.setxattr(scratch, ACL_XATTR, devacl.encode_acl(theirs))
    assert devacl.grant_user(str(scratch), UID) is True
    got = devacl.read_acl(str(scratch))
    assert got is not None and set(theirs) - {entry(ACL_MASK, R)} <= set(got)
    assert entry(ACL_USER, RW, UID) in got and entry(ACL_MASK, RW) in got


@root_only
def test_grant_lets_that_user_open_the_file(scratch: Path) -> None:
    qemu_uid = pwd.getpwnam(DEFAULT_QEMU_USER).pw_uid
    assert not _opens_as_qemu_user(scratch)
    devacl.grant_user(str(scratch), qemu_uid)
    assert _opens_as_qemu_user(scratch)


def _opens_as_qemu_user(path: Path) -> bool:
    probe = subprocess.run([*UNPRIVILEGED_PYTHON, "-c", f"open({str(path)!r}, 'r+b')"],
                           user=DEFAULT_QEMU_USER, group=DEFAULT_QEMU_GROUP, extra_groups=[],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@root_only
def test_devices_skipped_for_root_missing_or_not_a_device(scratch: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          ) -> None:
    devacl.grant_qemu_devices(QemuIdentity(0, 0), [str(scratch)])
    with caplog.at_level(logging.WARNING, logger="pyvirt.qemu.devacl"):
        devacl.grant_qemu_devices(QemuIdentity(UID, UID),
                                  [str(scratch), "/dev/pyvirt-no-such-device"])
    assert devacl.read_acl(str(scratch)) is None
    assert "not a character device" in caplog.text and "no-such" not in caplog.text


@contextlib.contextmanager
def device_restored(path: str) -> Iterator[None]:
    """Put back the ACL (or its absence) and the mode ``path`` had."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    try:
        saved: bytes | None = os.getxattr(path, ACL_XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.setxattr(path, ACL_XATTR, saved)
        else:
            with contextlib.suppress(OSError):
                os.removexattr(path, ACL_XATTR)
            os.chmod(path, mode)  # removing the ACL leaves the mask in the group bits


def qemu_identity() -> QemuIdentity:
    return QemuIdentity(pwd.getpwnam(DEFAULT_QEMU_USER).pw_uid,
                        grp.getgrnam(DEFAULT_QEMU_GROUP).gr_gid)


@root_only
@pytest.mark.skipif(not os.path.exists("/dev/userfaultfd"), reason="no /dev/userfaultfd")
def test_a_root_only_userfaultfd_node_granted_to_qemu_user(short_tmp: Path) -> None:
    # Checks, on a private node of the same device (the host's own is never taken away
    # from running guests): root's only, QEMU's user gets no userfaultfd; after the grant
    # it does, and someone else's entry survives; vm.unprivileged_userfaultfd untouched.
    sysctl = Path("/proc/sys/vm/unprivileged_userfaultfd").read_text()
    node = short_tmp / "userfaultfd"
    os.mknod(node, stat.S_IFCHR | 0o600, os.stat("/dev/userfaultfd").st_rdev)
    assert _userfaultfd_as_qemu_user(node).returncode != 0
    other = entry(ACL_USER, R, UID)
    os.setxattr(node, ACL_XATTR, devacl.encode_acl(
        devacl.with_user(devacl.acl_from_mode(0o600), UID, R)))
    devacl.grant_qemu_devices(qemu_identity(), [str(node)])
    acl = devacl.read_acl(str(node))
    assert acl is not None and other in acl and entry(ACL_USER, RW, qemu_identity().uid) in acl
    probe = _userfaultfd_as_qemu_user(node)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "anon_inode:[userfaultfd]"
    assert Path("/proc/sys/vm/unprivileged_userfaultfd").read_text() == sysctl


@root_only
@pytest.mark.skipif(not os.path.exists("/dev/userfaultfd"), reason="no /dev/userfaultfd")
def test_the_host_userfaultfd_granted_to_qemu_user() -> None:
    # Checks: the grant on /dev/userfaultfd itself keeps its other entries and lets QEMU's
    # user get a userfaultfd; what the device had before is put back afterwards.
    with device_restored("/dev/userfaultfd"):
        before = devacl.read_acl("/dev/userfaultfd") or devacl.acl_from_mode(
            os.stat("/dev/userfaultfd").st_mode)
        devacl.grant_qemu_devices(qemu_identity(), ["/dev/userfaultfd"])
        acl = devacl.read_acl("/dev/userfaultfd")
        assert acl is not None and entry(ACL_USER, RW, qemu_identity().uid) in acl
        assert {e for e in before if e.tag != ACL_MASK} <= set(acl)
        probe = _userfaultfd_as_qemu_user(Path("/dev/userfaultfd"))
        assert probe.returncode == 0, probe.stderr


def _userfaultfd_as_qemu_user(node: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UNPRIVILEGED_PYTHON, "-c", UFFD_PROBE, str(node)],
                          user=DEFAULT_QEMU_USER, group=DEFAULT_QEMU_GROUP, extra_groups=[],
                          capture_output=True, text=True, timeout=30)
