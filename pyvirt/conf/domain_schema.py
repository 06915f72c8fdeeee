"""The enumerated values of the domain XML subset pyvirt supports, as data.

Each :class:`Choice` lists what pyvirt implements and what libvirt's schema knows but
pyvirt does not. That split decides the error: a value libvirt would accept but we cannot
honour is ``unsupported configuration`` (the caller asked for something real), anything
else is an ``XML error`` (the document is wrong). Parser and validator share these tables
so both refuse the same things with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirt.conf.xmlutil import quote
from pyvirt.errors import ConfigUnsupportedError, XMLError


@dataclass(frozen=True)
class Choice:
    #: how messages name the value, e.g. "disk bus type"
    what: str
    supported: tuple[str, ...]
    #: values in libvirt's schema that pyvirt does not implement
    known: tuple[str, ...] = ()
    #: True when libvirt accepts free-form values (net models): all others are unsupported
    open_ended: bool = False

    def check(self, value: str) -> str:
        if value in self.supported:
            return value
        if value in self.known or self.open_ended:
            raise ConfigUnsupportedError(f"{self.what} '{quote(value)}' is not supported")
        raise XMLError(f"unknown {self.what} '{quote(value)}'")


DOMAIN_TYPE = Choice(
    "domain type",
    ("qemu", "kvm"),
    ("none", "kqemu", "xen", "lxc", "uml", "openvz", "test", "vmware", "hyperv", "vbox",
     "phyp", "parallels", "bhyve", "vz"),
)
OS_TYPE = Choice("OS type", ("hvm",), ("xen", "linux", "exe", "uml", "xenpvh"))
ARCH = Choice(
    "architecture",
    ("x86_64",),
    ("i686", "aarch64", "armv6l", "armv7l", "armv7b", "alpha", "cris", "lm32", "loongarch64",
     "m68k", "microblaze", "microblazeel", "mips", "mipsel", "mips64", "mips64el", "openrisc",
     "parisc", "parisc64", "ppc", "ppcle", "ppc64", "ppc64le", "ppcemb", "riscv32", "riscv64",
     "s390", "s390x", "sh4", "sh4eb", "sparc", "sparc64", "unicore32", "xtensa", "xtensaeb"),
)
BOOT_DEV = Choice("boot device", ("hd", "cdrom", "network"), ("fd",))
VCPU_PLACEMENT = Choice("vcpu placement", ("static",), ("auto",))
ON_OFF = Choice("switch value", ("on", "off"))

#: lifecycle actions pyvirt can carry out; the rest need a renamed or dumped guest
_ACTIONS = ("destroy", "restart", "preserve")
ON_POWEROFF = Choice("on_poweroff action", _ACTIONS, ("rename-restart",))
ON_REBOOT = Choice("on_reboot action", _ACTIONS, ("rename-restart",))
ON_CRASH = Choice(
    "on_crash action", _ACTIONS, ("rename-restart", "coredump-destroy", "coredump-restart")
)
LIFECYCLE_DEFAULTS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy"}
LIFECYCLE = {"on_poweroff": ON_POWEROFF, "on_reboot": ON_REBOOT, "on_crash": ON_CRASH}

CPU_MODE = Choice("CPU mode", ("custom", "host-model", "host-passthrough", "maximum"))
CPU_MATCH = Choice("CPU match", ("exact",), ("minimum", "strict"))
CPU_CHECK = Choice("CPU check", ("none", "partial", "full"))
CPU_FALLBACK = Choice("CPU model fallback", ("allow", "forbid"))

CLOCK_OFFSET = Choice("clock offset", ("utc", "localtime"), ("variable", "timezone", "absolute"))
TIMER_NAME = Choice(
    "timer name", ("rtc", "pit", "hpet", "kvmclock", "tsc", "hypervclock"),
    ("platform", "armvtimer"),
)
TIMER_TICKPOLICY = Choice("timer tickpolicy", ("delay", "catchup", "merge", "discard"))
TIMER_TRACK = Choice("timer track", ("boot", "guest", "wall", "realtime"))
YES_NO = Choice("yes/no value", ("yes", "no"))

DISK_TYPE = Choice(
    "disk type", ("file", "block"), ("dir", "network", "volume", "nvme", "vhostuser")
)
DISK_DEVICE = Choice("disk device", ("disk", "cdrom"), ("floppy", "lun"))
DISK_BUS = Choice(
    "disk bus type", ("virtio", "sata", "ide", "scsi"), ("fdc", "xen", "usb", "uml", "sd")
)
DISK_DRIVER_NAME = Choice("disk driver name", ("qemu",), open_ended=True)
DISK_FORMAT = Choice(
    "driver format",
    ("raw", "qcow2"),
    ("none", "auto", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop",
     "cow", "qcow", "qed", "vmdk", "luks", "luks-any"),
)
#: ``default`` is libvirt's spelling of "not set": the parser maps it to None
DISK_CACHE = Choice(
    "disk cache mode",
    ("default", "none", "writethrough", "writeback", "directsync", "unsafe"),
)
DISK_IO = Choice("disk io mode", ("default", "native", "threads", "io_uring"))
#: target name prefix → bus libvirt infers when ``<target bus=...>`` is missing
DISK_PREFIX_BUS = {"hd": "ide", "sd": "scsi", "vd": "virtio", "xvd": "xen", "ubd": "uml"}

CONTROLLER_TYPE = Choice(
    "controller type",
    ("pci", "usb", "ide", "sata", "scsi", "virtio-serial"),
    ("fdc", "ccid", "xenbus", "isa", "nvme"),
)
PCI_MODEL = Choice(
    "PCI controller model",
    ("pci-root", "pcie-root"),
    ("pci-bridge", "dmi-to-pci-bridge", "pcie-root-port", "pcie-switch-upstream-port",
     "pcie-switch-downstream-port", "pci-expander-bus", "pcie-expander-bus",
     "pcie-to-pci-bridge"),
)
USB_MODEL = Choice(
    "USB controller model",
    ("piix3-uhci", "qemu-xhci", "none"),
    ("piix4-uhci", "ehci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3",
     "vt82c686b-uhci", "pci-ohci", "nec-xhci", "qusb1", "qusb2", "default"),
)
SCSI_MODEL = Choice(
    "SCSI controller model",
    ("virtio-scsi",),
    ("auto", "buslogic", "lsilogic", "lsisas1068", "vmpvscsi", "ibmvscsi", "lsisas1078",
     "virtio-transitional", "virtio-non-transitional", "ncr53c90", "am53c974", "dc390"),
)
#: ports of each USB controller model (libvirt's counts; xHCI without ``ports=``)
USB_PORTS = {"piix3-uhci": 2, "qemu-xhci": 4}

NET_TYPE = Choice(
    "interface type",
    ("user", "bridge"),
    ("ethernet", "vhostuser", "server", "client", "mcast", "network", "internal", "direct",
     "hostdev", "udp", "vdpa", "null", "vds"),
)
#: libvirt passes unknown net models to QEMU; we only know how to build these
NET_MODEL = Choice("net model", ("virtio", "e1000", "e1000e", "rtl8139"), open_ended=True)
#: libvirt's generated tap names: not part of a persistent definition
GENERATED_TAP_PREFIX = "vnet"

CHR_TYPE = Choice(
    "character device type",
    ("pty", "file", "unix"),
    ("null", "vc", "dev", "pipe", "stdio", "udp", "tcp", "spicevmc", "spiceport", "nmdm",
     "qemu-vdagent", "dbus"),
)
SERIAL_TARGET = Choice(
    "serial target type",
    ("isa-serial", "pci-serial"),
    ("usb-serial", "spapr-vio-serial", "system-serial", "sclp-serial", "isa-debug"),
)
SERIAL_MODEL = Choice(
    "serial target model",
    ("isa-serial", "pci-serial"),
    ("usb-serial", "spapr-vty", "pl011", "sclpconsole", "sclplmconsole", "16550a",
     "isa-debugcon"),
)
CONSOLE_TARGET = Choice(
    "console target type",
    ("serial", "virtio"),
    ("xen", "uml", "lxc", "openvz", "sclp", "sclplm"),
)
CHANNEL_TARGET = Choice("channel target type", ("virtio",), ("guestfwd", "xen"))
UNIX_MODE = Choice("source mode", ("bind", "connect"))
#: libvirt allows at most this many ISA serial ports (COM1..COM4)
MAX_ISA_SERIALS = 4

INPUT_TYPE = Choice("input device type", ("mouse", "keyboard", "tablet"), ("passthrough", "evdev"))
INPUT_BUS = Choice("input bus", ("ps2", "usb", "virtio"), ("xen", "parallels", "none"))
GRAPHICS_TYPE = Choice(
    "graphics type", ("vnc", "spice"), ("sdl", "rdp", "desktop", "egl-headless", "dbus")
)
LISTEN_TYPE = Choice("graphics listen type", ("address",), ("network", "socket", "none"))
VIDEO_MODEL = Choice(
    "video model",
    ("vga", "cirrus", "virtio", "qxl", "bochs", "none"),
    ("vmvga", "xen", "vbox", "parallels", "gop", "ramfb", "default"),
)
BALLOON_MODEL = Choice(
    "memballoon model",
    ("virtio", "none"),
    ("xen", "virtio-transitional", "virtio-non-transitional"),
)
ADDRESS_TYPE = Choice(
    "address type",
    ("pci", "drive", "virtio-serial", "usb"),
    ("ccid", "spapr-vio", "virtio-s390", "ccw", "virtio-mmio", "isa", "dimm", "unassigned"),
)

#: libvirt's video RAM defaults in KiB (virDomainVideoDefaultRAM); others have none
VIDEO_VRAM_DEFAULT = {"vga": 16384, "cirrus": 16384, "bochs": 16384, "qxl": 65536}
QXL_RAM_DEFAULT = 65536
QXL_VGAMEM_DEFAULT = 16384

#: VNC displays are numbered from port 5900
VNC_PORT_MIN = 5900
PORT_MAX = 65535
