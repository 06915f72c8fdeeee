"""Safe parsing of untrusted XML, and a strict element reader.

Every document pyvirt parses may come from a remote client, so parsing refuses what a
hostile sender could use against us, *before or while* the tree is built:

* a DTD of any kind: without one there are no entity declarations, so no "billion
  laughs" expansion and no external entities (XXE file reads, network fetches);
* documents over :data:`MAX_XML_BYTES` (libvirt's ``REMOTE_STRING_MAX``, the largest
  string its wire protocol carries anyway);
* nesting deeper than :data:`MAX_DEPTH` or more than :data:`MAX_ELEMENTS` elements, so a
  small document cannot make us allocate a huge tree;
* optionally (:class:`XmlLimits`), attribute values and runs of text longer than a cap.

The migration cookie uses the same parser with its own :class:`XmlLimits`.

:class:`XNode` is the other half of "strict": parsers ask it for attributes and children
by name, and it remembers what was asked for. :meth:`XNode.finish` then refuses whatever
nobody read, so an element or attribute pyvirt does not implement is an error instead of
being silently dropped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from pyvirt.errors import ConfigUnsupportedError, VirtError, XMLError

#: libvirt's REMOTE_STRING_MAX: no XML document can be larger on the wire
MAX_XML_BYTES = 4 * 1024 * 1024
#: a domain document is about 6 levels deep; anything near this is an attack
MAX_DEPTH = 64
#: a big real domain has a few thousand elements
MAX_ELEMENTS = 100_000
#: longest numeral parse_int looks at (a 64-bit value in octal, with sign, is 24)
_MAX_NUMBER_CHARS = 32
#: longest input excerpt quoted back in an error message
_QUOTE_MAX = 80


def quote(value: str) -> str:
    """Make untrusted text safe to embed in a message: short, no control characters."""
    short = value if len(value) <= _QUOTE_MAX else value[:_QUOTE_MAX] + "..."
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in short)


@dataclass(frozen=True)
class XmlLimits:
    """What one untrusted document may cost: checked before or while the tree is built."""

    #: the whole document, in bytes (UTF-8)
    max_bytes: int = MAX_XML_BYTES
    max_depth: int = MAX_DEPTH
    max_elements: int = MAX_ELEMENTS
    #: one attribute value or one run of text, in characters (None: only ``max_bytes``)
    max_value_chars: int | None = None
    #: children of the root that embed another document (checked again by that document's
    #: own parser), where ``max_value_chars`` does not apply
    embedded: frozenset[str] = frozenset()
    #: how messages name the document
    what: str = "XML document"


#: the domain XML's limits (a ``<description>`` may use the whole document)
DOMAIN_LIMITS = XmlLimits()


class _BoundedBuilder(ET.TreeBuilder):
    """A TreeBuilder that aborts the parse as soon as the tree gets too deep or big."""

    def __init__(self, limits: XmlLimits, error: Callable[[str], VirtError]) -> None:
        super().__init__()
        self._limits = limits
        self._error = error
        self._depth = 0
        self._count = 0
        #: depth of the embedded document being read (0: none)
        self._embedded_at = 0
        #: characters of the current run of text
        self._run = 0

    def start(self, tag: Any, attrs: Any) -> ET.Element:
        limits = self._limits
        self._depth += 1
        self._count += 1
        self._run = 0
        if self._depth > limits.max_depth:
            raise self._error(
                f"{limits.what} is nested deeper than {limits.max_depth} elements")
        if self._count > limits.max_elements:
            raise self._error(f"{limits.what} has more than {limits.max_elements} elements")
        if self._depth == 2 and tag in limits.embedded:
            self._embedded_at = 2
        if self._capped():
            for name, value in attrs.items():
                self._check_value(len(value), f"an attribute '{quote(name)}'")
        return super().start(tag, attrs)

    def data(self, data: str) -> None:
        self._run += len(data)
        if self._capped():
            self._check_value(self._run, "a text")
        super().data(data)

    def end(self, tag: Any) -> ET.Element:
        if self._depth == self._embedded_at:
            self._embedded_at = 0
        self._depth -= 1
        self._run = 0
        return super().end(tag)

    def _capped(self) -> bool:
        return self._limits.max_value_chars is not None and not self._embedded_at

    def _check_value(self, chars: int, what: str) -> None:
        cap = self._limits.max_value_chars
        if cap is not None and chars > cap:
            raise self._error(f"{self._limits.what} has {what} longer than {cap} characters")


def _byte_size(text: str | bytes, cap: int) -> int:
    if isinstance(text, bytes):
        return len(text)
    # a str can be far bigger than its length once encoded; count before encoding all
    if len(text) * 4 <= cap:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def parse_xml_document(text: str | bytes, root_tag: str | None,
                       limits: XmlLimits = DOMAIN_LIMITS,
                       error: Callable[[str], VirtError] = XMLError) -> ET.Element:
    """Parse untrusted *text* whose root element must be *root_tag* (None: any).

    Every refusal is ``error(detail)``: XMLError for domain XML, the caller's own class
    for other documents (a migration cookie is libvirt's internal error).
    """
    what = limits.what
    if not isinstance(text, str | bytes):
        raise error(f"{what} must be text")
    if _byte_size(text, limits.max_bytes) > limits.max_bytes:
        raise error(f"{what} is larger than {limits.max_bytes} bytes")
    if not text.strip():
        raise error(f"failed to parse {what}: document is empty")
    parser = DefusedXMLParser(
        target=_BoundedBuilder(limits, error), forbid_dtd=True, forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(text)
        root: ET.Element = parser.close()
    except DefusedXmlException as exc:
        raise error(
            f"failed to parse {what}: DTDs and entity declarations are not allowed "
            f"({quote(str(exc))})"
        ) from None
    except ET.ParseError as exc:
        raise error(f"failed to parse {what}: {exc}") from None
    except (UnicodeError, ValueError) as exc:
        raise error(f"failed to parse {what}: {quote(str(exc))}") from None
    if root_tag is not None and root.tag != root_tag:
        raise error(f"expecting root element of '{root_tag}', not '{_display(root.tag)}'")
    return root


def _display(tag: str) -> str:
    """ElementTree's ``{namespace}name`` → ``namespace:name``, quoted for messages."""
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return quote(f"{namespace}:{local}")
    return quote(tag)


def _element_name(tag: str) -> str:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return f"element '{quote(local)}' in namespace '{quote(namespace)}'"
    return f"element '{quote(tag)}'"


def unsupported_element(tag: str, parent: str) -> ConfigUnsupportedError:
    return ConfigUnsupportedError(f"{_element_name(tag)} is not supported (in <{parent}>)")


# --- integers ----------------------------------------------------------------------------


def parse_int(value: str, *, c_base: bool = False) -> int:
    """Parse a decimal integer (or, with *c_base*, C ``strtol`` base-0 syntax).

    libvirt reads PCI/drive address attributes with base 0, so ``0x1f`` is hex and a
    leading ``0`` means octal; everything else is decimal. Raises ValueError.
    """
    s = value.strip()
    if len(s) > _MAX_NUMBER_CHARS:
        raise ValueError(value)  # also keeps int() away from its digit-count limit
    negative = s.startswith("-")
    digits = s[1:] if negative or s.startswith("+") else s
    if not digits.isascii() or not digits.isalnum():
        raise ValueError(value)
    if c_base and digits[:2].lower() == "0x":
        number = int(digits[2:], 16)
    elif c_base and len(digits) > 1 and digits[0] == "0":
        number = int(digits[1:], 8)
    elif digits.isdigit():
        number = int(digits, 10)
    else:
        raise ValueError(value)
    return -number if negative else number


@dataclass(frozen=True)
class IntRange:
    minimum: int = 0
    maximum: int = 2**32 - 1
    c_base: bool = False


UINT = IntRange()
POSITIVE = IntRange(minimum=1)


# --- the strict element reader -------------------------------------------------------------


class XNode:
    """One element being parsed; remembers which attributes, children and text were read."""

    def __init__(self, elem: ET.Element, parent_path: str = "") -> None:
        self.elem = elem
        self.tag: str = elem.tag
        self.path = f"{parent_path}/{elem.tag}" if parent_path else elem.tag
        self._read_attrs: set[str] = set()
        self._text_read = False
        self._children: dict[int, XNode] = {}
        self._finished = False

    # attributes
    def attr(self, name: str) -> str | None:
        self._read_attrs.add(name)
        return self.elem.get(name)

    def require(self, name: str) -> str:
        value = self.attr(name)
        if value is None:
            raise XMLError(f"Missing required attribute '{name}' in element '{self.tag}'")
        return value

    def ignore(self, *names: str) -> None:
        """Accept *names* without using them (runtime-only data such as a console's tty)."""
        self._read_attrs.update(names)

    def int_attr(self, name: str, limits: IntRange = UINT) -> int | None:
        value = self.attr(name)
        if value is None:
            return None
        return self._to_int(value, limits, f"attribute '{name}' in element '{self.tag}'")

    def require_int(self, name: str, limits: IntRange = UINT) -> int:
        value = self.int_attr(name, limits)
        if value is None:
            raise XMLError(f"Missing required attribute '{name}' in element '{self.tag}'")
        return value

    def yes_no(self, name: str) -> bool | None:
        value = self.attr(name)
        if value is None:
            return None
        if value not in ("yes", "no"):
            raise XMLError(
                f"Invalid value for attribute '{name}' in element '{self.tag}': "
                f"'{quote(value)}'. Expected 'yes' or 'no'"
            )
        return value == "yes"

    @staticmethod
    def _to_int(value: str, limits: IntRange, where: str) -> int:
        try:
            number = parse_int(value, c_base=limits.c_base)
        except ValueError:
            number = None
        if number is None or not limits.minimum <= number <= limits.maximum:
            raise XMLError(f"Invalid value for {where}: '{quote(value)}'.")
        return number

    # text
    def text(self) -> str | None:
        """The element's text, ``None`` when empty (libvirt treats empty as absent)."""
        self._text_read = True
        return self.elem.text or None

    def int_text(self, limits: IntRange = UINT) -> int:
        text = self.text()
        if text is None:
            raise XMLError(f"Invalid value '' for element '{self.tag}'")
        return self._to_int(text, limits, f"element '{self.tag}'")

    # children
    def _wrap(self, elem: ET.Element) -> XNode:
        node = self._children.get(id(elem))
        if node is None:
            node = self._children[id(elem)] = XNode(elem, self.path)
        return node

    def children(self, tag: str) -> list[XNode]:
        return [self._wrap(e) for e in self.elem if e.tag == tag]

    def child(self, tag: str) -> XNode | None:
        found = self.children(tag)
        if len(found) > 1:
            raise XMLError(f"element '{tag}' may appear only once in element '{self.tag}'")
        return found[0] if found else None

    def all_children(self) -> Iterator[XNode]:
        for elem in self.elem:
            yield self._wrap(elem)

    def is_empty(self) -> bool:
        return not self.elem.attrib and len(self.elem) == 0 and not _has_text(self.elem.text)

    # the strictness check
    def finish(self) -> None:
        """Refuse everything in this subtree that no parser read."""
        if self._finished:
            return
        self._finished = True
        for name in self.elem.attrib:
            if name not in self._read_attrs:
                raise ConfigUnsupportedError(
                    f"attribute '{quote(name)}' of element '{self.tag}' is not supported "
                    f"(in <{self.path}>)"
                )
        if not self._text_read and _has_text(self.elem.text):
            raise XMLError(f"unexpected text in element '{self.tag}'")
        for elem in self.elem:
            if _has_text(elem.tail):
                raise XMLError(f"unexpected text in element '{self.tag}'")
            node = self._children.get(id(elem))
            if node is None:
                raise unsupported_element(elem.tag, self.path)
            node.finish()


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())
