"""``--xml``: a destination definition may change host-side details, never the guest ABI.

Host-side details are what the guest cannot see: where a disk's image lives, which bridge a
NIC plugs into, where a serial or channel socket goes, graphics listen address, port and
password, title and description. Everything else (devices, addresses, models, memory,
CPUs, machine type, UUID, name) must be identical, as libvirt's ABI stability check
demands, or the destination QEMU would not accept the migration stream, or worse.
"""

from __future__ import annotations

import copy

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.errors import ConfigUnsupportedError


def _guest_visible(definition: DomainDef) -> str:
    dom = copy.deepcopy(definition)
    dom.title = dom.description = None
    dom.dom_id = -1
    for disk in dom.devices.disks:
        disk.source = None
    for iface in dom.devices.interfaces:
        iface.source_bridge = iface.target_dev = None
    for chardev in (*dom.devices.serials, *dom.devices.consoles, *dom.devices.channels):
        chardev.source_path = chardev.log_file = None
        chardev.source_append = chardev.log_append = None
    for graphics in dom.devices.graphics:
        graphics.listen = graphics.passwd = None
        graphics.port = graphics.tls_port = None
        graphics.autoport = None
    return format_domain_xml(dom, migratable=True)


def check_abi_stable(source: DomainDef, given: DomainDef) -> None:
    if given.uuid != source.uuid:
        raise ConfigUnsupportedError(
            f"Target domain uuid {given.uuid} does not match source {source.uuid}")
    if given.name != source.name:
        raise ConfigUnsupportedError(
            f"Target domain name '{given.name}' does not match source '{source.name}'")
    ours, theirs = _guest_visible(source), _guest_visible(given)
    if ours != theirs:
        changed = _first_difference(ours, theirs)
        raise ConfigUnsupportedError(
            f"Target domain XML changes the guest ABI (only host-side details may differ): "
            f"{changed}")


def _first_difference(ours: str, theirs: str) -> str:
    for mine, other in zip(ours.splitlines(), theirs.splitlines(), strict=False):
        if mine != other:
            return f"'{other.strip()}' instead of '{mine.strip()}'"
    return "the device list differs"
