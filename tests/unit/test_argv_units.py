"""Unit tests of the argv builder on hand-built DomainDefs: tables, numbering, refusals."""

from __future__ import annotations

import json

import pytest

from pyvirt.conf.domain import (
    CharDevDef,
    ClockDef,
    ControllerDef,
    CPUDef,
    CPUTopology,
    DiskDef,
    DomainDef,
    DriveAddress,
    Features,
    GraphicsDef,
    InputDef,
    InterfaceDef,
    MemballoonDef,
    PCIAddress,
    TimerDef,
    VideoDef,
    VirtioSerialAddress,
)
from pyvirt.errors import ConfigUnsupportedError, InternalError
from pyvirt.qemu.argv import LaunchOptions, LaunchPaths, build_argv, format_args
from pyvirt.qemu.argv_disk import CACHE_MODES, disk_name_index

PATHS = LaunchPaths(
    monitor_socket="/run/pyvirt/qemu/t/monitor.sock",
    pidfile="/run/pyvirt/qemu/t/qemu.pid",
    serial_log_prefix="/var/log/pyvirt/qemu/t-serial",
)


def make_dom(machine: str = "pc-i440fx-10.0", type_: str = "qemu") -> DomainDef:
    dom = DomainDef(type=type_, name="t", uuid="6f2a1d4e-9d43-4b8c-a4f3-0c1d2e3f4a5b",
                    memory_kib=262144, vcpus=1)
    dom.os.machine = machine
    dom.devices.emulator = "/usr/bin/qemu-system-x86_64"
    return dom


def argv_of(dom: DomainDef, opts: LaunchOptions | None = None) -> list[str]:
    return build_argv(dom, PATHS, opts or LaunchOptions())


def values(argv: list[str], opt: str) -> list[str]:
    """Every value given to option ``opt``."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == opt]


def one(argv: list[str], opt: str) -> str:
    found = values(argv, opt)
    assert len(found) == 1, (opt, found)
    return found[0]


def disk(dev: str, bus: str, **kw: object) -> DiskDef:
    return DiskDef(type="file", target_dev=dev, target_bus=bus, source=f"/img/{dev}.img",
                   **kw)  # type: ignore[arg-type]


# --- shape -------------------------------------------------------------------------------


def test_minimal_shape() -> None:
    argv = argv_of(make_dom())
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert one(argv, "-name") == "guest=t,debug-threads=on"
    assert "-daemonize" not in argv  # QEMU stays in the foreground: stderr -> domain log
    for flag in ("-S", "-no-user-config", "-nodefaults", "-no-shutdown"):
        assert flag in argv
    assert one(argv, "-machine") == "pc-i440fx-10.0,usb=off,dump-guest-core=off,acpi=off"
    assert one(argv, "-accel") == "tcg"
    assert one(argv, "-m") == "size=262144k"
    assert one(argv, "-smp") == "1,sockets=1,dies=1,cores=1,threads=1"
    assert one(argv, "-display") == "none"
    assert one(argv, "-boot") == "strict=on"
    assert one(argv, "-rtc") == "base=utc"
    assert "-cpu" not in argv  # QEMU's default model, as libvirt does for qemu64
    assert "-incoming" not in argv
    assert one(argv, "-chardev") == (
        "socket,id=charmonitor,path=/run/pyvirt/qemu/t/monitor.sock,server=on,wait=off")
    assert argv[-2:] == ["-msg", "timestamp=on"]


def test_deterministic() -> None:
    dom = make_dom()
    dom.devices.disks = [disk("vda", "virtio"), disk("vdb", "virtio")]
    assert argv_of(dom) == argv_of(dom)


def test_incoming_defer_is_last() -> None:
    argv = argv_of(make_dom(), LaunchOptions(incoming="defer"))
    assert argv[-2:] == ["-incoming", "defer"]


def test_commas_in_values_are_doubled() -> None:
    dom = make_dom()
    dom.name = "a,b"
    argv = build_argv(dom, LaunchPaths("/run/x,y/mon", "/p", "/log,s"))
    assert one(argv, "-name") == "guest=a,,b,debug-threads=on"
    assert "path=/run/x,,y/mon," in values(argv, "-chardev")[0]


def test_format_args() -> None:
    text = format_args(["/usr/bin/qemu", "-S", "-name", "guest=x", "-append", "a b",
                        "-no-shutdown"])
    assert text == "/usr/bin/qemu \\\n-S \\\n-name guest=x \\\n-append 'a b' \\\n-no-shutdown\n"


# --- machine, cpu, clock -----------------------------------------------------------------


def test_q35_features_and_kvm() -> None:
    dom = make_dom("pc-q35-10.0", "kvm")
    dom.features = Features(acpi=True, apic=True, vmport="off")
    dom.clock = ClockDef(offset="localtime", timers=[
        TimerDef("rtc", tickpolicy="catchup", track="guest"),
        TimerDef("pit", tickpolicy="delay"),
        TimerDef("hpet", present="no"),
    ])
    argv = argv_of(dom)
    assert one(argv, "-machine") == "pc-q35-10.0,usb=off,dump-guest-core=off,hpet=off," \
        "vmport=off,acpi=on"
    assert one(argv, "-accel") == "kvm"
    assert one(argv, "-rtc") == "base=localtime,clock=vm,driftfix=slew"
    assert one(argv, "-global") == "kvm-pit.lost_tick_policy=delay"


@pytest.mark.parametrize(("policy", "qemu"), [("catchup", "slew"), ("discard", "discard")])
def test_kvm_pit_policies(policy: str, qemu: str) -> None:
    dom = make_dom(type_="kvm")
    dom.clock = ClockDef(timers=[TimerDef("pit", tickpolicy=policy)])
    assert one(argv_of(dom), "-global") == f"kvm-pit.lost_tick_policy={qemu}"


def test_tcg_pit_delay_is_implicit_others_refused() -> None:
    dom = make_dom()
    dom.clock = ClockDef(timers=[TimerDef("pit", tickpolicy="delay")])
    assert "-global" not in argv_of(dom)
    dom.clock = ClockDef(timers=[TimerDef("pit", tickpolicy="catchup")])
    with pytest.raises(ConfigUnsupportedError, match="pit tickpolicy"):
        argv_of(dom)


@pytest.mark.parametrize("timer", [
    TimerDef("tsc"), TimerDef("rtc", tickpolicy="merge"), TimerDef("rtc", present="no"),
    TimerDef("rtc", track="boot"), TimerDef("hpet", tickpolicy="delay"),
])
def test_unsupported_timers(timer: TimerDef) -> None:
    dom = make_dom()
    dom.clock = ClockDef(timers=[timer])
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_kvmclock_off_needs_a_model() -> None:
    dom = make_dom(type_="kvm")
    dom.clock = ClockDef(timers=[TimerDef("kvmclock", present="no")])
    assert one(argv_of(dom), "-cpu") == "qemu64,kvmclock=off"


@pytest.mark.parametrize(("cpu", "type_", "expected"), [
    (CPUDef(mode="host-passthrough"), "kvm", "host"),
    (CPUDef(mode="host-passthrough", migratable="off"), "kvm", "host,migratable=off"),
    (CPUDef(mode="maximum"), "qemu", "max"),
    (CPUDef(mode="maximum", migratable="off"), "qemu", "max,migratable=off"),
    (CPUDef(mode="host-model"), "kvm", "host"),
    (CPUDef(mode="custom", model="Skylake-Client-v4"), "qemu", "Skylake-Client-v4"),
])
def test_cpu_modes(cpu: CPUDef, type_: str, expected: str) -> None:
    dom = make_dom(type_=type_)
    dom.cpu = cpu
    assert one(argv_of(dom), "-cpu") == expected


@pytest.mark.parametrize("cpu", [
    CPUDef(mode="host-passthrough"), CPUDef(mode="host-model"),
    CPUDef(mode="custom", model="bad,model"), CPUDef(mode="custom", model="qemu64",
                                                     migratable="off"),
    CPUDef(mode="weird"),
])
def test_cpu_refused_under_tcg(cpu: CPUDef) -> None:
    dom = make_dom()
    dom.cpu = cpu
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_custom_without_model_keeps_default_but_has_topology() -> None:
    dom = make_dom()
    dom.vcpus = 8
    dom.cpu = CPUDef(topology=CPUTopology(sockets=2, dies=2, cores=1, threads=2))
    argv = argv_of(dom)
    assert "-cpu" not in argv
    assert one(argv, "-smp") == "8,sockets=2,dies=2,cores=1,threads=2"


def test_topology_mismatch() -> None:
    dom = make_dom()
    dom.vcpus = 3
    dom.cpu = CPUDef(topology=CPUTopology(sockets=1, dies=1, cores=2, threads=1))
    with pytest.raises(ConfigUnsupportedError, match="topology"):
        argv_of(dom)


@pytest.mark.parametrize(("field", "value"), [
    ("type", "xen"), ("vcpu_placement", "auto"), ("on_reboot", "preserve"),
    ("memory_kib", 0),
])
def test_domain_level_refusals(field: str, value: object) -> None:
    dom = make_dom()
    setattr(dom, field, value)
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_machine_refusals() -> None:
    for machine in ("microvm", "isapc"):
        with pytest.raises(ConfigUnsupportedError, match="machine type"):
            argv_of(make_dom(machine))
    with pytest.raises(InternalError):
        argv_of(make_dom(None))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["uuid", "emulator"])
def test_missing_defaults_are_internal_errors(field: str) -> None:
    dom = make_dom()
    if field == "uuid":
        dom.uuid = None
    else:
        dom.devices.emulator = None
    with pytest.raises(InternalError):
        argv_of(dom)


def test_on_reboot_destroy() -> None:
    dom = make_dom()
    dom.on_reboot = "destroy"
    assert one(argv_of(dom), "-action") == "reboot=shutdown"


def test_kernel() -> None:
    dom = make_dom()
    dom.os.kernel, dom.os.initrd, dom.os.cmdline = "/k", "/i", "console=ttyS0 -- x"
    argv = argv_of(dom)
    assert (one(argv, "-kernel"), one(argv, "-initrd")) == ("/k", "/i")
    assert one(argv, "-append") == "console=ttyS0 -- x"


def test_os_boot_devs_become_bootindexes() -> None:
    dom = make_dom()
    dom.os.boot_devs = ["fd", "cdrom", "hd", "network"]
    dom.devices.disks = [disk("vda", "virtio"), disk("vdb", "virtio"),
                         disk("hdc", "ide", device="cdrom")]
    dom.devices.interfaces = [InterfaceDef("user", mac="52:54:00:00:00:01"),
                              InterfaceDef("user", mac="52:54:00:00:00:02")]
    argv = argv_of(dom)
    assert one(argv, "-boot") == "strict=on"
    boot = [next((p for p in d.split(",") if p.startswith("bootindex=")), None)
            for d in values(argv, "-device")]
    # vda, vdb, hdc, net0, net1: first disk, first cdrom, first NIC; fd leaves a gap
    assert boot == ["bootindex=3", None, "bootindex=2", "bootindex=4", None]


@pytest.mark.parametrize("devs", [["hd", "hd"], ["floppy"]])
def test_os_boot_devs_refused(devs: list[str]) -> None:
    dom = make_dom()
    dom.os.boot_devs = devs
    with pytest.raises(ConfigUnsupportedError, match="boot device"):
        argv_of(dom)


def test_os_boot_and_device_boot_conflict() -> None:
    dom = make_dom()
    dom.os.boot_devs = ["hd"]
    dom.devices.disks = [disk("vda", "virtio", boot_order=1)]
    with pytest.raises(ConfigUnsupportedError, match="boot"):
        argv_of(dom)


# --- disks -------------------------------------------------------------------------------


def blockdevs(argv: list[str]) -> list[dict[str, object]]:
    return [json.loads(v) for v in values(argv, "-blockdev")]


def test_node_numbering_counts_from_the_last_disk() -> None:
    dom = make_dom()
    dom.devices.disks = [disk("vda", "virtio"),
                         DiskDef(type="file", target_dev="hdc", target_bus="ide",
                                 device="cdrom"),
                         disk("vdb", "virtio")]
    names = [b["node-name"] for b in blockdevs(argv_of(dom))]
    # the empty CD-ROM consumes number 2 but has no nodes
    assert names == ["libvirt-3-storage", "libvirt-3-format",
                     "libvirt-1-storage", "libvirt-1-format"]
    devices = values(argv_of(dom), "-device")
    assert "ide-cd,bus=ide.1,unit=0,id=ide0-1-0" in devices


@pytest.mark.parametrize("mode", sorted(CACHE_MODES))
def test_cache_modes(mode: str) -> None:
    dom = make_dom()
    dom.devices.disks = [disk("vda", "virtio", cache=mode)]
    argv = argv_of(dom)
    storage, fmt = blockdevs(argv)
    dev = one(argv, "-device")
    expected = CACHE_MODES[mode]
    if expected is None:
        assert "cache" not in storage and "cache" not in fmt and "write-cache" not in dev
        return
    cache = {"direct": expected.direct, "no-flush": expected.no_flush}
    assert storage["cache"] == cache and fmt["cache"] == cache
    assert f"write-cache={'on' if expected.write_cache else 'off'}" in dev


def test_cache_table_matches_libvirt() -> None:
    table = {k: v and (v.direct, v.no_flush, v.write_cache) for k, v in CACHE_MODES.items()}
    assert table == {
        "default": None,
        "none": (True, False, True),
        "writethrough": (False, False, False),
        "writeback": (False, False, True),
        "directsync": (True, False, False),
        "unsafe": (False, True, True),
    }


def test_io_modes() -> None:
    dom = make_dom()
    dom.devices.disks = [disk("vda", "virtio", io="native", cache="none"),
                         disk("vdb", "virtio", io="threads"),
                         disk("vdc", "virtio", io="io_uring")]
    storages = blockdevs(argv_of(dom))[::2]
    assert [s["aio"] for s in storages] == ["native", "threads", "io_uring"]


@pytest.mark.parametrize("kw", [
    {"io": "native"}, {"io": "native", "cache": "writeback"}, {"io": "posix"},
    {"io": "native", "cache": "default"},
    {"cache": "fast"}, {"driver_type": "vmdk"}, {"driver_name": "tap"},
])
def test_disk_driver_refusals(kw: dict[str, str]) -> None:
    dom = make_dom()
    dom.devices.disks = [disk("vda", "virtio", **kw)]
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_readonly_shareable_serial() -> None:
    dom = make_dom()
    dom.devices.controllers = [ControllerDef("scsi", 0, "virtio-scsi")]
    dom.devices.disks = [disk("sda", "scsi", readonly=True, shareable=True, serial="S,1")]
    argv = argv_of(dom)
    assert blockdevs(argv)[1]["read-only"] is True
    scsi = values(argv, "-device")[1]
    assert scsi == ("scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,"
                    "device_id=drive-scsi0-0-0-0,drive=libvirt-1-format,id=scsi0-0-0-0,"
                    "share-rw=on,serial=S,,1")


def test_block_cdrom_uses_host_cdrom() -> None:
    dom = make_dom()
    dom.devices.disks = [DiskDef(type="block", target_dev="hdc", target_bus="ide",
                                 device="cdrom", source="/dev/sr0"),
                         DiskDef(type="block", target_dev="vda", target_bus="virtio",
                                 source="/dev/vg/lv")]
    storage_cd, fmt_cd, storage_hd, _ = blockdevs(argv_of(dom))
    assert storage_cd["driver"] == "host_cdrom" and fmt_cd["read-only"] is True
    assert storage_hd["driver"] == "host_device"


@pytest.mark.parametrize(("machine", "bus", "dev", "expected"), [
    ("pc-i440fx-10.0", "ide", "hdb", "ide-hd,bus=ide.0,unit=1,"),
    ("pc-i440fx-10.0", "ide", "hdd", "ide-hd,bus=ide.1,unit=1,"),
    ("pc-q35-10.0", "sata", "sdc", "ide-hd,bus=ide.2,"),
])
def test_drive_address_fallback(machine: str, bus: str, dev: str, expected: str) -> None:
    dom = make_dom(machine)
    dom.devices.disks = [disk(dev, bus)]
    assert one(argv_of(dom), "-device").startswith(expected)


def test_explicit_drive_address_and_sata_on_pc() -> None:
    dom = make_dom()
    dom.devices.controllers = [ControllerDef("sata", 0, address=PCIAddress(slot=7))]
    dom.devices.disks = [disk("sda", "sata", address=DriveAddress(unit=3))]
    argv = argv_of(dom)
    assert values(argv, "-device") == [
        "ich9-ahci,id=sata0,bus=pci.0,addr=0x7",
        "ide-hd,bus=sata0.3,drive=libvirt-1-format,id=sata0-0-3",
    ]


@pytest.mark.parametrize(("machine", "d"), [
    ("pc-i440fx-10.0", disk("hda", "ide", readonly=True)),
    ("pc-q35-10.0", disk("hda", "ide")),
    ("pc-i440fx-10.0", disk("sda", "sata")),  # no sata controller on pc
    ("pc-i440fx-10.0", disk("sda", "scsi")),  # no scsi controller
    ("pc-i440fx-10.0", disk("vda", "virtio", device="cdrom")),
    ("pc-i440fx-10.0", disk("vda", "usb")),
    ("pc-i440fx-10.0", disk("xvda", "virtio")),
    ("pc-i440fx-10.0", DiskDef(type="file", target_dev="vda", target_bus="virtio")),
    ("pc-i440fx-10.0", DiskDef(type="network", target_dev="vda", target_bus="virtio",
                               source="nbd://x")),
    ("pc-i440fx-10.0", disk("vda", "virtio", address=DriveAddress())),
])
def test_disk_refusals(machine: str, d: DiskDef) -> None:
    dom = make_dom(machine)
    dom.devices.disks = [d]
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_disk_name_index() -> None:
    assert [disk_name_index(n, "vd") for n in ("vda", "vdz", "vdaa", "vdab")] == [0, 25, 26, 27]
    with pytest.raises(ConfigUnsupportedError):
        disk_name_index("vd1", "vd")


# --- controllers, network, inputs, balloon -----------------------------------------------


def test_controllers() -> None:
    dom = make_dom("pc-q35-10.0")
    dom.devices.controllers = [
        ControllerDef("virtio-serial", 0, address=PCIAddress(slot=7)),
        ControllerDef("pci", 0, "pcie-root"),
        ControllerDef("usb", 0, "qemu-xhci", address=PCIAddress(slot=1)),
        ControllerDef("scsi", 0, "virtio-scsi", address=PCIAddress(slot=5)),
        ControllerDef("sata", 0),
        ControllerDef("sata", 1, address=PCIAddress(slot=6)),
    ]
    # in table order (usb, sata, scsi, virtio-serial); the root and ICH9 AHCI are built in
    assert values(argv_of(dom), "-device") == [
        "qemu-xhci,id=usb,bus=pcie.0,addr=0x1",
        "ich9-ahci,id=sata1,bus=pcie.0,addr=0x6",
        "virtio-scsi-pci,id=scsi0,bus=pcie.0,addr=0x5",
        "virtio-serial-pci,id=virtio-serial0,bus=pcie.0,addr=0x7",
    ]


@pytest.mark.parametrize(("machine", "ctrl"), [
    ("pc-q35-10.0", ControllerDef("pci", 0, "pci-root")),
    ("pc-i440fx-10.0", ControllerDef("pci", 1, "pcie-root-port")),
    ("pc-q35-10.0", ControllerDef("pci", 1, "pci-bridge")),
    ("pc-i440fx-10.0", ControllerDef("usb", 0, "nec-xhci")),
    ("pc-i440fx-10.0", ControllerDef("usb", 0, "ehci")),
    ("pc-i440fx-10.0", ControllerDef("scsi", 0, "lsilogic")),
    ("pc-i440fx-10.0", ControllerDef("ide", 1)),
    ("pc-i440fx-10.0", ControllerDef("fdc", 0)),
])
def test_controller_refusals(machine: str, ctrl: ControllerDef) -> None:
    dom = make_dom(machine)
    dom.devices.controllers = [ctrl]
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_usb_default_models_and_none() -> None:
    dom = make_dom()
    dom.devices.controllers = [ControllerDef("usb", 0)]
    assert one(argv_of(dom), "-device") == "piix3-usb-uhci,id=usb"
    dom.devices.controllers = [ControllerDef("usb", 0, "none")]
    dom.devices.inputs = [InputDef("tablet", "usb")]
    with pytest.raises(ConfigUnsupportedError, match="no USB controller"):
        argv_of(dom)


@pytest.mark.parametrize(("model", "driver"), [
    ("virtio", "virtio-net-pci"), ("e1000", "e1000"), ("e1000e", "e1000e"),
    ("rtl8139", "rtl8139"), (None, "rtl8139"),
])
def test_nic_models(model: str | None, driver: str) -> None:
    dom = make_dom()
    dom.devices.interfaces = [InterfaceDef("user", mac="52:54:00:00:00:01", model=model,
                                           boot_order=2, address=PCIAddress(slot=3))]
    argv = argv_of(dom)
    assert one(argv, "-netdev") == "user,id=hostnet0"
    assert one(argv, "-device") == (f"{driver},netdev=hostnet0,id=net0,mac=52:54:00:00:00:01,"
                                    "bootindex=2,bus=pci.0,addr=0x3")


def test_bridge_needs_tap() -> None:
    dom = make_dom()
    net = InterfaceDef("bridge", mac="52:54:00:00:00:01", source_bridge="br0")
    dom.devices.interfaces = [net]
    with pytest.raises(InternalError, match="tap"):
        argv_of(dom)
    net.target_dev = "vnet7"
    with pytest.raises(InternalError, match="not opened"):  # QEMU may not open the tap
        argv_of(dom)
    paths = LaunchPaths(PATHS.monitor_socket, PATHS.pidfile, PATHS.serial_log_prefix,
                        tap_fds={"vnet7": 23})
    assert one(build_argv(dom, paths, LaunchOptions()), "-netdev") == "tap,id=hostnet0,fd=23"


@pytest.mark.parametrize("net", [
    InterfaceDef("user"), InterfaceDef("network", mac="52:54:00:00:00:01"),
    InterfaceDef("user", mac="52:54:00:00:00:01", model="ne2k_pci"),
])
def test_interface_refusals(net: InterfaceDef) -> None:
    dom = make_dom()
    dom.devices.interfaces = [net]
    with pytest.raises((ConfigUnsupportedError, InternalError)):
        argv_of(dom)


def test_inputs_come_last_and_ps2_is_implicit() -> None:
    dom = make_dom()
    dom.devices.controllers = [ControllerDef("usb", 0, "piix3-uhci")]
    dom.devices.inputs = [InputDef("tablet", "usb"), InputDef("keyboard", "usb"),
                          InputDef("mouse", "ps2"), InputDef("keyboard", "virtio")]
    dom.devices.memballoon = MemballoonDef("virtio", PCIAddress(slot=5))
    devices = values(argv_of(dom), "-device")
    assert devices[-4:] == ["virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x5",
                            "usb-tablet,id=input0,bus=usb.0,port=1",
                            "usb-kbd,id=input1,bus=usb.0,port=2",
                            "virtio-keyboard-pci,id=input3"]


def test_input_refusal_and_balloon_none() -> None:
    dom = make_dom()
    dom.devices.memballoon = MemballoonDef("none")
    assert "-device" not in argv_of(dom)
    dom.devices.inputs = [InputDef("tablet", "ps2")]
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)
    dom.devices.inputs = []
    dom.devices.memballoon = MemballoonDef("xen")
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


# --- character devices -------------------------------------------------------------------


def test_serials() -> None:
    dom = make_dom()
    dom.devices.serials = [
        CharDevDef("serial", "pty"),
        CharDevDef("serial", "file", source_path="/var/log/s1", source_append="on",
                   target_port=1, log_file="/l/s1", log_append="off"),
        CharDevDef("serial", "unix", source_path="/run/s2", source_mode="connect",
                   target_type="pci-serial", address=PCIAddress(slot=9)),
    ]
    dom.devices.consoles = [CharDevDef("console", "pty", target_type="serial")]
    argv = argv_of(dom)
    assert values(argv, "-chardev")[1:] == [
        "pty,id=charserial0,logfile=/var/log/pyvirt/qemu/t-serial0.log,logappend=on",
        "file,id=charserial1,path=/var/log/s1,append=on,logfile=/l/s1,logappend=off",
        "socket,id=charserial2,path=/run/s2,logfile=/var/log/pyvirt/qemu/t-serial2.log,"
        "logappend=on",
    ]
    assert values(argv, "-device") == [
        "isa-serial,chardev=charserial0,id=serial0,index=0",
        "isa-serial,chardev=charserial1,id=serial1,index=1",
        "pci-serial,chardev=charserial2,id=serial2,bus=pci.0,addr=0x9",
    ]


def test_console_without_serial_becomes_serial0() -> None:
    dom = make_dom()
    dom.devices.consoles = [CharDevDef("console", "pty")]
    assert one(argv_of(dom), "-device") == "isa-serial,chardev=charserial0,id=serial0,index=0"


def test_console_on_missing_port() -> None:
    dom = make_dom()
    dom.devices.serials = [CharDevDef("serial", "pty")]
    dom.devices.consoles = [CharDevDef("console", "pty", target_type="serial", target_port=3)]
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_virtio_console_and_channels() -> None:
    dom = make_dom()
    dom.devices.controllers = [ControllerDef("virtio-serial", 0)]
    dom.devices.consoles = [CharDevDef("console", "pty", target_type="virtio")]
    dom.devices.channels = [
        CharDevDef("channel", "unix", source_path="/run/ga", target_type="virtio",
                   target_name="org.qemu.guest_agent.0",
                   address=VirtioSerialAddress(port=1)),
        CharDevDef("channel", "pty", target_type="virtio", target_name="x"),
    ]
    argv = argv_of(dom)
    assert values(argv, "-chardev")[1:] == [
        "pty,id=charconsole0",
        "socket,id=charchannel0,path=/run/ga,server=on,wait=off",
        "pty,id=charchannel1",
    ]
    assert values(argv, "-device")[1:] == [
        "virtconsole,chardev=charconsole0,id=console0",
        "virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,"
        "name=org.qemu.guest_agent.0",
        "virtserialport,chardev=charchannel1,id=channel1,name=x",
    ]


@pytest.mark.parametrize(("controllers", "chan", "error"), [
    ([], CharDevDef("channel", "pty", target_type="virtio"), ConfigUnsupportedError),
    ([ControllerDef("virtio-serial", 0)],
     CharDevDef("channel", "unix", target_type="virtio"), InternalError),
    ([ControllerDef("virtio-serial", 0)],
     CharDevDef("channel", "pty", target_type="guestfwd"), ConfigUnsupportedError),
    ([ControllerDef("virtio-serial", 0)],
     CharDevDef("channel", "spicevmc", target_type="virtio"), ConfigUnsupportedError),
    ([ControllerDef("virtio-serial", 0)],
     CharDevDef("channel", "pty", target_type="virtio",
                address=VirtioSerialAddress(controller=1)), ConfigUnsupportedError),
    ([ControllerDef("virtio-serial", 0)],
     CharDevDef("channel", "unix", source_path="/x", source_mode="listen",
                target_type="virtio"), ConfigUnsupportedError),
])
def test_channel_refusals(controllers: list[ControllerDef], chan: CharDevDef,
                          error: type[Exception]) -> None:
    dom = make_dom()
    dom.devices.controllers = controllers
    dom.devices.channels = [chan]
    with pytest.raises(error):
        argv_of(dom)


# --- graphics and video ------------------------------------------------------------------


def test_vnc_and_spice() -> None:
    dom = make_dom()
    dom.devices.graphics = [GraphicsDef("vnc", port=5903, listen="::1", passwd="s"),
                            GraphicsDef("spice", port=5904, tls_port=5905, listen="0.0.0.0")]
    argv = argv_of(dom)
    assert "-display" not in argv
    assert one(argv, "-vnc") == "[::1]:3,password=on"
    assert one(argv, "-spice") == ("port=5904,tls-port=5905,addr=0.0.0.0,"
                                   "disable-ticketing=on,seamless-migration=on")


@pytest.mark.parametrize(("g", "error"), [
    (GraphicsDef("vnc", port=-1, autoport=True), InternalError),
    (GraphicsDef("spice"), InternalError),
    (GraphicsDef("spice", port=5900, tls_port=-1), InternalError),
    (GraphicsDef("vnc", port=5800), ConfigUnsupportedError),
    (GraphicsDef("vnc", port=5900, tls_port=5901), ConfigUnsupportedError),
    (GraphicsDef("sdl"), ConfigUnsupportedError),
])
def test_graphics_refusals(g: GraphicsDef, error: type[Exception]) -> None:
    dom = make_dom()
    dom.devices.graphics = [g]
    with pytest.raises(error):
        argv_of(dom)


def test_two_vnc_refused() -> None:
    dom = make_dom()
    dom.devices.graphics = [GraphicsDef("vnc", port=5900), GraphicsDef("vnc", port=5901)]
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


@pytest.mark.parametrize(("video", "expected"), [
    (VideoDef("vga"), "VGA,id=video0,vgamem_mb=16"),
    (VideoDef("vga", vram=32768), "VGA,id=video0,vgamem_mb=32"),
    (VideoDef("cirrus", vram=16384), "cirrus-vga,id=video0"),
    (VideoDef("qxl", vram=32768, heads=2),
     "qxl-vga,id=video0,ram_size=67108864,vram_size=33554432,vgamem_mb=16,max_outputs=2"),
    (VideoDef("virtio", heads=1), "virtio-vga,id=video0,max_outputs=1"),
    (VideoDef("bochs", vram=16384), "bochs-display,id=video0,vgamem=16777216"),
])
def test_video_models(video: VideoDef, expected: str) -> None:
    dom = make_dom()
    dom.devices.videos = [video]
    assert one(argv_of(dom), "-device") == expected


def test_secondary_videos() -> None:
    dom = make_dom()
    dom.devices.videos = [VideoDef("qxl"), VideoDef("virtio", primary=True)]
    assert [d.split(",")[0] for d in values(argv_of(dom), "-device")] == [
        "qxl", "virtio-vga"]


@pytest.mark.parametrize("videos", [
    [VideoDef("none"), VideoDef("vga")],
    [VideoDef("qxl"), VideoDef("vga")],
    [VideoDef("vga", primary=True), VideoDef("qxl", primary=True)],
    [VideoDef("vga", heads=2)],
    [VideoDef("virtio", vram=1024)],
    [VideoDef("ramfb")],
])
def test_video_refusals(videos: list[VideoDef]) -> None:
    dom = make_dom()
    dom.devices.videos = videos
    with pytest.raises(ConfigUnsupportedError):
        argv_of(dom)


def test_video_none_emits_nothing() -> None:
    dom = make_dom()
    dom.devices.videos = [VideoDef("none")]
    assert "-device" not in argv_of(dom)


def test_pci_address_rendering() -> None:
    dom = make_dom()
    dom.devices.memballoon = MemballoonDef("virtio", PCIAddress(slot=0x1f, function=7,
                                                                multifunction=True))
    assert one(argv_of(dom), "-device") == (
        "virtio-balloon-pci,id=balloon0,bus=pci.0,multifunction=on,addr=0x1f.0x7")
    for bad in (PCIAddress(domain=1, slot=3), PCIAddress(slot=32)):
        dom.devices.memballoon = MemballoonDef("virtio", bad)
        with pytest.raises(ConfigUnsupportedError):
            argv_of(dom)
