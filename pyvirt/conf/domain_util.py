"""Small helpers over the domain model shared by parse, defaults and validation."""

from __future__ import annotations

from pyvirt.conf.domain import ControllerDef, DomainDef, VideoDef

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


def canonical_controllers(controllers: list[ControllerDef]) -> list[ControllerDef]:
    """*controllers* in pyvirt's canonical order.

    Like libvirt, controllers of one type stay together in index order; types keep the
    order in which they first appear. The order is a fixed point (sorting again changes
    nothing), so formatting and re-parsing a definition never reorders it.
    """
    first_seen: dict[str, int] = {}
    for position, controller in enumerate(controllers):
        first_seen.setdefault(controller.type, position)
    return sorted(controllers, key=lambda c: (first_seen[c.type], c.index))


def sort_controllers(controllers: list[ControllerDef]) -> None:
    controllers[:] = canonical_controllers(controllers)


def primary_video_first(videos: list[VideoDef]) -> list[VideoDef]:
    """*videos* with the first one marked primary moved to the front (libvirt's rule)."""
    primary = next((i for i, v in enumerate(videos) if v.primary), 0)
    return [videos[primary], *videos[:primary], *videos[primary + 1:]] if videos else []


def insert_controller(controllers: list[ControllerDef], new: ControllerDef) -> None:
    """Add *new* at its place in the canonical order (see :func:`sort_controllers`)."""
    controllers.append(new)
    sort_controllers(controllers)


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
