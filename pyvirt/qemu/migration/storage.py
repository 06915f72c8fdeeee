"""Storage migration (NBD + mirror), the parts both sides share: which disks move, names,
and the state of the copy a job carries.

Which disks are copied (libvirt's qemuMigrationAnyCopyDisk, with one deviation)::

    --migrate-disks vda,vdb given   exactly those (each must exist, be writable and local)
    none given                      every writable, non-empty, non-shareable disk that is
                                    not on shared storage (shared_filesystems)

libvirt's default also copies disks on shared storage; pyvirt leaves them out (and refuses
them in --migrate-disks) because mirroring an image onto itself through the destination's
NBD export cannot work: both QEMUs would hold the same file writable.

Names (every QEMU object storage migration creates is recognisable by its prefix, so crash
recovery can remove what a dead daemon left behind)::

    destination  NBD export        drive-<alias>            (libvirt's export name)
    source       NBD client nodes  migration-<dev>-storage / migration-<dev>-format
                 mirror job        migration-<dev>
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pyvirt import safefs
from pyvirt.conf.domain import DiskDef, DomainDef
from pyvirt.errors import InvalidArgError, OperationInvalidError
from pyvirt.qemu.argv_disk import disk_node_name
from pyvirt.qemu.migration import uris

#: prefix of the source's NBD client nodes and mirror jobs
NODE_PREFIX = "migration-"


def export_name(disk: DiskDef) -> str:
    return f"drive-{disk.alias or disk.target_dev}"


def job_id(target: str) -> str:
    return f"{NODE_PREFIX}{target}"


def client_node(target: str, layer: str) -> str:
    """The source's NBD client node for disk ``target``: layer storage|format."""
    return f"{NODE_PREFIX}{target}-{layer}"


def format_node(definition: DomainDef, target: str) -> str:
    """The QEMU format node of disk ``target`` (the argv builder's name)."""
    disks = definition.devices.disks
    for position, disk in enumerate(disks):
        if disk.target_dev == target:
            return disk_node_name(len(disks), position, "format")
    raise InvalidArgError(f"disk target {target} not found")


def on_shared_storage(disk: DiskDef, shared: tuple[str, ...]) -> bool:
    """A network disk, or a file under one of ``shared`` (qemu.conf shared_filesystems)."""
    if disk.type not in ("file", "block"):
        return True
    return under_shared_filesystems(disk.source or "", shared)


def under_shared_filesystems(path: str, shared: tuple[str, ...]) -> bool:
    """``path`` (symlinks resolved) is one of ``shared`` or below one of them."""
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip("/") + "/")
               for root in (os.path.realpath(r) for r in shared))


def _copyable(disk: DiskDef) -> bool:
    return (disk.device == "disk" and bool(disk.source) and not disk.readonly
            and not disk.shareable)


def disks_to_copy(definition: DomainDef, migrate_disks: tuple[str, ...],
                  shared: tuple[str, ...]) -> list[DiskDef]:
    """The disks a storage migration copies, in document order (see the module doc)."""
    disks = definition.devices.disks
    known = {disk.target_dev for disk in disks}
    for target in migrate_disks:
        if target not in known:
            raise InvalidArgError(f"disk target {target} not found")
    if not migrate_disks:
        return [d for d in disks if _copyable(d) and not on_shared_storage(d, shared)]
    chosen = [d for d in disks if d.target_dev in migrate_disks]
    for disk in chosen:
        if not _copyable(disk):
            raise OperationInvalidError(
                f"cannot migrate disk {disk.target_dev}: only writable disks with a source "
                "can be copied")
        if on_shared_storage(disk, shared):
            raise OperationInvalidError(
                f"cannot migrate disk {disk.target_dev}: it is on shared storage "
                f"({disk.source}), so the destination already sees it")
    return chosen


def check_detect_zeroes(copied: list[DiskDef], detect_zeroes: tuple[str, ...]) -> None:
    """libvirt: every disk in migrate_disks_detect_zeroes must be one that is copied."""
    targets = {disk.target_dev for disk in copied}
    for target in detect_zeroes:
        if target not in targets:
            raise InvalidArgError(
                f"disk target {target} is in migrate_disks_detect_zeroes but is not migrated")


# -- where the destination serves the disks --------------------------------------------------
@dataclass(frozen=True)
class NbdAddress:
    """Where the destination's NBD server listens: TCP host+port, or a UNIX socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def qmp(self) -> dict[str, object]:
        """nbd-server-start's ``addr`` (SocketAddressLegacy)."""
        if self.path is not None:
            return {"type": "unix", "data": {"path": self.path}}
        return {"type": "inet", "data": {"host": self.host, "port": str(self.port)}}

    def client(self) -> dict[str, object]:
        """The ``server`` of the source's nbd blockdev (SocketAddress)."""
        if self.path is not None:
            return {"type": "unix", "path": self.path}
        return {"type": "inet", "host": self.host, "port": str(self.port)}


def parse_disks_uri(uri: str) -> NbdAddress:
    """``tcp://HOST[:PORT]`` or ``unix:///PATH`` (also ``unix:/PATH``): libvirt's forms,
    checked like a migration URI (uris.py): a host name or IP literal, a port, an absolute
    normalized socket path where no other kind of file exists."""
    scheme = uri.partition(":")[0].lower() if ":" in uri else ""
    if scheme not in uris.MIGRATION_SCHEMES:
        # libvirt's wording (qemuMigrationDstStartNBDServer), VIR_ERR_INVALID_ARG
        raise InvalidArgError(f"Unsupported scheme in disks URI: {safefs.shown(uri)}")
    address = uris.parse_migration_uri(uri, what="disks URI")
    return NbdAddress(host=address.host, port=address.port, path=address.path)


# -- the copy in progress (source side) -----------------------------------------------------
@dataclass
class DiskCopy:
    """One disk's mirror job: QEMU's progress and how it ended."""

    target: str
    #: QEMU's job length and offset (bytes)
    length: int = 0
    offset: int = 0
    ready: bool = False
    #: the job is gone (completed, cancelled or failed)
    ended: bool = False
    error: str | None = None
    #: a BLOCK_JOB_ERROR came (QEMU's reason follows in BLOCK_JOB_COMPLETED)
    io_error: str | None = None

    @property
    def job_id(self) -> str:
        return job_id(self.target)


@dataclass
class StorageCopy:
    """The mirrors of one outgoing migration (``MigrationJob.storage``)."""

    disks: list[DiskCopy] = field(default_factory=list)
    #: the NBD client nodes created so far (removed on success and failure)
    nodes: list[str] = field(default_factory=list)

    def find(self, job: str) -> DiskCopy | None:
        return next((d for d in self.disks if d.job_id == job), None)

    @property
    def total(self) -> int:
        return sum(d.length for d in self.disks)

    @property
    def processed(self) -> int:
        return sum(min(d.offset, d.length) for d in self.disks)

    @property
    def all_ready(self) -> bool:
        return all(d.ready for d in self.disks)

    def failure(self) -> str | None:
        for disk in self.disks:
            if disk.error is not None:
                return f"mirroring disk {disk.target} failed: {disk.error}"
            if disk.ended and disk.io_error is not None:
                return f"mirroring disk {disk.target} failed: {disk.io_error}"
            if disk.ended and not disk.ready:
                return f"mirroring disk {disk.target} ended before it was ready"
        return None

    def on_event(self, name: str, data: dict[str, object]) -> bool:
        """Apply a QMP BLOCK_JOB_* event; True when it was about one of our jobs."""
        disk = self.find(str(data.get("device", "")))
        if disk is None:
            return False
        for key, attr in (("len", "length"), ("offset", "offset")):
            value = data.get(key)
            if isinstance(value, int):
                setattr(disk, attr, value)
        if name == "BLOCK_JOB_READY":
            disk.ready = True
        elif name == "BLOCK_JOB_ERROR":
            disk.io_error = f"I/O error on {data.get('operation', 'write')}"
        elif name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            disk.ended = True
            if data.get("error"):
                disk.error = str(data["error"])
        return True


def disk_stats(storage: StorageCopy | None, *, completed: bool) -> dict[str, int]:
    """libvirt's VIR_DOMAIN_JOB_DISK_* from the mirrors (none without a storage copy)."""
    if storage is None or not storage.disks:
        return {}
    total = storage.total
    processed = total if completed else storage.processed
    return {"disk_total": total, "disk_processed": processed,
            "disk_remaining": max(total - processed, 0)}
