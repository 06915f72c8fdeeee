"""Hostile domain XML: every attack must end in a clean XMLError, quickly, reading nothing.

The parser refuses DTDs outright (so no entity can be declared: no billion laughs, no
external entities), caps the document size and the tree's depth and element count
while parsing, and turns every decoding problem into an XMLError.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pyvirt.conf import xmlutil
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.errors import ConfigUnsupportedError, XMLError

VALID = "<domain type='kvm'><name>x</name><memory>1024</memory><os><type>hvm</type></os>"


def refused(text: str | bytes, match: str) -> XMLError:
    started = time.monotonic()
    with pytest.raises(XMLError, match=match) as info:
        parse_domain_xml(text)
    assert time.monotonic() - started < 5, "refusal must not depend on the payload's size"
    assert len(str(info.value)) < 400, "messages must not echo the payload"
    return info.value


def test_billion_laughs() -> None:
    lol = "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    doc = (f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY lol0 "lol">{lol}]>'
           f"<domain type='kvm'><name>&lol9;</name></domain>")
    refused(doc, "DTDs and entity declarations are not allowed")


def test_quadratic_blowup() -> None:
    big = "A" * 100_000
    doc = (f'<!DOCTYPE domain [<!ENTITY a "{big}">]>'
           f"<domain type='kvm'><name>{'&a;' * 1000}</name></domain>")
    refused(doc, "DTDs and entity declarations are not allowed")


def test_xxe_file_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-CONTENT")
    doc = (f'<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           f"<domain type='kvm'><name>&xxe;</name></domain>")
    error = refused(doc, "not allowed")
    assert "TOP-SECRET" not in str(error)


def test_external_dtd_is_not_fetched() -> None:
    # port 9 (discard) on loopback: if anything tried to fetch, it would hang or fail late
    refused('<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/evil.dtd">' + VALID + "</domain>",
            "not allowed")


def test_parameter_entities() -> None:
    doc = ('<!DOCTYPE domain [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
           + VALID + "</domain>")
    refused(doc, "not allowed")


def test_undefined_entity_reference() -> None:
    refused(VALID.replace("<name>x", "<name>&nope;") + "</domain>", "undefined entity")


def test_xinclude_is_just_an_unknown_element() -> None:
    doc = VALID + ("<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' "
                   "href='file:///etc/passwd' parse='text'/></domain>")
    with pytest.raises(ConfigUnsupportedError, match="element 'include' in namespace"):
        parse_domain_xml(doc)


def test_deep_nesting_refused_at_the_cap() -> None:
    depth = xmlutil.MAX_DEPTH
    doc = "<domain type='kvm'>" + "<a>" * depth + "</a>" * depth + "</domain>"
    refused(doc, f"nested deeper than {depth}")


def test_very_deep_nesting_fails_fast() -> None:
    n = 500_000  # 3.5 MB: under the size cap, so the depth cap must stop it
    refused("<domain>" + "<a>" * n + "</a>" * n + "</domain>", "nested deeper")


def test_element_flood() -> None:
    refused(VALID + "<x/>" * (xmlutil.MAX_ELEMENTS + 1) + "</domain>", "more than")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_huge_input_refused_before_parsing(as_bytes: bool) -> None:
    doc = VALID + "<description>" + "x" * xmlutil.MAX_XML_BYTES + "</description></domain>"
    refused(doc.encode() if as_bytes else doc, "larger than")


def test_huge_multibyte_string_counts_bytes() -> None:
    # fewer characters than the cap, more bytes than the cap once encoded
    doc = VALID + "<description>" + "\u20ac" * (xmlutil.MAX_XML_BYTES // 2) + "</description>"
    refused(doc + "</domain>", "larger than")


def test_input_just_under_the_cap_parses() -> None:
    tail = "</description></domain>"
    head = VALID + "<description>"
    filler = "x" * (xmlutil.MAX_XML_BYTES - len(head) - len(tail))
    dom = parse_domain_xml(head + filler + tail)
    assert dom.description is not None and len(dom.description) == len(filler)


@pytest.mark.parametrize("data", [
    b"\xff\xfe\x00garbage\x80\x81",
    b"<domain type='kvm'><name>\xff\xfe</name></domain>",
    b"\x00\x01\x02\x03",
    "<domain type='kvm'><name>\ud800</name></domain>",
    "<domain type='kvm'><name>a\x00b</name></domain>",
    "<domain type='kvm'><name>&#1;</name></domain>",
    "<domain type='kvm'><name>x</name>",
    "<domain type='kvm'><name>x</nam></domain>",
    "<domain type='kvm' type='qemu'/>",
    "not xml at all",
    "<domain type='kvm'/><domain type='kvm'/>",
])
def test_garbage(data: str | bytes) -> None:
    refused(data, "failed to parse XML document")


@pytest.mark.parametrize("data", ["", "   \n\t", b"", b"  "])
def test_empty_input(data: str | bytes) -> None:
    refused(data, "document is empty")


def test_non_text_input() -> None:
    refused(42, "must be text")  # type: ignore[arg-type]


@pytest.mark.parametrize(("doc", "root"), [
    ("<network><name>x</name></network>", "network"),
    ("<Domain type='kvm'/>", "Domain"),
    ("<x:domain xmlns:x='urn:evil' type='kvm'/>", "urn:evil:domain"),
])
def test_wrong_root_element(doc: str, root: str) -> None:
    refused(doc, f"expecting root element of 'domain', not '{root}'")


def test_long_hostile_values_are_truncated_in_messages() -> None:
    error = refused(VALID.replace("type='kvm'", "type='" + "\x85" * 5000 + "'") + "</domain>",
                    "unknown domain type")
    assert "..." in str(error)


def test_comments_processing_instructions_and_cdata_are_harmless() -> None:
    doc = ("<?xml version='1.0'?><!-- hello --><?pi data?>"
           "<domain type='kvm'><!-- c --><name><![CDATA[a<b>&c]]></name>"
           "<memory>1024</memory><os><type>hvm</type></os></domain>")
    assert parse_domain_xml(doc).name == "a<b>&c"


@pytest.mark.parametrize("element", [
    "<memory>" + "9" * 5000 + "</memory>",
    "<vcpu>" + "9" * 5000 + "</vcpu>",
    "<memory>" + "0" * 30 + "1x</memory>",
])
def test_absurd_numbers(element: str) -> None:
    refused("<domain type='kvm'><name>x</name>" + element + "</domain>", "Invalid value")


def test_absurd_address_numbers() -> None:
    refused(VALID + "<devices><interface type='user'><address type='pci' slot='0x"
            + "f" * 100_000 + "'/></interface></devices></domain>", "Invalid value")


def test_many_attributes_refused() -> None:
    attrs = " ".join(f"a{i}=''" for i in range(200_000))
    with pytest.raises(ConfigUnsupportedError, match="attribute 'a0' of element 'domain'"):
        parse_domain_xml(f"<domain type='kvm' {attrs}><name>x</name></domain>")
