"""Small helpers over the domain model shared by parse, defaults and validation."""

from __future__ import annotations

from pyvirt.conf.domain import ControllerDef, DomainDef

#: versioned machine-name prefix or bare alias → chipset family
_FAMILY_PREFIXES = (("pc-i440fx-", "i440fx"), ("pc-q35-", "q35"))
_FAMILY_ALIASES = {"pc": "i440fx", "q35": "q35"}
#: disk target prefixes libvirt knows, longest first so "xvd" wins over "vd"
DISK_PREFIXES = ("xvd", "ubd", "hd", "sd", "vd")


def machine_family(machine: str | None) -> str | None:
    """``"i440fx"`` or ``"q35"`` for the x86 PC machines pyvirt supports, else None."""
    if machine is None:
        return None
    if machine in _FAMILY_ALIASES:
        return _FAMILY_ALIASES[machine]
    for prefix, family in _FAMILY_PREFIXES:
        if machine.startswith(prefix):
            return family
    return None


def disk_prefix(dev: str) -> str | None:
    return next((p for p in DISK_PREFIXES if dev.startswith(p)), None)


def disk_index(dev: str) -> int | None:
    """libvirt's disk name → index: ``vda`` 0, ``vdz`` 25, ``vdaa`` 26 (bijective base 26).

    Returns None for names that are not a known prefix followed by lowercase letters.
    """
    prefix = disk_prefix(dev)
    letters = dev[len(prefix):] if prefix else ""
    if not letters or not all("a" <= c <= "z" for c in letters):
        return None
    index = 0
    for position, letter in enumerate(letters):
        index = (index + (1 if position else 0)) * 26 + (ord(letter) - ord("a"))
    return index


def insert_controller(controllers: list[ControllerDef], new: ControllerDef) -> None:
    """Insert *new* where libvirt would: grouped with its type, ordered by index.

    Controllers of one type stay together in index order; a type seen for the first
    time goes last. An index of -1 (not yet assigned) goes after its type's last one.
    """
    insert_at: int | None = None
    for position in range(len(controllers) - 1, -1, -1):
        current = controllers[position]
        if current.type != new.type:
            continue
        if new.index == -1:
            insert_at = position + 1
            break
        if current.index > new.index:
            insert_at = position
        elif current.index < new.index:
            break
    if insert_at is None:
        controllers.append(new)
    else:
        controllers.insert(insert_at, new)


def find_controller(dom: DomainDef, ctype: str, index: int) -> ControllerDef | None:
    for controller in dom.devices.controllers:
        if controller.type == ctype and controller.index == index:
            return controller
    return None


def controllers_of(dom: DomainDef, ctype: str) -> list[ControllerDef]:
    return [c for c in dom.devices.controllers if c.type == ctype]


def format_pci(domain: int, bus: int, slot: int, function: int) -> str:
    """libvirt's textual PCI address, ``0000:00:03.0``."""
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function}"
