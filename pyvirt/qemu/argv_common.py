"""Shared pieces of the domain → QEMU argv builder.

Launch parameters the driver hands in, the machine-family table (what the i440fx and q35
boards give implicitly), QEMU's ``key=value,...`` ("keyval") rendering and PCI address
rendering. Everything here is pure: no I/O, no randomness.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyvirt.conf.domain import DomainDef, PCIAddress
from pyvirt.errors import ConfigUnsupportedError, InternalError


@dataclass(frozen=True)
class LaunchPaths:
    """Host paths the driver chose for this QEMU process."""

    #: QMP unix socket; QEMU listens, the driver connects after launch
    monitor_socket: str
    pidfile: str
    #: serial ``i`` logs to ``f"{serial_log_prefix}{i}.log"`` unless the XML has ``<log>``
    serial_log_prefix: str
    #: chardev log file → the fd (same number in QEMU) of the log writer's pipe for it;
    #: a log not listed is a file QEMU opens itself (``stdio_handler = "file"``)
    log_fds: Mapping[str, int] = field(default_factory=dict)
    #: tap device name → the fd (same number in QEMU) of the queue the driver opened for it
    #: (QEMU runs unprivileged and cannot open /dev/net/tun)
    tap_fds: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchOptions:
    #: ``-incoming`` value for a migration destination, e.g. ``"defer"``
    incoming: str | None = None
    #: qemu.conf's seccomp_sandbox: QEMU's seccomp filter, everything it can deny denied
    sandbox: bool = True


@dataclass(frozen=True)
class MachineFamily:
    """What a board family provides implicitly and how QEMU names it."""

    name: str
    #: QEMU id of the root PCI(e) bus
    root_bus: str
    #: libvirt model name of the implicit root controller
    root_model: str
    #: libvirt USB controller model used when ``<controller type='usb'>`` has no model
    default_usb_model: str
    #: disk controller type → QEMU bus-name prefix of the board's built-in controller 0
    builtin_disk_controllers: tuple[tuple[str, str], ...]


I440FX = MachineFamily(
    name="i440fx",
    root_bus="pci.0",
    root_model="pci-root",
    default_usb_model="piix3-uhci",
    builtin_disk_controllers=(("ide", "ide"),),
)
Q35 = MachineFamily(
    name="q35",
    root_bus="pcie.0",
    root_model="pcie-root",
    default_usb_model="qemu-xhci",
    # the ICH9 AHCI controller is built in; QEMU calls its ports ide.0 .. ide.5
    builtin_disk_controllers=(("sata", "ide"),),
)

#: machine-name prefix → family (versioned names first; bare aliases match exactly)
_MACHINE_PREFIXES: tuple[tuple[str, MachineFamily], ...] = (
    ("pc-i440fx-", I440FX),
    ("pc-q35-", Q35),
)
_MACHINE_ALIASES: dict[str, MachineFamily] = {"pc": I440FX, "q35": Q35}


def machine_family(machine: str | None) -> MachineFamily:
    if machine is None:
        raise InternalError("machine type not set (apply_defaults not run?)")
    if machine in _MACHINE_ALIASES:
        return _MACHINE_ALIASES[machine]
    for prefix, family in _MACHINE_PREFIXES:
        if machine.startswith(prefix):
            return family
    raise ConfigUnsupportedError(f"machine type '{machine}' is not supported (only pc and q35)")


Value = str | int | bool | None
Props = list[tuple[str, Value]]


def escape(value: str) -> str:
    """Quote a keyval value: QEMU's option parser reads ``,,`` as a literal comma."""
    return value.replace(",", ",,")


def render(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return escape(value)


def options(props: Iterable[tuple[str, Value]]) -> str:
    """``k=v,...``; ``None`` values are left out so callers can list optional keys."""
    return ",".join(f"{key}={render(value)}" for key, value in props if value is not None)


def keyval(first: str, props: Iterable[tuple[str, Value]]) -> str:
    """``first,k=v,...``: an option whose first value has an implied key."""
    rest = options(props)
    return f"{escape(first)},{rest}" if rest else escape(first)


def device(driver: str, props: Iterable[tuple[str, Value]]) -> list[str]:
    return ["-device", keyval(driver, props)]


@dataclass(frozen=True)
class Ctx:
    """What every builder needs: the domain, its board family and the launch paths."""

    dom: DomainDef
    family: MachineFamily
    paths: LaunchPaths
    #: ("disk"|"net", position) → bootindex derived from ``<os><boot dev>``
    os_boot: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def bootindex(self, kind: str, position: int, explicit: int | None) -> int | None:
        return explicit if explicit is not None else self.os_boot.get((kind, position))

    def pci_bus_name(self, bus: int) -> str:
        # libvirt names every non-root PCI controller "pci.<index>"; the root is the board's
        return self.family.root_bus if bus == 0 else f"pci.{bus}"

    def pci_props(self, addr: PCIAddress | None, what: str) -> Props:
        """``bus=..,addr=..`` for a PCI device; none when unassigned (QEMU then picks)."""
        if addr is None:
            return []
        if addr.domain != 0:
            raise ConfigUnsupportedError(f"{what}: PCI domain {addr.domain} (only 0)")
        if not (0 <= addr.slot <= 31 and 0 <= addr.function <= 7):
            raise ConfigUnsupportedError(
                f"{what}: invalid PCI address slot {addr.slot:#x} function {addr.function}"
            )
        slot = f"{addr.slot:#x}" if addr.function == 0 else f"{addr.slot:#x}.{addr.function:#x}"
        props: Props = [("bus", self.pci_bus_name(addr.bus))]
        if addr.multifunction is not None:
            props.append(("multifunction", addr.multifunction))
        props.append(("addr", slot))
        return props


def require(value: str | None, what: str) -> str:
    """A field the driver or the defaults pass must have filled before argv time."""
    if value is None:
        raise InternalError(f"{what} not set")
    return value


def choose(table: dict[str, str], key: str | None, what: str) -> str:
    """Look ``key`` up in a model table, refusing (never dropping) unknown values."""
    if key is None or key not in table:
        raise ConfigUnsupportedError(f"{what} '{key}' is not supported")
    return table[key]
