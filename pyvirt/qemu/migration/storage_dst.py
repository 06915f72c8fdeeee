"""Destination side of a storage migration: images, NBD server and exports.

Prepare (before QEMU starts)   check or pre-create every copied disk's image (images.py)
Prepare (QEMU up, -incoming)   nbd-server-start on the migration listener's address, a port
                               from the migration range (or --disks-port / --disks-uri),
                               block-export-add (writable) per copied disk
                               → cookie <nbd port=…><disk target= capacity=/></nbd>
Finish (completed)             nbd-server-stop (its exports go with it), then resume
Finish cancelled / abandon     QEMU killed, port released, pre-created images removed

The disks come from the source's Begin cookie (its ``<nbd>`` lists the disks it will mirror
with their capacities); their paths and formats from the destination's own definition.
"""

from __future__ import annotations

import logging

from pyvirt.conf.domain import DiskDef, DomainDef
from pyvirt.errors import InvalidArgError, OperationFailedError, OperationInvalidError
from pyvirt.qemu.argv_disk import CACHE_MODES, disk_node_name
from pyvirt.qemu.migration import images
from pyvirt.qemu.migration.cookie import CookieNBD, CookieNBDDisk, MigrationCookie
from pyvirt.qemu.migration.job import IncomingJob
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.qemu.migration.storage import NbdAddress, export_name, format_node, parse_disks_uri
from pyvirt.qemu.monitor import Monitor
from pyvirt.qemu.resources import PortAllocator

log = logging.getLogger(__name__)


def _cookie_disks(cookie: MigrationCookie | None) -> tuple[CookieNBDDisk, ...]:
    if cookie is None or cookie.nbd is None or not cookie.nbd.disks:
        raise OperationFailedError(
            "storage migration: the source's cookie lists no disk to copy (no <nbd> section)")
    return cookie.nbd.disks


def _disk(definition: DomainDef, target: str) -> DiskDef:
    for disk in definition.devices.disks:
        if disk.target_dev == target:
            return disk
    raise InvalidArgError(f"disk target {target} not found")


def image_spec(disk: DiskDef, sent: CookieNBDDisk) -> images.ImageSpec:
    if not disk.source or disk.type not in ("file", "block"):
        raise OperationInvalidError(f"cannot copy disk {disk.target_dev}: it has no local "
                                    "image on the destination")
    return images.ImageSpec(target=disk.target_dev, path=disk.source,
                            format=disk.driver_type or "raw", capacity=sent.capacity,
                            allocation=sent.allocation or 0, backing=sent.backing,
                            backing_format=sent.backing_format)


async def prepare_images(job: IncomingJob, definition: DomainDef, request: MigrationRequest,
                         cookie: MigrationCookie | None) -> list[DiskDef]:
    """Before QEMU starts: every copied disk's image exists with the right size. Created
    images are recorded in ``job`` (and its journal) at once, so any failure removes them."""
    incremental = request.storage_incremental
    disks: list[DiskDef] = []
    for sent in _cookie_disks(cookie):
        disk = _disk(definition, sent.target)
        spec = image_spec(disk, sent)
        existing = await images.image_info(spec.path)
        if disk.type == "block" and existing is None:
            raise OperationFailedError(f"disk {disk.target_dev}: block device {spec.path} "
                                       "does not exist on the destination")
        created = await images.prepare(spec, incremental, existing)
        if created is not None:
            job.created_images.append(created)
            job.record()
        disks.append(disk)
    return disks


def nbd_address(ports: PortAllocator, job: IncomingJob, request: MigrationRequest,
                listen: str) -> NbdAddress:
    """--disks-uri, else the migration listener's address with --disks-port or a port from
    the migration range (held by the job until it ends)."""
    port = request.disks_port
    if request.disks_uri:
        given = parse_disks_uri(request.disks_uri)
        if given.path is not None:
            return NbdAddress(path=given.path)
        listen, port = given.host or listen, given.port
    if port:  # the client's port: only inside the migration range (docs/security.md)
        ports.claim(port, listen)
        job.nbd_port = port
        return NbdAddress(listen, port)
    job.nbd_port = ports.allocate(listen)
    return NbdAddress(listen, job.nbd_port)


def format_options(live: DomainDef, target: str, discard: str) -> dict[str, object]:
    """The options of disk ``target``'s format node as the argv builder gave them, with
    ``discard`` (for blockdev-reopen)."""
    disks = live.devices.disks
    position = next(i for i, d in enumerate(disks) if d.target_dev == target)
    disk = disks[position]
    options: dict[str, object] = {
        "node-name": disk_node_name(len(disks), position, "format"),
        "driver": disk.driver_type or "raw",
        "file": disk_node_name(len(disks), position, "storage"),
        "read-only": False, "discard": discard}
    cache = CACHE_MODES.get(disk.cache or "default")
    if cache is not None:
        options["cache"] = {"direct": cache.direct, "no-flush": cache.no_flush}
    return options


async def set_discard(monitor: Monitor, live: DomainDef, disks: list[DiskDef],
                      discard: str) -> None:
    """Raw disks: ``unmap`` while the copy runs, so the zeroes the source's mirror sends for
    holes stay holes (the image stays sparse); ``ignore`` (the argv's default) again before
    the guest runs. qcow2 records zeroes as metadata anyway (and may have a backing child,
    which blockdev-reopen would need named)."""
    raw = [d for d in disks if (d.driver_type or "raw") == "raw"]
    if raw:
        await monitor.execute("blockdev-reopen", {"options": [
            format_options(live, d.target_dev, discard) for d in raw]})


async def start_exports(monitor: Monitor, live: DomainDef, disks: list[DiskDef],
                        address: NbdAddress, sent: tuple[CookieNBDDisk, ...]) -> CookieNBD:
    """nbd-server-start + one writable export per disk; the cookie section for the source."""
    await set_discard(monitor, live, disks, "unmap")
    await monitor.execute("nbd-server-start", {"addr": address.qmp()})
    for disk in disks:
        name = export_name(_disk(live, disk.target_dev))
        await monitor.execute("block-export-add", {
            "type": "nbd", "id": name, "node-name": format_node(live, disk.target_dev),
            "name": name, "writable": True})
    capacities = {d.target: d.capacity for d in sent}
    return CookieNBD(port=address.port, disks=tuple(
        CookieNBDDisk(d.target_dev, capacities[d.target_dev]) for d in disks))


async def prepare_exports(ports: PortAllocator, monitor: Monitor, live: DomainDef,
                          job: IncomingJob, request: MigrationRequest, listen: str,
                          disks: list[DiskDef], cookie: MigrationCookie | None) -> CookieNBD:
    address = nbd_address(ports, job, request, listen)
    job.exported = [d.target_dev for d in disks]
    return await start_exports(monitor, live, disks, address, _cookie_disks(cookie))


async def stop_server(monitor: Monitor, live: DomainDef, job: IncomingJob) -> None:
    """Finish: the copy is complete; the exports and the server go (QEMU keeps the disks),
    and the disks' discard setting is the argv's again."""
    await monitor.execute("nbd-server-stop")
    disks = [_disk(live, target) for target in job.exported]
    if disks:
        await set_discard(monitor, live, disks, "ignore")


def forget_created(job: IncomingJob) -> None:
    """The migration succeeded: the images Prepare created are the guest's disks now."""
    job.created_images.clear()


def remove_created(job: IncomingJob) -> None:
    """The migration failed: remove the images Prepare created (QEMU is gone)."""
    if job.created_images:
        images.remove(job.created_images)
        job.created_images.clear()
