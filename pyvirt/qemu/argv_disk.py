"""Disks: ``-blockdev`` storage + format nodes and the guest-visible frontend device.

Node names follow libvirt: ``libvirt-N-storage`` / ``libvirt-N-format`` where N counts
the disks from the *last* one (the last ``<disk>`` is 1, the first is ``len(disks)``);
an empty CD-ROM consumes its number but emits no nodes. The driver relies on these names
(block jobs, NBD exports during migration), so :func:`disk_node_name` is public.

Cache modes use libvirt's table: the host side (``cache.direct``/``cache.no-flush`` on both
nodes) and the guest side (the device's ``write-cache``) are set together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pyvirt.conf.domain import DiskDef, DriveAddress, PCIAddress
from pyvirt.errors import ConfigUnsupportedError
from pyvirt.qemu.argv_common import Ctx, Props, choose, device


@dataclass(frozen=True)
class CacheMode:
    direct: bool
    no_flush: bool
    write_cache: bool


#: libvirt cache mode → QEMU settings; "default" (and no attribute) sets nothing
CACHE_MODES: dict[str, CacheMode | None] = {
    "default": None,
    "none": CacheMode(direct=True, no_flush=False, write_cache=True),
    "writethrough": CacheMode(direct=False, no_flush=False, write_cache=False),
    "writeback": CacheMode(direct=False, no_flush=False, write_cache=True),
    "directsync": CacheMode(direct=True, no_flush=False, write_cache=False),
    "unsafe": CacheMode(direct=False, no_flush=True, write_cache=True),
}

#: (disk type, device) → QEMU protocol driver of the storage node
STORAGE_DRIVERS: dict[tuple[str, str], str] = {
    ("file", "disk"): "file",
    ("file", "cdrom"): "file",
    ("block", "disk"): "host_device",
    ("block", "cdrom"): "host_cdrom",
}

FORMATS = {"raw": "raw", "qcow2": "qcow2"}
#: libvirt io mode → QEMU aio; "default" (and no attribute) leaves QEMU's choice
AIO_MODES: dict[str, str | None] = {"default": None, "native": "native", "threads": "threads",
                                    "io_uring": "io_uring"}


@dataclass(frozen=True)
class DiskBus:
    """How one ``target bus`` is rendered."""

    #: device → QEMU frontend driver (missing device = unsupported on this bus)
    drivers: dict[str, str]
    #: target_dev prefix used to derive an index (vda → 0)
    dev_prefix: str
    #: the guest-visible position: builds the placement props and the libvirt alias
    placement: Callable[[Ctx, DiskDef], tuple[Props, str]]
    #: QEMU refuses read-only hard disks on ATA buses
    readonly_disk_ok: bool = True


def disk_name_index(name: str, prefix: str) -> int:
    """libvirt's disk-name arithmetic: ``vda`` → 0, ``vdz`` → 25, ``vdaa`` → 26."""
    letters = name[len(prefix) :] if name.startswith(prefix) else ""
    if not letters or not all("a" <= c <= "z" for c in letters):
        raise ConfigUnsupportedError(f"disk target '{name}' is not a valid {prefix}X name")
    index = 0
    for c in letters:
        index = index * 26 + (ord(c) - ord("a") + 1)
    return index - 1


def _virtio_placement(ctx: Ctx, disk: DiskDef) -> tuple[Props, str]:
    if disk.address is not None and not isinstance(disk.address, PCIAddress):
        raise ConfigUnsupportedError(f"disk '{disk.target_dev}': virtio needs a PCI address")
    alias = f"virtio-disk{disk_name_index(disk.target_dev, 'vd')}"
    return ctx.pci_props(disk.address, f"disk '{disk.target_dev}'"), alias


def _drive_address(disk: DiskDef, prefix: str, per: tuple[int, int, int]) -> DriveAddress:
    """The explicit drive address, or libvirt's default derived from the target name.

    ``per`` is (buses per controller, units per bus, units per controller).
    """
    if disk.address is not None:
        if not isinstance(disk.address, DriveAddress):
            raise ConfigUnsupportedError(
                f"disk '{disk.target_dev}': bus {disk.target_bus} needs a drive address"
            )
        return disk.address
    idx = disk_name_index(disk.target_dev, prefix)
    buses, units, per_controller = per
    within = idx % per_controller
    return DriveAddress(controller=idx // per_controller, bus=within // units % buses,
                        target=0, unit=within % units)


def _controller_bus(ctx: Ctx, kind: str, controller: int) -> str:
    """QEMU's name for the bus prefix of disk controller ``controller`` of type ``kind``."""
    builtin = dict(ctx.family.builtin_disk_controllers)
    if controller == 0 and kind in builtin:
        return builtin[kind]
    if kind == "ide":
        raise ConfigUnsupportedError(f"IDE controller {controller} on {ctx.family.name}")
    if not any(c.type == kind and c.index == controller for c in ctx.dom.devices.controllers):
        raise ConfigUnsupportedError(f"disk on missing {kind} controller {controller}")
    return f"{kind}{controller}"


def _ide_placement(ctx: Ctx, disk: DiskDef) -> tuple[Props, str]:
    a = _drive_address(disk, "hd", (2, 2, 4))
    if a.bus > 1 or a.unit > 1 or a.target != 0:
        raise ConfigUnsupportedError(f"disk '{disk.target_dev}': invalid IDE address")
    bus = _controller_bus(ctx, "ide", a.controller)
    return [("bus", f"{bus}.{a.bus}"), ("unit", a.unit)], f"ide{a.controller}-{a.bus}-{a.unit}"


def _sata_placement(ctx: Ctx, disk: DiskDef) -> tuple[Props, str]:
    # every AHCI port is its own bus, so the unit number selects the bus
    a = _drive_address(disk, "sd", (1, 6, 6))
    if a.bus != 0 or a.target != 0 or a.unit > 5:
        raise ConfigUnsupportedError(f"disk '{disk.target_dev}': invalid SATA address")
    bus = _controller_bus(ctx, "sata", a.controller)
    return [("bus", f"{bus}.{a.unit}")], f"sata{a.controller}-{a.bus}-{a.unit}"


def _scsi_placement(ctx: Ctx, disk: DiskDef) -> tuple[Props, str]:
    a = _drive_address(disk, "sd", (1, 16384, 16384))
    bus = _controller_bus(ctx, "scsi", a.controller)
    alias = f"scsi{a.controller}-{a.bus}-{a.target}-{a.unit}"
    props: Props = [("bus", f"{bus}.0"), ("channel", a.bus), ("scsi-id", a.target),
                    ("lun", a.unit), ("device_id", f"drive-{alias}")]
    return props, alias


DISK_BUSES: dict[str, DiskBus] = {
    "virtio": DiskBus({"disk": "virtio-blk-pci"}, "vd", _virtio_placement),
    "ide": DiskBus({"disk": "ide-hd", "cdrom": "ide-cd"}, "hd", _ide_placement,
                   readonly_disk_ok=False),
    "sata": DiskBus({"disk": "ide-hd", "cdrom": "ide-cd"}, "sd", _sata_placement,
                    readonly_disk_ok=False),
    "scsi": DiskBus({"disk": "scsi-hd", "cdrom": "scsi-cd"}, "sd", _scsi_placement),
}


def disk_node_name(disk_count: int, position: int, layer: str) -> str:
    """Node name of disk ``position`` (0-based, document order); layer storage|format."""
    return f"libvirt-{disk_count - position}-{layer}"


def disk_alias(ctx: Ctx, disk: DiskDef) -> str:
    return disk.alias or DISK_BUSES[disk.target_bus].placement(ctx, disk)[1]


def _json(obj: dict[str, object]) -> str:
    # compact and key-ordered as written: the goldens compare text
    return json.dumps(obj, separators=(",", ":"))


def _cache_mode(disk: DiskDef) -> CacheMode | None:
    if disk.cache is not None and disk.cache not in CACHE_MODES:
        raise ConfigUnsupportedError(f"disk '{disk.target_dev}': cache mode '{disk.cache}'")
    return CACHE_MODES.get(disk.cache or "default")


def _blockdevs(disk: DiskDef, count: int, pos: int, readonly: bool) -> list[str]:
    what = f"disk '{disk.target_dev}'"
    if disk.driver_name != "qemu":
        raise ConfigUnsupportedError(f"{what}: driver name '{disk.driver_name}'")
    storage_driver = STORAGE_DRIVERS.get((disk.type, disk.device))
    if storage_driver is None:
        raise ConfigUnsupportedError(f"{what}: type '{disk.type}' device '{disk.device}'")
    fmt = choose(FORMATS, disk.driver_type or "raw", f"{what}: format")
    cache = _cache_mode(disk)
    storage: dict[str, object] = {
        "driver": storage_driver,
        "filename": disk.source,
        "node-name": disk_node_name(count, pos, "storage"),
        "auto-read-only": True,
        "discard": "unmap",
    }
    if disk.io is not None and disk.io not in AIO_MODES:
        raise ConfigUnsupportedError(f"{what}: io mode '{disk.io}' is not supported")
    aio = AIO_MODES.get(disk.io or "default")
    if aio == "native" and (cache is None or not cache.direct):
        # QEMU refuses aio=native without O_DIRECT; say so before launch
        raise ConfigUnsupportedError(f"{what}: io='native' needs cache 'none' or 'directsync'")
    if aio is not None:
        storage["aio"] = aio
    fmt_node: dict[str, object] = {"node-name": disk_node_name(count, pos, "format"),
                                   "read-only": readonly}
    if cache is not None:
        storage["cache"] = fmt_node["cache"] = {"direct": cache.direct,
                                                "no-flush": cache.no_flush}
    fmt_node["driver"] = fmt
    fmt_node["file"] = storage["node-name"]
    return ["-blockdev", _json(storage), "-blockdev", _json(fmt_node)]


def build_disk(ctx: Ctx, pos: int) -> list[str]:
    """``-blockdev`` nodes (unless an empty CD-ROM) and ``-device`` for disk ``pos``."""
    disks = ctx.dom.devices.disks
    disk = disks[pos]
    what = f"disk '{disk.target_dev}'"
    bus = DISK_BUSES.get(disk.target_bus)
    if bus is None:
        raise ConfigUnsupportedError(f"{what}: bus '{disk.target_bus}' is not supported")
    driver = choose(bus.drivers, disk.device, f"{what}: {disk.target_bus} device")
    readonly = disk.readonly or disk.device == "cdrom"
    if readonly and disk.device == "disk" and not bus.readonly_disk_ok:
        raise ConfigUnsupportedError(f"{what}: read-only {disk.target_bus} hard disks")
    placement, alias = bus.placement(ctx, disk)
    argv: list[str] = []
    drive: str | None = None
    if disk.source is not None:
        argv += _blockdevs(disk, len(disks), pos, readonly)
        drive = disk_node_name(len(disks), pos, "format")
    elif disk.device != "cdrom":
        raise ConfigUnsupportedError(f"{what}: a hard disk needs a source")
    cache = _cache_mode(disk) if drive is not None else None
    props: Props = [*placement, ("drive", drive), ("id", disk.alias or alias),
                    ("bootindex", ctx.bootindex("disk", pos, disk.boot_order)),
                    ("write-cache", None if cache is None else cache.write_cache),
                    ("share-rw", True if disk.shareable else None),
                    ("serial", disk.serial)]
    return argv + device(driver, props)
