"""Runtime values of a starting domain, filled in the live definition.

Before argv: display ports for autoport graphics, tap devices for bridged interfaces
(each with an open queue QEMU inherits: it cannot open ``/dev/net/tun`` as its own user),
socket paths for unix channels without one. After QEMU is up: the pty each serial got,
the graphics passwords (set over QMP, never on the command line). All of it is recorded
in the live XML, so a restarted daemon knows what to release.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from pyvirt import safefs
from pyvirt.conf.domain import CharDevDef, DomainDef, InterfaceDef
from pyvirt.qemu import resources
from pyvirt.qemu.argv_aliases import assign_aliases
from pyvirt.qemu.domain_obj import DomainObj, RuntimeResources
from pyvirt.qemu.monitor import Monitor
from pyvirt.qemu.resources import PortAllocator

log = logging.getLogger(__name__)


def prepare_resources(obj: DomainObj, live: DomainDef, run_dir: Path,
                      ports: PortAllocator, listen_defaults: dict[str, str]) -> None:
    assign_aliases(live)
    for graphics in live.devices.graphics:
        # qemu.conf's vnc_listen / spice_listen apply when the XML names no address
        graphics.listen = graphics.listen or listen_defaults.get(graphics.type, "127.0.0.1")
        listen = graphics.listen
        if graphics.port is None or graphics.port < 0:
            graphics.port = ports.allocate(listen)
            obj.resources.graphics_ports.append(graphics.port)
        if graphics.tls_port is not None and graphics.tls_port < 0:
            graphics.tls_port = ports.allocate(listen)
            obj.resources.graphics_ports.append(graphics.tls_port)
    for iface in live.devices.interfaces:
        if iface.type == "bridge":
            _take_tap(obj.resources, iface)
    for position, channel in enumerate(live.devices.channels):
        if channel.type == "unix" and not channel.source_path:
            # validated as one file-name component (domain_validate), checked again here
            target = safefs.check_component(channel.target_name or f"channel{position}",
                                            "channel target name")
            channel.source_path = str(run_dir / target)
            channel.source_mode = channel.source_mode or "bind"


def _take_tap(held: RuntimeResources, iface: InterfaceDef) -> None:
    """A tap on the interface's bridge and a queue of it for QEMU, each recorded in
    ``held`` the moment it exists, so a failed start releases whatever was taken."""
    assert iface.source_bridge is not None
    name = resources.create_tap(iface.source_bridge, set(held.tap_devices))
    held.tap_devices.append(name)
    iface.target_dev = name
    # libvirt's rule: virtio NICs get the virtio-net header on the tap
    held.tap_fds[name] = resources.open_tap_queue(name, vnet_hdr=iface.model == "virtio")


async def after_launch(obj: DomainObj, live: DomainDef, monitor: Monitor) -> None:
    chardevs = await monitor.execute("query-chardev")
    _record_pty_paths(live, chardevs)
    for graphics in live.devices.graphics:
        if graphics.passwd is not None:
            await monitor.execute("set_password",
                                  {"protocol": graphics.type, "password": graphics.passwd})


def _record_pty_paths(live: DomainDef, chardevs: list[dict[str, Any]]) -> None:
    # The argv names each chardev "char" + the device alias (libvirt's convention).
    by_label = {dev["label"]: dev["filename"] for dev in chardevs}
    devices: list[CharDevDef] = [*live.devices.serials, *live.devices.channels,
                                 *live.devices.consoles]
    for dev in devices:
        filename = by_label.get(f"char{dev.alias}", "")
        if dev.type == "pty" and filename.startswith("pty:"):
            dev.source_path = filename[len("pty:"):]
    # A serial console mirrors serial 0: it shows the same pty.
    for console in live.devices.consoles:
        if console.target_type in (None, "serial") and live.devices.serials:
            serial = live.devices.serials[console.target_port or 0]
            if console.type == "pty":
                console.source_path = serial.source_path


def release_resources(obj: DomainObj, ports: PortAllocator) -> None:
    for port in obj.resources.graphics_ports:
        ports.release(port)
    # a start that failed before QEMU was spawned still holds the queues it opened
    for fd in obj.resources.tap_fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    for tap in obj.resources.tap_devices:
        resources.delete_tap(tap)
    if obj.resources.run_dir is not None:
        remove_run_dir(obj.resources.run_dir)
    obj.resources = RuntimeResources()


def resources_of(live: DomainDef, run_dir: Path, ports: PortAllocator) -> RuntimeResources:
    """Rebuild the resource record of a reattached domain from its live XML."""
    held = RuntimeResources(run_dir=run_dir)
    for graphics in live.devices.graphics:
        if graphics.autoport and graphics.port is not None and graphics.port > 0:
            ports.reserve(graphics.port)
            held.graphics_ports.append(graphics.port)
    held.tap_devices = [iface.target_dev for iface in live.devices.interfaces
                        if iface.type == "bridge" and iface.target_dev]
    return held


def release_resources_of(live: DomainDef, run_dir: Path) -> None:
    """Clean up after a domain whose QEMU died while the daemon was away."""
    for iface in live.devices.interfaces:
        if iface.type == "bridge" and iface.target_dev:
            resources.delete_tap(iface.target_dev)
    remove_run_dir(run_dir)


def remove_run_dir(run_dir: Path) -> None:
    """A domain's run directory is an entry of the driver's run_dir named ``domain-*``;
    removed through safefs (by fd, no symlink followed), anything else refused."""
    if not run_dir.name.startswith("domain-"):
        log.error("refusing to remove %s: not a domain run directory", run_dir)
        return
    safefs.remove_in(run_dir.parent, run_dir.name)
