"""Controllers, network interfaces, input devices and the memory balloon.

Each element kind is rendered through a table keyed by its libvirt model (or bus), so an
unsupported value is refused by the lookup instead of falling through an if-chain.
Device ids are libvirt's aliases (``usb``, ``scsi0``, ``virtio-serial0``, ``net0``,
``input0``, ``balloon0``) so tools that address devices by alias keep working.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvirt.conf.domain import ControllerDef, InterfaceDef
from pyvirt.errors import ConfigUnsupportedError, InternalError
from pyvirt.qemu.argv_common import Ctx, choose, device, keyval

# --- controllers -------------------------------------------------------------------------

ControllerBuilder = Callable[[Ctx, ControllerDef], list[str]]

USB_MODELS = {
    "piix3-uhci": "piix3-usb-uhci",
    "piix4-uhci": "piix4-usb-uhci",
    "qemu-xhci": "qemu-xhci",
    "nec-xhci": "nec-usb-xhci",
}
SCSI_MODELS = {"virtio-scsi": "virtio-scsi-pci"}


def usb_alias(index: int) -> str:
    # libvirt calls the first USB controller plain "usb"; QEMU then names its bus usb.0
    return "usb" if index == 0 else f"usb{index}"


def _what(c: ControllerDef) -> str:
    return f"controller {c.type} index {c.index}"


def _pci(ctx: Ctx, c: ControllerDef) -> list[str]:
    model = c.model or (ctx.family.root_model if c.index == 0 else None)
    if c.index == 0:
        if model != ctx.family.root_model:
            raise ConfigUnsupportedError(f"{_what(c)}: {model} on a {ctx.family.name} machine")
        return []  # the board's root bus always exists
    alias = f"pci.{c.index}"
    pci = ctx.pci_props(c.address, _what(c))
    if model == "pcie-root-port" and ctx.family.root_model == "pcie-root":
        # libvirt's default numbering: chassis = index, port = slot/function packed
        port = 0 if c.address is None else (c.address.slot << 3) | c.address.function
        return device("pcie-root-port", [("port", port), ("chassis", c.index),
                                         ("id", alias), *pci])
    if model == "pci-bridge":
        return device("pci-bridge", [("chassis_nr", c.index), ("id", alias), *pci])
    raise ConfigUnsupportedError(f"{_what(c)}: model '{model}' on {ctx.family.name}")


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


def _netdev_user(net: InterfaceDef, netdev_id: str) -> str:
    return keyval("user", [("id", netdev_id)])


def _netdev_bridge(net: InterfaceDef, netdev_id: str) -> str:
    # The driver creates the tap and enslaves it to the bridge, so QEMU must not run scripts
    if net.target_dev is None:
        raise InternalError(f"tap device for interface {netdev_id} not allocated")
    return keyval("tap", [("id", netdev_id), ("ifname", net.target_dev),
                          ("script", "no"), ("downscript", "no")])


NETDEVS: dict[str, Callable[[InterfaceDef, str], str]] = {
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
             ("bootindex", net.boot_order), *ctx.pci_props(net.address, what)]
    return ["-netdev", netdev(net, netdev_id), *device(driver, props)]


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


def _usb_bus(ctx: Ctx, what: str) -> str:
    usb = [c for c in ctx.dom.devices.controllers if c.type == "usb" and c.model != "none"]
    if not usb:
        raise ConfigUnsupportedError(f"{what}: no USB controller")
    return f"{usb_alias(min(c.index for c in usb))}.0"


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
            continue
        if inp.bus == "usb":
            # ports are numbered in document order like libvirt's USB port allocator
            usb_port += 1
            argv += device(driver, [("id", alias), ("bus", _usb_bus(ctx, what)),
                                    ("port", str(usb_port))])
        else:
            # InputDef has no <address>: QEMU assigns the PCI slot (same argv, same slot)
            argv += device(driver, [("id", alias)])
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
