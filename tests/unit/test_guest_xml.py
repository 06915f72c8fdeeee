"""The test guest's pure parts: domain XML, parameter checks, the console protocol,
the initramfs writer and the kernel-module dependency walk (on synthetic ELF files)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pyvirt.lab import cli, guest
from pyvirt.lab.guest import (
    CORRUPT_MARK,
    DISK_CORRUPT_RE,
    DISK_PROGRESS_RE,
    DISK_READY_RE,
    EXIT_RE,
    HEARTBEAT_RE,
    MEM_CORRUPT_RE,
    POWEROFF_RE,
    READY_RE,
    SELFTEST_RE,
    GuestConfigError,
    GuestImage,
    domain_xml,
)


@pytest.fixture(autouse=True)
def _guest_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "guest"
    monkeypatch.setenv(guest.GUEST_DIR_ENV, str(directory))
    return directory


def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def _cmdline(root: ET.Element) -> list[str]:
    return (root.findtext("os/cmdline") or "").split()


# ---- XML shape -------------------------------------------------------------------


def test_default_xml_has_exactly_the_agreed_shape(_guest_dir: Path) -> None:
    root = _parse(domain_xml("g1"))
    assert root.tag == "domain" and root.attrib == {"type": "qemu"}
    assert [c.tag for c in root] == [
        "name", "memory", "vcpu", "os", "features", "on_poweroff", "on_reboot", "on_crash",
        "devices",
    ]  # fmt: skip
    assert root.findtext("name") == "g1"
    memory = root.find("memory")
    assert memory is not None and memory.attrib == {"unit": "MiB"} and memory.text == "256"
    assert root.findtext("vcpu") == "1"
    os_el = root.find("os")
    assert os_el is not None
    assert [c.tag for c in os_el] == ["type", "kernel", "initrd", "cmdline"]
    type_el = os_el.find("type")
    assert type_el is not None and type_el.text == "hvm"
    assert type_el.attrib == {"arch": "x86_64", "machine": "pc"}
    assert os_el.findtext("kernel") == str(_guest_dir / "vmlinuz")
    assert os_el.findtext("initrd") == str(_guest_dir / "initramfs.img")
    # ACPI on: the power button (system_powerdown) and the guest's own power-off need it.
    features = root.find("features")
    assert features is not None and [(c.tag, c.attrib) for c in features] == [("acpi", {})]
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy", "restart", "destroy",
    ]  # fmt: skip


def test_default_devices_are_serial_console_and_no_balloon() -> None:
    devices = _parse(domain_xml("g1")).find("devices")
    assert devices is not None
    assert [c.tag for c in devices] == ["serial", "console", "memballoon"]
    serial, console, balloon = list(devices)
    assert serial.attrib == {"type": "pty"}
    assert [(t.tag, t.attrib) for t in serial] == [("target", {"port": "0"})]
    assert console.attrib == {"type": "pty"}
    assert [(t.tag, t.attrib) for t in console] == [("target", {"type": "serial", "port": "0"})]
    assert balloon.attrib == {"model": "none"} and len(balloon) == 0


def test_cmdline_carries_console_and_workload_settings() -> None:
    args = _cmdline(_parse(domain_xml("g1", dirty_mb=32, dirty_rate=5)))
    assert args[0] == "console=ttyS0"
    assert "panic=0" in args  # halt, never boot-loop, on a panic
    assert args[-2:] == ["pvw.dirty_mb=32", "pvw.dirty_rate=5"]
    assert not any(a.startswith("pvw.disk") for a in args)


def test_poweroff_after_is_on_the_cmdline_only_when_set() -> None:
    assert not [a for a in _cmdline(_parse(domain_xml("g1"))) if "poweroff" in a]
    assert "poweroff" not in guest.kernel_cmdline(8, 0, poweroff_after=0)
    args = _cmdline(_parse(domain_xml("g1", dirty_mb=8, poweroff_after=30)))
    assert args[-3:] == ["pvw.dirty_mb=8", "pvw.dirty_rate=0", "pvw.poweroff_after=30"]
    cmdline = guest.kernel_cmdline(4, 2, disk=True, disk_mb=1, poweroff_after=5).split()
    assert cmdline[-4:] == [
        "pvw.dirty_rate=2", f"pvw.disk={guest.GUEST_DISK_DEV}", "pvw.disk_mb=1",
        "pvw.poweroff_after=5",
    ]  # fmt: skip


def test_pyvirt_parses_the_xml_and_gives_qemu_acpi() -> None:
    from pyvirt.conf.domain_parse import parse_domain_xml

    dom = parse_domain_xml(domain_xml("g1", poweroff_after=3))
    assert dom.features is not None and dom.features.acpi
    assert dom.os.cmdline is not None and dom.os.cmdline.endswith(" pvw.poweroff_after=3")


def test_memory_type_and_guest_image_are_used(tmp_path: Path) -> None:
    image = GuestImage(
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        manifest=tmp_path / "m",
        kernel_package="linux-image-x",
        kernel_version="1",
        built_at="now",
    )
    root = _parse(domain_xml("g1", memory_mib=1024, guest=image, domain_type="kvm"))
    assert root.attrib["type"] == "kvm"
    assert root.findtext("memory") == "1024"
    assert root.findtext("os/kernel") == str(tmp_path / "k")
    assert root.findtext("os/initrd") == str(tmp_path / "i")


def test_disk_with_explicit_format(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    root = _parse(domain_xml("g1", disk=path, disk_format="qcow2"))
    devices = root.find("devices")
    assert devices is not None
    assert [c.tag for c in devices] == ["disk", "serial", "console", "memballoon"]
    disk = devices[0]
    assert disk.attrib == {"type": "file", "device": "disk"}
    assert [c.tag for c in disk] == ["driver", "source", "target"]
    assert disk[0].attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}
    assert disk[1].attrib == {"file": str(path)}
    assert disk[2].attrib == {"dev": "vda", "bus": "virtio"}
    assert f"pvw.disk={guest.GUEST_DISK_DEV}" in _cmdline(root)


def test_disk_format_is_detected_with_qemu_img(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(b"")
    calls: list[list[str]] = []

    def fake_run(argv: list[str], *, cwd: Path | None = None) -> str:
        calls.append(list(argv))
        return json.dumps({"format": "raw", "virtual-size": 0})

    monkeypatch.setattr(guest, "_run", fake_run)
    root = _parse(domain_xml("g1", disk=path))
    driver = root.find("devices/disk/driver")
    assert driver is not None and driver.attrib["type"] == "raw"
    # -U: the image may be open in a running QEMU, which holds a write lock on it.
    assert calls == [["qemu-img", "info", "-U", "--output=json", str(path)]]


def test_unsupported_detected_format_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.vmdk"
    path.write_bytes(b"")
    monkeypatch.setattr(guest, "_run", lambda argv, cwd=None: '{"format": "vmdk"}')
    with pytest.raises(GuestConfigError, match="vmdk"):
        domain_xml("g1", disk=path)


def test_missing_disk_without_format_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GuestConfigError, match="does not exist"):
        domain_xml("g1", disk=tmp_path / "missing.raw")


def test_relative_disk_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = _parse(domain_xml("g1", disk="d.raw", disk_format="raw")).find("devices/disk/source")
    assert source is not None and source.attrib["file"] == str(tmp_path / "d.raw")


def test_names_and_paths_are_escaped(tmp_path: Path) -> None:
    name = "a<b>&'\"c"
    path = tmp_path / 'it\'s "q" & <x>.raw'
    xml = domain_xml(name, disk=path, disk_format="raw")
    root = _parse(xml)
    assert root.findtext("name") == name
    source = root.find("devices/disk/source")
    assert source is not None and source.attrib["file"] == str(path)


# ---- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_mib": 64}, "memory"),
        ({"memory_mib": 0}, "memory"),
        ({"dirty_mb": -1}, "dirty-mb"),
        ({"dirty_rate": -5}, "dirty-rate"),
        ({"dirty_mb": 256}, "too large"),
        ({"dirty_mb": guest.max_dirty_mb(256) + 1}, "too large"),
        ({"memory_mib": True}, "memory"),
        ({"dirty_mb": 1.5}, "dirty-mb"),
        ({"domain_type": "xen"}, "domain type"),
        ({"disk": "x.raw", "disk_format": "vdi"}, "disk format"),
        ({"poweroff_after": -1}, "poweroff-after"),
        ({"poweroff_after": 2.5}, "poweroff-after"),
        ({"poweroff_after": True}, "poweroff-after"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(GuestConfigError, match=message):
        domain_xml("g1", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a/b", "a\nb"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        domain_xml(name)


def test_largest_allowed_working_set_is_accepted() -> None:
    top = guest.max_dirty_mb(256)
    assert 150 < top < 190  # measured: ~188 MiB fit in a 256 MiB guest
    assert f"pvw.dirty_mb={top}" in domain_xml("g1", dirty_mb=top)


# ---- CLI -------------------------------------------------------------------------


def test_cli_xml_prints_the_domain(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["guest", "xml", "web1", "--memory", "512", "--dirty-mb", "64",
                   "--dirty-rate", "10", "--type", "kvm"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    root = _parse(out)
    assert root.attrib["type"] == "kvm" and root.findtext("name") == "web1"
    assert root.findtext("memory") == "512"
    assert _cmdline(root)[-2:] == ["pvw.dirty_mb=64", "pvw.dirty_rate=10"]


def test_cli_xml_poweroff_after(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["guest", "xml", "g", "--poweroff-after", "7"]) == 0
    assert _cmdline(_parse(capsys.readouterr().out))[-1] == "pvw.poweroff_after=7"
    assert cli.main(["guest", "xml", "g", "--poweroff-after", "0"]) == 0
    assert not [a for a in _cmdline(_parse(capsys.readouterr().out)) if "poweroff" in a]


def test_cli_xml_with_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.qcow2"
    assert cli.main(["guest", "xml", "g", "--disk", str(path), "--disk-format", "qcow2"]) == 0
    source = _parse(capsys.readouterr().out).find("devices/disk/source")
    assert source is not None and source.attrib["file"] == str(path)


@pytest.mark.parametrize(
    "argv",
    [
        ["guest", "xml", "g", "--memory", "abc"],
        ["guest", "xml", "g", "--memory", "-1"],
        ["guest", "xml", "g", "--memory", "100"],
        ["guest", "xml", "g", "--dirty-mb", "-3"],
        ["guest", "xml", "g", "--dirty-mb", "300"],
        ["guest", "xml", "g", "--memory", "256", "--dirty-mb", "256"],
        ["guest", "xml", "g", "--dirty-rate", "x"],
        ["guest", "xml", "g", "--type", "xen"],
        ["guest", "xml", "g", "--poweroff-after", "-1"],
        ["guest", "xml", "g", "--poweroff-after", "soon"],
        ["guest", "xml"],
        ["guest", "frobnicate"],
        ["guest"],
        [],
    ],
)
def test_cli_errors_print_error_and_exit_1(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors leave through parser.exit
        rc = exc.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.startswith("error: ")
    assert captured.out == ""


def test_cli_missing_disk_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["guest", "xml", "g", "--disk", str(tmp_path / "nope.raw")]) == 1
    assert capsys.readouterr().err.startswith("error: disk ")


def test_cli_build_prints_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = GuestImage(tmp_path / "k", tmp_path / "i", tmp_path / "m", "pkg", "1.0", "t")
    seen: list[bool] = []

    def fake_build(dest: Path | None = None, *, force: bool = False) -> GuestImage:
        seen.append(force)
        return image

    monkeypatch.setattr(guest, "build_guest", fake_build)
    assert cli.main(["guest", "build", "--force"]) == 0
    assert seen == [True]
    assert capsys.readouterr().out.splitlines() == [
        f"kernel {tmp_path / 'k'}", f"initrd {tmp_path / 'i'}", f"manifest {tmp_path / 'm'}",
    ]  # fmt: skip


# ---- console protocol ---------------------------------------------------------------


def test_heartbeat_regex_and_parser() -> None:
    line = "PVW HB 42 t_ms=8400 passes=7 dirtied_mib=224 corrupt=0\r"
    m = HEARTBEAT_RE.match(line)
    assert m is not None and m.group(1) == "42" and m.group("passes") == "7"
    hb = guest.parse_heartbeat(line)
    assert hb == guest.Heartbeat(n=42, t_ms=8400, passes=7, dirtied_mib=224, corrupt=0)
    assert guest.parse_heartbeat("PVW DISK 1 gen=2 written=3 verified=4 corrupt=0") is None
    assert guest.parse_heartbeat("xPVW HB 1 t_ms=0 passes=0 dirtied_mib=0 corrupt=0") is None


def test_other_line_regexes() -> None:
    ready = READY_RE.match("PVW READY dirty_mb=32 dirty_rate=0 disk=none uptime_ms=1540")
    assert ready is not None and ready.group("disk") == "none"
    mem = MEM_CORRUPT_RE.match(
        "PVW CORRUPT mem page=3 word=146 expected=0x00000002afd9d5ab got=0x00000001afd9d5ab pass=2"
    )
    assert mem is not None and mem.group("page") == "3" and mem.group("pass_") == "2"
    disk_ready = DISK_READY_RE.match("PVW DISKREADY dev=/dev/vda blocks=4096 direct=1")
    assert disk_ready is not None and disk_ready.group("blocks") == "4096"
    progress = DISK_PROGRESS_RE.match("PVW DISK 5 gen=18 written=4576 verified=8896 corrupt=0")
    assert progress is not None and progress.group("gen") == "18"
    bad = DISK_CORRUPT_RE.match("PVW CORRUPT disk block=5 expected_gen=2 got_gen=1 why=gen")
    assert bad is not None and bad.group("why") == "gen"
    exit_m = EXIT_RE.match("PVW EXIT rc=137\r")
    assert exit_m is not None and exit_m.group("rc") == "137"
    selftest = SELFTEST_RE.match("PVW SELFTEST OK mem_corrupt=1 disk_corrupt=2")
    assert selftest is not None and selftest.group("result") == "OK"
    for reason in ("acpi", "timer"):
        poweroff = POWEROFF_RE.match(f"PVW POWEROFF reason={reason}\r")
        assert poweroff is not None and poweroff.group("reason") == reason
    assert POWEROFF_RE.match("PVW POWEROFF reason=whim") is None


def test_corrupt_mark_covers_memory_and_disk_only() -> None:
    assert CORRUPT_MARK in "PVW CORRUPT mem page=1 word=0 expected=0x1 got=0x0 pass=1"
    assert CORRUPT_MARK in "PVW CORRUPT disk block=5 expected_gen=2 got_gen=1 why=gen"
    assert CORRUPT_MARK not in "PVW HB 1 t_ms=0 passes=0 dirtied_mib=0 corrupt=0"


def test_workload_source_prints_the_documented_prefixes() -> None:
    # The regexes above are the contract; the C formats must start the same way.
    source = guest.WORKLOAD_SOURCE.read_text()
    for prefix in (
        '"PVW READY dirty_mb=%lu dirty_rate=%lu disk=%s uptime_ms=%"',
        '"PVW HB %" PRIu64 " t_ms=%" PRIu64 " passes=%" PRIu32 " dirtied_mib=%" PRIu64',
        '"PVW CORRUPT mem page=%zu word=%u expected=0x%016" PRIx64 " got=0x%016" PRIx64',
        '"PVW DISKREADY dev=%s blocks=%" PRIu64 " direct=%d"',
        '"PVW DISK %" PRIu64 " gen=%" PRIu32 " written=%" PRIu64 " verified=%" PRIu64',
        '"PVW CORRUPT disk block=%" PRIu64 " expected_gen=%" PRIu32 " got_gen=%" PRIu64',
        '"PVW SELFTEST %s mem_corrupt=%" PRIu64 " disk_corrupt=%" PRIu64',
        '"PVW POWEROFF reason=%s"',
    ):
        assert prefix in source, prefix
    assert 'return "acpi";' in source and 'return "timer";' in source
    init = guest.INIT_SOURCE.read_text()
    assert 'echo "PVW EXIT rc=$?"' in init
    # The power-button drivers always load; the workload really powers off only there.
    assert "load_modules power\n" in init and "/bin/pvworkload --guest\n" in init


# ---- initramfs writer ----------------------------------------------------------------


def _read_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, rdev)


def test_initramfs_layout() -> None:
    disk = [("virtio", b"\x7fELF-a"), ("virtio_blk", b"\x7fELF-b")]
    power = [("button", b"\x7fELF-c"), ("evdev", b"\x7fELF-d")]
    image = guest.build_initramfs(b"BUSYBOX", b"WORKLOAD", b"#!/bin/sh\n", disk, power)
    entries = _read_cpio(gzip.decompress(image))
    assert entries["init"] == (0o100755, b"#!/bin/sh\n", (0, 0))
    assert entries["bin/busybox"][:2] == (0o100755, b"BUSYBOX")
    assert entries["bin/pvworkload"][:2] == (0o100755, b"WORKLOAD")
    assert entries["bin/sh"][:2] == (0o120777, b"busybox")
    assert entries["dev/console"] == (0o020600, b"", (5, 1))
    for d in ("dev", "proc", "sys", "tmp", "lib/modules"):
        assert entries[d][0] == 0o040755
    assert entries["lib/modules/virtio_blk.ko"][1] == b"\x7fELF-b"
    assert entries["lib/modules/evdev.ko"][1] == b"\x7fELF-d"
    assert entries["lib/modules/disk.order"][1] == b"virtio.ko\nvirtio_blk.ko\n"
    assert entries["lib/modules/power.order"][1] == b"button.ko\nevdev.ko\n"


def test_initramfs_module_sets_may_be_empty_or_overlap() -> None:
    entries = _read_cpio(gzip.decompress(guest.build_initramfs(b"B", b"W", b"I", [])))
    assert entries["lib/modules/disk.order"][1] == entries["lib/modules/power.order"][1] == b""
    assert not [n for n in entries if n.endswith(".ko")]
    shared = [("input_core", b"\x7fELF-i")]
    image = guest.build_initramfs(b"B", b"W", b"I", shared, [*shared, ("evdev", b"e")])
    archive = gzip.decompress(image)
    assert archive.count(b"lib/modules/input_core.ko\0") == 1  # stored once
    assert _read_cpio(archive)["lib/modules/power.order"][1] == b"input_core.ko\nevdev.ko\n"


def test_initramfs_is_reproducible() -> None:
    args = (b"B", b"W", b"I", [("m", b"x")], [("p", b"y")])
    assert guest.build_initramfs(*args) == guest.build_initramfs(*args)


# ---- kernel modules (synthetic ELF) ----------------------------------------------------


def _elf(sections: dict[str, bytes], interp: bool = False) -> bytes:
    """A minimal ELF64: a header, optional PT_INTERP, the sections and .shstrtab."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    body = b""
    headers = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    phdrs = struct.pack("<IIQQQQQQ", 3 if interp else 1, 0, 0, 0, 0, 0, 0, 0)
    data_start = 64 + len(phdrs)
    name_off = 1
    for name, content in [*sections.items(), (".shstrtab", names)]:
        headers.append(
            struct.pack(
                "<IIQQQQIIQQ", name_off, 1, 0, 0, data_start + len(body), len(content), 0, 0, 1, 0
            )
        )
        name_off += len(name) + 1
        body += content
    shoff = data_start + len(body)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 64, shoff, 0, 64, 56, 1, 64, len(headers),
        len(headers) - 1,
    )  # fmt: skip
    return header + phdrs + body + b"".join(headers)


def test_elf_helpers() -> None:
    module = _elf({".text": b"\x90" * 7, ".modinfo": b"license=GPL\0depends=virtio,virtio-ring\0"})
    assert guest.elf_section(module, ".text") == b"\x90" * 7
    assert guest.elf_section(module, ".nope") is None
    assert guest.modinfo_depends(module) == ["virtio", "virtio_ring"]
    assert guest.modinfo_depends(_elf({".modinfo": b"depends=\0"})) == []
    assert guest.elf_is_static(_elf({}))
    assert not guest.elf_is_static(_elf({}, interp=True))
    with pytest.raises(guest.GuestBuildError):
        guest.elf_section(b"#!/bin/sh\n" + b"\0" * 64, ".modinfo")


def _kernel_tree(root: Path, config: str, modules: dict[str, str]) -> guest.KernelTree:
    moddir = root / "lib/modules/6.1.0-test"
    (moddir / "kernel").mkdir(parents=True)
    for name, depends in modules.items():
        info = f"name={name}\0depends={depends}\0".encode()
        (moddir / "kernel" / f"{name}.ko").write_bytes(_elf({".modinfo": info}))
    (root / "config").write_text(config)
    return guest.KernelTree("6.1.0-test", root / "vmlinuz", root / "config", moddir)


def test_disk_modules_in_dependency_order(tmp_path: Path) -> None:
    tree = _kernel_tree(
        tmp_path,
        "CONFIG_VIRTIO=m\nCONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_BLK=m\n# CONFIG_X is not set\n",
        {"virtio": "", "virtio_ring": "", "virtio_pci": "virtio,virtio_ring",
         "virtio_blk": "virtio,virtio_ring", "unrelated": ""},
    )  # fmt: skip
    names = [name for name, _ in guest.disk_modules(tree)]
    assert sorted(names) == ["virtio", "virtio_blk", "virtio_pci", "virtio_ring"]
    for mod, deps in (("virtio_pci", ["virtio", "virtio_ring"]), ("virtio_blk", ["virtio"])):
        assert all(names.index(d) < names.index(mod) for d in deps)


def test_built_in_disk_driver_needs_no_modules(tmp_path: Path) -> None:
    tree = _kernel_tree(tmp_path, "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=y\n", {})
    assert guest.disk_modules(tree) == []


def test_missing_disk_driver_is_a_build_error(tmp_path: Path) -> None:
    tree = _kernel_tree(tmp_path, "CONFIG_VIRTIO_PCI=y\n", {})
    with pytest.raises(guest.GuestBuildError, match="CONFIG_VIRTIO_BLK"):
        guest.disk_modules(tree)
    tree2 = _kernel_tree(tmp_path / "b", "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\n",
                         {"virtio_blk": "virtio"})  # fmt: skip
    with pytest.raises(guest.GuestBuildError, match="virtio"):
        guest.disk_modules(tree2)


def test_power_modules_for_the_acpi_button_and_evdev(tmp_path: Path) -> None:
    tree = _kernel_tree(
        tmp_path, "CONFIG_ACPI_BUTTON=m\nCONFIG_INPUT_EVDEV=m\nCONFIG_VIRTIO_BLK=m\n",
        {"button": "", "evdev": "", "virtio_blk": ""},
    )  # fmt: skip
    assert [name for name, _ in guest.power_modules(tree)] == ["button", "evdev"]
    built_in = _kernel_tree(tmp_path / "b", "CONFIG_ACPI_BUTTON=y\nCONFIG_INPUT_EVDEV=y\n", {})
    assert guest.power_modules(built_in) == []
    no_evdev = _kernel_tree(tmp_path / "c", "CONFIG_ACPI_BUTTON=y\n", {})
    with pytest.raises(guest.GuestBuildError, match="CONFIG_INPUT_EVDEV"):
        guest.power_modules(no_evdev)


# ---- build cache ---------------------------------------------------------------------


def _fake_build(directory: Path) -> None:
    directory.mkdir(parents=True)
    for name in (guest.KERNEL_FILE, guest.INITRD_FILE):
        (directory / name).write_bytes(b"x")
    manifest = {
        "format": guest.BUILD_FORMAT, "kernel_package": "linux-image-t",
        "kernel_package_version": "1", "built_at": "t", "busybox": str(guest.INIT_SOURCE),
        "kernel_deb": "none.deb",
    }  # fmt: skip
    (directory / guest.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_current_build_is_reused_and_stale_one_is_not(tmp_path: Path) -> None:
    directory = tmp_path / "g"
    _fake_build(directory)
    image = guest.load_guest(directory)
    assert image is not None and not image.rebuilt
    assert image.kernel == directory / "vmlinuz" and image.kernel_package == "linux-image-t"
    assert guest.build_guest(directory) == image  # current: nothing is built
    old = guest.WORKLOAD_SOURCE.stat().st_mtime - 10
    os.utime(directory / guest.INITRD_FILE, (old, old))
    assert guest.load_guest(directory) is None


def test_incomplete_or_foreign_build_is_not_reused(tmp_path: Path) -> None:
    directory = tmp_path / "g"
    _fake_build(directory)
    (directory / guest.KERNEL_FILE).unlink()
    assert guest.load_guest(directory) is None
    _fake_build(tmp_path / "h")
    manifest = json.loads((tmp_path / "h" / guest.MANIFEST_FILE).read_text())
    manifest["format"] = guest.BUILD_FORMAT + 1
    (tmp_path / "h" / guest.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert guest.load_guest(tmp_path / "h") is None
    assert guest.load_guest(tmp_path / "nothing") is None


def test_guest_dir_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(guest.GUEST_DIR_ENV, "/somewhere/else")
    assert guest.guest_dir() == Path("/somewhere/else")
    monkeypatch.delenv(guest.GUEST_DIR_ENV)
    assert guest.guest_dir() == Path("/var/cache/pyvirt/guest")


def test_kernel_package_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
    monkeypatch.setattr(guest, "_run", lambda argv, cwd=None: out)
    monkeypatch.delenv(guest.KERNEL_PACKAGE_ENV, raising=False)
    assert guest.resolve_kernel_package() == "linux-image-6.1.0-56-cloud-amd64"
    monkeypatch.setenv(guest.KERNEL_PACKAGE_ENV, "linux-image-6.12.9-cloud-amd64")
    assert guest.resolve_kernel_package() == "linux-image-6.12.9-cloud-amd64"
