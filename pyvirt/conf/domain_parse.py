"""libvirt domain XML → :class:`~pyvirt.conf.domain.DomainDef`.

Parsing is strict in two ways. The document is read through
:func:`~pyvirt.conf.xmlutil.parse_xml_document` (no DTDs or entities, size and depth
caps), and every element is read through an :class:`~pyvirt.conf.xmlutil.XNode`, so
whatever no parser consumed is refused at the end instead of being silently lost.

Elements are dispatched through tables (element name → parser), one per level; the device
parsers live in :mod:`pyvirt.conf.domain_parse_devices`. The parser records what the
document says; libvirt's defaults are filled by :mod:`pyvirt.conf.domain_defaults` and
cross-field rules checked by :mod:`pyvirt.conf.domain_validate`.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvirt.conf import domain_schema as schema
from pyvirt.conf.domain import (
    ClockDef,
    CPUDef,
    CPUTopology,
    DomainDef,
    Features,
    OSDef,
    TimerDef,
)
from pyvirt.conf.domain_parse_devices import parse_devices
from pyvirt.conf.xmlutil import (
    POSITIVE,
    IntRange,
    XNode,
    parse_xml_document,
    quote,
    unsupported_element,
)
from pyvirt.errors import (
    ConfigUnsupportedError,
    ErrorCode,
    ErrorDomain,
    InvalidArgError,
    VirtError,
    XMLError,
)

#: memory sizes are unsigned long long bytes in libvirt, capped at LLONG_MAX
_MEMORY_LIMIT_BYTES = 2**63 - 1
_UNIT_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_VCPU_LIMITS = IntRange(minimum=0, maximum=2**31 - 1)

TopHandler = Callable[[XNode, DomainDef], None]


def parse_domain_xml(text: str | bytes) -> DomainDef:
    """Parse a ``<domain>`` document; raise XMLError / ConfigUnsupportedError."""
    root = XNode(parse_xml_document(text, "domain"))
    dom = DomainDef(type=schema.DOMAIN_TYPE.check(root.require("type")), name="")
    dom_id = root.int_attr("id", IntRange(minimum=-1, maximum=2**31 - 1))
    dom.dom_id = -1 if dom_id is None else dom_id
    seen: set[str] = set()
    for child in root.all_children():
        handler = _TOP_LEVEL.get(child.tag)
        if handler is None:
            raise unsupported_element(child.tag, root.path)
        if child.tag in seen:
            raise XMLError(f"element '{child.tag}' may appear only once in element 'domain'")
        seen.add(child.tag)
        handler(child, dom)
    root.finish()
    if not dom.name:
        raise VirtError(
            "missing name information", code=ErrorCode.NO_NAME, domain=ErrorDomain.DOMAIN
        )
    return dom


# --- memory sizes ------------------------------------------------------------------------


def unit_scale(unit: str) -> int:
    """Bytes per *unit*, with libvirt's suffix rules (``KiB``/``k`` = 1024, ``KB`` = 1000)."""
    if unit.lower() in ("b", "byte", "bytes"):
        return 1
    if len(unit) == 1 or unit[1:].lower() == "ib":
        base = 1024
    elif len(unit) == 2 and unit[1].lower() == "b":
        base = 1000
    else:
        raise InvalidArgError(f"unknown suffix '{quote(unit)}'")
    power = _UNIT_POWERS.get(unit[0].lower())
    if power is None:
        raise InvalidArgError(f"unknown suffix '{quote(unit)}'")
    return int(base**power)


def scaled_kib(value: int, unit: str | None) -> int:
    """*value* in *unit* (KiB when None) → KiB, rounded up as libvirt does."""
    scale = 1024 if not unit else unit_scale(unit)
    if value and value > _MEMORY_LIMIT_BYTES // scale:
        raise VirtError(
            f"value too large: {value}{unit or ''}",
            code=ErrorCode.OVERFLOW,
            domain=ErrorDomain.DOMAIN,
        )
    kib = -(-value * scale // 1024)
    if kib >= -(-_MEMORY_LIMIT_BYTES // 1024):
        raise VirtError("size value too large", code=ErrorCode.OVERFLOW, domain=ErrorDomain.DOMAIN)
    return kib


#: more digits than any unsigned long long has (and than int() will convert)
_MAX_DIGITS = 20


def _memory_kib(node: XNode) -> int:
    text = (node.text() or "").strip()
    if not text.isdigit() or not text.isascii() or len(text.lstrip("0")) > _MAX_DIGITS:
        raise XMLError(
            f"Invalid value '{quote(text)}' for element or attribute './{node.tag}[1]'"
        )
    return scaled_kib(int(text), node.attr("unit"))


def _memory(node: XNode, dom: DomainDef) -> None:
    dom.memory_kib = _memory_kib(node)


def _current_memory(node: XNode, dom: DomainDef) -> None:
    dom.current_memory_kib = _memory_kib(node)


# --- identity ----------------------------------------------------------------------------


def _name(node: XNode, dom: DomainDef) -> None:
    dom.name = node.text() or ""


def normalize_uuid(text: str) -> str | None:
    """libvirt's UUID syntax (hex digits, dashes anywhere) → canonical form, or None."""
    digits = text.strip().replace("-", "").lower()
    if len(digits) != 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _uuid(node: XNode, dom: DomainDef) -> None:
    text = node.text()
    if text is None:
        return
    uuid = normalize_uuid(text)
    if uuid is None:
        raise XMLError("malformed uuid element")
    dom.uuid = uuid


def _title(node: XNode, dom: DomainDef) -> None:
    title = node.text()
    if title is not None and "\n" in title:
        raise XMLError("title can't contain newlines")
    dom.title = title


def _description(node: XNode, dom: DomainDef) -> None:
    dom.description = node.text()


def _vcpu(node: XNode, dom: DomainDef) -> None:
    placement = node.attr("placement")
    dom.vcpu_placement = None if placement is None else schema.VCPU_PLACEMENT.check(placement)
    dom.vcpus = node.int_text(_VCPU_LIMITS)


# --- os ----------------------------------------------------------------------------------


def _os(node: XNode, dom: DomainDef) -> None:
    os = OSDef()
    type_node = node.child("type")
    if type_node is None:
        raise XMLError("an os <type> must be specified")
    os.type = schema.OS_TYPE.check(type_node.text() or "")
    arch = type_node.attr("arch")
    os.arch = None if arch is None else schema.ARCH.check(arch)
    os.machine = type_node.attr("machine")
    for tag in ("kernel", "initrd", "cmdline"):
        child = node.child(tag)
        if child is not None:
            setattr(os, tag, child.text())
    boots = node.children("boot")
    if len(boots) > 4:
        raise XMLError("at most 4 <boot dev=.../> elements are allowed")
    os.boot_devs = [schema.BOOT_DEV.check(boot.require("dev")) for boot in boots]
    dom.os = os


# --- features ----------------------------------------------------------------------------


def _flag(name: str) -> Callable[[XNode, Features], None]:
    def handler(node: XNode, features: Features) -> None:
        setattr(features, name, True)

    return handler


def _vmport(node: XNode, features: Features) -> None:
    # libvirt reads a <vmport/> without state as "on"
    features.vmport = schema.ON_OFF.check(node.attr("state") or "on")


_FEATURES: dict[str, Callable[[XNode, Features], None]] = {
    "acpi": _flag("acpi"),
    "apic": _flag("apic"),
    "pae": _flag("pae"),
    "vmport": _vmport,
}


def _features(node: XNode, dom: DomainDef) -> None:
    features = Features()
    seen: set[str] = set()
    for child in node.all_children():
        handler = _FEATURES.get(child.tag)
        if handler is None:
            raise unsupported_element(child.tag, node.path)
        if child.tag in seen:
            raise XMLError(f"feature '{child.tag}' is specified more than once")
        seen.add(child.tag)
        handler(child, features)
    dom.features = features


# --- cpu ---------------------------------------------------------------------------------


def _cpu(node: XNode, dom: DomainDef) -> None:
    cpu = CPUDef(mode=schema.CPU_MODE.check(node.attr("mode") or "custom"))
    match, check = node.attr("match"), node.attr("check")
    cpu.match = None if match is None else schema.CPU_MATCH.check(match)
    cpu.check = None if check is None else schema.CPU_CHECK.check(check)
    migratable = node.attr("migratable")
    cpu.migratable = None if migratable is None else schema.ON_OFF.check(migratable)
    model = node.child("model")
    if model is not None:
        cpu.model = model.text()
        fallback = model.attr("fallback")
        cpu.model_fallback = None if fallback is None else schema.CPU_FALLBACK.check(fallback)
    topology = node.child("topology")
    if topology is not None:
        cpu.topology = _topology(topology)
    dom.cpu = cpu


def _topology(node: XNode) -> CPUTopology:
    def count(name: str) -> int:
        value = node.int_attr(name, POSITIVE)
        return 1 if value is None else value

    if count("clusters") != 1:
        raise ConfigUnsupportedError("CPU topology with more than one cluster per die")
    return CPUTopology(
        sockets=count("sockets"), dies=count("dies"), cores=count("cores"),
        threads=count("threads"),
    )


# --- clock -------------------------------------------------------------------------------


def _clock(node: XNode, dom: DomainDef) -> None:
    clock = ClockDef(offset=schema.CLOCK_OFFSET.check(node.attr("offset") or "utc"))
    clock.timers = [_timer(timer) for timer in node.children("timer")]
    dom.clock = clock


def _timer(node: XNode) -> TimerDef:
    def optional(name: str, choice: schema.Choice) -> str | None:
        value = node.attr(name)
        return None if value is None else choice.check(value)

    return TimerDef(
        name=schema.TIMER_NAME.check(node.require("name")),
        tickpolicy=optional("tickpolicy", schema.TIMER_TICKPOLICY),
        present=optional("present", schema.YES_NO),
        track=optional("track", schema.TIMER_TRACK),
    )


# --- lifecycle ---------------------------------------------------------------------------


def _lifecycle(choice: schema.Choice) -> TopHandler:
    field = choice.what.split()[0]

    def handler(node: XNode, dom: DomainDef) -> None:
        setattr(dom, field, choice.check((node.text() or "").strip()))

    return handler


def _devices(node: XNode, dom: DomainDef) -> None:
    parse_devices(node, dom.devices)


_TOP_LEVEL: dict[str, TopHandler] = {
    "name": _name,
    "uuid": _uuid,
    "title": _title,
    "description": _description,
    "memory": _memory,
    "currentMemory": _current_memory,
    "vcpu": _vcpu,
    "os": _os,
    "features": _features,
    "cpu": _cpu,
    "clock": _clock,
    "on_poweroff": _lifecycle(schema.ON_POWEROFF),
    "on_reboot": _lifecycle(schema.ON_REBOOT),
    "on_crash": _lifecycle(schema.ON_CRASH),
    "devices": _devices,
}
