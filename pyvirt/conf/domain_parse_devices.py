"""``<devices>`` children → device dataclasses.

One parser per element, dispatched through :data:`_DEVICES`. Each reads only what pyvirt
implements; the caller's final :meth:`~pyvirt.conf.xmlutil.XNode.finish` refuses the rest.
Runtime-only data libvirt prints in live XML (``<alias>``, a pty's path, a tap name) is
accepted so libvirt's own dumpxml output parses.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pyvirt.conf import domain_schema as schema
from pyvirt.conf.domain import (
    CharDevDef,
    ControllerDef,
    Devices,
    DiskDef,
    DriveAddress,
    GraphicsDef,
    InputDef,
    InterfaceDef,
    MemballoonDef,
    PCIAddress,
    USBAddress,
    VideoDef,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_util import disk_prefix, primary_video_first, sort_controllers
from pyvirt.conf.xmlutil import POSITIVE, UINT, IntRange, XNode, quote, unsupported_element
from pyvirt.errors import ConfigUnsupportedError, ErrorCode, ErrorDomain, VirtError, XMLError

_PORT = IntRange(minimum=-1, maximum=schema.PORT_MAX)
_KIB = IntRange(minimum=0, maximum=2**32 - 1)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")
_USB_PORT_RE = re.compile(r"^[1-9][0-9]{0,2}$")

AnyAddress = PCIAddress | DriveAddress | VirtioSerialAddress | USBAddress


# --- shared pieces: alias, boot order, addresses ------------------------------------------


def _alias(node: XNode) -> str | None:
    child = node.child("alias")
    return None if child is None else child.require("name")


def _boot_order(node: XNode) -> int | None:
    child = node.child("boot")
    return None if child is None else child.require_int("order", POSITIVE)


def _pci(node: XNode) -> PCIAddress:
    def part(name: str, maximum: int) -> int:
        value = node.int_attr(name, IntRange(maximum=maximum, c_base=True))
        return 0 if value is None else value

    multi = node.attr("multifunction")
    return PCIAddress(
        domain=part("domain", 0xFFFF), bus=part("bus", 0xFF), slot=part("slot", 0x1F),
        function=part("function", 7),
        multifunction=None if multi is None else schema.ON_OFF.check(multi) == "on",
    )


def _drive(node: XNode) -> DriveAddress:
    def part(name: str) -> int:
        value = node.int_attr(name, UINT)
        return 0 if value is None else value

    return DriveAddress(
        controller=part("controller"), bus=part("bus"), target=part("target"), unit=part("unit")
    )


def _virtio_serial(node: XNode) -> VirtioSerialAddress:
    controller, bus = node.int_attr("controller"), node.int_attr("bus")
    port = node.int_attr("port")
    return VirtioSerialAddress(
        controller=controller or 0, bus=bus or 0, port=1 if port is None else port
    )


def _usb(node: XNode) -> USBAddress:
    bus = node.int_attr("bus")
    port = node.require("port")
    if not _USB_PORT_RE.match(port):
        raise ConfigUnsupportedError(f"USB port '{quote(port)}': USB hubs are not supported")
    return USBAddress(bus=bus or 0, port=port)


_ADDRESS_PARSERS: dict[str, Callable[[XNode], AnyAddress]] = {
    "pci": _pci,
    "drive": _drive,
    "virtio-serial": _virtio_serial,
    "usb": _usb,
}


def _address(node: XNode, allowed: tuple[str, ...]) -> AnyAddress | None:
    child = node.child("address")
    if child is None:
        return None
    kind = schema.ADDRESS_TYPE.check(child.require("type"))
    if kind not in allowed:
        raise ConfigUnsupportedError(
            f"address of type '{kind}' is not supported for <{node.tag}> devices"
        )
    return _ADDRESS_PARSERS[kind](child)


def _pci_address(node: XNode) -> PCIAddress | None:
    address = _address(node, ("pci",))
    assert address is None or isinstance(address, PCIAddress)
    return address


def _optional(node: XNode, name: str, choice: schema.Choice) -> str | None:
    value = node.attr(name)
    return None if value is None else choice.check(value)


def _flag(node: XNode, tag: str) -> bool:
    """An empty marker element such as ``<readonly/>``."""
    return node.child(tag) is not None


# --- disks -------------------------------------------------------------------------------


def parse_disk(node: XNode) -> DiskDef:
    dtype = schema.DISK_TYPE.check(node.attr("type") or "file")
    device = schema.DISK_DEVICE.check(node.attr("device") or "disk")
    source = _disk_source(node, dtype)
    target = node.child("target")
    if target is None:
        raise VirtError(
            f"missing target information for device {quote(source or '')}".rstrip(),
            code=ErrorCode.NO_TARGET, domain=ErrorDomain.DOMAIN,
        )
    dev = target.require("dev")
    disk = DiskDef(type=dtype, target_dev=dev, target_bus=_disk_bus(target, dev),
                   device=device, source=source)
    _disk_driver(node, disk)
    disk.readonly = _flag(node, "readonly")
    disk.shareable = _flag(node, "shareable")
    serial = node.child("serial")
    disk.serial = None if serial is None else serial.text()
    disk.boot_order = _boot_order(node)
    disk.alias = _alias(node)
    address = _address(node, ("pci", "drive"))
    assert not isinstance(address, VirtioSerialAddress | USBAddress)
    disk.address = address
    backing = node.child("backingStore")
    if backing is not None and not backing.is_empty():
        raise ConfigUnsupportedError("explicit <backingStore> chains are not supported")
    return disk


def _disk_bus(target: XNode, dev: str) -> str:
    bus = target.attr("bus")
    if bus is None:
        # libvirt infers the bus from the name: hdX → ide, sdX → scsi, vdX → virtio
        prefix = disk_prefix(dev)
        if prefix is None:
            raise XMLError(f"Invalid harddisk device name: {quote(dev)}")
        bus = schema.DISK_PREFIX_BUS[prefix]
    return schema.DISK_BUS.check(bus)


def _disk_source(node: XNode, dtype: str) -> str | None:
    source = node.child("source")
    if source is None:
        return None
    source.ignore("index")  # live XML: the block node's index, runtime only
    return source.attr("file" if dtype == "file" else "dev")


def _disk_driver(node: XNode, disk: DiskDef) -> None:
    driver = node.child("driver")
    if driver is None:
        return
    name = driver.attr("name")
    if name is not None:
        disk.driver_name = schema.DISK_DRIVER_NAME.check(name)
    disk.driver_type = _optional(driver, "type", schema.DISK_FORMAT)
    cache = _optional(driver, "cache", schema.DISK_CACHE)
    io = _optional(driver, "io", schema.DISK_IO)
    # "default" is libvirt's name for "not set" and is not printed back
    disk.cache = None if cache == "default" else cache
    disk.io = None if io == "default" else io


# --- controllers -------------------------------------------------------------------------

_CONTROLLER_MODELS = {"pci": schema.PCI_MODEL, "usb": schema.USB_MODEL, "scsi": schema.SCSI_MODEL}


def parse_controller(node: XNode) -> ControllerDef:
    ctype = schema.CONTROLLER_TYPE.check(node.require("type"))
    index = node.int_attr("index", IntRange(maximum=2**31 - 1))
    models = _CONTROLLER_MODELS.get(ctype)
    model = None if models is None else _optional(node, "model", models)
    address = _pci_address(node)
    return ControllerDef(type=ctype, index=-1 if index is None else index, model=model,
                         address=address, alias=_alias(node))


def _assign_controller_indexes(controllers: list[ControllerDef]) -> None:
    """An omitted index becomes the lowest one unused by that type (libvirt's rule)."""
    for controller in controllers:
        if controller.index != -1:
            continue
        used = {c.index for c in controllers if c.type == controller.type}
        controller.index = next(i for i in range(len(controllers) + 1) if i not in used)


# --- network interfaces ------------------------------------------------------------------


def parse_mac(text: str) -> str:
    """Validate and canonicalise a MAC address (lowercase, two digits per byte)."""
    if not _MAC_RE.match(text):
        raise XMLError(f"unable to parse mac address '{quote(text)}'")
    mac = ":".join(f"{int(part, 16):02x}" for part in text.split(":"))
    if int(mac[:2], 16) & 1:
        raise XMLError(f"expected unicast mac address, found multicast '{mac}'")
    return mac


def parse_interface(node: XNode) -> InterfaceDef:
    net = InterfaceDef(type=schema.NET_TYPE.check(node.require("type")))
    mac = node.child("mac")
    net.mac = None if mac is None else parse_mac(mac.require("address"))
    if net.type == "bridge":
        source = node.child("source")
        net.source_bridge = None if source is None else source.attr("bridge")
        if not net.source_bridge:
            raise XMLError(
                "No <source> 'bridge' attribute specified with <interface type='bridge'/>"
            )
    model = node.child("model")
    net.model = None if model is None else schema.NET_MODEL.check(model.require("type"))
    target = node.child("target")
    net.target_dev = None if target is None else target.attr("dev")
    net.boot_order = _boot_order(node)
    net.alias = _alias(node)
    net.address = _pci_address(node)
    return net


# --- character devices -------------------------------------------------------------------


def _chr_source(node: XNode, chardev: CharDevDef) -> None:
    sources = node.children("source")
    if len(sources) > 1:
        raise XMLError(f"<{node.tag}> may have only one <source> element")
    source = sources[0] if sources else None
    if source is not None:
        chardev.source_path = source.attr("path")
        if chardev.type == "unix":
            chardev.source_mode = _optional(source, "mode", schema.UNIX_MODE)
        elif chardev.type == "file":
            chardev.source_append = _optional(source, "append", schema.ON_OFF)
    # libvirt generates the socket of a unix *channel* (the guest-agent idiom) at start;
    # the driver does the same (runtime_setup), so only other char devices need a path.
    path_optional = node.tag == "channel" and chardev.type == "unix"
    if chardev.type in ("file", "unix") and not chardev.source_path and not path_optional:
        raise XMLError("Missing source path attribute for char device")
    log = node.child("log")
    if log is not None:
        chardev.log_file = log.require("file")
        chardev.log_append = _optional(log, "append", schema.ON_OFF)


def _serial_target(target: XNode, chardev: CharDevDef) -> None:
    chardev.target_type = _optional(target, "type", schema.SERIAL_TARGET)
    chardev.target_port = target.int_attr("port", IntRange(maximum=2**31 - 1))
    model = target.child("model")
    if model is not None:
        chardev.target_model = schema.SERIAL_MODEL.check(model.require("name"))


def _console_target(target: XNode, chardev: CharDevDef) -> None:
    chardev.target_type = _optional(target, "type", schema.CONSOLE_TARGET)
    chardev.target_port = target.int_attr("port", IntRange(maximum=2**31 - 1))


def _channel_target(target: XNode, chardev: CharDevDef) -> None:
    chardev.target_type = schema.CHANNEL_TARGET.check(target.require("type"))
    chardev.target_name = target.attr("name")
    target.ignore("state")  # live XML: whether the guest side is connected


_CHR_TARGETS: dict[str, Callable[[XNode, CharDevDef], None]] = {
    "serial": _serial_target,
    "console": _console_target,
    "channel": _channel_target,
}
_CHR_ADDRESSES = {"serial": ("pci",), "console": ("virtio-serial",),
                  "channel": ("virtio-serial",)}


def parse_chardev(node: XNode) -> CharDevDef:
    kind = node.tag
    chardev = CharDevDef(kind=kind, type=schema.CHR_TYPE.check(node.attr("type") or "pty"))
    if kind == "console":
        node.ignore("tty")  # live XML: copy of the pty path
    _chr_source(node, chardev)
    target = node.child("target")
    if target is not None:
        _CHR_TARGETS[kind](target, chardev)
    elif kind == "channel":
        raise XMLError("target type must be specified for channel device")
    chardev.alias = _alias(node)
    address = _address(node, _CHR_ADDRESSES[kind])
    assert not isinstance(address, USBAddress)
    chardev.address = address
    return chardev


# --- input, graphics, video, balloon -------------------------------------------------------

#: libvirt's x86 default bus per input type when ``bus`` is omitted
_INPUT_DEFAULT_BUS = {"mouse": "ps2", "keyboard": "ps2", "tablet": "usb"}


def parse_input(node: XNode) -> InputDef:
    itype = schema.INPUT_TYPE.check(node.require("type"))
    bus = schema.INPUT_BUS.check(node.attr("bus") or _INPUT_DEFAULT_BUS[itype])
    address = _address(node, ("usb", "pci"))
    assert address is None or isinstance(address, USBAddress | PCIAddress)
    return InputDef(type=itype, bus=bus, alias=_alias(node), address=address)


def parse_graphics(node: XNode) -> GraphicsDef:
    graphics = GraphicsDef(type=schema.GRAPHICS_TYPE.check(node.require("type")))
    graphics.port = node.int_attr("port", _PORT)
    if graphics.type == "spice":
        graphics.tls_port = node.int_attr("tlsPort", _PORT)
    graphics.autoport = node.yes_no("autoport")
    graphics.passwd = node.attr("passwd")
    graphics.listen = _graphics_listen(node)
    return graphics


def _graphics_listen(node: XNode) -> str | None:
    listen = node.attr("listen")
    children = node.children("listen")
    if len(children) > 1:
        raise ConfigUnsupportedError("more than one <listen> element per graphics device")
    if not children:
        return listen
    child = children[0]
    schema.LISTEN_TYPE.check(child.require("type"))
    address = child.attr("address")
    if listen is not None and address is not None and listen != address:
        raise XMLError(
            f"graphics 'listen' attribute '{quote(listen)}' must match 'address' attribute "
            f"of first listen element (found '{quote(address)}')"
        )
    return address if address is not None else listen


def parse_video(node: XNode) -> VideoDef:
    model = node.child("model")
    if model is None:
        return VideoDef(model="", alias=_alias(node), address=_pci_address(node))
    # a missing type means "the default model", which apply_defaults picks
    vtype = model.attr("type")
    video = VideoDef(model="" if vtype is None else schema.VIDEO_MODEL.check(vtype))
    video.vram = model.int_attr("vram", _KIB)
    video.ram = model.int_attr("ram", _KIB)
    video.vgamem = model.int_attr("vgamem", _KIB)
    video.heads = model.int_attr("heads", POSITIVE)
    video.primary = model.yes_no("primary")
    video.alias = _alias(node)
    video.address = _pci_address(node)
    return video


def parse_memballoon(node: XNode) -> MemballoonDef:
    model = schema.BALLOON_MODEL.check(node.require("model"))
    return MemballoonDef(model=model, address=_pci_address(node), alias=_alias(node))


# --- <devices> ---------------------------------------------------------------------------


def _emulator(node: XNode, devices: Devices) -> None:
    if devices.emulator is not None:
        raise XMLError("element 'emulator' may appear only once in element 'devices'")
    devices.emulator = node.text()


def _memballoon(node: XNode, devices: Devices) -> None:
    if devices.memballoon is not None:
        raise XMLError("only one memballoon device is supported")
    devices.memballoon = parse_memballoon(node)


def _appender(parse: Callable[[XNode], object], field: str) -> Callable[[XNode, Devices], None]:
    def handler(node: XNode, devices: Devices) -> None:
        getattr(devices, field).append(parse(node))

    return handler


_DEVICES: dict[str, Callable[[XNode, Devices], None]] = {
    "emulator": _emulator,
    "disk": _appender(parse_disk, "disks"),
    "controller": _appender(parse_controller, "controllers"),
    "interface": _appender(parse_interface, "interfaces"),
    "serial": _appender(parse_chardev, "serials"),
    "console": _appender(parse_chardev, "consoles"),
    "channel": _appender(parse_chardev, "channels"),
    "input": _appender(parse_input, "inputs"),
    "graphics": _appender(parse_graphics, "graphics"),
    "video": _appender(parse_video, "videos"),
    "memballoon": _memballoon,
}


def parse_devices(node: XNode, devices: Devices) -> None:
    for child in node.all_children():
        handler = _DEVICES.get(child.tag)
        if handler is None:
            raise unsupported_element(child.tag, node.path)
        handler(child, devices)
    _assign_controller_indexes(devices.controllers)
    sort_controllers(devices.controllers)
    devices.videos[:] = primary_video_first(devices.videos)

