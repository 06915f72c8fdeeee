"""Dynamic ownership: files QEMU needs are handed to its user at start and given back at stop.

QEMU runs as qemu.conf's ``user:group`` (pyvirt.qemu.identity), so it can no longer open a
root-owned image. With ``dynamic_ownership = 1`` (libvirt's DAC labelling) the daemon chowns
what the live definition names to that user before QEMU is spawned, and back afterwards::

    what                                     at start        at stop
    <disk type='file'|'block'>, writable     chowned         the recorded owner back
    read-only, <shareable/>, CD-ROM          chowned         never (other guests may use it)
    empty CD-ROM, network disk               —               —
    <os><kernel>, <initrd>                   chowned         the recorded owner back
    backing files of a qcow2                 —  (they must be readable by QEMU's user)

The original owner (``remember_owner = 1``) is kept in the file's extended attributes as
libvirt keeps it (pyvirt.qemu.owner_xattrs: ``trusted.libvirt.security.dac``, a reference
count across guests and hosts, the boot time). A second guest, or the destination of a
migration on shared storage, only increments the count; the last one to stop gives the
recorded owner back. On a file system without xattrs (ENOTSUP) the owner is recorded in
the domain's status file instead, and guests of this daemon sharing a file are counted in
memory (:class:`_Ledger`), so the restore is still exact (libvirt gives such files to
root:root). ``remember_owner = 0``: files go back to root:root, as libvirt.

Every record (path, device and inode, how the owner is kept, the owner) is in the domain's
status, so a daemon that was killed restores after it restarts: at the guest's stop, or at
once if QEMU died meanwhile. A file that is not QEMU's any more when it would be given
back (replaced, or chowned by the operator meanwhile) is left alone.

A migration that succeeded, or an incoming one that failed, stops a QEMU whose files the
peer host now uses (libvirt's ``VIR_QEMU_PROCESS_STOP_MIGRATED``): files on shared storage
(under qemu.conf ``shared_filesystems``, or on a network or cluster file system by its
``statfs`` magic, as libvirt's virFileIsSharedFS) are not given back then; this host's
reference is dropped (xattrs) or its record forgotten (status). Any other stop restores.

Backing files are left alone, deliberately: their paths come from the image headers, which
QEMU can rewrite once it owns the top image, so following them as root would let a
compromised QEMU have any file of the host chowned to itself at the next start. Base images
must be readable by QEMU's user (``qemu-img create`` makes them 0644).

Paths. The XML's path is followed, symlinks included (images are often links), but opened
once with ``O_PATH`` and every check, xattr and chown then goes through that descriptor
(``/proc/self/fd/N``): no window in which a swapped link redirects the chown. Only regular
files and block devices are touched; paths in the driver's own state, run and log
directories and in ``/proc``, ``/sys`` and ``/dev`` (block devices excepted) are refused
before anything changes, by the XML's path and by where it leads: the start fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyvirt import safefs
from pyvirt.conf.domain import DomainDef
from pyvirt.errors import OperationInvalidError, SystemError_
from pyvirt.qemu import owner_xattrs
from pyvirt.qemu.identity import QemuIdentity
from pyvirt.qemu.migration.storage import under_shared_filesystems
from pyvirt.qemu.owner_xattrs import MalformedRecord, Owner, Recalled, XattrsUnsupported
from pyvirt.qemu.settings import DriverSettings

log = logging.getLogger(__name__)

ROOT_OWNER = Owner(0, 0)
#: pseudo file systems no guest file lives in (``/dev``: block devices only)
SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
#: statfs magics of network and cluster file systems (libvirt's virFileIsSharedFS list;
#: FUSE-based GlusterFS/Quobyte, which libvirt tells apart by mount type, are not here)
SHARED_FS_MAGIC = {
    0x6969: "nfs", 0x01161970: "gfs2", 0x7461636F: "ocfs2", 0x6B414653: "afs",
    0x517B: "smb", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x00C36400: "ceph",
    0x47504653: "gpfs", 0x61636673: "acfs", 0x19830326: "beegfs",
}
#: chown errors libvirt logs and ignores (the file system decides, e.g. root-squashed NFS)
_CHOWN_TOLERATED = frozenset({errno.EPERM, errno.EROFS, errno.EOPNOTSUPP, errno.EINVAL})


class RememberedBy(enum.Enum):
    """Where the original owner of a labelled file is kept."""

    XATTR = "xattr"
    #: the domain's status file (a file system without xattrs)
    STATUS = "status"
    #: nowhere: remember_owner = 0, the file goes to root:root
    ROOT = "root"


@dataclass(frozen=True)
class OwnedFile:
    """A file handed to QEMU that is to be given back (``RuntimeResources.owned_files``)."""

    path: str
    dev: int
    ino: int
    remembered: RememberedBy
    #: the owner before labelling (for XATTR: as recorded in the xattrs, a fallback only)
    original: Owner

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


@dataclass(frozen=True)
class LabelTarget:
    path: str
    #: for messages: "disk vda", "kernel"
    what: str
    #: False for files other guests may share: chowned, never given back
    restorable: bool


def label_targets(live: DomainDef) -> list[LabelTarget]:
    """What the definition hands to QEMU, in document order (see the module doc)."""
    targets = []
    for disk in live.devices.disks:
        if disk.type not in ("file", "block") or not disk.source:
            continue
        shared = disk.readonly or disk.shareable or disk.device == "cdrom"
        targets.append(LabelTarget(disk.source, f"disk {disk.target_dev}", not shared))
    for what, path in (("kernel", live.os.kernel), ("initrd", live.os.initrd)):
        if path:
            targets.append(LabelTarget(path, what, True))
    return targets


@dataclass(frozen=True)
class _Opened:
    """A file opened with O_PATH: the XML's path, where it led, and how to reach it."""

    path: str
    fd: int
    info: os.stat_result
    resolved: str

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)

    @property
    def via_fd(self) -> str:
        """A path to exactly this inode for chown and xattrs (the magic link is followed)."""
        return f"/proc/self/fd/{self.fd}"

    @property
    def owner(self) -> Owner:
        return Owner(self.info.st_uid, self.info.st_gid)

    @property
    def key(self) -> tuple[int, int]:
        return (self.info.st_dev, self.info.st_ino)


def _open_path(path: str) -> _Opened:
    """``path`` opened with O_PATH, symlinks followed (close it: it is a context manager)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return _Opened(path, fd, os.fstat(fd), os.readlink(f"/proc/self/fd/{fd}"))
    except BaseException:
        os.close(fd)
        raise


class _Ledger:
    """Users of files whose owner is kept in status files (no xattrs), per inode: the
    in-memory twin of the ref_dac count, for guests of this daemon sharing a file."""

    def __init__(self) -> None:
        self._held: dict[tuple[int, int], tuple[Owner, int]] = {}

    def take(self, key: tuple[int, int], current: Owner) -> tuple[int, Owner]:
        """One user more; the owner on record (``current`` for the first)."""
        original, count = self._held.get(key, (current, 0))
        self._held[key] = (original, count + 1)
        return count + 1, original

    def release(self, key: tuple[int, int]) -> int:
        """One user fewer; how many remain."""
        original, count = self._held.get(key, (ROOT_OWNER, 1))
        if count <= 1:
            self._held.pop(key, None)
            return 0
        self._held[key] = (original, count - 1)
        return count - 1


class DacLabeller:
    """Hands files to QEMU's identity and back, for every domain of one driver."""

    def __init__(self, settings: DriverSettings, identity: QemuIdentity) -> None:
        self.settings = settings
        self.qemu_owner = Owner(identity.uid, identity.gid)
        self._ledger = _Ledger()
        self._refused_dirs = tuple(os.path.realpath(d) for d in (
            settings.state_dir, settings.run_dir, settings.log_dir))

    # -- start -------------------------------------------------------------------------

    def label(self, live: DomainDef, owned: list[OwnedFile]) -> None:
        """Hand every target of ``live`` to QEMU's user. Each file to give back is appended
        to ``owned`` the moment its owner is on record, so a failure half-way leaves in it
        exactly what the stop must restore."""
        if not self.settings.dynamic_ownership:
            return
        for target in label_targets(live):
            try:
                opened = _open_path(target.path)
            except OSError as exc:
                # libvirt's wording (virStorageSourceReportBrokenChain), VIR_ERR_SYSTEM_ERROR
                raise SystemError_(f"Cannot access storage file '{safefs.shown(target.path)}'"
                                   f" ({target.what}): {exc.strerror}") from exc
            with opened:
                self._label_one(target, opened, owned)

    def _label_one(self, target: LabelTarget, opened: _Opened, owned: list[OwnedFile]) -> None:
        self._check_allowed(target, opened)
        with _exclusive(opened) as current:
            self._hand_over(target, current, owned)

    def _hand_over(self, target: LabelTarget, opened: _Opened, owned: list[OwnedFile]) -> None:
        if target.restorable:
            record, users = self._remember(opened)
            owned.append(record)
            if users > 1 and opened.owner != self.qemu_owner:
                # libvirt's rule: a file another guest holds keeps its owner; this start
                # cannot share it (its stop drops the reference just taken)
                raise OperationInvalidError(
                    f"Setting different DAC user or group on {safefs.shown(opened.path)} "
                    "which is already in use")
        _chown(opened, self.qemu_owner)

    def _check_allowed(self, target: LabelTarget, opened: _Opened) -> None:
        mode = opened.info.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise OperationInvalidError(
                f"{target.what} source '{safefs.shown(target.path)}' is not a regular file "
                "or a block device: its ownership is not changed")
        system = tuple(r for r in SYSTEM_ROOTS if not (r == "/dev" and stat.S_ISBLK(mode)))
        roots = self._refused_dirs + system
        for place in (os.path.normpath(target.path), opened.resolved):
            for root in roots:
                if safefs.is_within(root, place):
                    raise OperationInvalidError(
                        f"{target.what} source '{safefs.shown(target.path)}' is in "
                        f"{root}: pyvirtd does not hand such files to QEMU")

    def _remember(self, opened: _Opened) -> tuple[OwnedFile, int]:
        """The record of ``opened`` and how many users the file has now (this one too)."""
        def record(how: RememberedBy, original: Owner) -> OwnedFile:
            return OwnedFile(opened.path, opened.info.st_dev, opened.info.st_ino, how,
                             original)

        if not self.settings.remember_owner:
            return record(RememberedBy.ROOT, ROOT_OWNER), 1
        try:
            users, original = owner_xattrs.remember(opened.via_fd, opened.owner)
        except XattrsUnsupported:
            users, original = self._ledger.take(opened.key, opened.owner)
            return record(RememberedBy.STATUS, original), users
        except (OSError, MalformedRecord) as exc:
            raise SystemError_(f"Unable to record the owner of '{safefs.shown(opened.path)}'"
                               f" in XATTR {owner_xattrs.ATTR_REFS}: {_reason(exc)}") from exc
        return record(RememberedBy.XATTR, original), users

    # -- stop --------------------------------------------------------------------------

    def restore(self, owned: list[OwnedFile], *, migrated: bool) -> None:
        """Give back every file of ``owned`` (last labelled first). ``migrated``: the peer
        host now uses these files; those on shared storage are left to it. Never raises:
        a file that cannot be restored is logged and the others still are."""
        for record in reversed(owned):
            try:
                self._restore_one(record, migrated)
            except (OSError, MalformedRecord) as exc:
                log.error("cannot give %s back to %d:%d: %s", safefs.shown(record.path),
                          record.original.uid, record.original.gid, _reason(exc))

    def adopt(self, owned: list[OwnedFile]) -> None:
        """A restarted daemon takes over the records of a domain still running."""
        for record in owned:
            if record.remembered is RememberedBy.STATUS:
                self._ledger.take(record.key, record.original)

    def _restore_one(self, record: OwnedFile, migrated: bool) -> None:
        try:
            opened = _open_path(record.path)
        except OSError as exc:
            self._release_ledger(record)
            log.warning("cannot give %s back: %s", safefs.shown(record.path), exc.strerror)
            return
        with opened:
            if opened.key != record.key:
                self._release_ledger(record)
                log.warning("%s is no longer the file handed to QEMU: its owner is left "
                            "alone", safefs.shown(record.path))
                return
            with _exclusive(opened) as current:
                self._give_back(record, current, migrated)

    def _give_back(self, record: OwnedFile, opened: _Opened, migrated: bool) -> None:
        owner = self._owner_to_restore(record, opened, migrated)
        if owner is None or owner == opened.owner:
            return
        if opened.owner != self.qemu_owner:
            # replaced, or chowned by someone else since: their choice stands
            log.warning("%s is no longer owned by QEMU's user: its owner is left "
                        "alone", safefs.shown(record.path))
            return
        _chown(opened, owner)

    def _owner_to_restore(self, record: OwnedFile, opened: _Opened,
                          migrated: bool) -> Owner | None:
        """Who gets the file back now; None: nobody (still in use, or the peer's now)."""
        shared = migrated and self.on_shared_storage(opened)
        if shared:
            log.debug("%s is on shared storage: left to the migration's peer",
                      safefs.shown(record.path))
        if record.remembered is RememberedBy.ROOT:
            return None if shared else ROOT_OWNER
        if record.remembered is RememberedBy.STATUS:
            remaining = self._ledger.release(record.key)
            return None if shared or remaining else record.original
        try:
            if shared:
                owner_xattrs.drop_reference(opened.via_fd)
                return None
            recalled = owner_xattrs.recall(opened.via_fd)
        except XattrsUnsupported:
            return None if shared else record.original
        if recalled is Recalled.IN_USE:
            return None
        # no record left (removed, or stale): libvirt gives root:root, we know better
        return record.original if recalled is Recalled.NO_RECORD else recalled

    def _release_ledger(self, record: OwnedFile) -> None:
        if record.remembered is RememberedBy.STATUS:
            self._ledger.release(record.key)

    def on_shared_storage(self, opened: _Opened) -> bool:
        """Under qemu.conf's shared_filesystems, or on a network/cluster file system."""
        if under_shared_filesystems(opened.resolved, self.settings.shared_filesystems):
            return True
        return fs_magic(opened.fd) in SHARED_FS_MAGIC


#: how long a label or restore waits for another daemon's lock on the same file
LOCK_WAIT_S = 0.2
_LOCK_RETRY_S = 0.002


@contextlib.contextmanager
def _exclusive(opened: _Opened) -> Iterator[_Opened]:
    """The reference count's read-modify-write under an exclusive ``flock`` of the file
    itself: daemons of one host (the lab's, or a host's pyvirtd and a restarted one) label
    the same kernels and shared images. Yields ``opened`` re-stated under the lock.

    Best effort, never fatal: a file that cannot be opened for the lock, or a lock still
    held after LOCK_WAIT_S (e.g. NFS, where flock is the server's whole-file lock and
    conflicts with QEMU's own image locks), is handled unlocked, as libvirt does without
    its optional metadata lock manager. QEMU's image locks are OFD byte-range locks, which
    a local flock does not disturb."""
    try:
        lock_fd = os.open(opened.via_fd, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                          | os.O_NOCTTY)
    except OSError as exc:
        log.debug("no lock on %s: %s", safefs.shown(opened.path), exc.strerror)
        yield dataclasses.replace(opened, info=os.fstat(opened.fd))
        return
    try:
        _flock(lock_fd, opened.path)
        yield dataclasses.replace(opened, info=os.fstat(opened.fd))
    finally:
        os.close(lock_fd)  # drops the lock


def _flock(fd: int, path: str) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno != errno.EWOULDBLOCK or time.monotonic() > deadline:
                log.debug("%s not locked: %s", safefs.shown(path), exc.strerror)
                return
        time.sleep(_LOCK_RETRY_S)  # another daemon's few syscalls; bounded


def _chown(opened: _Opened, owner: Owner) -> None:
    if opened.owner == owner:
        return
    try:
        os.chown(opened.via_fd, owner.uid, owner.gid)
    except OSError as exc:
        if exc.errno not in _CHOWN_TOLERATED:
            raise SystemError_(
                f"unable to set user and group to '{owner.uid}:{owner.gid}' on "
                f"'{safefs.shown(opened.path)}': {exc.strerror}") from exc
        # libvirt's choice: the file system decides (root squash, read-only, no owners)
        log.info("setting user and group to %d:%d on %s not possible: %s", owner.uid,
                 owner.gid, safefs.shown(opened.path), exc.strerror)
    else:
        log.info("%s handed to %d:%d", safefs.shown(opened.path), owner.uid, owner.gid)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# -- statfs ----------------------------------------------------------------------------------
class _StatFs(ctypes.Structure):
    # f_type comes first on every Linux ABI (a word); the rest is room for the kernel
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_ubyte * 248)]


_libc = ctypes.CDLL(None, use_errno=True)


def fs_magic(fd: int) -> int:
    """The file system magic of the file open at ``fd`` (fstatfs works on O_PATH fds)."""
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(buf.f_type) & 0xFFFFFFFF
