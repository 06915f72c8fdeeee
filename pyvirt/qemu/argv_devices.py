"""Controllers, network interfaces, input devices and the memory balloon.

Each element kind is rendered through a table keyed by its libvirt model (or bus), so an
unsupported value is refused by the lookup instead of falling through an if-chain.
Device ids are libvirt's aliases (``usb``, ``scsi0``, ``virtio-serial0``, ``net0``,
``input0``, ``balloon0``) so tools that address devices by alias keep working.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvirt.conf.domain import ControllerDef, InputDef, InterfaceDef, PCIAddress, USBAddress
from pyvirt.errors import ConfigUnsupportedError, InternalError
from pyvirt.qemu.argv_common import Ctx, Props, choose, device, keyval

# --- controllers -------------------------------------------------------------------------

ControllerBuilder = Callable[[Ctx, ControllerDef], list[str]]

USB_MODELS = {
    "piix3-uhci": "piix3-usb-uhci",
    "qemu-xhci": "qemu-xhci",
}
SCSI_MODELS = {"virtio-scsi": "virtio-scsi-pci"}


def usb_alias(index: int) -> str:
    # libvirt calls the first USB controller plain "usb"; QEMU then names its bus usb.0
    return "usb" if index == 0 else f"usb{index}"


def _what(c: ControllerDef) -> str:
    return f"controller {c.type} index {c.index}"


def _pci(ctx: Ctx, c: ControllerDef) -> list[str]:
    # Only the board's root bus is modelled: every PCI device sits on it (pcie.0 on q35
    # as integrated endpoints), so there are no bridges or root ports to create.
    model = c.model or ctx.family.root_model
    if c.index != 0 or model != ctx.family.root_model:
        raise ConfigUnsupportedError(f"{_what(c)}: {model} on a {ctx.family.name} machine")
    return []


def _usb(ctx: Ctx, c: ControllerDef) -> list[str]:
    model = c.model or ctx.family.default_usb_model
    if model == "none":
        return []
    driver = choose(USB_MODELS, model, f"{_what(c)}: model")
    return device(driver, [("id", usb_alias(c.index)), *ctx.pci_props(c.address, _what(c))])


def _builtin_or(ctx: Ctx, c: ControllerDef, driver: str | None) -> list[str]:
    """Controller 0 of a board-provided type emits nothing; others need ``driver``."""
    if c.index == 0 and c.type in dict(ctx.family.builtin_disk_controllers):
        return []
    if driver is None:
        raise ConfigUnsupportedError(f"{_what(c)} on a {ctx.family.name} machine")
    return device(driver, [("id", f"{c.type}{c.index}"), *ctx.pci_props(c.address, _what(c))])


def _ide(ctx: Ctx, c: ControllerDef) -> list[str]:
    return _builtin_or(ctx, c, None)


def _sata(ctx: Ctx, c: ControllerDef) -> list[str]:
    return _builtin_or(ctx, c, "ich9-ahci")


def _scsi(ctx: Ctx, c: ControllerDef) -> list[str]:
    driver = choose(SCSI_MODELS, c.model, f"{_what(c)}: model")
    return device(driver, [("id", f"scsi{c.index}"), *ctx.pci_props(c.address, _what(c))])


def _virtio_serial(ctx: Ctx, c: ControllerDef) -> list[str]:
    if c.model not in (None, "virtio"):
        raise ConfigUnsupportedError(f"{_what(c)}: model '{c.model}'")
    return device("virtio-serial-pci", [("id", f"virtio-serial{c.index}"),
                                        *ctx.pci_props(c.address, _what(c))])


#: controller type → builder, in the order QEMU must see them (buses before their users)
CONTROLLERS: dict[str, ControllerBuilder] = {
    "pci": _pci,
    "usb": _usb,
    "ide": _ide,
    "sata": _sata,
    "scsi": _scsi,
    "virtio-serial": _virtio_serial,
}


def build_controllers(ctx: Ctx) -> list[str]:
    order = list(CONTROLLERS)
    for c in ctx.dom.devices.controllers:
        if c.type not in CONTROLLERS:
            raise ConfigUnsupportedError(f"controller type '{c.type}' is not supported")
    argv: list[str] = []
    for c in sorted(ctx.dom.devices.controllers, key=lambda c: (order.index(c.type), c.index)):
        argv += CONTROLLERS[c.type](ctx, c)
    return argv


# --- network interfaces ------------------------------------------------------------------

NIC_MODELS = {
    "virtio": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
}
#: libvirt's choice for x86 when <model> is absent
DEFAULT_NIC_MODEL = "rtl8139"


def _netdev_user(ctx: Ctx, net: InterfaceDef, netdev_id: str) -> str:
    return keyval("user", [("id", netdev_id)])


def _netdev_bridge(ctx: Ctx, net: InterfaceDef, netdev_id: str) -> str:
    # The driver creates the tap, enslaves it to the bridge and opens a queue of it that QEMU
    # inherits (libvirt's fd= form): QEMU's user may not open /dev/net/tun nor run scripts.
    # With fd= QEMU reads the virtio-net header flag from the tap itself.
    if net.target_dev is None:
        raise InternalError(f"tap device for interface {netdev_id} not allocated")
    fd = ctx.paths.tap_fds.get(net.target_dev)
    if fd is None:
        raise InternalError(f"tap device {net.target_dev} for interface {netdev_id} not opened")
    return keyval("tap", [("id", netdev_id), ("fd", fd)])


NETDEVS: dict[str, Callable[[Ctx, InterfaceDef, str], str]] = {
    "user": _netdev_user,
    "bridge": _netdev_bridge,
}


def build_interface(ctx: Ctx, index: int, net: InterfaceDef) -> list[str]:
    alias = net.alias or f"net{index}"
    netdev_id = f"host{alias}"
    what = f"interface {alias}"
    netdev = NETDEVS.get(net.type)
    if netdev is None:
        raise ConfigUnsupportedError(f"{what}: type '{net.type}' is not supported")
    if net.mac is None:
        raise InternalError(f"{what}: MAC address not assigned")
    driver = choose(NIC_MODELS, net.model or DEFAULT_NIC_MODEL, f"{what}: model")
    props = [("netdev", netdev_id), ("id", alias), ("mac", net.mac),
             ("bootindex", ctx.bootindex("net", index, net.boot_order)),
             *ctx.pci_props(net.address, what)]
    return ["-netdev", netdev(ctx, net, netdev_id), *device(driver, props)]


# --- inputs ------------------------------------------------------------------------------

#: (bus, type) → QEMU driver; None = part of the board (the i8042 PS/2 controller)
INPUTS: dict[tuple[str, str], str | None] = {
    ("ps2", "mouse"): None,
    ("ps2", "keyboard"): None,
    ("usb", "tablet"): "usb-tablet",
    ("usb", "mouse"): "usb-mouse",
    ("usb", "keyboard"): "usb-kbd",
    ("virtio", "tablet"): "virtio-tablet-pci",
    ("virtio", "mouse"): "virtio-mouse-pci",
    ("virtio", "keyboard"): "virtio-keyboard-pci",
}


def _usb_bus(ctx: Ctx, index: int | None, what: str) -> str:
    """QEMU's name of the bus of USB controller ``index`` (the first one when None)."""
    usb = [c.index for c in ctx.dom.devices.controllers if c.type == "usb" and c.model != "none"]
    if not usb or (index is not None and index not in usb):
        raise ConfigUnsupportedError(f"{what}: no USB controller")
    return f"{usb_alias(min(usb) if index is None else index)}.0"


def _usb_input(ctx: Ctx, inp: InputDef, what: str, next_port: int) -> Props:
    address = inp.address
    if isinstance(address, PCIAddress):
        raise ConfigUnsupportedError(f"{what}: a USB device needs a USB address")
    if address is None:
        # unaddressed: libvirt's allocator hands out ports in document order
        return [("bus", _usb_bus(ctx, None, what)), ("port", str(next_port))]
    if not all(part.isdigit() for part in address.port.split(".")):
        raise ConfigUnsupportedError(f"{what}: USB port '{address.port}'")
    return [("bus", _usb_bus(ctx, address.bus, what)), ("port", address.port)]


def _pci_input(ctx: Ctx, inp: InputDef, what: str) -> Props:
    if isinstance(inp.address, USBAddress):
        raise ConfigUnsupportedError(f"{what}: a virtio device needs a PCI address")
    # without an address QEMU picks the slot: inputs therefore come after every
    # explicitly placed PCI device (see argv.SECTIONS)
    return ctx.pci_props(inp.address, what)


def build_inputs(ctx: Ctx) -> list[str]:
    argv: list[str] = []
    usb_port = 0
    for index, inp in enumerate(ctx.dom.devices.inputs):
        alias = inp.alias or f"input{index}"
        what = f"input {alias} ({inp.type} on {inp.bus})"
        if (inp.bus, inp.type) not in INPUTS:
            raise ConfigUnsupportedError(f"{what} is not supported")
        driver = INPUTS[(inp.bus, inp.type)]
        if driver is None:
            if inp.address is not None:
                raise ConfigUnsupportedError(f"{what}: PS/2 devices take no address")
            continue
        if inp.bus == "usb":
            usb_port += 1
            placement = _usb_input(ctx, inp, what, usb_port)
        else:
            placement = _pci_input(ctx, inp, what)
        argv += device(driver, [("id", alias), *placement])
    return argv


# --- memory balloon ----------------------------------------------------------------------

BALLOONS: dict[str, str | None] = {"virtio": "virtio-balloon-pci", "none": None}


def build_memballoon(ctx: Ctx) -> list[str]:
    balloon = ctx.dom.devices.memballoon
    if balloon is None:
        return []
    if balloon.model not in BALLOONS:
        raise ConfigUnsupportedError(f"memballoon model '{balloon.model}' is not supported")
    driver = BALLOONS[balloon.model]
    if driver is None:
        return []
    alias = balloon.alias or "balloon0"
    return device(driver, [("id", alias), *ctx.pci_props(balloon.address, "memballoon")])
