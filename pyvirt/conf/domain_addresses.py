"""Device address assignment, as libvirt does it for i440fx and q35 guests.

Addresses are part of the guest ABI: a migrated guest must see every device where it was,
so assignment is deterministic (same definition → same addresses) and only fills what is
missing (assigning twice changes nothing).

PCI (bus 0 only; pyvirt models no bridges or root ports):

* i440fx: slot 0 host bridge, slot 1 the PIIX3 (ISA bridge; IDE controller 0 at 1.1, the
  piix3-uhci USB controller 0 at 1.2), the primary video at slot 2;
* q35: slot 0 host bridge, the primary video at slot 1, slot 0x1f the ICH9 (LPC, SATA
  controller 0 at 1f.2, SMBus); libvirt would hang devices off pcie-root-ports, pyvirt
  keeps them as integrated endpoints on pcie.0 (simple and deterministic, no hotplug);
* then, each on the lowest free slot, in libvirt's order (qemuDomainAssignDevicePCISlots):
  network interfaces, controllers (list order), virtio disks, the balloon, further videos,
  virtio input devices, pci-serial ports.

Drive addresses come from the target name (``sdb`` → unit 1) with libvirt's geometry;
virtio-serial ports are numbered per controller from 1 (0 is reserved for a virtio
console); USB devices take the first free port of the first USB controller with one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pyvirt.conf import domain_schema as schema
from pyvirt.conf.domain import (
    CharDevDef,
    ControllerDef,
    DiskDef,
    DomainDef,
    DriveAddress,
    InputDef,
    InterfaceDef,
    MemballoonDef,
    PCIAddress,
    USBAddress,
    VideoDef,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_util import controllers_of, disk_index, machine_family
from pyvirt.errors import ConfigUnsupportedError, XMLError

#: every device kind that can sit on PCI
PCIUser = InterfaceDef | ControllerDef | DiskDef | MemballoonDef | VideoDef | InputDef | CharDevDef

#: PCI slots on one bus
PCI_SLOTS = 32
#: libvirt's default port count of a virtio-serial controller
VIRTIO_SERIAL_PORTS = 31

#: bus → (disk index → drive address), libvirt's virDomainDiskDefAssignAddress geometry
_DRIVE_GEOMETRY: dict[str, Callable[[int], DriveAddress]] = {
    "ide": lambda i: DriveAddress(controller=i // 4, bus=(i % 4) // 2, target=0, unit=i % 2),
    "sata": lambda i: DriveAddress(controller=i // 6, bus=0, target=0, unit=i % 6),
    "scsi": lambda i: DriveAddress(controller=i // 7, bus=0, target=0, unit=i % 7),
}

#: per family: slots the chipset owns, the primary video's slot, fixed controller addresses
_RESERVED_SLOTS = {"i440fx": frozenset({0, 1}), "q35": frozenset({0, 0x1F})}
_VIDEO_SLOT = {"i440fx": 2, "q35": 1}
_FIXED_CONTROLLERS: dict[str, dict[tuple[str, int], PCIAddress]] = {
    "i440fx": {("ide", 0): PCIAddress(slot=1, function=1),
               ("usb", 0): PCIAddress(slot=1, function=2)},
    "q35": {("sata", 0): PCIAddress(slot=0x1F, function=2)},
}


def fixed_controller_address(family: str, controller: ControllerDef) -> PCIAddress | None:
    """Where the chipset itself puts *controller*, if it is one of its built-ins."""
    fixed = _FIXED_CONTROLLERS[family].get((controller.type, controller.index))
    if fixed is None or (controller.type == "usb" and controller.model != "piix3-uhci"):
        return None
    return PCIAddress(slot=fixed.slot, function=fixed.function)


def assign_drive_addresses(dom: DomainDef) -> None:
    for disk in dom.devices.disks:
        geometry = _DRIVE_GEOMETRY.get(disk.target_bus)
        if geometry is None or disk.address is not None:
            continue
        index = disk_index(disk.target_dev)
        if index is None:
            raise XMLError(f"Unknown disk name '{disk.target_dev}' and no address specified")
        disk.address = geometry(index)


def assign_addresses(dom: DomainDef) -> None:
    """Fill every missing virtio-serial, USB and PCI address (drive ones come earlier)."""
    _assign_virtio_serial(dom)
    _assign_usb(dom)
    _assign_pci(dom)


# --- virtio-serial -----------------------------------------------------------------------


def _virtio_serial_users(dom: DomainDef) -> Iterator[tuple[CharDevDef, int]]:
    """(device, lowest port it may take): virtio consoles first, as libvirt orders them."""
    for console in dom.devices.consoles:
        if console.target_type == "virtio":
            yield console, 0
    for channel in dom.devices.channels:
        if channel.target_type == "virtio":
            yield channel, 1


def _assign_virtio_serial(dom: DomainDef) -> None:
    used = {(a.controller, a.bus, a.port)
            for c, _ in _virtio_serial_users(dom)
            if isinstance(a := c.address, VirtioSerialAddress)}
    for chardev, first in _virtio_serial_users(dom):
        if chardev.address is not None:
            continue
        port = next((p for p in range(first, VIRTIO_SERIAL_PORTS) if (0, 0, p) not in used),
                    None)
        if port is None:
            raise ConfigUnsupportedError("no free port on virtio-serial controller 0")
        used.add((0, 0, port))
        chardev.address = VirtioSerialAddress(controller=0, bus=0, port=port)


# --- USB ---------------------------------------------------------------------------------


def _assign_usb(dom: DomainDef) -> None:
    users = [i for i in dom.devices.inputs if i.bus == "usb"]
    used = {(a.bus, a.port) for i in users if isinstance(a := i.address, USBAddress)}
    buses = sorted(
        (c.index, schema.USB_PORTS.get(c.model or "", 0)) for c in controllers_of(dom, "usb")
    )
    if not any(ports for _, ports in buses):
        return  # USB is disabled: validation reports the devices that need it
    for device in users:
        if device.address is not None:
            continue
        free = ((bus, str(port)) for bus, ports in buses for port in range(1, ports + 1)
                if (bus, str(port)) not in used)
        slot = next(free, None)
        if slot is None:
            raise ConfigUnsupportedError("No free USB ports")
        used.add(slot)
        device.address = USBAddress(bus=slot[0], port=slot[1])


# --- PCI ---------------------------------------------------------------------------------


class _Bus0:
    """Which slots of PCI bus 0 are taken."""

    def __init__(self, family: str, dom: DomainDef) -> None:
        self.taken = set(_RESERVED_SLOTS[family])
        for address in pci_addresses(dom):
            if address.domain == 0 and address.bus == 0:
                self.taken.add(address.slot)

    def take(self, preferred: int | None = None) -> PCIAddress:
        if preferred is not None and preferred not in self.taken:
            slot: int | None = preferred
        else:
            slot = next((s for s in range(1, PCI_SLOTS) if s not in self.taken), None)
        if slot is None:
            raise ConfigUnsupportedError("No more available PCI slots")
        self.taken.add(slot)
        return PCIAddress(slot=slot)


def pci_addresses(dom: DomainDef) -> Iterator[PCIAddress]:
    for device in _all_devices(dom):
        if isinstance(device.address, PCIAddress):
            yield device.address


def _all_devices(dom: DomainDef) -> Iterator[PCIUser]:
    d = dom.devices
    yield from d.disks
    yield from d.controllers
    yield from d.interfaces
    yield from d.serials
    yield from d.consoles
    yield from d.channels
    yield from d.inputs
    yield from d.videos
    if d.memballoon is not None:
        yield d.memballoon


def _wants_pci_controller(c: ControllerDef) -> bool:
    # root buses have no address; IDE exists only as the PIIX3's built-in one
    return c.type not in ("pci", "ide") and not (c.type == "usb" and c.model == "none")


def _pci_users(dom: DomainDef) -> Iterator[PCIUser]:
    """Devices needing a PCI slot, in libvirt's assignment order."""
    d = dom.devices
    yield from d.interfaces
    yield from (c for c in d.controllers if _wants_pci_controller(c))
    yield from (disk for disk in d.disks if disk.target_bus == "virtio")
    if d.memballoon is not None and d.memballoon.model == "virtio":
        yield d.memballoon
    yield from (v for v in d.videos[1:] if v.model != "none")
    yield from (i for i in d.inputs if i.bus == "virtio")
    yield from (s for s in d.serials if s.target_type == "pci-serial")


def _assign_pci(dom: DomainDef) -> None:
    family = machine_family(dom.os.machine)
    if family is None:
        return  # apply_defaults refused the machine already; nothing sensible to do
    for controller in dom.devices.controllers:
        if controller.address is None:
            controller.address = fixed_controller_address(family, controller)
    bus = _Bus0(family, dom)
    videos = dom.devices.videos
    if videos and videos[0].model != "none" and videos[0].address is None:
        videos[0].address = bus.take(_VIDEO_SLOT[family])
    for device in _pci_users(dom):
        if device.address is None:
            device.address = bus.take()
