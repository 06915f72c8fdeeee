"""The migration cookie: goldens in libvirt's layout, the wire form, libvirt's refusals.

``tests/data/migration/cookie-NAME.xml`` is ``COOKIES[NAME].to_xml()``; it must parse back to
the same cookie. ``PYVIRT_REGENERATE_GOLDENS=1`` rewrites the files (review the diff by eye).
``input-NAME.xml`` files are parse-only inputs (cookies as another daemon writes them).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.conf.domain import DomainDef
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.qemu.migration import cookie as mk
from pyvirt.qemu.migration.cookie import (
    CookieCap,
    CookieGraphics,
    CookieLockState,
    CookieNBD,
    CookieNBDDisk,
    CookieStatistics,
    MigrationCookie,
    check_peer,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "migration"
REGENERATE = os.environ.get("PYVIRT_REGENERATE_GOLDENS") == "1"

DOM_UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
HOST_A = "a1a1a1a1-0000-4000-8000-00000000000a"
HOST_B = "b2b2b2b2-0000-4000-8000-00000000000b"
BASE = MigrationCookie(name="web1", uuid=DOM_UUID, hostname="host1", hostuuid=HOST_A)
CAPS = tuple(CookieCap(name, name in ("pause-before-switchover",)) for name in (
    "xbzrle", "auto-converge", "rdma-pin-all", "postcopy-ram", "pause-before-switchover",
    "late-block-activate", "multifd", "dirty-bitmaps", "return-path", "zero-copy-send"))
DOMAIN_XML = """<domain type='kvm' xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
    <name>web1</name>
    <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
    <memory unit='KiB'>262144</memory>
    <description>a &amp; b &lt;c&gt;</description>
    <qemu:commandline>
      <qemu:arg value='-no-user-config'/>
    </qemu:commandline>
  </domain>"""
CPU_XML = """<cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>qemu64</model>
  </cpu>"""

#: golden name → cookie; the phases follow what real daemons send (libvirt-wire.md §13)
COOKIES: dict[str, MigrationCookie] = {
    # Begin (source → destination): a lockstate feature with no leases (libvirt's nop
    # driver), the guest CPU, the capabilities the source supports and turns on itself
    "begin": dataclasses.replace(BASE, features=("lockstate",), cpu_xml=CPU_XML,
                                 capabilities=CAPS),
    # Prepare (destination → source): always a <capabilities>, here empty
    "prepare": dataclasses.replace(BASE, hostname="host2", hostuuid=HOST_B),
    # Perform (source → destination) with the job statistics
    "perform": dataclasses.replace(BASE, statistics=CookieStatistics(
        started=1700000000000, stopped=1700000004321, sent=1700000004330, time_elapsed=4321,
        downtime=42, setup_time=3, memory_total=268435456, memory_processed=270000000,
        memory_remaining=0, memory_bps=125000000, memory_constant=60000, memory_normal=5000,
        memory_normal_bytes=20480000, memory_dirty_rate=1200, memory_iteration=3,
        memory_postcopy_requests=0, memory_page_size=4096, disk_total=0, disk_processed=0,
        disk_remaining=0, disk_bps=0, compression_cache=67108864, compression_bytes=1000,
        compression_pages=10, compression_cache_misses=2, compression_overflow=0,
        auto_converge_throttle=20)),
    # Finish (destination → source): statistics with the clock delta
    "finish": dataclasses.replace(BASE, hostname="host2", hostuuid=HOST_B,
                                  statistics=CookieStatistics(started=1700000000000,
                                                              stopped=1700000004321,
                                                              delta=-12, downtime=40)),
    # --persistent with SPICE, NBD and a lock manager's leases
    "persistent": dataclasses.replace(
        BASE, persistent_xml=DOMAIN_XML,
        graphics=CookieGraphics("spice", 5900, "10.77.0.1", 5901, "C=GB,O=pyvirt,CN=host1"),
        lockstate=CookieLockState("sanlock", "lease:0:/var/lib/leases/web1"),
        nbd=CookieNBD(49153, (CookieNBDDisk("vda", 10737418240),
                              CookieNBDDisk("vdb", 1048576)))),
    "graphics-vnc": dataclasses.replace(
        BASE, graphics=CookieGraphics("vnc", 5900, "0.0.0.0"), nbd=CookieNBD(),
        capabilities=(CookieCap("return-path", True),)),
}


@pytest.mark.parametrize("name", sorted(COOKIES))
def test_golden(name: str) -> None:
    path = DATA / f"cookie-{name}.xml"
    text = COOKIES[name].to_xml()
    if REGENERATE:
        path.write_text(text)
    assert path.exists(), f"{path.name} missing: run with PYVIRT_REGENERATE_GOLDENS=1"
    assert text == path.read_text(), f"{path.name} differs"
    assert MigrationCookie.from_xml(path.read_text()) == COOKIES[name]


def test_every_golden_has_a_cookie() -> None:
    assert {p.name for p in DATA.glob("cookie-*.xml")} == {f"cookie-{n}.xml" for n in COOKIES}


def test_persistent_definition_is_kept_verbatim() -> None:
    parsed = MigrationCookie.from_xml(COOKIES["persistent"].to_xml())
    assert parsed.persistent_xml == DOMAIN_XML  # quotes, prefixes and escapes untouched
    assert parsed.features == ("lockstate", "persistent")  # implied by the sections


def test_a_cookie_written_by_another_daemon() -> None:
    """Unknown elements are ignored, as libvirt ignores what it did not ask for."""
    parsed = MigrationCookie.from_xml((DATA / "input-libvirt-extra.xml").read_text())
    assert (parsed.name, parsed.hostname) == ("web1", "src.example.com")
    assert parsed.features == ("lockstate",) and parsed.lockstate is None
    assert parsed.capabilities == (CookieCap("xbzrle"), CookieCap("pause-before-switchover", True))
    assert parsed.cpu_xml is not None and parsed.cpu_xml.startswith("<cpu mode='custom'")


def test_for_domain() -> None:
    dom = DomainDef(type="kvm", name="web1", uuid=DOM_UUID)
    assert MigrationCookie.for_domain(dom, hostname="host1", hostuuid=HOST_A) == BASE
    with pytest.raises(ValueError, match="no uuid"):
        MigrationCookie.for_domain(DomainDef(type="kvm", name="x"), hostname="h", hostuuid=HOST_A)


# -- the wire form ----------------------------------------------------------------------------
def test_bytes_are_xml_and_one_nul() -> None:
    data = BASE.to_bytes()
    assert data.endswith(b"</qemu-migration>\n\0") and data.count(b"\0") == 1
    assert MigrationCookie.from_bytes(data) == BASE


def test_empty_bytes_are_no_cookie() -> None:
    assert MigrationCookie.from_bytes(b"") is None


def cookie_error(data: bytes | str) -> VirtError:
    with pytest.raises(VirtError) as info:
        if isinstance(data, bytes):
            MigrationCookie.from_bytes(data)
        else:
            MigrationCookie.from_xml(data)
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    return info.value


def test_missing_nul_is_libvirts_error() -> None:
    error = cookie_error(BASE.to_xml().encode())
    assert str(error) == "internal error: Migration cookie was not NULL terminated"


def test_text_after_an_inner_nul_is_ignored() -> None:
    """libvirt reads the cookie as a C string."""
    assert MigrationCookie.from_bytes(BASE.to_bytes() + b"junk\0") == BASE


def test_size_cap_before_parsing() -> None:
    huge = b"<qemu-migration>" + b" " * mk.COOKIE_MAX_BYTES + b"</qemu-migration>\0"
    assert "larger than" in str(cookie_error(huge))


def test_not_utf8() -> None:
    assert "not UTF-8" in str(cookie_error(b"<qemu-migration>\xff</qemu-migration>\0"))


# -- what libvirt refuses in a cookie ----------------------------------------------------------
def xml_with(*lines: str, name: bool = True, hostuuid: str = HOST_A) -> str:
    head = ["<name>web1</name>"] if name else []
    head += [f"<uuid>{DOM_UUID}</uuid>", "<hostname>h</hostname>",
             f"<hostuuid>{hostuuid}</hostuuid>"]
    return "<qemu-migration>" + "".join(head + list(lines)) + "</qemu-migration>"


REFUSED = [
    ("no-name", xml_with(name=False), "missing name element in migration data"),
    ("no-uuid", "<qemu-migration><name>a</name></qemu-migration>",
     "missing uuid element in migration data"),
    ("no-hostname", f"<qemu-migration><name>a</name><uuid>{DOM_UUID}</uuid></qemu-migration>",
     "missing hostname element in migration data"),
    ("no-hostuuid", f"<qemu-migration><name>a</name><uuid>{DOM_UUID}</uuid>"
     "<hostname>h</hostname></qemu-migration>", "missing hostuuid element in migration data"),
    ("bad-hostuuid", xml_with(hostuuid="not-a-uuid"),
     "malformed hostuuid element in migration data"),
    ("feature-no-name", xml_with("<feature/>"), "missing feature name"),
    ("unknown-feature", xml_with("<feature name='teleport'/>"),
     "Unknown migration cookie feature teleport"),
    ("unsupported-feature", xml_with("<feature name='memory-hotplug'/>"),
     "Unsupported migration cookie feature memory-hotplug"),
    ("graphics-no-type", xml_with("<graphics port='1' listen='x'/>"),
     "missing type attribute in migration data"),
    ("graphics-bad-type", xml_with("<graphics type='hologram' port='1' listen='x'/>"),
     "unknown graphics type hologram"),
    ("graphics-no-port", xml_with("<graphics type='vnc' listen='x'/>"),
     "missing port attribute in migration data"),
    ("spice-no-tls-port", xml_with("<graphics type='spice' port='1' listen='x'/>"),
     "missing tlsPort attribute in migration data"),
    ("graphics-no-listen", xml_with("<graphics type='vnc' port='1'/>"),
     "missing listen attribute in migration data"),
    ("lock-no-driver", xml_with("<lockstate/>"), "Missing lock driver name in migration cookie"),
    ("two-domains", xml_with("<domain type='kvm'/>", "<domain type='kvm'/>"),
     "Too many domain elements in migration cookie"),
    ("nbd-port", xml_with("<nbd port='x1'/>"), "Malformed nbd port 'x1'"),
    ("nbd-target", xml_with("<nbd><disk capacity='1'/></nbd>"), "Malformed disk target"),
    ("nbd-capacity", xml_with("<nbd><disk target='vda' capacity='-1'/></nbd>"),
     "Malformed disk capacity: '-1'"),
    ("cap-no-name", xml_with("<capabilities><cap auto='yes'/></capabilities>"),
     "missing migration capability name"),
    ("statistics", xml_with("<statistics><downtime>soon</downtime></statistics>"),
     "malformed statistics element 'downtime' in migration data"),
    ("root", "<migration/>", "unexpected root element 'migration' in migration cookie"),
]


@pytest.mark.parametrize(("text", "message"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_refused(text: str, message: str) -> None:
    assert str(cookie_error(text)) == f"internal error: {message}"


def test_a_phase_may_support_fewer_features() -> None:
    text = xml_with("<feature name='persistent'/>")
    assert MigrationCookie.from_xml(text).features == ("persistent",)
    with pytest.raises(VirtError, match="Unsupported migration cookie feature persistent"):
        MigrationCookie.from_xml(text, supported=frozenset({"lockstate"}))


@pytest.mark.parametrize("text", [
    '<!DOCTYPE q [<!ENTITY a "aaaa">]><qemu-migration>&a;</qemu-migration>',
    '<!DOCTYPE q SYSTEM "file:///etc/passwd"><qemu-migration/>',
    "<qemu-migration><name>a</name>",
])
def test_hostile_or_broken_xml(text: str) -> None:
    assert "malformed migration cookie" in str(cookie_error(text))


def test_invalid_sections_are_refused_when_building() -> None:
    with pytest.raises(ValueError, match="unknown cookie features"):
        dataclasses.replace(BASE, features=("teleport",))
    with pytest.raises(ValueError, match="one element"):
        dataclasses.replace(BASE, persistent_xml="<?xml version='1.0'?><domain/>")
    with pytest.raises(ValueError, match="not well-formed"):
        dataclasses.replace(BASE, persistent_xml="<domain>")
    with pytest.raises(ValueError, match="expected a <cpu> element"):
        dataclasses.replace(BASE, cpu_xml="<cpumodel/>")


# -- check_peer ---------------------------------------------------------------------------
def test_peer_checks() -> None:
    check_peer(BASE, expected_name="web1", expected_uuid=DOM_UUID.upper(),
               local_host_uuid=HOST_B)
    cases = [
        (dict(expected_name="web2", expected_uuid=DOM_UUID, local_host_uuid=HOST_B),
         "Incoming cookie data had unexpected name web1 vs web2"),
        (dict(expected_name="web1", expected_uuid=HOST_B, local_host_uuid=HOST_B),
         f"Incoming cookie data had unexpected UUID {DOM_UUID} vs {HOST_B}"),
        (dict(expected_name="web1", expected_uuid=DOM_UUID, local_host_uuid=HOST_A.upper()),
         f"Attempt to migrate guest to the same host {HOST_A}"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VirtError) as info:
            check_peer(BASE, **kwargs)
        assert info.value.code == ErrorCode.INTERNAL_ERROR and info.value.expected
        assert str(info.value) == f"internal error: {message}"


# -- hypothesis: any cookie survives to_bytes/from_bytes -------------------------------------
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn")),
                min_size=1, max_size=20)
_u64 = st.integers(0, (1 << 64) - 1)
_uuids = st.uuids().map(str)


@st.composite
def graphics(draw: st.DrawFn) -> CookieGraphics:
    kind = draw(st.sampled_from(sorted(mk.GRAPHICS_TYPES)))
    tls_port = draw(st.integers(-1, 65535)) if kind == "spice" else draw(
        st.none() | st.integers(-1, 65535))
    return CookieGraphics(kind, draw(st.integers(-1, 65535)), draw(_text), tls_port,
                          draw(st.none() | _text))


@st.composite
def statistics(draw: st.DrawFn) -> CookieStatistics:
    values = {}
    for name in draw(st.lists(st.sampled_from(mk.STATISTICS_FIELDS), unique=True)):
        signed = name in ("delta", "auto_converge_throttle")
        values[name] = draw(st.integers(-(1 << 63), (1 << 63) - 1) if signed else _u64)
    return CookieStatistics(**values)


def _domain(name: str) -> str:
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<domain type='kvm'>\n    <name>{escaped}</name>\n  </domain>"


cookies = st.builds(
    MigrationCookie,
    name=_text, uuid=_uuids, hostname=_text, hostuuid=_uuids,
    features=st.lists(st.sampled_from(sorted(mk.SUPPORTED_FEATURES)), unique=True).map(tuple),
    graphics=st.none() | graphics(),
    lockstate=st.none() | st.builds(CookieLockState, _text, st.none() | _text),
    persistent_xml=st.none() | _text.map(_domain),
    nbd=st.none() | st.builds(CookieNBD, st.none() | st.integers(0, 65535), st.lists(
        st.builds(CookieNBDDisk, _text, _u64, st.none() | _text, st.none() | _u64,
                  st.none() | _text, st.none() | _text), max_size=3).map(tuple)),
    statistics=st.none() | statistics(),
    cpu_xml=st.none() | st.just(CPU_XML),
    capabilities=st.lists(st.builds(CookieCap, _text, st.booleans()), max_size=4).map(tuple),
)


@settings(max_examples=300)
@given(cookies)
def test_round_trip(cookie: MigrationCookie) -> None:
    assert MigrationCookie.from_bytes(cookie.to_bytes()) == cookie
    assert MigrationCookie.from_xml(cookie.to_xml()).to_xml() == cookie.to_xml()
