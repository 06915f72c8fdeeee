"""Domain XML parsing: every data file, every refusal category, and the parser's details.

``tests/data/domain/*.xml`` are valid definitions (also the argv builder's golden
inputs); ``tests/data/domain/invalid/*.xml`` each start with a comment
``<!-- ErrorClass: expected message substring -->`` and must fail with exactly that,
somewhere in parse → apply_defaults → validate (the order the driver runs them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyvirt import errors
from pyvirt.conf.domain import (
    DriveAddress,
    PCIAddress,
    USBAddress,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_defaults import HostDefaults, apply_defaults
from pyvirt.conf.domain_parse import parse_domain_xml, scaled_kib, unit_scale
from pyvirt.conf.domain_validate import validate_domain
from pyvirt.errors import ConfigUnsupportedError, ErrorCode, XMLError

DATA = Path(__file__).resolve().parent.parent / "data" / "domain"
VALID = sorted(DATA.glob("*.xml"))
INVALID = sorted((DATA / "invalid").glob("*.xml"))
HOST = HostDefaults(
    emulator="/usr/bin/qemu-system-x86_64",
    arch="x86_64",
    machine_aliases={"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"},
    machines=frozenset({"pc-i440fx-10.0", "pc-q35-10.0", "microvm"}),
    default_machine="pc-i440fx-10.0",
)
_EXPECT = re.compile(r"<!-- (\w+): (.*) -->\n")


def dom_xml(devices: str = "", top: str = "", os_type: str = "<type>hvm</type>") -> str:
    return (f"<domain type='kvm'><name>t</name><memory>1024</memory>"
            f"<os>{os_type}</os>{top}<devices>{devices}</devices></domain>")


def test_data_files_exist() -> None:
    names = {p.stem for p in VALID}
    assert {"minimal", "full-pc", "q35", "disks-all-buses", "graphics-vnc", "graphics-spice",
            "channel-unix", "serial-file-unix", "bridge-net", "cpu-topology"} <= names
    assert len(INVALID) >= 60


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_file_parses_defaults_and_validates(path: Path) -> None:
    dom = parse_domain_xml(path.read_text())
    apply_defaults(dom, HOST)
    validate_domain(dom)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_is_refused(path: Path) -> None:
    text = path.read_text()
    match = _EXPECT.match(text)
    assert match, f"{path.name} lacks its <!-- Class: message --> header"
    expected_class = getattr(errors, match.group(1))
    with pytest.raises(errors.VirtError) as info:
        dom = parse_domain_xml(text)
        apply_defaults(dom, HOST)
        validate_domain(dom)
    assert type(info.value) is expected_class, str(info.value)
    assert match.group(2) in str(info.value)


def test_every_supported_element_is_in_full_pc() -> None:
    text = (DATA / "full-pc.xml").read_text()
    for tag in ("title", "description", "currentMemory", "kernel", "initrd", "cmdline",
                "acpi", "apic", "pae", "vmport", "topology", "timer", "on_crash", "emulator",
                "readonly", "shareable", "serial", "console", "channel", "log", "listen",
                "memballoon"):
        assert f"<{tag}" in text, tag


# --- memory units ----------------------------------------------------------------------------

@pytest.mark.parametrize(("unit", "scale"), [
    ("b", 1), ("bytes", 1), ("KB", 1000), ("k", 1024), ("KiB", 1024), ("kib", 1024),
    ("MB", 1000**2), ("M", 1024**2), ("MiB", 1024**2), ("GB", 1000**3), ("G", 1024**3),
    ("GiB", 1024**3), ("TB", 1000**4), ("T", 1024**4), ("TiB", 1024**4), ("PB", 1000**5),
    ("P", 1024**5), ("PiB", 1024**5), ("EB", 1000**6), ("E", 1024**6), ("EiB", 1024**6),
])
def test_unit_scale(unit: str, scale: int) -> None:
    assert unit_scale(unit) == scale


@pytest.mark.parametrize("unit", ["XB", "KiBB", "Ki", "kbyte", "KBB", "iB"])
def test_unknown_unit(unit: str) -> None:
    with pytest.raises(errors.InvalidArgError, match="unknown suffix"):
        unit_scale(unit)


@pytest.mark.parametrize(("value", "unit", "kib"), [
    (1, "b", 1), (1024, "b", 1), (1025, "bytes", 2), (1000, "KB", 977), (1, "M", 1024),
    (512, None, 512), (0, None, 0), (3, "GB", 2929688), (1, "T", 1024**3),
])
def test_memory_rounds_up_to_kib(value: int, unit: str | None, kib: int) -> None:
    assert scaled_kib(value, unit) == kib


def test_memory_overflow() -> None:
    with pytest.raises(errors.VirtError) as info:
        scaled_kib(2**63 // 1024 + 1, "KiB")
    assert info.value.code == ErrorCode.OVERFLOW


def test_memory_element_units() -> None:
    dom = parse_domain_xml(dom_xml(top="<currentMemory unit='bytes'>1048577</currentMemory>"))
    assert dom.memory_kib == 1024
    assert dom.current_memory_kib == 1025


# --- identity and top level --------------------------------------------------------------------


def test_uuid_is_normalised() -> None:
    dom = parse_domain_xml(dom_xml(top="<uuid>C7A5FDBDCDAF9455926AD65C16DB1809</uuid>"))
    assert dom.uuid == "c7a5fdbd-cdaf-9455-926a-d65c16db1809"


def test_domain_id_and_defaults_left_unset() -> None:
    dom = parse_domain_xml(dom_xml().replace("type='kvm'", "type='kvm' id='12'"))
    assert dom.dom_id == 12
    assert dom.uuid is None and dom.current_memory_kib is None and dom.on_crash is None


def test_empty_text_elements_are_absent() -> None:
    dom = parse_domain_xml(dom_xml(top="<title></title><description/>"))
    assert dom.title is None and dom.description is None


def test_description_keeps_whitespace_and_markup_characters() -> None:
    dom = parse_domain_xml(dom_xml(top="<description>  a &lt;b&gt; &amp; 'c'\n</description>"))
    assert dom.description == "  a <b> & 'c'\n"


def test_os_section() -> None:
    dom = parse_domain_xml((DATA / "full-pc.xml").read_text())
    assert dom.os.machine == "pc"
    assert dom.os.boot_devs == ["hd", "cdrom", "network"]
    assert dom.os.cmdline == "console=ttyS0 root=/dev/vda1 quiet"


def test_features_and_vmport_default_state() -> None:
    dom = parse_domain_xml(dom_xml(top="<features><pae/><vmport/></features>"))
    assert dom.features is not None
    assert (dom.features.acpi, dom.features.pae, dom.features.vmport) == (False, True, "on")


def test_cpu_topology_defaults_to_one() -> None:
    dom = parse_domain_xml(dom_xml(top="<cpu><topology sockets='2' clusters='1'/></cpu>"))
    assert dom.cpu is not None and dom.cpu.topology is not None
    topo = dom.cpu.topology
    assert (topo.sockets, topo.dies, topo.cores, topo.threads) == (2, 1, 1, 1)
    assert dom.cpu.mode == "custom"


def test_duplicate_feature_refused() -> None:
    with pytest.raises(XMLError, match="feature 'acpi' is specified more than once"):
        parse_domain_xml(dom_xml(top="<features><acpi/><acpi/></features>"))


def test_too_many_boot_devices() -> None:
    boots = "<boot dev='hd'/>" * 5
    with pytest.raises(XMLError, match="at most 4"):
        parse_domain_xml(dom_xml(os_type=f"<type>hvm</type>{boots}"))


# --- devices -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dev", "bus"), [("hdb", "ide"), ("sdc", "scsi"), ("vdz", "virtio")])
def test_disk_bus_inferred_from_name(dev: str, bus: str) -> None:
    dom = parse_domain_xml(dom_xml(f"<disk type='file'><source file='/x'/>"
                                   f"<target dev='{dev}'/></disk>"))
    assert dom.devices.disks[0].target_bus == bus


def test_disk_defaults_and_default_cache_spelling() -> None:
    dom = parse_domain_xml(dom_xml(
        "<disk><driver cache='default' io='default'/><source file='/x'/>"
        "<target dev='vda'/></disk>"))
    disk = dom.devices.disks[0]
    assert (disk.type, disk.device, disk.driver_name) == ("file", "disk", "qemu")
    assert disk.cache is None and disk.io is None and disk.driver_type is None


def test_disk_live_only_bits_accepted() -> None:
    dom = parse_domain_xml((DATA / "live-dumpxml.xml").read_text())
    disk = dom.devices.disks[0]
    assert disk.alias == "virtio-disk0"
    assert disk.address == PCIAddress(slot=4)
    assert dom.dom_id == 7
    assert dom.devices.consoles[0].source_path == "/dev/pts/4"


def test_addresses_of_every_kind() -> None:
    dom = parse_domain_xml(dom_xml(
        "<disk><source file='/x'/><target dev='sdb' bus='sata'/>"
        "<address type='drive' controller='1' bus='0' target='0' unit='3'/></disk>"
        "<channel type='pty'><target type='virtio'/>"
        "<address type='virtio-serial' controller='0' bus='0' port='7'/></channel>"
        "<input type='tablet' bus='usb'><address type='usb' bus='0' port='2'/></input>"
        "<interface type='user'><address type='pci' domain='0' bus='0x00' slot='017' "
        "function='0x7' multifunction='on'/></interface>"))
    d = dom.devices
    assert d.disks[0].address == DriveAddress(controller=1, unit=3)
    assert d.channels[0].address == VirtioSerialAddress(port=7)
    assert d.inputs[0].address == USBAddress(bus=0, port="2")
    # base 0 like libvirt: "017" is octal
    assert d.interfaces[0].address == PCIAddress(slot=15, function=7, multifunction=True)


def test_controller_index_assigned_and_grouped() -> None:
    dom = parse_domain_xml(dom_xml(
        "<controller type='sata'/><controller type='usb' model='qemu-xhci'/>"
        "<controller type='sata' index='3'/><controller type='sata'/>"
        "<controller type='usb' index='0' model='none'/>"))
    got = [(c.type, c.index) for c in dom.devices.controllers]
    assert got == [("sata", 0), ("sata", 1), ("sata", 3), ("usb", 0), ("usb", 1)]


def test_mac_canonicalised() -> None:
    dom = parse_domain_xml(dom_xml("<interface type='user'><mac address='52:54:0:A:b:C'/>"
                                   "</interface>"))
    assert dom.devices.interfaces[0].mac == "52:54:00:0a:0b:0c"


def test_chardev_defaults_and_live_attributes() -> None:
    dom = parse_domain_xml(dom_xml(
        "<serial/><console tty='/dev/pts/9'/>"
        "<channel type='unix'><source path='/run/a'/><target type='virtio' state='connected'/>"
        "</channel>"))
    d = dom.devices
    assert d.serials[0].type == "pty" and d.consoles[0].type == "pty"
    assert d.channels[0].source_mode is None and d.channels[0].target_name is None


def test_input_default_bus() -> None:
    dom = parse_domain_xml(dom_xml("<input type='tablet'/><input type='keyboard'/>"))
    assert [(i.type, i.bus) for i in dom.devices.inputs] == [("tablet", "usb"),
                                                             ("keyboard", "ps2")]


def test_primary_video_moves_first() -> None:
    dom = parse_domain_xml(dom_xml("<video><model type='vga'/></video>"
                                   "<video><model type='qxl' primary='yes'/></video>"))
    assert [v.model for v in dom.devices.videos] == ["qxl", "vga"]


def test_video_without_model_left_for_defaults() -> None:
    dom = parse_domain_xml(dom_xml("<graphics type='vnc'/><video/>"))
    assert dom.devices.videos[0].model == ""
    apply_defaults(dom, HOST)
    assert dom.devices.videos[0].model == "cirrus"


def test_graphics_listen_from_child_or_attribute() -> None:
    dom = parse_domain_xml(dom_xml(
        "<graphics type='vnc'><listen type='address' address='::1'/></graphics>"
        "<graphics type='spice' listen='10.0.0.1' tlsPort='-1' port='-1'>"
        "<listen type='address'/></graphics>"))
    vnc, spice = dom.devices.graphics
    assert vnc.listen == "::1" and vnc.autoport is None
    assert (spice.listen, spice.tls_port, spice.port) == ("10.0.0.1", -1, -1)


def test_tls_port_is_spice_only() -> None:
    with pytest.raises(ConfigUnsupportedError, match="'tlsPort' of element 'graphics'"):
        parse_domain_xml(dom_xml("<graphics type='vnc' tlsPort='5901'/>"))


def test_duplicate_memballoon_refused() -> None:
    with pytest.raises(XMLError, match="only one memballoon"):
        parse_domain_xml(dom_xml("<memballoon model='none'/><memballoon model='none'/>"))


def test_unknown_attribute_message_names_path() -> None:
    with pytest.raises(ConfigUnsupportedError) as info:
        parse_domain_xml(dom_xml("<interface type='user'><link state='down'/></interface>"))
    assert "element 'link' is not supported (in <domain/devices/interface>)" in str(info.value)


def test_bytes_input_with_encoding_declaration() -> None:
    text = dom_xml(top="<title>caf\u00e9</title>")
    data = ("<?xml version='1.0' encoding='ISO-8859-1'?>" + text).encode("latin-1")
    assert parse_domain_xml(data).title == "caf\u00e9"


# --- validation of definitions built in code --------------------------------------------------


def _built() -> object:
    dom = parse_domain_xml((DATA / "full-pc.xml").read_text())
    apply_defaults(dom, HOST)
    return dom


@pytest.mark.parametrize(("mutate", "error", "message"), [
    (lambda d: setattr(d.devices.disks[0], "cache", "bogus"), XMLError,
     "unknown disk cache mode 'bogus'"),
    (lambda d: setattr(d.devices.disks[0], "driver_type", "vmdk"), ConfigUnsupportedError,
     "driver format 'vmdk' is not supported"),
    (lambda d: setattr(d.devices.serials[0], "target_type", "usb-serial"),
     ConfigUnsupportedError, "serial target type 'usb-serial' is not supported"),
    (lambda d: setattr(d, "uuid", "C7A5FDBD-CDAF-9455-926A-D65C16DB1809"), XMLError,
     "malformed uuid element"),
    (lambda d: setattr(d.devices.interfaces[0], "mac", "01:00:5e:00:00:01"), XMLError,
     "expected unicast mac address"),
    (lambda d: setattr(d, "on_crash", "coredump-restart"), ConfigUnsupportedError,
     "on_crash action 'coredump-restart' is not supported"),
    (lambda d: setattr(d.os, "arch", "ppc64"), ConfigUnsupportedError,
     "architecture 'ppc64' is not supported"),
    (lambda d: setattr(d, "type", "lxc"), ConfigUnsupportedError,
     "domain type 'lxc' is not supported"),
])
def test_validate_refuses_bad_values_set_in_code(mutate: object, error: type,
                                                  message: str) -> None:
    dom = _built()
    mutate(dom)  # type: ignore[operator]
    with pytest.raises(error, match=re.escape(message)):
        validate_domain(dom)  # type: ignore[arg-type]


def test_console_zero_may_share_serial_zero_alias() -> None:
    dom = parse_domain_xml((DATA / "live-dumpxml.xml").read_text())
    apply_defaults(dom, HOST)
    validate_domain(dom)
