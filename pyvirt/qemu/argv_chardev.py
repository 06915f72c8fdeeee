"""Character devices: ``<serial>``, ``<console>`` and ``<channel>``.

Each element becomes a ``-chardev`` backend (``char<alias>``) plus a frontend ``-device``
(``<alias>``). Every serial port also logs to a file (the driver serves ``virsh console``
history and the test workload's heartbeat from it): the XML's ``<log file>`` or
``LaunchPaths.serial_log_prefix + "<i>.log"``.

A ``<console>`` with target type ``serial`` is libvirt's second view of serial port N, so
it emits nothing when that serial exists.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvirt.conf.domain import CharDevDef, PCIAddress, VirtioSerialAddress
from pyvirt.errors import ConfigUnsupportedError, InternalError
from pyvirt.qemu.argv_common import Ctx, Props, device, keyval

_ON_OFF = {"on": True, "off": False}


def _on_off(value: str | None, what: str) -> bool | None:
    if value is None:
        return None
    if value not in _ON_OFF:
        raise ConfigUnsupportedError(f"{what}: '{value}' is not on/off")
    return _ON_OFF[value]


def _path(c: CharDevDef, alias: str) -> str:
    if c.source_path is None:
        raise InternalError(f"{alias}: {c.type} source path not set")
    return c.source_path


def _pty(c: CharDevDef, alias: str) -> tuple[str, Props]:
    return "pty", []


def _file(c: CharDevDef, alias: str) -> tuple[str, Props]:
    return "file", [("path", _path(c, alias)),
                    ("append", _on_off(c.source_append, f"{alias} append"))]


#: unix mode → (QEMU listens?, extra props)
_UNIX_MODES: dict[str, Props] = {
    "bind": [("server", True), ("wait", False)],
    "connect": [],
}


def _unix(c: CharDevDef, alias: str) -> tuple[str, Props]:
    mode = c.source_mode or "bind"
    if mode not in _UNIX_MODES:
        raise ConfigUnsupportedError(f"{alias}: unix source mode '{mode}'")
    return "socket", [("path", _path(c, alias)), *_UNIX_MODES[mode]]


BACKENDS: dict[str, Callable[[CharDevDef, str], tuple[str, Props]]] = {
    "pty": _pty,
    "file": _file,
    "unix": _unix,
}


def chardev(c: CharDevDef, alias: str, default_log: str | None) -> list[str]:
    """``-chardev`` for ``c``; logs to its ``<log>`` or ``default_log`` when given."""
    backend = BACKENDS.get(c.type)
    if backend is None:
        raise ConfigUnsupportedError(f"{alias}: character device type '{c.type}'")
    kind, props = backend(c, alias)
    if c.log_file is not None:
        log: Props = [("logfile", c.log_file),
                      ("logappend", _on_off(c.log_append, f"{alias} log append"))]
    elif default_log is not None:
        # our own log survives restarts of the same domain: append, never truncate
        log = [("logfile", default_log), ("logappend", True)]
    else:
        log = []
    return ["-chardev", keyval(kind, [("id", f"char{alias}"), *props, *log])]


def _virtio_serial_props(ctx: Ctx, c: CharDevDef, alias: str) -> Props:
    controllers = [x.index for x in ctx.dom.devices.controllers if x.type == "virtio-serial"]
    if not controllers:
        raise ConfigUnsupportedError(f"{alias} needs a virtio-serial controller")
    a = c.address
    if a is None:
        return []  # QEMU takes the first virtio-serial bus and its next free port
    if not isinstance(a, VirtioSerialAddress):
        raise ConfigUnsupportedError(f"{alias} needs a virtio-serial address")
    if a.controller not in controllers:
        raise ConfigUnsupportedError(f"{alias}: no virtio-serial controller {a.controller}")
    return [("bus", f"virtio-serial{a.controller}.{a.bus}"), ("nr", a.port)]


# --- serial ------------------------------------------------------------------------------


def _isa_serial(ctx: Ctx, c: CharDevDef, alias: str, port: int) -> Props:
    if c.address is not None:
        raise ConfigUnsupportedError(f"{alias}: isa-serial takes no address")
    return [("index", port)]


def _pci_serial(ctx: Ctx, c: CharDevDef, alias: str, port: int) -> Props:
    a = c.address
    if a is not None and not isinstance(a, PCIAddress):
        raise ConfigUnsupportedError(f"{alias}: pci-serial needs a PCI address")
    return ctx.pci_props(a, alias)


#: serial model (``<target><model name>``, else the target type) → placement props
SERIAL_MODELS: dict[str, Callable[[Ctx, CharDevDef, str, int], Props]] = {
    "isa-serial": _isa_serial,
    "pci-serial": _pci_serial,
}


def _serial(ctx: Ctx, c: CharDevDef, index: int) -> list[str]:
    alias = c.alias or f"serial{index}"
    model = c.target_model or c.target_type or "isa-serial"
    placement = SERIAL_MODELS.get(model)
    if placement is None:
        raise ConfigUnsupportedError(f"{alias}: serial model '{model}' is not supported")
    port = index if c.target_port is None else c.target_port
    log = f"{ctx.paths.serial_log_prefix}{index}.log"
    props = [("chardev", f"char{alias}"), ("id", alias), *placement(ctx, c, alias, port)]
    return chardev(c, alias, log) + device(model, props)


def build_serials(ctx: Ctx) -> list[str]:
    argv: list[str] = []
    for index, c in enumerate(ctx.dom.devices.serials):
        argv += _serial(ctx, c, index)
    return argv


# --- console -----------------------------------------------------------------------------


def _console_serial(ctx: Ctx, c: CharDevDef, index: int) -> list[str]:
    port = c.target_port or 0
    serials = ctx.dom.devices.serials
    if any((s.target_port if s.target_port is not None else i) == port
           for i, s in enumerate(serials)):
        return []  # the same device as that <serial>
    if serials:
        raise ConfigUnsupportedError(f"console on serial port {port}, which does not exist")
    # no <serial> at all: the console *is* serial 0 (libvirt would copy it into <serial>)
    return _serial(ctx, c, 0)


def _console_virtio(ctx: Ctx, c: CharDevDef, index: int) -> list[str]:
    alias = c.alias or f"console{index}"
    props = [*_virtio_serial_props(ctx, c, alias), ("chardev", f"char{alias}"), ("id", alias)]
    return chardev(c, alias, None) + device("virtconsole", props)


#: console target type → builder (x86 consoles default to the serial port)
CONSOLE_TARGETS: dict[str, Callable[[Ctx, CharDevDef, int], list[str]]] = {
    "serial": _console_serial,
    "virtio": _console_virtio,
}


def build_consoles(ctx: Ctx) -> list[str]:
    argv: list[str] = []
    for index, c in enumerate(ctx.dom.devices.consoles):
        target = c.target_type or "serial"
        builder = CONSOLE_TARGETS.get(target)
        if builder is None:
            raise ConfigUnsupportedError(f"console target type '{target}' is not supported")
        argv += builder(ctx, c, index)
    return argv


# --- channel -----------------------------------------------------------------------------


def build_channels(ctx: Ctx) -> list[str]:
    argv: list[str] = []
    for index, c in enumerate(ctx.dom.devices.channels):
        alias = c.alias or f"channel{index}"
        if c.target_type != "virtio":
            raise ConfigUnsupportedError(f"{alias}: channel target type '{c.target_type}'")
        props = [*_virtio_serial_props(ctx, c, alias), ("chardev", f"char{alias}"),
                 ("id", alias), ("name", c.target_name)]
        argv += chardev(c, alias, None) + device("virtserialport", props)
    return argv
