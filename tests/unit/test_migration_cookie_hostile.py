"""Hostile migration cookies: refused with a clear error, quickly, with bounded memory.

A cookie comes from the peer daemon, which is not trusted. It goes through the same bounded
parser as domain XML (``xmlutil.parse_xml_document`` with ``cookie.COOKIE_LIMITS``): no DTD
(so no entity of any kind), a byte cap, a depth cap, an element cap and a cap on each value
of the cookie's own elements, all checked while the tree is built.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from pyvirt.conf import xmlutil
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.qemu.migration import cookie as mk
from pyvirt.qemu.migration.cookie import MigrationCookie

DOM_UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
HOST = "a1a1a1a1-0000-4000-8000-00000000000a"
HEAD = (f"<qemu-migration><name>web1</name><uuid>{DOM_UUID}</uuid><hostname>h</hostname>"
        f"<hostuuid>{HOST}</hostuuid>")
TAIL = "</qemu-migration>"
#: what parsing one refused cookie may allocate at its peak (the tree up to the caps)
MEMORY_BOUND = 96 * 1024 * 1024


def billion_laughs() -> str:
    lol = "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE qemu-migration [<!ENTITY lol0 "lol">{lol}]>'
            + HEAD.replace("<name>web1", "<name>&lol9;") + TAIL)


def refused(text: str, match: str) -> VirtError:
    """Parse the cookie as it arrives on the wire; it must be refused fast and lean."""
    data = text.encode() + b"\0"
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(VirtError, match=match) as info:
            MigrationCookie.from_bytes(data)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert str(info.value).startswith("internal error: "), str(info.value)
    assert elapsed < 5, f"refusal took {elapsed:.1f} s"
    assert peak < MEMORY_BOUND, f"refusal allocated {peak >> 20} MiB"
    assert len(str(info.value)) < 400, "messages must not echo the payload"
    return info.value


def test_billion_laughs() -> None:
    refused(billion_laughs(), "malformed migration cookie: .*DTDs and entity declarations")


def test_external_entity_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-CONTENT")
    doc = (f'<!DOCTYPE qemu-migration [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           + HEAD.replace("<hostname>h", "<hostname>&xxe;") + TAIL)
    assert "TOP-SECRET" not in str(refused(doc, "not allowed"))


def test_external_dtd_is_not_fetched() -> None:
    refused('<!DOCTYPE qemu-migration SYSTEM "http://127.0.0.1:9/evil.dtd">' + HEAD + TAIL,
            "not allowed")


def test_deep_nesting() -> None:
    depth = 500_000  # 3.5 MB: under the byte cap, so the depth cap must stop it
    refused(HEAD + "<a>" * depth + "</a>" * depth + TAIL,
            f"nested deeper than {mk.COOKIE_LIMITS.max_depth} elements")


def test_deep_nesting_inside_the_domain() -> None:
    depth = 1000
    refused(HEAD + "<domain>" + "<a>" * depth + "</a>" * depth + "</domain>" + TAIL,
            "nested deeper than")


def test_a_million_elements() -> None:
    text = HEAD + "<a/>" * 1_000_000 + TAIL
    assert len(text) < mk.COOKIE_MAX_BYTES  # the element cap, not the byte cap, refuses it
    refused(text, f"more than {mk.COOKIE_LIMITS.max_elements} elements")


def test_a_million_elements_inside_the_domain() -> None:
    refused(HEAD + "<domain>" + "<a/>" * 1_000_000 + "</domain>" + TAIL, "more than")


def test_huge_attribute_value() -> None:
    value = "x" * (mk.COOKIE_VALUE_MAX + 1)
    refused(HEAD + f"<graphics type='vnc' port='1' listen='{value}'/>" + TAIL,
            "attribute 'listen' longer than")


def test_huge_text() -> None:
    refused(HEAD.replace("<hostname>h", "<hostname>" + "h" * 3_000_000) + TAIL,
            "a text longer than")


def test_huge_text_in_pieces() -> None:
    # expat hands text over in pieces (here split by character references): their sum counts
    refused(HEAD.replace("<hostname>h", "<hostname>" + "h&#104;" * 40_000) + TAIL,
            "a text longer than")


def test_over_the_byte_cap() -> None:
    text = HEAD + " " * mk.COOKIE_MAX_BYTES + TAIL
    with pytest.raises(VirtError, match="larger than"):
        MigrationCookie.from_bytes(text.encode() + b"\0")


def test_the_embedded_domain_may_hold_long_text() -> None:
    # a <description> is free-form: the value cap covers the cookie's own elements only;
    # the domain parser checks the embedded definition again with its own limits
    description = "d" * (mk.COOKIE_VALUE_MAX * 4)
    domain = (f"<domain type='kvm'><name>web1</name><description>{description}</description>"
              "</domain>")
    cookie = MigrationCookie.from_xml(HEAD + domain + TAIL)
    assert cookie.persistent_xml == domain


def test_limits_are_the_domain_parsers_plus_one_level() -> None:
    limits = mk.COOKIE_LIMITS
    assert limits.max_bytes == xmlutil.MAX_XML_BYTES
    assert limits.max_depth == xmlutil.MAX_DEPTH + 1
    assert limits.max_elements > xmlutil.MAX_ELEMENTS
