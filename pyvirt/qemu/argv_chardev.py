"""Character devices: ``<serial>``, ``<console>`` and ``<channel>``.

Each element becomes a ``-chardev`` backend (``char<alias>``) plus a frontend ``-device``
(``<alias>``). Every serial port also logs to a file (the driver serves ``virsh console``
history and the test workload's heartbeat from it): the XML's ``<log file>`` or
``LaunchPaths.serial_log_prefix + "<i>.log"``. When the driver hands in a pipe for a log
(``LaunchPaths.log_fds``: its log writer caps and rotates the file), QEMU gets the pipe as
an fdset, as libvirt passes virtlogd's: ``-add-fd set=N,fd=N,opaque=<alias>-log`` and
``logfile=/dev/fdset/N,logappend=on`` (QEMU would ftruncate a pipe opened without append,
which fails; the writer empties the file instead when the XML asks). :func:`chardev_logs`
lists every log the argv names, for the driver to make those pipes.

A ``<console>`` with target type ``serial`` is libvirt's second view of serial port N, so
it emits nothing when that serial exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyvirt.conf.domain import CharDevDef, DomainDef, PCIAddress, VirtioSerialAddress
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


@dataclass(frozen=True)
class ChardevLog:
    """A log file a character device writes; ``append`` False: emptied when QEMU starts
    (QEMU's default when the XML's ``<log>`` has no ``append='on'``)."""

    path: str
    append: bool = True


def chardev_log(c: CharDevDef, default_log: str | None) -> ChardevLog | None:
    """Where ``c`` logs: its ``<log>``, else ``default_log`` (our own, always appended:
    it survives restarts of the same domain)."""
    if c.log_file is not None:
        return ChardevLog(c.log_file, _on_off(c.log_append, "log append") is True)
    if default_log is not None:
        return ChardevLog(default_log, True)
    return None


def chardev(c: CharDevDef, alias: str, default_log: str | None,
            log_fds: Mapping[str, int]) -> list[str]:
    """``-chardev`` for ``c``; logs to its ``<log>`` or ``default_log`` when given (through
    the pipe in ``log_fds`` when there is one)."""
    backend = BACKENDS.get(c.type)
    if backend is None:
        raise ConfigUnsupportedError(f"{alias}: character device type '{c.type}'")
    kind, props = backend(c, alias)
    target = chardev_log(c, default_log)
    fd = log_fds.get(target.path) if target is not None else None
    add_fd: list[str] = []
    if fd is not None:
        add_fd = ["-add-fd", keyval(f"set={fd}", [("fd", fd), ("opaque", f"{alias}-log")])]
        log: Props = [("logfile", f"/dev/fdset/{fd}"), ("logappend", True)]
    elif c.log_file is not None:
        log = [("logfile", c.log_file),
               ("logappend", _on_off(c.log_append, f"{alias} log append"))]
    elif default_log is not None:
        log = [("logfile", default_log), ("logappend", True)]
    else:
        log = []
    return [*add_fd, "-chardev", keyval(kind, [("id", f"char{alias}"), *props, *log])]


def chardev_logs(dom: DomainDef, serial_log_prefix: str) -> list[ChardevLog]:
    """Every log file the chardevs of ``dom``'s argv write, each once, in argv order."""
    serials = dom.devices.serials
    devices: list[tuple[CharDevDef, str | None]] = [
        (c, f"{serial_log_prefix}{i}.log") for i, c in enumerate(serials)]
    for c in dom.devices.consoles:
        if (c.target_type or "serial") != "serial":
            devices.append((c, None))
        elif not serials:  # the console *is* serial 0 (see _console_serial)
            devices.append((c, f"{serial_log_prefix}0.log"))
    devices += [(c, None) for c in dom.devices.channels]
    logs: dict[str, ChardevLog] = {}
    for c, default in devices:
        log = chardev_log(c, default)
        if log is not None:
            logs.setdefault(log.path, log)
    return list(logs.values())


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
    return chardev(c, alias, log, ctx.paths.log_fds) + device(model, props)


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
    return chardev(c, alias, None, ctx.paths.log_fds) + device("virtconsole", props)


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
        argv += chardev(c, alias, None, ctx.paths.log_fds) + device("virtserialport", props)
    return argv
