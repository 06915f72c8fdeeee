"""Device aliases (QEMU device ids) as the argv builder assigns them, for the live XML.

The driver calls :func:`assign_aliases` on the live definition so ``dumpxml`` shows
``<alias name=...>`` and QMP commands can address devices by id. The names are exactly
the ids :func:`pyvirt.qemu.argv.build_argv` uses (a unit test checks that filling them in
does not change the argv).
"""

from __future__ import annotations

from pyvirt.conf.domain import ControllerDef, DomainDef
from pyvirt.qemu.argv_common import Ctx, LaunchPaths, machine_family
from pyvirt.qemu.argv_devices import usb_alias
from pyvirt.qemu.argv_disk import disk_alias

_NO_PATHS = LaunchPaths(monitor_socket="", pidfile="", serial_log_prefix="")


def controller_alias(ctx: Ctx, c: ControllerDef) -> str:
    if c.type == "pci":
        return ctx.pci_bus_name(c.index)
    if c.type == "usb":
        return usb_alias(c.index)
    builtin = dict(ctx.family.builtin_disk_controllers)
    if c.index == 0 and c.type in builtin:
        return builtin[c.type]  # the board's own controller: QEMU calls it "ide"
    return f"{c.type}{c.index}"


def _serial_alias(dom: DomainDef, port: int) -> str:
    for i, serial in enumerate(dom.devices.serials):
        if (serial.target_port if serial.target_port is not None else i) == port:
            return serial.alias or f"serial{i}"
    return "serial0"  # no <serial>: the console itself becomes serial 0


def assign_aliases(dom: DomainDef) -> None:
    """Fill every ``alias`` that is None (explicit user aliases are kept)."""
    ctx = Ctx(dom=dom, family=machine_family(dom.os.machine), paths=_NO_PATHS)
    devices = dom.devices
    for c in devices.controllers:
        c.alias = c.alias or controller_alias(ctx, c)
    for d in devices.disks:
        d.alias = d.alias or disk_alias(ctx, d)
    for i, net in enumerate(devices.interfaces):
        net.alias = net.alias or f"net{i}"
    for i, serial in enumerate(devices.serials):
        serial.alias = serial.alias or f"serial{i}"
    for i, console in enumerate(devices.consoles):
        if console.target_type in (None, "serial"):
            # a serial console is serial N seen again: libvirt shows that serial's alias
            console.alias = console.alias or _serial_alias(dom, console.target_port or 0)
        else:
            console.alias = console.alias or f"console{i}"
    for i, channel in enumerate(devices.channels):
        channel.alias = channel.alias or f"channel{i}"
    for i, inp in enumerate(devices.inputs):
        inp.alias = inp.alias or f"input{i}"
    for i, video in enumerate(devices.videos):
        if video.model != "none":  # no device, nothing to name
            video.alias = video.alias or f"video{i}"
    if devices.memballoon is not None:
        devices.memballoon.alias = devices.memballoon.alias or "balloon0"
