"""Domain definition → QEMU command line (a pure function, checked by golden files).

:func:`build_argv` turns a :class:`~pyvirt.conf.domain.DomainDef` that has been through
``apply_defaults`` (uuid, emulator, canonical machine, MACs, addresses filled) plus the
runtime values the driver resolved (graphics ports, tap names, unix channel paths) into
the argv of a paused QEMU with a QMP socket. QEMU runs in the foreground (no
``-daemonize``), so its stderr keeps going to the domain log for its whole life; ``-daemonize``
would send it to /dev/null. No I/O, no randomness, no QEMU probing: the same input always
gives the same argv, which is what makes the migration destination's QEMU match the
source's.

The shape follows libvirt's modern command line (``-blockdev`` JSON, ``-device`` with
libvirt's aliases as ids, ``-action``/``-overcommit``) so libvirt users recognise it;
anything in the model this builder cannot express raises
:class:`~pyvirt.errors.ConfigUnsupportedError` naming it, never silently dropped.

Layout: this module builds the machine-level options and orders the sections; devices
live in :mod:`.argv_disk`, :mod:`.argv_devices`, :mod:`.argv_chardev`, :mod:`.argv_display`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from pyvirt.conf.domain import CPUDef, DomainDef, TimerDef
from pyvirt.errors import ConfigUnsupportedError, InternalError
from pyvirt.qemu.argv_chardev import build_channels, build_consoles, build_serials
from pyvirt.qemu.argv_common import (
    Ctx,
    LaunchOptions,
    LaunchPaths,
    Props,
    choose,
    keyval,
    machine_family,
    require,
)
from pyvirt.qemu.argv_devices import (
    build_controllers,
    build_inputs,
    build_interface,
    build_memballoon,
)
from pyvirt.qemu.argv_disk import build_disk
from pyvirt.qemu.argv_display import build_graphics, build_videos

__all__ = ["LaunchOptions", "LaunchPaths", "build_argv", "format_args"]

ACCELS = {"qemu": "tcg", "kvm": "kvm"}
#: libvirt on_reboot → QEMU -action reboot=...; on_poweroff/on_crash are the driver's job
REBOOT_ACTIONS: dict[str, str | None] = {"restart": None, "destroy": "shutdown"}
CLOCK_OFFSETS = {"utc": "utc", "localtime": "localtime"}
#: libvirt <timer name='rtc' track=...> → -rtc clock=
RTC_TRACK = {"guest": "vm", "wall": "host", "realtime": "rt"}
#: libvirt <timer name='rtc' tickpolicy=...> → -rtc driftfix= (delay is QEMU's default)
RTC_TICKPOLICY: dict[str, str | None] = {"delay": None, "catchup": "slew"}
#: libvirt <timer name='pit' tickpolicy=...> → kvm-pit.lost_tick_policy
KVM_PIT_TICKPOLICY = {"delay": "delay", "catchup": "slew", "discard": "discard"}
#: timer name → attributes this builder can express
TIMER_ATTRS: dict[str, frozenset[str]] = {
    "rtc": frozenset({"tickpolicy", "track"}),
    "pit": frozenset({"tickpolicy"}),
    "hpet": frozenset({"present"}),
    "kvmclock": frozenset({"present"}),
}
#: options that take no value (everything else is "-opt value"); used by format_args
FLAG_OPTIONS = frozenset({"-S", "-no-user-config", "-nodefaults", "-no-shutdown"})


# --- validation of things that have no argv form -----------------------------------------


def _check_domain(dom: DomainDef) -> None:
    if dom.os.type != "hvm":
        raise ConfigUnsupportedError(f"os type '{dom.os.type}' (only hvm)")
    if dom.os.arch not in (None, "x86_64"):
        raise ConfigUnsupportedError(f"architecture '{dom.os.arch}' (only x86_64)")
    if dom.vcpu_placement not in (None, "static"):
        raise ConfigUnsupportedError(f"vcpu placement '{dom.vcpu_placement}'")
    if dom.memory_kib <= 0:
        raise ConfigUnsupportedError("memory size must be positive")
    for timer in dom.clock.timers if dom.clock else []:
        allowed = TIMER_ATTRS.get(timer.name)
        if allowed is None:
            raise ConfigUnsupportedError(f"clock timer '{timer.name}' is not supported")
        given = {k for k in ("tickpolicy", "present", "track") if getattr(timer, k) is not None}
        if given - allowed:
            raise ConfigUnsupportedError(
                f"timer '{timer.name}' attribute(s) {', '.join(sorted(given - allowed))}"
            )


def _timer(dom: DomainDef, name: str) -> TimerDef | None:
    timers = [t for t in (dom.clock.timers if dom.clock else []) if t.name == name]
    if len(timers) > 1:
        raise ConfigUnsupportedError(f"timer '{name}' given more than once")
    return timers[0] if timers else None


def _timer_present(dom: DomainDef, name: str) -> bool | None:
    timer = _timer(dom, name)
    if timer is None or timer.present is None:
        return None
    if timer.present not in ("yes", "no"):
        raise ConfigUnsupportedError(f"timer '{name}' present='{timer.present}'")
    return timer.present == "yes"


# --- sections ----------------------------------------------------------------------------


def _process(ctx: Ctx) -> list[str]:
    # -S: always start paused, the driver sends "cont" once everything is wired up
    return ["-name", keyval(f"guest={ctx.dom.name}", [("debug-threads", True)]),
            "-S", "-pidfile", ctx.paths.pidfile]


def _machine(ctx: Ctx) -> list[str]:
    dom = ctx.dom
    features = dom.features
    hpet = _timer_present(dom, "hpet")
    # <apic/> and <pae/> have no switch here: x86_64 guests always get both (libvirt
    # emits nothing for them either)
    props: Props = [
        ("usb", False),  # USB comes from explicit controllers only
        ("dump-guest-core", False),
        ("hpet", None if hpet is None or hpet else False),
        ("vmport", _vmport(features.vmport) if features else None),
        # libvirt semantics: no <acpi/> feature means ACPI off
        ("acpi", bool(features and features.acpi)),
    ]
    accel = choose(ACCELS, dom.type, "domain type")
    return ["-machine", keyval(require(dom.os.machine, "machine type"), props),
            "-accel", accel]


def _vmport(state: str | None) -> bool | None:
    if state not in (None, "on", "off"):
        raise ConfigUnsupportedError(f"vmport state '{state}'")
    return None if state is None else state == "on"


def _cpu_host(dom: DomainDef, cpu: CPUDef) -> str:
    if dom.type != "kvm":
        raise ConfigUnsupportedError(f"CPU mode '{cpu.mode}' needs domain type kvm")
    return "host"


def _cpu_host_model(dom: DomainDef, cpu: CPUDef) -> str:
    # No host-model expansion without probing the host; under KVM "host" is the closest
    # (it is what host-model expands from), under TCG there is nothing to expand.
    return _cpu_host(dom, cpu)


def _cpu_maximum(dom: DomainDef, cpu: CPUDef) -> str:
    return "max"


def _cpu_custom(dom: DomainDef, cpu: CPUDef) -> str | None:
    model = cpu.model
    if model is not None and not all(c.isalnum() or c in "._-" for c in model):
        raise ConfigUnsupportedError(f"CPU model name '{model}'")
    return model  # None: QEMU's default model, as libvirt leaves it


CPU_MODES: dict[str, Callable[[DomainDef, CPUDef], str | None]] = {
    "host-passthrough": _cpu_host,
    "host-model": _cpu_host_model,
    "maximum": _cpu_maximum,
    "custom": _cpu_custom,
}
#: modes whose QEMU model takes migratable=on|off
MIGRATABLE_MODES = frozenset({"host-passthrough", "maximum"})
#: QEMU's default model for the pc/q35 boards, used when a property needs a model to hang on
DEFAULT_CPU_MODEL = "qemu64"


def _cpu(ctx: Ctx) -> list[str]:
    dom = ctx.dom
    cpu = dom.cpu
    model: str | None = None
    props: Props = []
    if cpu is not None:
        builder = CPU_MODES.get(cpu.mode)
        if builder is None:
            raise ConfigUnsupportedError(f"CPU mode '{cpu.mode}' is not supported")
        model = builder(dom, cpu)
        if cpu.migratable not in (None, "on", "off"):
            raise ConfigUnsupportedError(f"CPU migratable='{cpu.migratable}'")
        if cpu.migratable is not None and cpu.mode not in MIGRATABLE_MODES:
            raise ConfigUnsupportedError(f"CPU migratable with mode '{cpu.mode}'")
        props.append(("migratable", False if cpu.migratable == "off" else None))
    kvmclock = _timer_present(dom, "kvmclock")
    props.append(("kvmclock", None if kvmclock is None or kvmclock else False))
    if model is None and any(v is not None for _, v in props):
        model = DEFAULT_CPU_MODEL
    return [] if model is None else ["-cpu", keyval(model, props)]


def _memory(ctx: Ctx) -> list[str]:
    return ["-m", f"size={ctx.dom.memory_kib}k", "-overcommit", "mem-lock=off"]


def _smp(ctx: Ctx) -> list[str]:
    dom = ctx.dom
    topo = dom.cpu.topology if dom.cpu else None
    if topo is None:
        shape = (dom.vcpus, 1, 1, 1)
    else:
        shape = (topo.sockets, topo.dies, topo.cores, topo.threads)
        if topo.sockets * topo.dies * topo.cores * topo.threads != dom.vcpus:
            raise ConfigUnsupportedError(
                f"CPU topology {topo.sockets}x{topo.dies}x{topo.cores}x{topo.threads} "
                f"does not match {dom.vcpus} vcpus"
            )
    names = ("sockets", "dies", "cores", "threads")
    return ["-smp", keyval(str(dom.vcpus), zip(names, shape, strict=True))]


def _uuid(ctx: Ctx) -> list[str]:
    return ["-uuid", require(ctx.dom.uuid, "domain uuid")]


def _defaults(ctx: Ctx) -> list[str]:
    # every device is explicit: no config files, no board default devices
    return ["-no-user-config", "-nodefaults"]


def _monitor(ctx: Ctx) -> list[str]:
    sock = keyval("socket", [("id", "charmonitor"), ("path", ctx.paths.monitor_socket),
                             ("server", True), ("wait", False)])
    return ["-chardev", sock, "-mon", "chardev=charmonitor,id=monitor,mode=control"]


def _clock(ctx: Ctx) -> list[str]:
    dom = ctx.dom
    offset = choose(CLOCK_OFFSETS, dom.clock.offset if dom.clock else "utc", "clock offset")
    rtc = _timer(dom, "rtc")
    props: Props = []
    if rtc is not None:
        if rtc.track is not None:
            props.append(("clock", choose(RTC_TRACK, rtc.track, "rtc timer track")))
        if rtc.tickpolicy is not None:
            if rtc.tickpolicy not in RTC_TICKPOLICY:
                raise ConfigUnsupportedError(f"rtc timer tickpolicy '{rtc.tickpolicy}'")
            props.append(("driftfix", RTC_TICKPOLICY[rtc.tickpolicy]))
    return ["-rtc", keyval(f"base={offset}", props), *_pit(dom)]


def _pit(dom: DomainDef) -> list[str]:
    pit = _timer(dom, "pit")
    if pit is None or pit.tickpolicy is None:
        return []
    if dom.type != "kvm":
        # the userspace PIT only ever delays lost ticks
        if pit.tickpolicy != "delay":
            raise ConfigUnsupportedError(f"pit tickpolicy '{pit.tickpolicy}' needs type kvm")
        return []
    policy = choose(KVM_PIT_TICKPOLICY, pit.tickpolicy, "pit timer tickpolicy")
    return ["-global", f"kvm-pit.lost_tick_policy={policy}"]


def _lifecycle(ctx: Ctx) -> list[str]:
    # -no-shutdown: a guest poweroff stops QEMU's vcpus and emits SHUTDOWN; the driver
    # then applies on_poweroff itself (and can collect final state first).
    on_reboot = ctx.dom.on_reboot or "restart"
    if on_reboot not in REBOOT_ACTIONS:
        raise ConfigUnsupportedError(f"on_reboot action '{on_reboot}'")
    action = REBOOT_ACTIONS[on_reboot]
    return ["-no-shutdown", *(["-action", f"reboot={action}"] if action else [])]


def _boot(ctx: Ctx) -> list[str]:
    # strict=on: the firmware boots only devices with a bootindex (libvirt's choice);
    # <os><boot dev> becomes bootindexes too (see _os_boot), never "-boot order="
    argv = ["-boot", "strict=on"]
    os = ctx.dom.os
    for flag, value in (("-kernel", os.kernel), ("-initrd", os.initrd), ("-append", os.cmdline)):
        if value is not None:
            argv += [flag, value]
    return argv


def _os_boot(dom: DomainDef) -> dict[tuple[str, int], int]:
    """libvirt's conversion of ``<os><boot dev>``: the first device of each listed kind
    gets bootindex = the position of its ``<boot>`` (1-based); kinds without a device
    (and ``fd``: no floppies here) leave a gap."""
    devices = dom.devices
    per_device = any(d.boot_order is not None for d in devices.disks) or any(
        n.boot_order is not None for n in devices.interfaces
    )
    if per_device and dom.os.boot_devs:
        raise ConfigUnsupportedError("per-device boot order together with <os><boot dev>")
    candidates: dict[str, list[tuple[str, int]]] = {
        "hd": [("disk", i) for i, d in enumerate(devices.disks) if d.device == "disk"],
        "cdrom": [("disk", i) for i, d in enumerate(devices.disks) if d.device == "cdrom"],
        "network": [("net", i) for i in range(len(devices.interfaces))],
        "fd": [],
    }
    boot: dict[tuple[str, int], int] = {}
    for position, dev in enumerate(dom.os.boot_devs, start=1):
        if dev not in candidates:
            raise ConfigUnsupportedError(f"boot device '{dev}' is not supported")
        if dev in dom.os.boot_devs[: position - 1]:
            raise ConfigUnsupportedError(f"boot device '{dev}' given twice")
        for key in candidates[dev][:1]:
            boot[key] = position
    return boot


def _disks(ctx: Ctx) -> list[str]:
    argv: list[str] = []
    for pos in range(len(ctx.dom.devices.disks)):
        argv += build_disk(ctx, pos)
    return argv


def _interfaces(ctx: Ctx) -> list[str]:
    argv: list[str] = []
    for index, net in enumerate(ctx.dom.devices.interfaces):
        argv += build_interface(ctx, index, net)
    return argv


def _trailer(ctx: Ctx) -> list[str]:
    return ["-msg", "timestamp=on"]


#: the command line in order: machine-level options, then buses before the devices on them
#: QEMU's seccomp filter with every optional class denied (libvirt's seccomp_sandbox = 1):
#: no obsolete syscalls, no set*id, no fork/exec (QEMU spawns nothing: taps are opened by
#: the daemon, migration never uses exec:), no scheduler/affinity/priority changes (the
#: daemon applies those from outside)
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

SECTIONS: tuple[Callable[[Ctx], list[str]], ...] = (
    _process, _machine, _cpu, _memory, _smp, _uuid, _defaults, _monitor, _clock,
    _lifecycle, _boot, build_controllers, _disks, _interfaces, build_serials,
    build_consoles, build_channels, build_graphics, build_videos, build_memballoon,
    # last: virtio inputs have no modelled address, so QEMU must pick their slots
    # after every explicitly addressed device holds its own
    build_inputs, _trailer,
)


_NO_OPTIONS = LaunchOptions()


def build_argv(dom: DomainDef, paths: LaunchPaths, opts: LaunchOptions = _NO_OPTIONS) -> list[str]:
    """The QEMU argv (``argv[0]`` is the emulator) for ``dom``; pure and deterministic."""
    _check_domain(dom)
    ctx = Ctx(dom=dom, family=machine_family(dom.os.machine), paths=paths,
              os_boot=_os_boot(dom))
    argv = [require(dom.devices.emulator, "emulator")]
    for section in SECTIONS:
        if section is _trailer and opts.sandbox:  # libvirt's place: before -msg
            argv += ["-sandbox", SANDBOX]
        argv += section(ctx)
    if opts.incoming is not None:
        argv += ["-incoming", opts.incoming]
    return argv


def format_args(argv: list[str]) -> str:
    """Golden-file rendering: the emulator, then one option (and its value) per line.

    Lines are shell-quoted and joined with `` \\`` + newline, so a golden file can be
    pasted into a shell. Ends with a newline.
    """
    if not argv:
        raise InternalError("empty argv")
    lines = [shlex.quote(argv[0])]
    i = 1
    while i < len(argv):
        opt = argv[i]
        if opt in FLAG_OPTIONS or i + 1 == len(argv):
            lines.append(shlex.quote(opt))
            i += 1
        else:
            lines.append(f"{shlex.quote(opt)} {shlex.quote(argv[i + 1])}")
            i += 2
    return " \\\n".join(lines) + "\n"
