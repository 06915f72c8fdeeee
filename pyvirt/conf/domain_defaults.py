"""Fill in what libvirt fills in after parsing a domain (its "post-parse" defaults).

:func:`apply_defaults` completes a parsed :class:`~pyvirt.conf.domain.DomainDef` the way
libvirt's qemu driver completes its definitions, so ``pyvirsh dumpxml`` shows what
``virsh dumpxml`` would and the argv builder never has to guess. Every step only fills
what is missing, so applying twice changes nothing; apart from a new UUID and new MAC
addresses (random, as in libvirt) the result depends only on the input.

Where pyvirt deliberately differs from libvirt it says so below; the main differences:
no default ``<cpu>`` model is invented, the persistent ``<listen>`` address stays unset
(the driver picks ``vnc_listen`` at start, as libvirt does), and on q35 devices sit
directly on pcie.0 instead of on auto-added root ports (see
:mod:`pyvirt.conf.domain_addresses`).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from pyvirt.conf import domain_schema as schema
from pyvirt.conf.domain import (
    CharDevDef,
    ClockDef,
    ControllerDef,
    DomainDef,
    DriveAddress,
    InputDef,
    MemballoonDef,
    VideoDef,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_addresses import assign_addresses, assign_drive_addresses
from pyvirt.conf.domain_util import find_controller, insert_controller, machine_family
from pyvirt.errors import ConfigUnsupportedError

#: libvirt's (QEMU's) locally administered MAC prefix
MAC_PREFIX = "52:54:00"
#: libvirt picks cirrus when QEMU has it (qemuDomainDefaultVideoDevice); Debian's does
DEFAULT_VIDEO = "cirrus"
#: QEMU's default NIC for PC machines, libvirt's default model (qemuDomainDefaultNetModel)
DEFAULT_NET_MODEL = "rtl8139"

#: family → (controller type, model) libvirt adds to every PC guest, in its order
_BUILTIN_CONTROLLERS = {
    "i440fx": (("usb", "piix3-uhci"), ("pci", "pci-root"), ("ide", None)),
    "q35": (("usb", "qemu-xhci"), ("sata", None), ("pci", "pcie-root")),
}
_DEFAULT_MODELS = {"usb": {"i440fx": "piix3-uhci", "q35": "qemu-xhci"},
                   "scsi": {"i440fx": "virtio-scsi", "q35": "virtio-scsi"}}
_ROOT_MODEL = {"i440fx": "pci-root", "q35": "pcie-root"}

_rng = random.SystemRandom()


@dataclass(frozen=True)
class HostDefaults:
    """What the host's QEMU provides, for filling in a definition."""

    emulator: str
    arch: str
    #: e.g. {"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"}
    machine_aliases: Mapping[str, str]
    #: every canonical machine type this QEMU knows
    machines: frozenset[str]
    #: canonical machine type used when ``<type>`` names none
    default_machine: str


def apply_defaults(dom: DomainDef, host: HostDefaults) -> None:
    """Complete *dom* in place (see the module docstring)."""
    for step in _STEPS:
        step(dom, host)


def random_mac() -> str:
    return MAC_PREFIX + "".join(f":{_rng.randrange(256):02x}" for _ in range(3))


def new_uuid() -> str:
    return str(uuid.uuid4())


# --- identity, machine, resources ----------------------------------------------------------


def _identity(dom: DomainDef, host: HostDefaults) -> None:
    if dom.uuid is None:
        dom.uuid = new_uuid()
    if dom.devices.emulator is None:
        dom.devices.emulator = host.emulator


def _machine(dom: DomainDef, host: HostDefaults) -> None:
    os = dom.os
    if os.arch is None:
        os.arch = host.arch
    if os.arch != host.arch:
        raise ConfigUnsupportedError(f"No guest options available for arch '{os.arch}'")
    requested = os.machine or host.default_machine
    machine = host.machine_aliases.get(requested, requested)
    if machine not in host.machines:
        raise ConfigUnsupportedError(
            f"Emulator '{dom.devices.emulator}' does not support machine type '{requested}'"
        )
    if machine_family(machine) is None:
        raise ConfigUnsupportedError(f"machine type '{machine}' is not supported")
    os.machine = machine


def _resources(dom: DomainDef, host: HostDefaults) -> None:
    if dom.current_memory_kib is None:
        dom.current_memory_kib = dom.memory_kib
    if dom.vcpu_placement is None:
        dom.vcpu_placement = "static"
    if dom.clock is None:
        dom.clock = ClockDef()
    for event, default in schema.LIFECYCLE_DEFAULTS.items():
        if getattr(dom, event) is None:
            setattr(dom, event, default)
    _cpu(dom)


def _cpu(dom: DomainDef) -> None:
    cpu = dom.cpu
    if cpu is None:
        return
    if cpu.mode in ("host-passthrough", "maximum"):
        cpu.check = cpu.check or "none"
        cpu.migratable = cpu.migratable or "on"
    elif cpu.mode == "host-model":
        cpu.check = cpu.check or "partial"
    elif cpu.model is not None:
        cpu.match = cpu.match or "exact"
        cpu.model_fallback = cpu.model_fallback or "allow"
        # libvirt does not compare a custom CPU with the host under TCG
        cpu.check = cpu.check or ("partial" if dom.type == "kvm" else "none")


# --- disks and controllers -----------------------------------------------------------------


def _disks(dom: DomainDef, host: HostDefaults) -> None:
    for disk in dom.devices.disks:
        # libvirt never probes formats: an unspecified one is raw
        disk.driver_type = disk.driver_type or "raw"
        if disk.device == "cdrom":
            disk.readonly = True
    assign_drive_addresses(dom)


def _maybe_add_controller(dom: DomainDef, ctype: str, index: int, model: str | None) -> None:
    if find_controller(dom, ctype, index) is None:
        insert_controller(dom.devices.controllers,
                          ControllerDef(type=ctype, index=index, model=model))


def _needed_controllers(dom: DomainDef) -> dict[str, int]:
    """Controller type → highest index some device refers to."""
    needed: dict[str, int] = {}
    for disk in dom.devices.disks:
        if isinstance(disk.address, DriveAddress):
            ctrl = disk.address.controller
            needed[disk.target_bus] = max(needed.get(disk.target_bus, 0), ctrl)
    virtio_serial = [c for c in (*dom.devices.consoles, *dom.devices.channels)
                     if c.target_type == "virtio"]
    for chardev in virtio_serial:
        ctrl = chardev.address.controller if isinstance(
            chardev.address, VirtioSerialAddress) else 0
        needed["virtio-serial"] = max(needed.get("virtio-serial", 0), ctrl)
    return needed


def _controllers(dom: DomainDef, host: HostDefaults) -> None:
    family = machine_family(dom.os.machine)
    assert family is not None  # _machine refused anything else
    for ctype, model in _BUILTIN_CONTROLLERS[family]:
        if ctype == "usb" and any(c.type == "usb" for c in dom.devices.controllers):
            continue  # any USB controller (even model='none') replaces the default one
        _maybe_add_controller(dom, ctype, 0, model)
    for ctype, highest in _needed_controllers(dom).items():
        for index in range(highest + 1):
            _maybe_add_controller(dom, ctype, index, None)
    for controller in dom.devices.controllers:
        if controller.model is None:
            controller.model = _default_model(controller, family)


def _default_model(controller: ControllerDef, family: str) -> str | None:
    if controller.type == "pci":
        return _ROOT_MODEL[family] if controller.index == 0 else None
    return _DEFAULT_MODELS.get(controller.type, {}).get(family)


# --- network -----------------------------------------------------------------------------


def _interfaces(dom: DomainDef, host: HostDefaults) -> None:
    for net in dom.devices.interfaces:
        if net.mac is None:
            net.mac = random_mac()
        if net.model is None:
            net.model = DEFAULT_NET_MODEL


# --- serial ports and consoles -------------------------------------------------------------


def _as_serial(console: CharDevDef) -> CharDevDef:
    return replace(console, kind="serial", target_type=None, target_port=None,
                   target_model=None, address=None, alias=None)


def _mirror_serial(console: CharDevDef, serial: CharDevDef) -> None:
    """libvirt's console 0 of target type serial is another view of serial 0."""
    for name in ("type", "source_path", "source_mode", "source_append", "log_file",
                 "log_append"):
        setattr(console, name, getattr(serial, name))
    console.target_port = serial.target_port


def _serial_targets(serials: list[CharDevDef]) -> None:
    for serial in serials:
        if serial.target_type is None:
            pci = serial.target_model == "pci-serial"
            serial.target_type = "pci-serial" if pci else "isa-serial"
        if serial.target_model is None:
            serial.target_model = serial.target_type
    isa_ports = {s.target_port for s in serials if s.target_type == "isa-serial"}
    for serial in serials:
        if serial.target_port is not None:
            continue
        if serial.target_type == "isa-serial":
            # ISA ports are COM1..COM4: take the lowest free one
            port = next(p for p in range(len(serials) + 1) if p not in isa_ports)
            isa_ports.add(port)
        else:
            port = 1 + max((s.target_port for s in serials if s.target_port is not None),
                           default=-1)
        serial.target_port = port


def _chardevs(dom: DomainDef, host: HostDefaults) -> None:
    devices = dom.devices
    consoles = devices.consoles
    if consoles and consoles[0].target_type in (None, "serial"):
        consoles[0].target_type = "serial"
        if not devices.serials:
            devices.serials.append(_as_serial(consoles[0]))
    elif not consoles and devices.serials:
        consoles.append(CharDevDef(kind="console", type=devices.serials[0].type,
                                   target_type="serial"))
    _serial_targets(devices.serials)
    for position, console in enumerate(consoles):
        if position == 0 and console.target_type == "serial":
            _mirror_serial(console, devices.serials[0])
        elif console.target_type is None:
            console.target_type = "serial"
        if console.target_port is None:
            console.target_port = 1 + max(
                (c.target_port for c in consoles if c.target_port is not None), default=-1)
    for chardev in (*devices.serials, *consoles, *devices.channels):
        if chardev.type == "unix" and chardev.source_mode is None:
            chardev.source_mode = "connect"


# --- input, graphics, video, balloon, boot -------------------------------------------------


def _inputs(dom: DomainDef, host: HostDefaults) -> None:
    # i440fx and q35 always have a PS/2 mouse and keyboard; libvirt lists them
    inputs = dom.devices.inputs
    for itype in ("mouse", "keyboard"):
        if not any(i.type == itype and i.bus == "ps2" for i in inputs):
            inputs.append(InputDef(type=itype, bus="ps2"))


def _graphics(dom: DomainDef, host: HostDefaults) -> None:
    for graphics in dom.devices.graphics:
        if graphics.autoport is None:
            graphics.autoport = graphics.port in (None, -1) and graphics.tls_port in (None, -1)
        if graphics.autoport and graphics.port is None:
            graphics.port = -1


def _videos(dom: DomainDef, host: HostDefaults) -> None:
    videos = dom.devices.videos
    if dom.devices.graphics and not videos:
        videos.append(VideoDef(model=DEFAULT_VIDEO))
    for position, video in enumerate(videos):
        if not video.model:
            video.model = DEFAULT_VIDEO
        if video.model == "none":
            continue
        if video.vram is None:
            video.vram = schema.VIDEO_VRAM_DEFAULT.get(video.model)
        if video.model == "qxl":
            video.ram = video.ram or schema.QXL_RAM_DEFAULT
            video.vgamem = video.vgamem or schema.QXL_VGAMEM_DEFAULT
        # libvirt rounds video memory up to a power of two, as QEMU requires
        video.vram, video.ram = _pow2(video.vram), _pow2(video.ram)
        if video.heads is None:
            video.heads = 1
        if position == 0:
            video.primary = True


def _pow2(kib: int | None) -> int | None:
    return None if not kib else 1 << (kib - 1).bit_length()


def _memballoon(dom: DomainDef, host: HostDefaults) -> None:
    if dom.devices.memballoon is None:
        dom.devices.memballoon = MemballoonDef(model="virtio")


def _boot(dom: DomainDef, host: HostDefaults) -> None:
    devices = dom.devices
    per_device = any(d.boot_order for d in devices.disks) or any(
        n.boot_order for n in devices.interfaces)
    if not dom.os.boot_devs and not per_device:
        dom.os.boot_devs = ["hd"]


def _addresses(dom: DomainDef, host: HostDefaults) -> None:
    assign_addresses(dom)


_STEPS: tuple[Callable[[DomainDef, HostDefaults], None], ...] = (
    _identity,
    _machine,
    _resources,
    _disks,
    _chardevs,
    _controllers,
    _interfaces,
    _inputs,
    _graphics,
    _videos,
    _memballoon,
    _boot,
    _addresses,
)
