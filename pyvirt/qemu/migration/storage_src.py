"""Source side of a storage migration: the disks' mirrors to the destination's NBD exports.

::

    Begin      which disks move (storage.disks_to_copy), the rest must be safe; cookie
               <nbd><disk target capacity format allocation [backing]/></nbd>
    Perform    per disk: blockdev-add migration-<dev>-storage (nbd client to the export)
               + migration-<dev>-format (raw), blockdev-mirror (sync full | top,
               copy-mode background | write-blocking) ─► wait until every job is READY
               ─► QMP migrate (pause-before-switchover on)
    pre-switchover  block-job-cancel (not forced: a READY mirror then completes with the
               destination a consistent copy) ─► every job COMPLETED ─► blockdev-del the
               NBD nodes ─► migrate-continue
    failure    block-job-cancel force=true ─► jobs gone ─► blockdev-del: the guest keeps
               running on its own disks, with every write it made
    dead peer  p2p also asks the destination every 2 s whether its incoming QEMU still
               runs (p2p._incoming_alive): a rate-limited mirror would notice a dead NBD
               target only at its next write

Progress (``query-block-jobs`` and BLOCK_JOB_* events) lands in ``job.storage``; job info
and statistics count it as disk bytes (storage.disk_stats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pyvirt.conf.domain import DiskDef, DomainDef
from pyvirt.errors import OperationAbortedError, OperationFailedError, VirtError
from pyvirt.qemu.migration.cookie import CookieNBD, CookieNBDDisk
from pyvirt.qemu.migration.job import OutgoingJob
from pyvirt.qemu.migration.params import MigrationRequest
from pyvirt.qemu.migration.storage import (
    NODE_PREFIX,
    DiskCopy,
    NbdAddress,
    StorageCopy,
    check_detect_zeroes,
    client_node,
    disks_to_copy,
    export_name,
    format_node,
    parse_disks_uri,
)
from pyvirt.qemu.monitor import Monitor

log = logging.getLogger(__name__)

#: how often mirror progress is polled while waiting (events wake us earlier)
TICK_S = 0.5
#: how long the mirrors may take to finish once cancelled (flushing what is in flight)
CANCEL_WAIT_S = 60.0
MIB = 1024 * 1024

Tick = Callable[[], Awaitable[None]]


# -- Begin -------------------------------------------------------------------------------
def select_disks(definition: DomainDef, request: MigrationRequest,
                 shared: tuple[str, ...]) -> list[DiskDef]:
    copied = disks_to_copy(definition, request.migrate_disks, shared)
    check_detect_zeroes(copied, request.migrate_disks_detect_zeroes)
    return copied


def _image(nodes: list[dict[str, Any]], node: str) -> dict[str, Any]:
    for entry in nodes:
        if entry.get("node-name") == node:
            image: dict[str, Any] = entry.get("image", {})
            return image
    raise OperationFailedError(f"QEMU has no block node '{node}'")


def _allocation(image: dict[str, Any], incremental: bool) -> int:
    """Bytes the copy writes at most: the top image's (-inc), else the whole chain's."""
    total = int(image.get("actual-size", 0))
    backing = image.get("backing-image")
    while not incremental and isinstance(backing, dict):
        total += int(backing.get("actual-size", 0))
        backing = backing.get("backing-image")
    return total


def nbd_disk(image: dict[str, Any], target: str, incremental: bool) -> CookieNBDDisk:
    backing = image.get("full-backing-filename") or image.get("backing-filename")
    return CookieNBDDisk(
        target=target, capacity=int(image.get("virtual-size", 0)),
        format=str(image.get("format", "raw")), allocation=_allocation(image, incremental),
        backing=str(backing) if backing else None,
        backing_format=image.get("backing-filename-format"))


async def begin_nbd(monitor: Monitor, live: DomainDef, disks: list[DiskDef],
                    request: MigrationRequest) -> CookieNBD:
    """The Begin cookie's ``<nbd>``: each copied disk with what pre-creating it needs."""
    nodes: list[dict[str, Any]] = await monitor.execute("query-named-block-nodes",
                                                        {"flat": True})
    return CookieNBD(disks=tuple(
        nbd_disk(_image(nodes, format_node(live, d.target_dev)), d.target_dev,
                 request.storage_incremental)
        for d in disks))


# -- Perform -------------------------------------------------------------------------------
def server_address(request: MigrationRequest, nbd: CookieNBD | None,
                   migrate_host: str | None) -> NbdAddress:
    """Where the destination serves the disks: --disks-uri, else the migration URI's host
    and the port its Prepare cookie names (libvirt's rule)."""
    given = parse_disks_uri(request.disks_uri) if request.disks_uri else NbdAddress()
    if given.path is not None:
        return given
    if nbd is None:
        raise OperationFailedError("storage migration: the destination did not export the "
                                   "disks over NBD (no <nbd> in its Prepare cookie)")
    port = given.port or nbd.port
    host = given.host or migrate_host
    if port is None or not host:
        raise OperationFailedError("storage migration: no NBD address for the destination")
    return NbdAddress(host, port)


def mirror_speed(request: MigrationRequest, max_speed_mib: int | None) -> int | None:
    """libvirt copies disks no faster than the migration bandwidth, when one is set."""
    mib = request.bandwidth_mib or max_speed_mib
    return mib * MIB if mib else None


def mirror_args(request: MigrationRequest, live: DomainDef, disk: DiskDef,
                speed: int | None) -> dict[str, object]:
    args: dict[str, object] = {
        "job-id": DiskCopy(disk.target_dev).job_id,
        "device": format_node(live, disk.target_dev),
        "target": client_node(disk.target_dev, "format"),
        "sync": "top" if request.storage_incremental else "full",
        "copy-mode": "write-blocking" if request.synchronous_writes else "background",
        "auto-finalize": True, "auto-dismiss": True,
    }
    if speed is not None:
        args["speed"] = speed
    return args


async def _add_client(monitor: Monitor, storage: StorageCopy, disk: DiskDef,
                      address: NbdAddress, detect_zeroes: bool) -> None:
    storage_node = client_node(disk.target_dev, "storage")
    await monitor.execute("blockdev-add", {
        "driver": "nbd", "node-name": storage_node, "server": address.client(),
        "export": export_name(disk), "read-only": False, "discard": "unmap"})
    storage.nodes.append(storage_node)
    fmt: dict[str, object] = {"driver": "raw", "node-name": client_node(disk.target_dev,
                                                                       "format"),
                              "file": storage_node, "read-only": False, "discard": "unmap"}
    if detect_zeroes:
        fmt["detect-zeroes"] = "unmap"
    await monitor.execute("blockdev-add", fmt)
    storage.nodes.append(str(fmt["node-name"]))


def exported(disks: list[DiskDef], nbd: CookieNBD | None) -> None:
    """Every disk to copy must be one the destination exported."""
    targets = {d.target for d in nbd.disks} if nbd is not None else set()
    for disk in disks:
        if disk.target_dev not in targets:
            raise OperationFailedError(f"storage migration: the destination did not export "
                                       f"disk {disk.target_dev}")


async def start_mirrors(monitor: Monitor, job: OutgoingJob, live: DomainDef,
                        request: MigrationRequest, disks: list[DiskDef],
                        address: NbdAddress, speed: int | None) -> None:
    """One NBD client and one mirror per copied disk (job.storage follows them)."""
    storage = job.storage = StorageCopy()
    for disk in disks:
        await _add_client(monitor, storage, disk, address,
                          disk.target_dev in request.migrate_disks_detect_zeroes)
        storage.disks.append(DiskCopy(disk.target_dev))
        await monitor.execute("blockdev-mirror", mirror_args(request, live, disk, speed))


async def refresh(monitor: Monitor, storage: StorageCopy) -> None:
    """Progress from query-block-jobs; a job of ours that vanished has ended."""
    jobs = {str(j.get("device")): j for j in await monitor.execute("query-block-jobs")}
    for disk in storage.disks:
        info = jobs.get(disk.job_id)
        if info is None:
            disk.ended = True
            continue
        disk.length, disk.offset = int(info.get("len", 0)), int(info.get("offset", 0))
        disk.ready = disk.ready or bool(info.get("ready"))
        if info.get("status") == "concluded" and info.get("error"):
            disk.error = str(info["error"])


async def wait_ready(monitor: Monitor, job: OutgoingJob, on_tick: Tick) -> None:
    """Until every mirror is READY; raise when one fails or the job is aborted."""
    storage = job.storage
    assert storage is not None
    while True:
        await refresh(monitor, storage)
        failure = storage.failure()
        if failure is not None:
            raise OperationFailedError(f"migration out job: {failure}")
        if job.abort_requested:
            raise OperationAbortedError("migration out: canceled by client")
        if storage.all_ready:
            return
        await on_tick()
        await job.wait_status_change(TICK_S)


async def _wait_ended(monitor: Monitor, job: OutgoingJob, timeout: float) -> None:
    storage = job.storage
    assert storage is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(d.ended for d in storage.disks):
        if asyncio.get_running_loop().time() > deadline:
            raise OperationFailedError("migration out job: the disk mirrors did not end")
        await job.wait_status_change(0.1)
        await refresh(monitor, storage)


async def _delete_nodes(monitor: Monitor, storage: StorageCopy) -> None:
    for node in reversed(list(storage.nodes)):
        try:
            await monitor.execute("blockdev-del", {"node-name": node})
        except VirtError as exc:
            log.error("cannot remove NBD client node %s: %s", node, exc)
        storage.nodes.remove(node)


async def complete(monitor: Monitor, job: OutgoingJob) -> None:
    """At pre-switchover (guest stopped): end every mirror with the copy consistent."""
    storage = job.storage
    assert storage is not None
    failure = storage.failure()
    if failure is not None:
        raise OperationFailedError(f"migration out job: {failure}")
    for disk in storage.disks:
        await monitor.execute("block-job-cancel", {"device": disk.job_id, "force": False})
    await _wait_ended(monitor, job, CANCEL_WAIT_S)
    failure = storage.failure()
    if failure is not None:
        raise OperationFailedError(f"migration out job: {failure}")
    await _delete_nodes(monitor, storage)


async def abort(monitor: Monitor, job: OutgoingJob) -> None:
    """After a failure: cancel what still runs (forced), then drop the NBD clients."""
    storage = job.storage
    if storage is None:
        return
    try:
        for disk in storage.disks:
            if not disk.ended:
                with contextlib.suppress(VirtError):
                    await monitor.execute("block-job-cancel",
                                          {"device": disk.job_id, "force": True})
        await _wait_ended(monitor, job, 10.0)
    except VirtError as exc:
        log.error("cancelling the disk mirrors failed: %s", exc)
    await _delete_nodes(monitor, storage)


async def remove_leftovers(monitor: Monitor) -> None:
    """Crash recovery: cancel mirrors and remove NBD nodes a previous daemon left."""
    for info in await monitor.execute("query-block-jobs"):
        if str(info.get("device", "")).startswith(NODE_PREFIX):
            with contextlib.suppress(VirtError):
                await monitor.execute("block-job-cancel",
                                      {"device": info["device"], "force": True})
    for _ in range(50):
        jobs = await monitor.execute("query-block-jobs")
        if not any(str(j.get("device", "")).startswith(NODE_PREFIX) for j in jobs):
            break
        await asyncio.sleep(0.1)
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    names = [str(n["node-name"]) for n in nodes
             if str(n.get("node-name", "")).startswith(NODE_PREFIX)]
    for name in sorted(names, key=lambda n: not n.endswith("-format")):
        with contextlib.suppress(VirtError):
            await monitor.execute("blockdev-del", {"node-name": name})
