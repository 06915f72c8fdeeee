"""Semantic checks on a domain definition (libvirt's "validate" phase).

The parser checks each element on its own; the rules here span elements: unique device
targets and addresses, boot order, topology versus vCPU count, which controllers a
machine type can have, and so on. :func:`validate_domain` runs every check in
:data:`_CHECKS`; it works on definitions from the parser, from :func:`apply_defaults`
(the normal order is parse → defaults → validate) or built in code, and raises the first
problem as a :class:`~pyvirt.errors.VirtError` with libvirt's wording where libvirt has
one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from pyvirt.conf import domain_schema as schema
from pyvirt.conf.domain import (
    CharDevDef,
    DomainDef,
    DriveAddress,
    PCIAddress,
    USBAddress,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_addresses import PCI_SLOTS, fixed_controller_address, pci_addresses
from pyvirt.conf.domain_parse import normalize_uuid
from pyvirt.conf.domain_parse_devices import parse_mac
from pyvirt.conf.domain_util import controllers_of, disk_index, disk_prefix, format_pci
from pyvirt.conf.domain_util import machine_family as family_of
from pyvirt.conf.xmlutil import quote
from pyvirt.errors import ConfigUnsupportedError, ErrorCode, ErrorDomain, VirtError, XMLError
from pyvirt.safefs import UnsafePathError, check_component, check_path

#: libvirt's limit is the file-name length of the domain's config file; pyvirt derives
#: longer file names from a name (``NAME-serial3.log.1000``: a rotated serial log, 17 bytes
#: more), and every one of them must fit in the filesystem's 255 bytes
NAME_MAX = 255 - len("-serial3.log.1000")


def validate_domain_name(name: str) -> None:
    """Refuse names that cannot be a file name or a single line of output."""
    if not name:
        raise VirtError("missing name information", code=ErrorCode.NO_NAME,
                        domain=ErrorDomain.DOMAIN)
    if "/" in name:
        raise XMLError(f"name {quote(name)} cannot contain '/'")
    if name in (".", ".."):
        raise XMLError(f"name '{name}' is not allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise XMLError(f"name '{quote(name)}' cannot contain control characters")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        # bytes that were not UTF-8 on the wire (kept as surrogates): not a name
        raise XMLError("name is not valid UTF-8") from None
    if len(encoded) > NAME_MAX:
        raise XMLError(f"name is longer than {NAME_MAX} bytes")


def validate_domain(dom: DomainDef) -> None:
    """Raise the first rule *dom* breaks (see the module docstring)."""
    for check in _CHECKS:
        check(dom)


# --- domain-wide ---------------------------------------------------------------------------


def _check_identity(dom: DomainDef) -> None:
    validate_domain_name(dom.name)
    if dom.uuid is not None and normalize_uuid(dom.uuid) != dom.uuid:
        raise XMLError("malformed uuid element")
    schema.DOMAIN_TYPE.check(dom.type)
    schema.OS_TYPE.check(dom.os.type)
    if dom.os.arch is not None:
        schema.ARCH.check(dom.os.arch)
    if dom.os.machine is not None and family_of(dom.os.machine) is None:
        raise ConfigUnsupportedError(f"machine type '{quote(dom.os.machine)}' is not supported")
    if dom.title is not None and "\n" in dom.title:
        raise XMLError("title can't contain newlines")


def _check_resources(dom: DomainDef) -> None:
    if dom.memory_kib <= 0:
        raise XMLError("Memory size must be specified via <memory> or in the <numa> configuration")
    current = dom.current_memory_kib
    if current is not None and not 0 < current <= dom.memory_kib:
        raise XMLError(
            f"current memory ({current} KiB) must be between 1 KiB and the memory size "
            f"({dom.memory_kib} KiB)"
        )
    if dom.vcpus < 1:
        raise XMLError("domain must have at least one vCPU")
    if dom.vcpu_placement is not None:
        schema.VCPU_PLACEMENT.check(dom.vcpu_placement)
    for event, choice in schema.LIFECYCLE.items():
        value = getattr(dom, event)
        if value is not None:
            choice.check(value)


def _check_cpu(dom: DomainDef) -> None:
    cpu = dom.cpu
    if cpu is None:
        return
    schema.CPU_MODE.check(cpu.mode)
    if cpu.migratable is not None and cpu.mode not in ("host-passthrough", "maximum"):
        raise XMLError(
            "Attribute migratable is only allowed for 'host-passthrough' / 'maximum' CPU mode"
        )
    if cpu.mode == "custom" and cpu.model is None and cpu.check is not None:
        raise ConfigUnsupportedError("check attribute specified for CPU with no model")
    topo = cpu.topology
    if topo is not None:
        if min(topo.sockets, topo.dies, topo.cores, topo.threads) < 1:
            raise XMLError("CPU topology values must be positive")
        if topo.sockets * topo.dies * topo.cores * topo.threads != dom.vcpus:
            raise ConfigUnsupportedError("CPU topology doesn't match maximum vcpu count")


def _check_clock(dom: DomainDef) -> None:
    if dom.clock is None:
        return
    schema.CLOCK_OFFSET.check(dom.clock.offset)
    for timer in dom.clock.timers:
        schema.TIMER_NAME.check(timer.name)
        if timer.tickpolicy and timer.name in ("kvmclock", "hypervclock"):
            raise ConfigUnsupportedError(
                f"timer {timer.name} doesn't support setting of timer tickpolicy")
        if timer.track and timer.name != "rtc":
            raise ConfigUnsupportedError(
                f"timer {timer.name} doesn't support setting of timer track")


def _check_boot(dom: DomainDef) -> None:
    orders = [d.boot_order for d in dom.devices.disks] + [
        n.boot_order for n in dom.devices.interfaces]
    seen: set[int] = set()
    for order in orders:
        if order is None:
            continue
        if order < 1:
            raise XMLError(f"incorrect boot order '{order}', expecting positive integer")
        if order in seen:
            raise ConfigUnsupportedError(f"boot order '{order}' used for more than one device")
        seen.add(order)
    if seen and dom.os.boot_devs:
        raise ConfigUnsupportedError(
            "per-device boot elements cannot be used together with os/boot elements")
    for dev in dom.os.boot_devs:
        schema.BOOT_DEV.check(dev)


# --- enumerated fields --------------------------------------------------------------------


def _enum_fields(dom: DomainDef) -> Iterator[tuple[str | None, schema.Choice]]:
    """Every enumerated field the parser checks, for definitions built in code."""
    d = dom.devices
    for disk in d.disks:
        yield from ((disk.type, schema.DISK_TYPE), (disk.device, schema.DISK_DEVICE),
                    (disk.target_bus, schema.DISK_BUS), (disk.driver_name,
                    schema.DISK_DRIVER_NAME), (disk.driver_type, schema.DISK_FORMAT),
                    (disk.cache, schema.DISK_CACHE), (disk.io, schema.DISK_IO))
    for chardev in (*d.serials, *d.consoles, *d.channels):
        target = {"serial": schema.SERIAL_TARGET, "console": schema.CONSOLE_TARGET,
                  "channel": schema.CHANNEL_TARGET}[chardev.kind]
        yield from ((chardev.type, schema.CHR_TYPE), (chardev.target_type, target),
                    (chardev.source_mode, schema.UNIX_MODE),
                    (chardev.source_append, schema.ON_OFF), (chardev.log_append, schema.ON_OFF))
        if chardev.kind == "serial":
            yield chardev.target_model, schema.SERIAL_MODEL
    if dom.cpu is not None:
        yield from ((dom.cpu.match, schema.CPU_MATCH), (dom.cpu.check, schema.CPU_CHECK),
                    (dom.cpu.model_fallback, schema.CPU_FALLBACK),
                    (dom.cpu.migratable, schema.ON_OFF))
    for timer in dom.clock.timers if dom.clock else []:
        yield from ((timer.tickpolicy, schema.TIMER_TICKPOLICY),
                    (timer.present, schema.YES_NO), (timer.track, schema.TIMER_TRACK))
    if dom.features is not None:
        yield dom.features.vmport, schema.ON_OFF


def _check_enums(dom: DomainDef) -> None:
    for value, choice in _enum_fields(dom):
        if value is not None:
            choice.check(value)


#: QEMU device ids are built from aliases: a letter, then letters, digits, '-', '.', '_'
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _check_aliases(dom: DomainDef) -> None:
    d = dom.devices
    devices: list[object] = [*d.disks, *d.controllers, *d.interfaces, *d.serials,
                             *d.consoles, *d.channels, *d.inputs, *d.videos]
    if d.memballoon is not None:
        devices.append(d.memballoon)
    seen: set[str] = set()
    for device in devices:
        alias = getattr(device, "alias", None)
        if alias is None:
            continue
        if not _ALIAS_RE.match(alias):
            raise XMLError(f"device alias '{quote(alias)}' is not a valid device id")
        # libvirt's console 0 of type serial is serial 0 and shares its alias
        shared = d.consoles and device is d.consoles[0] and d.serials and (
            d.consoles[0].target_type == "serial" and alias == d.serials[0].alias)
        if alias in seen and not shared:
            raise ConfigUnsupportedError(f"non unique alias detected: {quote(alias)}")
        seen.add(alias)


# --- disks and controllers -----------------------------------------------------------------


def _check_disks(dom: DomainDef) -> None:
    targets: dict[str, str | None] = {}
    for disk in dom.devices.disks:
        if disk.device == "disk" and disk_prefix(disk.target_dev) is None:
            raise VirtError(f"internal error: Invalid harddisk device name: "
                            f"{quote(disk.target_dev)}", code=ErrorCode.INTERNAL_ERROR,
                            domain=ErrorDomain.DOMAIN)
        if disk.target_dev in targets:
            raise XMLError(
                f"target '{quote(disk.target_dev)}' duplicated for disk sources "
                f"'{quote(targets[disk.target_dev] or '<null>')}' and "
                f"'{quote(disk.source or '<null>')}'")
        targets[disk.target_dev] = disk.source
        if disk.source is None and disk.device == "disk":
            raise VirtError(f"no source device {quote(disk.target_dev)}",
                            code=ErrorCode.NO_SOURCE, domain=ErrorDomain.DOMAIN)
        _check_disk_address(disk.target_dev, disk.target_bus, disk.address)
    _check_drive_duplicates(dom)


def _check_disk_address(dev: str, bus: str, address: object) -> None:
    if address is None:
        return
    if bus == "virtio" and not isinstance(address, PCIAddress):
        raise ConfigUnsupportedError("virtio disk cannot have an address of type 'drive'")
    if bus != "virtio" and not isinstance(address, DriveAddress):
        raise ConfigUnsupportedError(
            f"Invalid address type 'pci' for the disk '{quote(dev)}' with the bus type '{bus}'")
    if isinstance(address, DriveAddress):
        limits = {"ide": (1, 1, 0), "sata": (0, 5, 0)}.get(bus)
        if limits and (address.bus > limits[0] or address.unit > limits[1]
                       or address.target > limits[2]):
            raise ConfigUnsupportedError(
                f"drive address of disk '{quote(dev)}' is out of range for bus '{bus}'")


def _check_drive_duplicates(dom: DomainDef) -> None:
    seen: set[tuple[str, int, int, int, int]] = set()
    for disk in dom.devices.disks:
        a = disk.address
        if not isinstance(a, DriveAddress):
            continue
        key = (disk.target_bus, a.controller, a.bus, a.target, a.unit)
        if key in seen:
            raise ConfigUnsupportedError(
                f"Found duplicate drive address for disk with target name "
                f"'{quote(disk.target_dev)}' controller='{a.controller}' bus='{a.bus}' "
                f"target='{a.target}' unit='{a.unit}'")
        seen.add(key)


def _check_controllers(dom: DomainDef) -> None:
    seen: set[tuple[str, int]] = set()
    family = family_of(dom.os.machine)
    for c in dom.devices.controllers:
        if (c.type, c.index) in seen:
            raise XMLError(f"Multiple '{c.type}' controllers with index '{c.index}'")
        seen.add((c.type, c.index))
        _check_controller(c.type, c.index, c.model, c.address, family)
    for disk in dom.devices.disks:
        a = disk.address
        if isinstance(a, DriveAddress) and disk.target_bus in ("ide", "sata", "scsi") and (
                family is not None and (disk.target_bus, a.controller) not in seen):
            raise XMLError(f"no {disk.target_bus} controller with index {a.controller} "
                           f"for disk '{quote(disk.target_dev)}'")


def _check_controller(ctype: str, index: int, model: str | None, address: object,
                      family: str | None) -> None:
    schema.CONTROLLER_TYPE.check(ctype)
    if ctype == "pci":
        if index != 0:
            raise ConfigUnsupportedError("PCI controllers other than the root bus (index 0)")
        if address is not None:
            raise ConfigUnsupportedError(
                "pci-root and pcie-root controllers should not have an address")
        expected = {"i440fx": "pci-root", "q35": "pcie-root"}.get(family or "")
        if expected and model not in (None, expected):
            raise ConfigUnsupportedError(
                f"The PCI controller with index='0' must be model='{expected}' for this "
                f"machine type, but model='{quote(model or '')}' was found instead")
    elif ctype == "ide" and family == "q35":
        raise ConfigUnsupportedError(
            "IDE controllers are unsupported for this QEMU binary or machine type")
    elif ctype == "ide" and index != 0:
        raise ConfigUnsupportedError("Only a single IDE controller is supported for this "
                                     "machine type")
    choice = {"pci": schema.PCI_MODEL, "usb": schema.USB_MODEL,
              "scsi": schema.SCSI_MODEL}.get(ctype)
    if model is not None:
        if choice is None:
            raise ConfigUnsupportedError(f"model of {ctype} controllers")
        choice.check(model)


# --- network, chardevs, inputs, graphics, video --------------------------------------------


def _check_interfaces(dom: DomainDef) -> None:
    for net in dom.devices.interfaces:
        schema.NET_TYPE.check(net.type)
        if net.mac is not None and parse_mac(net.mac) != net.mac:
            raise XMLError(f"unable to parse mac address '{quote(net.mac)}'")
        if net.model is not None:
            schema.NET_MODEL.check(net.model)
        if net.type == "bridge" and not net.source_bridge:
            raise XMLError(
                "No <source> 'bridge' attribute specified with <interface type='bridge'/>")


def _check_chardevs(dom: DomainDef) -> None:
    devices = dom.devices
    for chardev in (*devices.serials, *devices.consoles, *devices.channels):
        schema.CHR_TYPE.check(chardev.type)
        # the driver creates a unix channel's socket path at start, as libvirt does
        path_optional = chardev.kind == "channel" and chardev.type == "unix"
        if chardev.type in ("file", "unix") and not chardev.source_path and not path_optional:
            raise XMLError("Missing source path attribute for char device")
    _check_serials(devices.serials)
    for position, console in enumerate(devices.consoles):
        if console.target_type == "serial" and position > 0:
            raise ConfigUnsupportedError("Only the first console can be a serial port")
    _check_virtio_serial_ports(dom)


def _check_serials(serials: list[CharDevDef]) -> None:
    ports: set[int] = set()
    for serial in serials:
        ttype, model = serial.target_type, serial.target_model
        if ttype is not None and model is not None and model != ttype:
            raise ConfigUnsupportedError(
                f"Target model '{model}' requires target type '{model}'")
        if ttype == "isa-serial" or (ttype is None and model in (None, "isa-serial")):
            port = serial.target_port
            if len(ports) >= schema.MAX_ISA_SERIALS or (
                    port is not None and port >= schema.MAX_ISA_SERIALS):
                raise ConfigUnsupportedError(
                    f"Maximum supported number of ISA serial ports is "
                    f"'{schema.MAX_ISA_SERIALS}'")
            if port is not None and port in ports:
                raise ConfigUnsupportedError(f"target port '{port}' already allocated")
            ports.add(port if port is not None else -1 - len(ports))


def _check_virtio_serial_ports(dom: DomainDef) -> None:
    seen: set[tuple[int, int, int]] = set()
    for chardev in (*dom.devices.consoles, *dom.devices.channels):
        a = chardev.address
        if not isinstance(a, VirtioSerialAddress):
            continue
        if a.port == 0 and chardev.kind != "console":
            raise ConfigUnsupportedError(
                "virtio-serial port 0 is reserved for virtio consoles")
        key = (a.controller, a.bus, a.port)
        if key in seen:
            raise XMLError(f"virtio serial port {a.port} on controller {a.controller} "
                           f"bus {a.bus} is already in use")
        seen.add(key)


def _check_inputs(dom: DomainDef) -> None:
    usb = [c for c in controllers_of(dom, "usb") if c.model != "none"]
    used: set[tuple[int, str]] = set()
    for device in dom.devices.inputs:
        schema.INPUT_TYPE.check(device.type)
        schema.INPUT_BUS.check(device.bus)
        if device.bus == "ps2" and device.type not in ("mouse", "keyboard"):
            raise ConfigUnsupportedError(f"ps2 bus does not support {device.type} input device")
        if device.bus == "usb" and not usb:
            raise ConfigUnsupportedError(
                "USB is disabled for this domain, but USB devices are present in the "
                "domain XML")
        _check_input_address(device.bus, device.address, usb_indexes={c.index for c in usb},
                             used=used)


def _check_input_address(bus: str, address: object, *, usb_indexes: set[int],
                         used: set[tuple[int, str]]) -> None:
    if address is None:
        return
    wanted = {"usb": USBAddress, "virtio": PCIAddress}.get(bus)
    if wanted is None or not isinstance(address, wanted):
        raise ConfigUnsupportedError(f"input devices on bus '{bus}' cannot have this address")
    if isinstance(address, USBAddress):
        if usb_indexes and address.bus not in usb_indexes:
            raise XMLError(f"USB bus {address.bus} requested but no controller with that "
                           f"index is present")
        if (address.bus, address.port) in used:
            raise XMLError(f"Duplicate USB address bus {address.bus} port {address.port}")
        used.add((address.bus, address.port))


def _check_graphics(dom: DomainDef) -> None:
    for g in dom.devices.graphics:
        schema.GRAPHICS_TYPE.check(g.type)
        if g.type != "spice" and g.tls_port is not None:
            raise ConfigUnsupportedError(f"tlsPort for {g.type} graphics")
        for name, port in (("port", g.port), ("tlsPort", g.tls_port)):
            if port is not None and not -1 <= port <= schema.PORT_MAX:
                raise XMLError(f"graphics {name} {port} is out of range")
        if g.autoport is False and g.port in (None, -1) and g.tls_port in (None, -1):
            raise ConfigUnsupportedError("graphics with autoport='no' need a port")
        if g.type == "vnc" and not g.autoport and g.port not in (None, -1) and not (
                schema.VNC_PORT_MIN <= (g.port or 0) <= schema.PORT_MAX):
            raise ConfigUnsupportedError(
                f"vnc port must be in range [{schema.VNC_PORT_MIN},{schema.PORT_MAX}]")


def _check_videos(dom: DomainDef) -> None:
    videos = dom.devices.videos
    for video in videos:
        if not video.model:
            raise VirtError("internal error: missing video model and cannot determine default",
                            code=ErrorCode.INTERNAL_ERROR, domain=ErrorDomain.DOMAIN)
        schema.VIDEO_MODEL.check(video.model)
        if video.model == "none" and len(videos) > 1:
            raise ConfigUnsupportedError(
                "a 'none' video type must be the only video device defined for the domain")
        if video.model != "qxl" and (video.ram or video.vgamem):
            raise ConfigUnsupportedError("ram attribute only supported for video type qxl")
    if any(v.primary for v in videos[1:]):
        raise ConfigUnsupportedError("Only one primary video device is supported")
    if dom.devices.memballoon is not None:
        schema.BALLOON_MODEL.check(dom.devices.memballoon.model)


# --- PCI -----------------------------------------------------------------------------------


def _check_pci(dom: DomainDef) -> None:
    family = family_of(dom.os.machine)
    builtin = {id(c.address) for c in dom.devices.controllers
               if family and _same_slot(c.address, fixed_controller_address(family, c))}
    seen: set[tuple[int, int, int, int]] = set()
    for address in pci_addresses(dom):
        text = format_pci(address.domain, address.bus, address.slot, address.function)
        _check_pci_range(address, text)
        key = (address.domain, address.bus, address.slot, address.function)
        if key in seen:
            raise XMLError(f"Attempted double use of PCI Address {text}")
        seen.add(key)
        if id(address) not in builtin and address.slot in _chipset_slots(family):
            raise XMLError(f"Attempted double use of PCI Address {text} "
                           f"(slot {address.slot:#04x} belongs to the chipset)")


def _same_slot(a: PCIAddress | None, b: PCIAddress | None) -> bool:
    return a is not None and b is not None and (a.domain, a.bus, a.slot, a.function) == (
        b.domain, b.bus, b.slot, b.function)


def _chipset_slots(family: str | None) -> Iterable[int]:
    return {"i440fx": (1,), "q35": (0x1F,)}.get(family or "", ())


def _check_pci_range(address: PCIAddress, text: str) -> None:
    if address.domain != 0:
        raise ConfigUnsupportedError(f"Invalid PCI address {text}. Only PCI domain 0 is "
                                     f"available")
    if address.bus != 0:
        raise ConfigUnsupportedError(f"Invalid PCI address {text}. Only PCI buses up to 0 "
                                     f"are available")
    if not 1 <= address.slot < PCI_SLOTS:
        raise ConfigUnsupportedError(f"Invalid PCI address {text}. slot must be >= 1 and "
                                     f"<= {PCI_SLOTS - 1}")
    if not 0 <= address.function <= 7:
        raise ConfigUnsupportedError(f"Invalid PCI address {text}. function must be <= 7")


# --- paths (they reach the filesystem as root: docs/security.md) ---------------------------


def _paths(dom: DomainDef) -> Iterator[tuple[str, str | None]]:
    yield "emulator", dom.devices.emulator
    yield "kernel", dom.os.kernel
    yield "initrd", dom.os.initrd
    for disk in dom.devices.disks:
        if disk.type in ("file", "block"):
            yield f"disk {disk.target_dev} source", disk.source
    for chardev in (*dom.devices.serials, *dom.devices.consoles, *dom.devices.channels):
        if chardev.type in ("file", "unix"):
            yield f"{chardev.kind} source", chardev.source_path
        yield f"{chardev.kind} log file", chardev.log_file


def _check_paths(dom: DomainDef) -> None:
    """Every path is absolute and normalized; a channel's target name, which may name its
    socket in the domain's run directory, is one safe file-name component."""
    try:
        for what, path in _paths(dom):
            if path is not None:
                check_path(path, what)
        for channel in dom.devices.channels:
            if channel.target_name is not None:
                check_component(channel.target_name, "channel target name")
    except UnsafePathError as exc:
        raise XMLError(str(exc)) from None


def _check_disk_names(dom: DomainDef) -> None:
    for disk in dom.devices.disks:
        if disk.address is None and disk.target_bus != "virtio" and disk_index(
                disk.target_dev) is None:
            raise XMLError(f"Unknown disk name '{quote(disk.target_dev)}' and no address "
                           f"specified")


_CHECKS: tuple[Callable[[DomainDef], None], ...] = (
    _check_identity,
    _check_enums,
    _check_resources,
    _check_cpu,
    _check_clock,
    _check_boot,
    _check_disks,
    _check_disk_names,
    _check_paths,
    _check_controllers,
    _check_interfaces,
    _check_chardevs,
    _check_inputs,
    _check_graphics,
    _check_videos,
    _check_pci,
    _check_aliases,
)
