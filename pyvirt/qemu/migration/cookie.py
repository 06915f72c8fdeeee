"""The migration cookie: what the two daemons tell each other between phases.

libvirt's QEMU driver format (qemu_migration_cookie.c), so a real libvirtd can be the peer::

    wire:  opaque<> = UTF-8 XML + one NUL byte (counted);  empty = no cookie

    <qemu-migration>
      <name>web1</name>                      required; checked by check_peer()
      <uuid>…</uuid>                         required; checked by check_peer()
      <hostname>hostA</hostname>             required; informational
      <hostuuid>…</hostuuid>                 required; must differ from the receiver's
      <feature name='lockstate'/>            mandatory features: the receiver must handle them
      <graphics type= port= listen= tlsPort=/>
      <lockstate driver=…><leases>…</leases></lockstate>
      <domain>…</domain>                     persistent definition, kept verbatim
      <nbd port=…><disk target= capacity=/></nbd>
      <statistics>…</statistics>             job data after Perform / Finish
      <cpu>…</cpu>                           the source's guest CPU, kept verbatim
      <capabilities><cap name= auto=/></capabilities>   always sent (libvirt 9.0 reads it
    </qemu-migration>                                     without a NULL check)

Parsing is bounded like the domain XML parser's (the same parser, :data:`COOKIE_LIMITS`):
no DTD and so no entities, at most :data:`COOKIE_MAX_BYTES`, nesting, element count and the
length of the cookie's own values capped while the tree is built.
Errors carry libvirt's words and code (VIR_ERR_INTERNAL_ERROR). Elements a cookie may carry
that pyvirt does not model (``network``, ``blockDirtyBitmaps``, ...) are ignored, as libvirt
ignores what it did not ask for; only mandatory ``<feature>``s must be understood.

Versioning: peers negotiate with mandatory features (libvirt's mechanism), never with a
version number; :attr:`MigrationCookie.VERSION` counts pyvirt's own format changes.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
import xml.parsers.expat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pyvirt.conf.xmlutil import MAX_DEPTH, MAX_ELEMENTS, XmlLimits, parse_xml_document, quote
from pyvirt.errors import ErrorCode, VirtError

if TYPE_CHECKING:
    from pyvirt.conf.domain import DomainDef

COOKIE_MAX_BYTES: Final = 4 * 1024 * 1024
#: longest attribute value or text of the cookie's own elements: a backing-file path
#: (PATH_MAX) or a lock manager's leases fit many times over
COOKIE_VALUE_MAX: Final = 64 * 1024
#: the domain XML parser's caps, one level deeper and a little bigger for the cookie's own
#: elements; the embedded <domain> and <cpu> are parsed again by the domain parser
COOKIE_LIMITS: Final = XmlLimits(
    max_bytes=COOKIE_MAX_BYTES, max_depth=MAX_DEPTH + 1, max_elements=MAX_ELEMENTS + 1000,
    max_value_chars=COOKIE_VALUE_MAX, embedded=frozenset({"domain", "cpu"}),
    what="migration cookie")

#: libvirt's cookie feature names (qemuMigrationCookieFlag), in libvirt's order
FEATURES: Final = ("graphics", "lockstate", "persistent", "network", "nbd", "statistics",
                   "memory-hotplug", "cpu-hotplug", "cpu", "allowReboot", "capabilities",
                   "block-dirty-bitmaps")  # fmt: skip
#: what pyvirt understands when a peer marks it mandatory (no hotplug, OVS or bitmaps)
SUPPORTED_FEATURES: Final = frozenset(
    {"graphics", "lockstate", "persistent", "nbd", "statistics", "cpu", "capabilities"})
#: libvirt's graphics type names
GRAPHICS_TYPES: Final = frozenset({"sdl", "vnc", "rdp", "desktop", "spice", "egl-headless",
                                   "dbus"})  # fmt: skip


class CookieError(VirtError):
    """A cookie libvirt would refuse (VIR_ERR_INTERNAL_ERROR), but a peer's fault."""

    code = ErrorCode.INTERNAL_ERROR

    def __init__(self, detail: str) -> None:
        super().__init__(f"internal error: {detail}")


# -- sections ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CookieGraphics:
    """Where SPICE/VNC clients reconnect; ``tls_port`` is required for spice (-1: none)."""

    type: str
    port: int
    listen: str
    tls_port: int | None = None
    tls_subject: str | None = None


@dataclass(frozen=True)
class CookieLockState:
    """Accepted and kept: pyvirt has no lock manager (libvirt's 'nop' sends no leases)."""

    driver: str
    leases: str | None = None


@dataclass(frozen=True)
class CookieNBDDisk:
    """libvirt's ``target`` and ``capacity``, plus pyvirt's own attributes (a real libvirtd
    ignores them): the image ``format``, its ``allocation`` (bytes the copy writes at most)
    and ``backing``/``backingFormat`` (the shared backing file for --copy-storage-inc), so
    the destination can pre-create a missing image."""

    target: str
    capacity: int
    format: str | None = None
    allocation: int | None = None
    backing: str | None = None
    backing_format: str | None = None


@dataclass(frozen=True)
class CookieNBD:
    port: int | None = None
    disks: tuple[CookieNBDDisk, ...] = ()


@dataclass(frozen=True)
class CookieCap:
    """A QEMU migration capability the sender supports; ``auto``: it turns it on itself."""

    name: str
    auto: bool = False


@dataclass(frozen=True)
class CookieStatistics:
    """Completed-job data; field names are libvirt's element names, None = absent."""

    started: int | None = None
    stopped: int | None = None
    sent: int | None = None
    delta: int | None = None
    time_elapsed: int | None = None
    time_remaining: int | None = None
    downtime: int | None = None
    setup_time: int | None = None
    memory_total: int | None = None
    memory_processed: int | None = None
    memory_remaining: int | None = None
    memory_bps: int | None = None
    memory_constant: int | None = None
    memory_normal: int | None = None
    memory_normal_bytes: int | None = None
    memory_dirty_rate: int | None = None
    memory_iteration: int | None = None
    memory_postcopy_requests: int | None = None
    memory_page_size: int | None = None
    disk_total: int | None = None
    disk_processed: int | None = None
    disk_remaining: int | None = None
    disk_bps: int | None = None
    compression_cache: int | None = None
    compression_bytes: int | None = None
    compression_pages: int | None = None
    compression_cache_misses: int | None = None
    compression_overflow: int | None = None
    auto_converge_throttle: int | None = None


#: statistics elements in libvirt's output order; only ``delta`` and the throttle are signed
STATISTICS_FIELDS: Final = tuple(f.name for f in dataclasses.fields(CookieStatistics))
_SIGNED_STATISTICS: Final = frozenset({"delta", "auto_converge_throttle"})


# -- the cookie -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MigrationCookie:
    """One cookie. ``features`` are normalised: libvirt's order, plus the ones sections imply
    (a persistent definition or lock state is always mandatory, as libvirt marks them)."""

    VERSION: ClassVar[int] = 1

    name: str
    uuid: str
    hostname: str
    hostuuid: str
    features: tuple[str, ...] = ()
    graphics: CookieGraphics | None = None
    lockstate: CookieLockState | None = None
    persistent_xml: str | None = None
    nbd: CookieNBD | None = None
    statistics: CookieStatistics | None = None
    cpu_xml: str | None = None
    capabilities: tuple[CookieCap, ...] = ()

    def __post_init__(self) -> None:
        implied = {"persistent"} if self.persistent_xml is not None else set()
        if self.lockstate is not None:
            implied.add("lockstate")
        wanted = set(self.features) | implied
        unknown = wanted - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown cookie features: {sorted(unknown)}")
        object.__setattr__(self, "features", tuple(f for f in FEATURES if f in wanted))
        for tag, text in (("domain", self.persistent_xml), ("cpu", self.cpu_xml)):
            if text is not None:
                _check_verbatim(tag, text)

    @classmethod
    def for_domain(cls, dom: DomainDef, *, hostname: str, hostuuid: str) -> MigrationCookie:
        """The bare cookie for ``dom``; add sections with :func:`dataclasses.replace`."""
        if dom.uuid is None:
            raise ValueError(f"domain '{dom.name}' has no uuid")
        return cls(name=dom.name, uuid=dom.uuid, hostname=hostname, hostuuid=hostuuid)

    # -- wire form ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return self.to_xml().encode() + b"\0"

    @classmethod
    def from_bytes(cls, data: bytes,
                   supported: frozenset[str] = SUPPORTED_FEATURES) -> MigrationCookie | None:
        """The cookie in ``data``; None for an empty opaque (no cookie)."""
        if not data:
            return None
        if len(data) > COOKIE_MAX_BYTES:
            raise CookieError(f"migration cookie is larger than {COOKIE_MAX_BYTES} bytes")
        if data[-1] != 0:
            raise CookieError("Migration cookie was not NULL terminated")
        text = data[:-1].split(b"\0", 1)[0]  # libvirt reads a C string
        try:
            return cls.from_xml(text.decode(), supported)
        except UnicodeDecodeError as exc:
            raise CookieError(f"migration cookie is not UTF-8: {exc}") from None

    # -- XML --------------------------------------------------------------------------------
    def to_xml(self) -> str:
        """libvirt's layout: two-space indent, single-quoted attributes, trailing newline."""
        return "".join(self._lines())

    def _lines(self) -> Iterator[str]:
        yield "<qemu-migration>\n"
        for tag in ("name", "uuid", "hostname", "hostuuid"):
            yield f"  <{tag}>{escape(getattr(self, tag))}</{tag}>\n"
        for feature in self.features:
            yield f"  <feature name={_attr(feature)}/>\n"
        if self.graphics is not None:
            yield _graphics_xml(self.graphics)
        if self.lockstate is not None:
            yield _lockstate_xml(self.lockstate)
        if self.persistent_xml is not None:
            yield f"  {self.persistent_xml}\n"
        if self.nbd is not None:
            yield _nbd_xml(self.nbd)
        if self.statistics is not None:
            yield _statistics_xml(self.statistics)
        if self.cpu_xml is not None:
            yield f"  {self.cpu_xml}\n"
        yield _capabilities_xml(self.capabilities)
        yield "</qemu-migration>\n"

    @classmethod
    def from_xml(cls, text: str,
                 supported: frozenset[str] = SUPPORTED_FEATURES) -> MigrationCookie:
        """Parse and check a cookie; ``supported``: the mandatory features this phase handles."""
        root = _parse(text)
        spans = _verbatim_spans(text)
        if len(spans.get("domain", [])) > 1:
            raise CookieError("Too many domain elements in migration cookie")
        return cls(
            name=_required(root, "name"),
            uuid=_required(root, "uuid"),
            hostname=_required(root, "hostname"),
            hostuuid=_host_uuid(root),
            features=_features(root, supported),
            graphics=_graphics(root.find("graphics")),
            lockstate=_lockstate(root.find("lockstate")),
            persistent_xml=next(iter(spans.get("domain", [])), None),
            nbd=_nbd(root.find("nbd")),
            statistics=_statistics(root.find("statistics")),
            cpu_xml=next(iter(spans.get("cpu", [])), None),
            capabilities=_capabilities(root.find("capabilities")),
        )


def check_peer(cookie: MigrationCookie, *, expected_name: str | None,
               expected_uuid: str | None, local_host_uuid: str,
               renamed_to: str | None = None) -> None:
    """The checks libvirt makes on an incoming cookie (qemuMigrationCookieXMLParse).

    ``expected_name``/``expected_uuid``: the domain the caller works on; None where the
    caller cannot know it (then there is nothing to compare, and nothing is pretended).
    ``renamed_to``: a name accepted besides ``expected_name`` (the source reading a pyvirt
    destination's Prepare cookie, which names the domain by its destination_name where
    libvirt's keeps the source's name).
    """
    if expected_name is not None and cookie.name not in (expected_name, renamed_to):
        raise CookieError(
            f"Incoming cookie data had unexpected name {quote(cookie.name)} vs "
            f"{quote(expected_name)}")
    if expected_uuid is not None \
            and _canonical_uuid(cookie.uuid) != _canonical_uuid(expected_uuid):
        raise CookieError(
            f"Incoming cookie data had unexpected UUID {quote(cookie.uuid)} vs "
            f"{quote(expected_uuid)}")
    if _canonical_uuid(cookie.hostuuid) == _canonical_uuid(local_host_uuid):
        raise CookieError(f"Attempt to migrate guest to the same host {cookie.hostuuid}")


def _canonical_uuid(text: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        return text


# -- formatting helpers -----------------------------------------------------------------------
def _attr(value: str | int) -> str:
    return "'" + escape(str(value), {"'": "&apos;", '"': "&quot;"}) + "'"


def _graphics_xml(g: CookieGraphics) -> str:
    attrs = f"type={_attr(g.type)} port={_attr(g.port)} listen={_attr(g.listen)}"
    if g.tls_port is not None:
        attrs += f" tlsPort={_attr(g.tls_port)}"
    if g.tls_subject is None:
        return f"  <graphics {attrs}/>\n"
    return (f"  <graphics {attrs}>\n    <cert info='subject' value={_attr(g.tls_subject)}/>\n"
            "  </graphics>\n")


def _lockstate_xml(lock: CookieLockState) -> str:
    leases = f"    <leases>{escape(lock.leases)}</leases>\n" if lock.leases else ""
    return f"  <lockstate driver={_attr(lock.driver)}>\n{leases}  </lockstate>\n"


def _nbd_xml(nbd: CookieNBD) -> str:
    port = f" port={_attr(nbd.port)}" if nbd.port is not None else ""
    if not nbd.disks:
        return f"  <nbd{port}/>\n"
    disks = "".join(f"    <disk{_nbd_disk_attrs(d)}/>\n" for d in nbd.disks)
    return f"  <nbd{port}>\n{disks}  </nbd>\n"


#: CookieNBDDisk attribute → XML attribute, in output order
_NBD_DISK_ATTRS: Final = (("target", "target"), ("capacity", "capacity"), ("format", "format"),
                          ("allocation", "allocation"), ("backing", "backing"),
                          ("backing_format", "backingFormat"))  # fmt: skip


def _nbd_disk_attrs(disk: CookieNBDDisk) -> str:
    return "".join(f" {xml_name}={_attr(value)}" for name, xml_name in _NBD_DISK_ATTRS
                   if (value := getattr(disk, name)) is not None)


def _statistics_xml(stats: CookieStatistics) -> str:
    lines = [f"    <{name}>{value}</{name}>\n" for name in STATISTICS_FIELDS
             if (value := getattr(stats, name)) is not None]  # fmt: skip
    return "  <statistics>\n" + "".join(lines) + "  </statistics>\n"


def _capabilities_xml(caps: tuple[CookieCap, ...]) -> str:
    lines = [f"    <cap name={_attr(c.name)} auto={_attr('yes' if c.auto else 'no')}/>\n"
             for c in caps]  # fmt: skip
    return "  <capabilities>\n" + "".join(lines) + "  </capabilities>\n"


# -- parsing helpers ----------------------------------------------------------------------------
def _parse(text: str) -> Element:
    root = parse_xml_document(text, None, COOKIE_LIMITS, _malformed)
    if root.tag != "qemu-migration":
        raise CookieError(f"unexpected root element '{quote(root.tag)}' in migration cookie")
    return root


def _malformed(detail: str) -> CookieError:
    return CookieError(f"malformed migration cookie: {detail}")


def _required(root: Element, tag: str) -> str:
    node = root.find(tag)
    if node is None or not node.text:
        raise CookieError(f"missing {tag} element in migration data")
    return node.text


def _host_uuid(root: Element) -> str:
    text = _required(root, "hostuuid")
    try:
        uuidlib.UUID(text)
    except ValueError:
        raise CookieError("malformed hostuuid element in migration data") from None
    return text


def _features(root: Element, supported: frozenset[str]) -> tuple[str, ...]:
    names: list[str] = []
    for node in root.findall("feature"):
        name = node.get("name")
        if name is None:
            raise CookieError("missing feature name")
        if name not in FEATURES:
            raise CookieError(f"Unknown migration cookie feature {quote(name)}")
        if name not in supported:
            raise CookieError(f"Unsupported migration cookie feature {name}")
        names.append(name)
    return tuple(names)


def _int(text: str | None, signed: bool = True) -> int | None:
    """C-like strict integer: optional sign (when signed) and decimal digits only."""
    if text is None:
        return None
    body = text[1:] if signed and text[:1] in "+-" and len(text) > 1 else text
    return int(text) if body.isdigit() and body.isascii() else None


def _graphics(node: Element | None) -> CookieGraphics | None:
    if node is None:
        return None
    kind = node.get("type")
    if kind is None:
        raise CookieError("missing type attribute in migration data")
    if kind not in GRAPHICS_TYPES:
        raise CookieError(f"unknown graphics type {quote(kind)}")
    port = _int(node.get("port"))
    if port is None:
        raise CookieError("missing port attribute in migration data")
    tls_port = _int(node.get("tlsPort"))
    if kind == "spice" and tls_port is None:
        raise CookieError("missing tlsPort attribute in migration data")
    listen = node.get("listen")
    if listen is None:
        raise CookieError("missing listen attribute in migration data")
    cert = node.find("cert[@info='subject']")
    subject = cert.get("value") if cert is not None else None
    return CookieGraphics(kind, port, listen, tls_port, subject)


def _lockstate(node: Element | None) -> CookieLockState | None:
    if node is None:
        return None
    driver = node.get("driver")
    if driver is None:
        raise CookieError("Missing lock driver name in migration cookie")
    leases = node.find("leases")
    return CookieLockState(driver, (leases.text or None) if leases is not None else None)


def _nbd(node: Element | None) -> CookieNBD | None:
    if node is None:
        return None
    raw_port = node.get("port")
    port = _int(raw_port)
    if raw_port is not None and port is None:
        raise CookieError(f"Malformed nbd port '{quote(raw_port)}'")
    disks: list[CookieNBDDisk] = []
    for disk in node.findall("disk"):
        target = disk.get("target")
        if not target:
            raise CookieError("Malformed disk target")
        capacity = _int(disk.get("capacity"), signed=False)
        if capacity is None:
            raise CookieError(
                f"Malformed disk capacity: '{quote(disk.get('capacity') or '<null>')}'")
        raw_allocation = disk.get("allocation")
        allocation = _int(raw_allocation, signed=False)
        if raw_allocation is not None and allocation is None:
            raise CookieError(f"Malformed disk allocation: '{quote(raw_allocation)}'")
        disks.append(CookieNBDDisk(target, capacity, disk.get("format"), allocation,
                                   disk.get("backing"), disk.get("backingFormat")))
    return CookieNBD(port, tuple(disks))


def _statistics(node: Element | None) -> CookieStatistics | None:
    if node is None:
        return None
    values: dict[str, int] = {}
    for name in STATISTICS_FIELDS:
        child = node.find(name)
        if child is None:
            continue
        value = _int(child.text, signed=name in _SIGNED_STATISTICS)
        if value is None:
            raise CookieError(f"malformed statistics element '{name}' in migration data")
        values[name] = value
    return CookieStatistics(**values)


def _capabilities(node: Element | None) -> tuple[CookieCap, ...]:
    if node is None:
        return ()
    caps: list[CookieCap] = []
    for cap in node.findall("cap"):
        name = cap.get("name")
        if name is None:
            raise CookieError("missing migration capability name")
        caps.append(CookieCap(name, cap.get("auto") == "yes"))
    return tuple(caps)


# -- verbatim elements (<domain>, <cpu>) ------------------------------------------------------
_VERBATIM: Final = frozenset({"domain", "cpu"})


def _verbatim_spans(text: str) -> Mapping[str, list[str]]:
    """The exact text of each top-level <domain>/<cpu>, namespaces and quoting untouched.

    Runs after the defused parse accepted ``text`` (no DTD, no entities), so plain expat is
    safe here; it only reports byte offsets.
    """
    data = text.encode()
    parser = xml.parsers.expat.ParserCreate()
    spans: dict[str, list[str]] = {}
    state: dict[str, int] = {"depth": 0, "start": -1, "last_start": -1}

    def on_start(name: str, _attrs: object) -> None:
        state["depth"] += 1
        if state["depth"] == 2 and name in _VERBATIM:
            state["start"] = parser.CurrentByteIndex
        state["last_start"] = parser.CurrentByteIndex

    def on_end(name: str) -> None:
        if state["depth"] == 2 and name in _VERBATIM:
            spans.setdefault(name, []).append(_span(data, state, parser.CurrentByteIndex))
        state["depth"] -= 1
        state["last_start"] = -1

    def on_other(*_args: object) -> None:
        state["last_start"] = -1

    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    parser.CharacterDataHandler = on_other
    parser.CommentHandler = on_other
    parser.ProcessingInstructionHandler = on_other
    parser.Parse(data, True)
    return spans


def _span(data: bytes, state: Mapping[str, int], end: int) -> str:
    """expat puts a self-closing tag's end right after it, a closing tag's at its '<'."""
    start = state["start"]
    self_closing = state["last_start"] == start and data[end - 2:end] == b"/>"
    stop = end if self_closing else data.index(b">", end) + 1
    return data[start:stop].decode()


def _check_verbatim(tag: str, text: str) -> None:
    """A verbatim section must be exactly one well-formed <tag> element, nothing around it."""
    if not text.startswith(f"<{tag}") or text != text.strip():
        raise ValueError(f"a <{tag}> section must be one element, without a prolog or padding")
    try:
        node: Element = fromstring(text, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise ValueError(f"<{tag}> section is not well-formed XML: {exc}") from None
    if node.tag.rpartition("}")[2] != tag:
        raise ValueError(f"expected a <{tag}> element, got <{node.tag}>")
