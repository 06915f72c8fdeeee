"""apply_defaults: libvirt's post-parse defaults, deterministic and idempotent."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest

from pyvirt.conf import domain_defaults
from pyvirt.conf.domain import (
    DomainDef,
    DriveAddress,
    PCIAddress,
    USBAddress,
    VirtioSerialAddress,
)
from pyvirt.conf.domain_defaults import HostDefaults, apply_defaults, random_mac
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.conf.domain_util import disk_index
from pyvirt.conf.domain_validate import validate_domain
from pyvirt.errors import ConfigUnsupportedError, XMLError

DATA = Path(__file__).resolve().parent.parent / "data" / "domain"
HOST = HostDefaults(
    emulator="/usr/bin/qemu-system-x86_64",
    arch="x86_64",
    machine_aliases={"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"},
    machines=frozenset({"pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-9.2", "microvm"}),
    default_machine="pc-i440fx-10.0",
)


def defaulted(devices: str = "", *, machine: str = "pc", top: str = "",
              dtype: str = "kvm") -> DomainDef:
    dom = parse_domain_xml(
        f"<domain type='{dtype}'><name>t</name><memory>65536</memory>"
        f"<os><type machine='{machine}'>hvm</type></os>{top}<devices>{devices}</devices>"
        f"</domain>")
    apply_defaults(dom, HOST)
    validate_domain(dom)
    return dom


def slots(dom: DomainDef) -> dict[str, int]:
    """Where each PCI device landed, keyed 'kind:detail'."""
    d = dom.devices
    out: dict[str, int] = {}
    named = [*(("disk:" + x.target_dev, x.address) for x in d.disks),
             *((f"ctl:{c.type}{c.index}", c.address) for c in d.controllers),
             *((f"net:{i}", n.address) for i, n in enumerate(d.interfaces)),
             *((f"video:{i}", v.address) for i, v in enumerate(d.videos)),
             *((f"input:{i.type}-{i.bus}", i.address) for i in d.inputs),
             *((f"serial:{i}", s.address) for i, s in enumerate(d.serials))]
    if d.memballoon is not None:
        named.append(("balloon", d.memballoon.address))
    for name, address in named:
        if isinstance(address, PCIAddress):
            out[name] = address.slot
    return out


# --- identity and machine ---------------------------------------------------------------------


def test_uuid_generated_once() -> None:
    dom = defaulted()
    assert dom.uuid is not None and uuid.UUID(dom.uuid).version == 4
    before = dom.uuid
    apply_defaults(dom, HOST)
    assert dom.uuid == before


def test_emulator_arch_and_machine_alias() -> None:
    dom = defaulted(machine="q35")
    assert dom.devices.emulator == HOST.emulator
    assert (dom.os.arch, dom.os.machine) == ("x86_64", "pc-q35-10.0")


def test_default_machine_and_canonical_names_kept() -> None:
    dom = parse_domain_xml("<domain type='qemu'><name>t</name><memory>1024</memory>"
                           "<os><type>hvm</type></os></domain>")
    apply_defaults(dom, HOST)
    assert dom.os.machine == "pc-i440fx-10.0"
    assert defaulted(machine="pc-i440fx-9.2").os.machine == "pc-i440fx-9.2"


def test_unknown_machine_message() -> None:
    with pytest.raises(ConfigUnsupportedError) as info:
        defaulted(machine="foo")
    assert str(info.value) == ("unsupported configuration: Emulator "
                               "'/usr/bin/qemu-system-x86_64' does not support machine type 'foo'")


def test_other_arch_refused() -> None:
    dom = parse_domain_xml("<domain type='qemu'><name>t</name><memory>1024</memory>"
                           "<os><type arch='x86_64'>hvm</type></os></domain>")
    host = HostDefaults("/usr/bin/qemu-system-i386", "i686", {}, frozenset({"pc"}), "pc")
    with pytest.raises(ConfigUnsupportedError, match="No guest options available for arch"):
        apply_defaults(dom, host)


def test_memory_vcpu_clock_and_lifecycle() -> None:
    dom = defaulted()
    assert dom.current_memory_kib == 65536
    assert dom.vcpu_placement == "static"
    assert dom.clock is not None and dom.clock.offset == "utc"
    assert (dom.on_poweroff, dom.on_reboot, dom.on_crash) == ("destroy", "restart", "destroy")


@pytest.mark.parametrize(("cpu", "dtype", "expected"), [
    ("<cpu mode='host-passthrough'/>", "kvm", ("host-passthrough", None, "none", "on", None)),
    ("<cpu mode='maximum'/>", "qemu", ("maximum", None, "none", "on", None)),
    ("<cpu mode='host-model'/>", "kvm", ("host-model", None, "partial", None, None)),
    ("<cpu><model>qemu64</model></cpu>", "kvm", ("custom", "exact", "partial", None, "allow")),
    ("<cpu><model>qemu64</model></cpu>", "qemu", ("custom", "exact", "none", None, "allow")),
    ("<cpu><topology sockets='1' cores='1' threads='1'/></cpu>", "kvm",
     ("custom", None, None, None, None)),
])
def test_cpu_defaults(cpu: str, dtype: str, expected: tuple[str | None, ...]) -> None:
    dom = defaulted(top=cpu, dtype=dtype)
    assert dom.cpu is not None
    got = (dom.cpu.mode, dom.cpu.match, dom.cpu.check, dom.cpu.migratable,
           dom.cpu.model_fallback)
    assert got == expected


def test_no_cpu_element_is_not_invented() -> None:
    assert defaulted().cpu is None


# --- disks and drive addresses ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "index"), [
    ("vda", 0), ("vdz", 25), ("vdaa", 26), ("vdaz", 51), ("vdba", 52), ("hdc", 2),
    ("sdzz", 701), ("xvdb", 1), ("vd", None), ("vda1", None), ("disk", None), ("vdA", None),
])
def test_disk_index(name: str, index: int | None) -> None:
    assert disk_index(name) == index


@pytest.mark.parametrize(("dev", "bus", "address"), [
    ("hda", "ide", DriveAddress(0, 0, 0, 0)),
    ("hdb", "ide", DriveAddress(0, 0, 0, 1)),
    ("hdc", "ide", DriveAddress(0, 1, 0, 0)),
    ("hdd", "ide", DriveAddress(0, 1, 0, 1)),
    ("sda", "sata", DriveAddress(0, 0, 0, 0)),
    ("sdf", "sata", DriveAddress(0, 0, 0, 5)),
    ("sdg", "sata", DriveAddress(1, 0, 0, 0)),
    ("sdb", "scsi", DriveAddress(0, 0, 0, 1)),
    ("sdh", "scsi", DriveAddress(1, 0, 0, 0)),
])
def test_drive_address_from_name(dev: str, bus: str, address: DriveAddress) -> None:
    dom = defaulted(f"<disk><source file='/x'/><target dev='{dev}' bus='{bus}'/></disk>")
    assert dom.devices.disks[0].address == address


def test_disk_driver_format_and_cdrom_readonly() -> None:
    dom = defaulted("<disk device='cdrom'><target dev='hdc' bus='ide'/></disk>")
    disk = dom.devices.disks[0]
    assert (disk.driver_name, disk.driver_type, disk.readonly) == ("qemu", "raw", True)


def test_disk_controllers_added_for_every_index() -> None:
    dom = defaulted("<disk><source file='/a'/><target dev='sdh' bus='scsi'/></disk>"
                    "<disk><source file='/b'/><target dev='sdg' bus='sata'/></disk>")
    got = [(c.type, c.index, c.model) for c in dom.devices.controllers]
    assert ("scsi", 0, "virtio-scsi") in got and ("scsi", 1, "virtio-scsi") in got
    assert ("sata", 0, None) in got and ("sata", 1, None) in got


# --- controllers, PCI -------------------------------------------------------------------------


def test_pc_builtin_controllers() -> None:
    dom = defaulted()
    got = [(c.type, c.index, c.model, c.address) for c in dom.devices.controllers]
    assert got == [
        ("usb", 0, "piix3-uhci", PCIAddress(slot=1, function=2)),
        ("pci", 0, "pci-root", None),
        ("ide", 0, None, PCIAddress(slot=1, function=1)),
    ]


def test_q35_builtin_controllers() -> None:
    dom = defaulted(machine="q35")
    got = [(c.type, c.index, c.model, c.address) for c in dom.devices.controllers]
    assert got == [
        ("usb", 0, "qemu-xhci", PCIAddress(slot=1)),
        ("sata", 0, None, PCIAddress(slot=0x1F, function=2)),
        ("pci", 0, "pcie-root", None),
    ]


def test_usb_none_replaces_default_usb() -> None:
    dom = defaulted("<controller type='usb' model='none'/>")
    usb = [c for c in dom.devices.controllers if c.type == "usb"]
    assert [(c.model, c.address) for c in usb] == [("none", None)]


def test_pci_slot_order_i440fx() -> None:
    dom = defaulted(
        "<disk><source file='/a'/><target dev='vda' bus='virtio'/></disk>"
        "<controller type='scsi'/>"
        "<interface type='user'/><interface type='user'/>"
        "<serial type='pty'><target type='pci-serial'/></serial>"
        "<channel type='pty'><target type='virtio'/></channel>"
        "<input type='keyboard' bus='virtio'/>"
        "<graphics type='vnc'/><video><model type='vga'/></video>"
        "<video><model type='virtio'/></video>")
    assert slots(dom) == {
        "ctl:usb0": 1, "ctl:ide0": 1, "video:0": 2, "net:0": 3, "net:1": 4, "ctl:scsi0": 5,
        "ctl:virtio-serial0": 6, "disk:vda": 7, "balloon": 8, "video:1": 9,
        "input:keyboard-virtio": 10, "serial:0": 11,
    }


def test_pci_slot_order_q35_skips_chipset_and_used_slots() -> None:
    dom = defaulted("<interface type='user'><address type='pci' slot='0x02'/></interface>"
                    "<interface type='user'/><graphics type='spice'/>", machine="q35")
    assert slots(dom) == {"video:0": 1, "net:0": 2, "net:1": 3, "ctl:usb0": 4,
                          "ctl:sata0": 0x1F, "balloon": 5}


def test_primary_video_slot_taken_falls_back() -> None:
    dom = defaulted("<interface type='user'><address type='pci' slot='2'/></interface>"
                    "<video><model type='vga'/></video>")
    assert slots(dom)["video:0"] == 3


def test_pci_slots_run_out() -> None:
    nics = "<interface type='user'/>" * 40
    with pytest.raises(ConfigUnsupportedError, match="No more available PCI slots"):
        defaulted(nics)


# --- network -----------------------------------------------------------------------------------


def test_mac_and_model() -> None:
    dom = defaulted("<interface type='user'/><interface type='user'/>"
                    "<interface type='user'><mac address='52:54:00:00:00:09'/>"
                    "<model type='virtio'/></interface>")
    nets = dom.devices.interfaces
    assert nets[0].mac != nets[1].mac
    for net in nets[:2]:
        assert net.mac is not None and net.mac.startswith("52:54:00:")
        assert net.model == "rtl8139"
    assert (nets[2].mac, nets[2].model) == ("52:54:00:00:00:09", "virtio")


def test_random_mac_is_unicast_and_local() -> None:
    for _ in range(50):
        mac = random_mac()
        assert len(mac) == 17 and not int(mac[:2], 16) & 1


# --- serial ports, consoles, channels -----------------------------------------------------------


def test_console_only_creates_serial() -> None:
    dom = defaulted("<console type='pty'/>")
    serial, console = dom.devices.serials[0], dom.devices.consoles[0]
    assert (serial.kind, serial.type, serial.target_type, serial.target_model,
            serial.target_port) == ("serial", "pty", "isa-serial", "isa-serial", 0)
    assert (console.target_type, console.target_port) == ("serial", 0)


def test_serial_only_creates_console() -> None:
    dom = defaulted("<serial type='file'><source path='/log'/></serial>")
    console = dom.devices.consoles[0]
    assert (console.type, console.source_path, console.target_type) == ("file", "/log", "serial")


def test_console_zero_mirrors_serial_zero() -> None:
    dom = defaulted("<serial type='unix'><source mode='bind' path='/s'/></serial>"
                    "<console type='pty'/>")
    console = dom.devices.consoles[0]
    assert (console.type, console.source_path, console.source_mode) == ("unix", "/s", "bind")


def test_isa_serial_ports_take_lowest_free() -> None:
    dom = defaulted("<serial><target port='1'/></serial><serial/><serial/>")
    assert [s.target_port for s in dom.devices.serials] == [1, 0, 2]


def test_virtio_serial_ports_and_controller() -> None:
    dom = defaulted(
        "<console type='pty'><target type='virtio'/></console>"
        "<channel type='unix'><source path='/a'/><target type='virtio'/>"
        "<address type='virtio-serial' port='1'/></channel>"
        "<channel type='unix'><source path='/b'/><target type='virtio'/></channel>")
    d = dom.devices
    assert d.consoles[0].address == VirtioSerialAddress(port=0)
    assert d.channels[1].address == VirtioSerialAddress(port=2)
    assert [c for c in d.controllers if c.type == "virtio-serial"]
    assert d.channels[0].source_mode == "connect"


def test_virtio_console_is_not_a_serial_console() -> None:
    dom = defaulted("<console type='pty'><target type='virtio'/></console>")
    assert dom.devices.serials == []


# --- input, graphics, video, balloon, boot ----------------------------------------------------


def test_ps2_inputs_always_present_once() -> None:
    dom = defaulted("<input type='mouse' bus='ps2'/>")
    assert [(i.type, i.bus) for i in dom.devices.inputs] == [("mouse", "ps2"),
                                                             ("keyboard", "ps2")]


def test_usb_input_addresses() -> None:
    dom = defaulted("<input type='tablet' bus='usb'><address type='usb' bus='0' port='1'/>"
                    "</input><input type='keyboard' bus='usb'/>")
    assert [i.address for i in dom.devices.inputs[:2]] == [USBAddress(0, "1"),
                                                          USBAddress(0, "2")]


def test_graphics_autoport_and_listen_left_to_start() -> None:
    dom = defaulted("<graphics type='vnc'/><graphics type='spice' port='5930'/>")
    vnc, spice = dom.devices.graphics
    assert (vnc.port, vnc.autoport, vnc.listen) == (-1, True, None)
    assert (spice.port, spice.autoport, spice.tls_port) == (5930, False, None)


def test_default_video_only_with_graphics() -> None:
    assert defaulted().devices.videos == []
    video = defaulted("<graphics type='vnc'/>").devices.videos[0]
    assert (video.model, video.vram, video.heads, video.primary) == ("cirrus", 16384, 1, True)


def test_video_memory_defaults_and_rounding() -> None:
    dom = defaulted("<video><model type='qxl' vram='40000'/></video>"
                    "<video><model type='vga' vram='10000'/></video>")
    qxl, vga = dom.devices.videos
    assert (qxl.ram, qxl.vram, qxl.vgamem, qxl.primary) == (65536, 65536, 16384, True)
    assert (vga.vram, vga.primary) == (16384, None)


def test_video_none_gets_nothing() -> None:
    video = defaulted("<graphics type='vnc'/><video><model type='none'/></video>").devices.videos[0]
    assert (video.vram, video.heads, video.primary, video.address) == (None, None, None, None)


def test_memballoon_default_and_none_kept() -> None:
    assert defaulted().devices.memballoon is not None
    balloon = defaulted("<memballoon model='none'/>").devices.memballoon
    assert balloon is not None and (balloon.model, balloon.address) == ("none", None)


def test_boot_hd_unless_per_device() -> None:
    assert defaulted().os.boot_devs == ["hd"]
    dom = defaulted("<interface type='user'><boot order='1'/></interface>")
    assert dom.os.boot_devs == []


def test_unknown_disk_name_with_drive_bus() -> None:
    with pytest.raises(XMLError, match="Unknown disk name 'sd1' and no address specified"):
        defaulted("<disk><source file='/x'/><target dev='sd1' bus='sata'/></disk>")


# --- determinism and idempotence ---------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DATA.glob("*.xml")), ids=lambda p: p.stem)
def test_idempotent(path: Path) -> None:
    dom = parse_domain_xml(path.read_text())
    apply_defaults(dom, HOST)
    once = copy.deepcopy(dom)
    apply_defaults(dom, HOST)
    assert dom == once


@pytest.mark.parametrize("path", sorted(DATA.glob("*.xml")), ids=lambda p: p.stem)
def test_deterministic_apart_from_random_ids(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domain_defaults, "random_mac", lambda: "52:54:00:12:34:56")
    monkeypatch.setattr(domain_defaults, "new_uuid", lambda: str(uuid.UUID(int=1)))
    first, second = (parse_domain_xml(path.read_text()) for _ in range(2))
    apply_defaults(first, HOST)
    apply_defaults(second, HOST)
    assert first == second
