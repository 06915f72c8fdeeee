"""Typed model of the libvirt domain XML subset pyvirt supports.

Parsed once (:mod:`pyvirt.conf.domain_parse`), completed with libvirt's defaults
(:mod:`pyvirt.conf.domain_defaults`), formatted back (:mod:`pyvirt.conf.domain_format`)
and turned into a QEMU command line (:mod:`pyvirt.qemu.argv`). Everything else in pyvirt
works on these dataclasses, never on XML.

Conventions: sizes are KiB (libvirt's internal unit); ``None`` means "not given" (so the
formatter can omit it and the defaults pass can fill it); enumerated values are the exact
strings of libvirt's schema. Runtime-only data (``dom_id``, device ``alias``, a pty's
actual path, an autoport's chosen port) lives here too and is only formatted for live XML.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PCIAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0
    multifunction: bool | None = None


@dataclass
class DriveAddress:
    """``<address type='drive'>`` for ide/sata/scsi disks."""

    controller: int = 0
    bus: int = 0
    target: int = 0
    unit: int = 0


@dataclass
class VirtioSerialAddress:
    controller: int = 0
    bus: int = 0
    port: int = 1


Address = PCIAddress | DriveAddress | VirtioSerialAddress


@dataclass
class USBAddress:
    """``<address type='usb' bus='0' port='1'/>`` for USB input devices.

    ``bus`` is the USB controller index; ``port`` is libvirt's port path (``"1"``; a
    dotted path such as ``"1.2"`` would go through a hub, which pyvirt does not model).
    """

    bus: int = 0
    port: str = "1"


@dataclass
class OSDef:
    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    #: ``<boot dev=.../>`` in document order: hd, cdrom, network, fd
    boot_devs: list[str] = field(default_factory=list)


@dataclass
class Features:
    acpi: bool = False
    apic: bool = False
    pae: bool = False
    #: ``<vmport state='on|off'/>``
    vmport: str | None = None


@dataclass
class CPUTopology:
    sockets: int
    dies: int
    cores: int
    threads: int


@dataclass
class CPUDef:
    #: host-passthrough, host-model, maximum or custom
    mode: str = "custom"
    match: str | None = None
    check: str | None = None
    #: ``migratable='on|off'`` (host-passthrough, maximum)
    migratable: str | None = None
    model: str | None = None
    model_fallback: str | None = None
    topology: CPUTopology | None = None


@dataclass
class TimerDef:
    #: rtc, pit, hpet, kvmclock, tsc, hypervclock
    name: str
    tickpolicy: str | None = None
    present: str | None = None
    track: str | None = None


@dataclass
class ClockDef:
    #: utc, localtime
    offset: str = "utc"
    timers: list[TimerDef] = field(default_factory=list)


@dataclass
class DiskDef:
    #: file or block
    type: str
    target_dev: str
    #: virtio, sata, ide, scsi
    target_bus: str
    #: disk or cdrom
    device: str = "disk"
    source: str | None = None
    driver_name: str = "qemu"
    #: raw or qcow2
    driver_type: str | None = None
    #: default, none, writethrough, writeback, directsync, unsafe
    cache: str | None = None
    #: native, threads, io_uring
    io: str | None = None
    readonly: bool = False
    shareable: bool = False
    boot_order: int | None = None
    serial: str | None = None
    address: Address | None = None
    alias: str | None = None


@dataclass
class InterfaceDef:
    #: user or bridge
    type: str
    mac: str | None = None
    source_bridge: str | None = None
    #: virtio, e1000, e1000e, rtl8139
    model: str | None = None
    #: host tap device name (bridge; filled at start)
    target_dev: str | None = None
    boot_order: int | None = None
    address: PCIAddress | None = None
    alias: str | None = None


@dataclass
class CharDevDef:
    """A ``<serial>``, ``<console>`` or ``<channel>`` element."""

    #: serial, console or channel (the element name)
    kind: str
    #: pty, file or unix
    type: str
    source_path: str | None = None
    #: unix: bind (QEMU listens) or connect
    source_mode: str | None = None
    #: file: ``append='on|off'``
    source_append: str | None = None
    #: serial: isa-serial/pci-serial; console: serial/virtio; channel: virtio
    target_type: str | None = None
    target_port: int | None = None
    #: serial: ``<model name='isa-serial'/>``
    target_model: str | None = None
    #: channel: the virtio port name (``org.qemu.guest_agent.0``)
    target_name: str | None = None
    log_file: str | None = None
    log_append: str | None = None
    address: Address | None = None
    alias: str | None = None


@dataclass
class GraphicsDef:
    #: vnc or spice
    type: str
    #: -1 = autoport (allocated at start; the chosen port shows in live XML)
    port: int | None = None
    autoport: bool | None = None
    tls_port: int | None = None
    listen: str | None = None
    passwd: str | None = None


@dataclass
class VideoDef:
    #: vga, cirrus, virtio, qxl, bochs, none
    model: str
    vram: int | None = None
    heads: int | None = None
    primary: bool | None = None
    address: PCIAddress | None = None
    alias: str | None = None
    #: qxl only: ``ram`` and ``vgamem`` attributes of ``<model>`` (KiB)
    ram: int | None = None
    vgamem: int | None = None


@dataclass
class MemballoonDef:
    #: virtio or none
    model: str
    address: PCIAddress | None = None
    alias: str | None = None


@dataclass
class ControllerDef:
    #: pci, usb, ide, sata, scsi, virtio-serial
    type: str
    index: int = 0
    model: str | None = None
    address: PCIAddress | None = None
    alias: str | None = None


@dataclass
class InputDef:
    #: mouse, keyboard, tablet
    type: str
    #: ps2, usb, virtio
    bus: str
    alias: str | None = None
    #: usb bus: USBAddress; virtio bus: PCIAddress; ps2: always None
    address: PCIAddress | USBAddress | None = None


@dataclass
class Devices:
    emulator: str | None = None
    disks: list[DiskDef] = field(default_factory=list)
    controllers: list[ControllerDef] = field(default_factory=list)
    interfaces: list[InterfaceDef] = field(default_factory=list)
    serials: list[CharDevDef] = field(default_factory=list)
    consoles: list[CharDevDef] = field(default_factory=list)
    channels: list[CharDevDef] = field(default_factory=list)
    inputs: list[InputDef] = field(default_factory=list)
    graphics: list[GraphicsDef] = field(default_factory=list)
    videos: list[VideoDef] = field(default_factory=list)
    memballoon: MemballoonDef | None = None


@dataclass
class DomainDef:
    #: qemu or kvm
    type: str
    name: str
    uuid: str | None = None
    title: str | None = None
    description: str | None = None
    memory_kib: int = 0
    current_memory_kib: int | None = None
    vcpus: int = 1
    #: ``<vcpu placement=...>``
    vcpu_placement: str | None = None
    os: OSDef = field(default_factory=OSDef)
    features: Features | None = None
    cpu: CPUDef | None = None
    clock: ClockDef | None = None
    on_poweroff: str | None = None
    on_reboot: str | None = None
    on_crash: str | None = None
    devices: Devices = field(default_factory=Devices)
    #: runtime id; -1 when inactive (only in live XML)
    dom_id: int = -1
