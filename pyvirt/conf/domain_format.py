""":class:`~pyvirt.conf.domain.DomainDef` → libvirt-style domain XML.

The output imitates ``virsh dumpxml``: two-space indentation, single-quoted attributes,
libvirt's element and attribute order, and the values libvirt always prints even when
the document left them out (``placement='static'``, ``<clock offset='utc'/>``, the
lifecycle actions). Everything else is printed exactly as the model holds it, so
``format(parse(format(d))) == format(d)``.

Three views of one definition:

* inactive (default): the persistent definition; no runtime data;
* ``live=True``: plus the domain id, device aliases, pty paths, tap names and the
  graphics ports allocated at start;
* ``migratable=True``: what a migration destination needs: the definition without any
  runtime-only data, whatever ``live`` says (the destination allocates its own).

``secure=False`` hides graphics passwords, as libvirt does without
``VIR_DOMAIN_XML_SECURE``.

Each element kind has its own small formatter returning an :class:`_El` tree; the tree
is serialised in one place, which is also the only place that escapes text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pyvirt.conf import domain_schema as schema
from pyvirt.conf.domain import (
    CharDevDef,
    ControllerDef,
    CPUDef,
    DiskDef,
    DomainDef,
    DriveAddress,
    GraphicsDef,
    InputDef,
    InterfaceDef,
    MemballoonDef,
    PCIAddress,
    USBAddress,
    VideoDef,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_util import canonical_controllers, primary_video_first

AttrValue = str | int | None
Attrs = Sequence[tuple[str, AttrValue]]


@dataclass
class _El:
    tag: str
    attrs: list[tuple[str, str]]
    children: list[_El] = field(default_factory=list)
    text: str | None = None


def _el(tag: str, attrs: Attrs = (), *children: _El | None, text: str | None = None) -> _El:
    """An element; attributes and children that are None are left out."""
    return _El(
        tag,
        [(name, str(value)) for name, value in attrs if value is not None],
        [child for child in children if child is not None],
        text,
    )


@dataclass(frozen=True)
class _Opts:
    live: bool
    secure: bool


def format_domain_xml(
    dom: DomainDef, *, live: bool = False, secure: bool = False, migratable: bool = False
) -> str:
    opts = _Opts(live=live and not migratable, secure=secure)
    lines: list[str] = []
    _serialize(_domain(dom, opts), 0, lines)
    return "\n".join(lines) + "\n"


# --- serialisation -----------------------------------------------------------------------

#: attribute values also escape whitespace that XML attribute normalisation would eat
_ATTR_ESCAPES = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;",
    "\n": "&#10;", "\r": "&#13;", "\t": "&#9;",
})
#: text keeps newlines and tabs, but a bare CR would be normalised away by the parser
_TEXT_ESCAPES = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;", "\r": "&#13;",
})


def _serialize(elem: _El, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    attrs = "".join(f" {name}='{value.translate(_ATTR_ESCAPES)}'" for name, value in elem.attrs)
    if elem.text is not None:
        lines.append(f"{indent}<{elem.tag}{attrs}>{elem.text.translate(_TEXT_ESCAPES)}"
                     f"</{elem.tag}>")
    elif not elem.children:
        lines.append(f"{indent}<{elem.tag}{attrs}/>")
    else:
        lines.append(f"{indent}<{elem.tag}{attrs}>")
        for child in elem.children:
            _serialize(child, depth + 1, lines)
        lines.append(f"{indent}</{elem.tag}>")


# --- domain ------------------------------------------------------------------------------


def _text(tag: str, value: str | int | None, attrs: Attrs = ()) -> _El | None:
    # libvirt reads an empty text element as absent, so an empty value is not printed
    return None if value is None or value == "" else _el(tag, attrs, text=str(value))


def _domain(dom: DomainDef, o: _Opts) -> _El:
    dom_id = dom.dom_id if o.live and dom.dom_id >= 0 else None
    current = dom.memory_kib if dom.current_memory_kib is None else dom.current_memory_kib
    return _el(
        "domain", [("type", dom.type), ("id", dom_id)],
        _el("name", (), text=dom.name),
        _text("uuid", dom.uuid),
        _text("title", dom.title),
        _text("description", dom.description),
        _text("memory", dom.memory_kib, [("unit", "KiB")]),
        _text("currentMemory", current, [("unit", "KiB")]),
        _text("vcpu", dom.vcpus, [("placement", dom.vcpu_placement or "static")]),
        _os(dom),
        _features(dom),
        _cpu(dom.cpu),
        _clock(dom),
        *[_text(event, getattr(dom, event) or default)
          for event, default in schema.LIFECYCLE_DEFAULTS.items()],
        _devices(dom, o),
    )


def _os(dom: DomainDef) -> _El:
    os = dom.os
    return _el(
        "os", (),
        _text("type", os.type, [("arch", os.arch), ("machine", os.machine)]),
        _text("kernel", os.kernel),
        _text("initrd", os.initrd),
        _text("cmdline", os.cmdline),
        *[_el("boot", [("dev", dev)]) for dev in os.boot_devs],
    )


def _features(dom: DomainDef) -> _El | None:
    f = dom.features
    if f is None:
        return None
    children = [_el(name) for name in ("acpi", "apic", "pae") if getattr(f, name)]
    if f.vmport is not None:
        children.append(_el("vmport", [("state", f.vmport)]))
    return _el("features", (), *children) if children else None


def _cpu(cpu: CPUDef | None) -> _El | None:
    if cpu is None:
        return None
    # libvirt leaves mode/match out of a model-less custom CPU (topology only)
    model = cpu.model or None
    show_mode = cpu.mode != "custom" or model is not None
    topo = cpu.topology
    return _el(
        "cpu",
        [("mode", cpu.mode if show_mode else None),
         ("match", cpu.match if model is not None else None),
         ("check", cpu.check), ("migratable", cpu.migratable)],
        _text("model", cpu.model, [("fallback", cpu.model_fallback)]),
        None if topo is None else _el("topology", [
            ("sockets", topo.sockets), ("dies", topo.dies), ("cores", topo.cores),
            ("threads", topo.threads)]),
    )


def _clock(dom: DomainDef) -> _El:
    if dom.clock is None:
        return _el("clock", [("offset", "utc")])
    return _el(
        "clock", [("offset", dom.clock.offset)],
        *[_el("timer", [("name", t.name), ("present", t.present),
                        ("tickpolicy", t.tickpolicy), ("track", t.track)])
          for t in dom.clock.timers],
    )


# --- device info: boot order, alias, address -----------------------------------------------

AnyAddress = PCIAddress | DriveAddress | VirtioSerialAddress | USBAddress


def _address(address: AnyAddress | None) -> _El | None:
    if isinstance(address, PCIAddress):
        multi = address.multifunction
        return _el("address", [
            ("type", "pci"), ("domain", f"0x{address.domain:04x}"),
            ("bus", f"0x{address.bus:02x}"), ("slot", f"0x{address.slot:02x}"),
            ("function", f"0x{address.function:x}"),
            ("multifunction", None if multi is None else ("on" if multi else "off"))])
    if isinstance(address, DriveAddress):
        return _el("address", [
            ("type", "drive"), ("controller", address.controller), ("bus", address.bus),
            ("target", address.target), ("unit", address.unit)])
    if isinstance(address, VirtioSerialAddress):
        return _el("address", [
            ("type", "virtio-serial"), ("controller", address.controller),
            ("bus", address.bus), ("port", address.port)])
    if isinstance(address, USBAddress):
        return _el("address", [("type", "usb"), ("bus", address.bus), ("port", address.port)])
    return None


def _info(o: _Opts, alias: str | None, address: AnyAddress | None,
          boot: int | None = None) -> list[_El | None]:
    # user aliases ("ua-" prefix) are configuration; the rest is assigned at start
    show_alias = alias is not None and (o.live or alias.startswith("ua-"))
    return [
        None if boot is None else _el("boot", [("order", boot)]),
        _el("alias", [("name", alias)]) if show_alias else None,
        _address(address),
    ]


# --- devices -----------------------------------------------------------------------------


def _disk(d: DiskDef, o: _Opts) -> _El:
    source_attr = "file" if d.type == "file" else "dev"
    return _el(
        "disk", [("type", d.type), ("device", d.device)],
        _el("driver", [("name", d.driver_name), ("type", d.driver_type), ("cache", d.cache),
                       ("io", d.io)]),
        None if d.source is None else _el("source", [(source_attr, d.source)]),
        _el("target", [("dev", d.target_dev), ("bus", d.target_bus)]),
        _el("readonly") if d.readonly else None,
        _el("shareable") if d.shareable else None,
        _text("serial", d.serial),
        *_info(o, d.alias, d.address, d.boot_order),
    )


def _controller(c: ControllerDef, o: _Opts) -> _El:
    return _el("controller", [("type", c.type), ("index", c.index), ("model", c.model)],
               *_info(o, c.alias, c.address))


def _interface(n: InterfaceDef, o: _Opts) -> _El:
    # libvirt drops generated tap names (vnetN) from the persistent definition
    dev = n.target_dev
    show_target = dev is not None and (o.live or not dev.startswith(schema.GENERATED_TAP_PREFIX))
    return _el(
        "interface", [("type", n.type)],
        None if n.mac is None else _el("mac", [("address", n.mac)]),
        None if n.source_bridge is None else _el("source", [("bridge", n.source_bridge)]),
        _el("target", [("dev", dev)]) if show_target else None,
        None if n.model is None else _el("model", [("type", n.model)]),
        *_info(o, n.alias, n.address, n.boot_order),
    )


def _chr_source(c: CharDevDef, o: _Opts) -> _El | None:
    if c.type == "pty":
        # the pty is allocated at start: its path is runtime data
        return _el("source", [("path", c.source_path)]) if o.live and c.source_path else None
    if c.type == "unix":
        return _el("source", [("mode", c.source_mode), ("path", c.source_path)])
    return _el("source", [("path", c.source_path), ("append", c.source_append)])


def _chr_target(c: CharDevDef) -> _El | None:
    if c.kind == "channel":
        return _el("target", [("type", c.target_type), ("name", c.target_name)])
    if c.target_type is None and c.target_port is None and c.target_model is None:
        return None
    model = None if c.target_model is None else _el("model", [("name", c.target_model)])
    return _el("target", [("type", c.target_type), ("port", c.target_port)], model)


def _chardev(c: CharDevDef, o: _Opts, backend: CharDevDef | None = None) -> _El:
    """*backend*, when given, supplies type/source/log (a console mirroring serial 0)."""
    src = backend or c
    tty = src.source_path if c.kind == "console" and src.type == "pty" and o.live else None
    return _el(
        c.kind, [("type", src.type), ("tty", tty)],
        _chr_source(src, o),
        None if src.log_file is None else _el("log", [("file", src.log_file),
                                                      ("append", src.log_append)]),
        _chr_target(c),
        *_info(o, c.alias, c.address),
    )


def _consoles(dom: DomainDef, o: _Opts) -> list[_El]:
    serials = dom.devices.serials
    out = []
    for position, console in enumerate(dom.devices.consoles):
        # libvirt's console 0 of target type serial *is* serial 0: print serial 0's backend
        mirrors = position == 0 and console.target_type == "serial" and serials
        out.append(_chardev(console, o, serials[0] if mirrors else None))
    return out


def _input(i: InputDef, o: _Opts) -> _El:
    return _el("input", [("type", i.type), ("bus", i.bus)], *_info(o, i.alias, i.address))


def _port(port: int | None, autoport: bool | None, o: _Opts) -> int | None:
    # an allocated autoport is runtime data: the definition says -1 ("pick one")
    if port is None or not autoport or o.live:
        return port
    return -1


def _graphics(g: GraphicsDef, o: _Opts) -> _El:
    autoport = None if g.autoport is None else ("yes" if g.autoport else "no")
    return _el(
        "graphics",
        [("type", g.type), ("port", _port(g.port, g.autoport, o)),
         ("tlsPort", _port(g.tls_port, g.autoport, o) if g.type == "spice" else None),
         ("autoport", autoport), ("listen", g.listen),
         ("passwd", g.passwd if o.secure else None)],
        _el("listen", [("type", "address"), ("address", g.listen)]),
    )


def _video(v: VideoDef, o: _Opts) -> _El:
    primary = None if v.primary is None else ("yes" if v.primary else "no")
    model = _el("model", [
        ("type", v.model or None), ("ram", v.ram), ("vram", v.vram), ("vgamem", v.vgamem),
        ("heads", v.heads), ("primary", primary)])
    return _el("video", (), model if model.attrs else None, *_info(o, v.alias, v.address))


def _memballoon(m: MemballoonDef, o: _Opts) -> _El:
    return _el("memballoon", [("model", m.model)], *_info(o, m.alias, m.address))


def _devices(dom: DomainDef, o: _Opts) -> _El:
    d = dom.devices
    return _el(
        "devices", (),
        _text("emulator", d.emulator),
        *[_disk(x, o) for x in d.disks],
        *[_controller(x, o) for x in canonical_controllers(d.controllers)],
        *[_interface(x, o) for x in d.interfaces],
        *[_chardev(x, o) for x in d.serials],
        *_consoles(dom, o),
        *[_chardev(x, o) for x in d.channels],
        *[_input(x, o) for x in d.inputs],
        *[_graphics(x, o) for x in d.graphics],
        *[_video(x, o) for x in primary_video_first(d.videos)],
        None if d.memballoon is None else _memballoon(d.memballoon, o),
    )
