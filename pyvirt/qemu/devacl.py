"""Device access for QEMU's user: a POSIX ACL entry on ``/dev/kvm`` and ``/dev/userfaultfd``.

QEMU runs unprivileged (``pyvirt-qemu``) and opens these devices itself at any time (KVM at
start, ``/dev/userfaultfd`` when a post-copy migration begins), so an fd handed over at
start does not do. Where they are root's only, pyvirtd adds one named-user entry for
QEMU's user to each device's access ACL, once at start-up: the global
``vm.unprivileged_userfaultfd`` sysctl is never touched (QEMU 10 asks ``/dev/userfaultfd``
for a userfaultfd, ``USERFAULTFD_IOC_NEW``, before trying the syscall).

The ACL is written as the ``system.posix_acl_access`` extended attribute in the kernel's
format (no ``setfacl`` on hosts): an existing ACL is read and only our entry is added or
widened, every other entry kept, the mask recomputed as ``setfacl -m`` does; without one,
the ACL starts from the mode bits. Setting an ACL makes the mode's group bits show the
mask, and removing it would not give the old bits back: the grant is never removed, and
granting again changes nothing (idempotent).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from pyvirt.errors import OperationFailedError
from pyvirt.qemu.identity import QemuIdentity

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
#: <linux/posix_acl_xattr.h>: a version word, then (tag u16, perm u16, id u32) entries
_ACL_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
_TAGS = (ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER)
#: the id of entries that name nobody (owner, owning group, mask, other)
ACL_UNDEFINED_ID = 0xFFFFFFFF
READ, WRITE, EXECUTE = 4, 2, 1

#: devices QEMU opens itself that a host may keep root's only
QEMU_DEVICES = ("/dev/kvm", "/dev/userfaultfd")


@dataclass(frozen=True, order=True)
class AclEntry:
    #: field order is the kernel's sort order: by tag, then by uid/gid
    tag: int
    qualifier: int
    perm: int


def decode_acl(data: bytes) -> list[AclEntry]:
    """The entries of an ACL xattr; anything not a version-2 ACL is refused."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise OperationFailedError(f"malformed POSIX ACL ({len(data)} bytes)")
    (version,) = _HEADER.unpack_from(data)
    if version != _ACL_VERSION:
        raise OperationFailedError(f"unsupported POSIX ACL version {version}")
    entries = []
    for offset in range(_HEADER.size, len(data), _ENTRY.size):
        tag, perm, qualifier = _ENTRY.unpack_from(data, offset)
        if tag not in _TAGS or perm & ~7:
            raise OperationFailedError(f"unknown POSIX ACL entry (tag {tag:#x}, perm {perm:#o})")
        entries.append(AclEntry(tag, qualifier, perm))
    return entries


def encode_acl(entries: Iterable[AclEntry]) -> bytes:
    """The xattr value of ``entries``, in the kernel's order."""
    ordered = sorted(entries)
    return _HEADER.pack(_ACL_VERSION) + b"".join(
        _ENTRY.pack(e.tag, e.perm, e.qualifier) for e in ordered)


def acl_from_mode(mode: int) -> list[AclEntry]:
    """The minimal ACL the permission bits of ``mode`` stand for."""
    return [AclEntry(ACL_USER_OBJ, ACL_UNDEFINED_ID, (mode >> 6) & 7),
            AclEntry(ACL_GROUP_OBJ, ACL_UNDEFINED_ID, (mode >> 3) & 7),
            AclEntry(ACL_OTHER, ACL_UNDEFINED_ID, mode & 7)]


def with_user(entries: Iterable[AclEntry], uid: int, perm: int) -> list[AclEntry]:
    """``entries`` with user ``uid`` granted at least ``perm`` and the mask recomputed
    (the union of the group class: owning group, named users and groups); sorted."""
    kept = [e for e in entries if e.tag != ACL_MASK
            and not (e.tag == ACL_USER and e.qualifier == uid)]
    old = [e.perm for e in entries if e.tag == ACL_USER and e.qualifier == uid]
    merged = [*kept, AclEntry(ACL_USER, uid, perm | (old[0] if old else 0))]
    group_class = [e.perm for e in merged if e.tag in (ACL_USER, ACL_GROUP, ACL_GROUP_OBJ)]
    mask = 0
    for bits in group_class:
        mask |= bits
    _check_complete(merged)
    return sorted([*merged, AclEntry(ACL_MASK, ACL_UNDEFINED_ID, mask)])


def _check_complete(entries: list[AclEntry]) -> None:
    for tag in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER):
        if sum(e.tag == tag for e in entries) != 1:
            raise OperationFailedError(f"invalid POSIX ACL: {sum(e.tag == tag for e in entries)}"
                                       f" entries of tag {tag:#x}")


def read_acl(path: str) -> list[AclEntry] | None:
    """The access ACL of ``path`` (a symlink is not followed); None when it has none."""
    try:
        return decode_acl(os.getxattr(path, ACL_XATTR, follow_symlinks=False))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def grant_user(path: str, uid: int, perm: int = READ | WRITE) -> bool:
    """Give ``uid`` at least ``perm`` on ``path`` by ACL; True when the ACL changed."""
    current = read_acl(path)
    entries = current if current is not None else acl_from_mode(os.lstat(path).st_mode)
    granted = with_user(entries, uid, perm)
    if current is not None and sorted(current) == granted:
        return False
    os.setxattr(path, ACL_XATTR, encode_acl(granted), follow_symlinks=False)
    return True


def grant_qemu_devices(identity: QemuIdentity,
                       devices: Iterable[str] = QEMU_DEVICES) -> None:
    """Grant QEMU's user read-write access to each of ``devices`` that exists here.

    Nothing to do when QEMU runs as root, or as the (unprivileged) daemon itself. A device
    that cannot take an ACL is logged, not fatal: guests that do not need it still run.
    """
    if identity.is_root or os.geteuid() != 0:
        return
    for device in devices:
        try:
            if not stat.S_ISCHR(os.lstat(device).st_mode):
                log.warning("%s is not a character device: QEMU's user not granted it", device)
                continue
            if grant_user(device, identity.uid):
                log.info("granted uid %d read-write access to %s (POSIX ACL)",
                         identity.uid, device)
        except FileNotFoundError:
            continue
        except (OSError, OperationFailedError) as exc:
            log.warning("cannot grant QEMU's user (uid %d) access to %s: %s", identity.uid,
                        device, exc.strerror if isinstance(exc, OSError) else exc)
