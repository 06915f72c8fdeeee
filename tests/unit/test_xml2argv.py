"""Golden tests: ``tests/data/xml2argv/NAME.xml`` → ``NAME.args`` (libvirt's xml2argv idea).

Each input is parsed, completed by ``apply_defaults`` with a fixed host (so the output
never depends on the machine running the tests), given deterministic runtime values (what
the driver would allocate: ports, taps and the fds of their queues, channel paths) and rendered with
:func:`format_args`. Conventions:

* ``NAME-incoming.xml`` is built as a migration destination (``-incoming defer``);
* ``err-NAME.xml`` must be refused; ``err-NAME.err`` holds the error message;
* ``PYVIRT_REGENERATE_GOLDENS=1`` rewrites the expected files instead of comparing
  (review the diff by eye before committing).

Inputs state their uuid and MACs explicitly: defaults would otherwise invent them.

The ``qemu``-marked test feeds a few goldens' argv (paths moved into a temporary
directory) to the real QEMU and quits it over QMP: proof the syntax is what QEMU 10 accepts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_defaults import HostDefaults, apply_defaults
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.errors import VirtError
from pyvirt.qemu.argv import LaunchOptions, LaunchPaths, build_argv, format_args
from pyvirt.qemu.argv_aliases import assign_aliases

DATA = Path(__file__).resolve().parent.parent / "data" / "xml2argv"
REGENERATE = os.environ.get("PYVIRT_REGENERATE_GOLDENS") == "1"
EMULATOR = "/usr/bin/qemu-system-x86_64"
HOST = HostDefaults(
    emulator=EMULATOR,
    arch="x86_64",
    machine_aliases={"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"},
    machines=frozenset({"pc-i440fx-10.0", "pc-q35-10.0"}),
    default_machine="pc-i440fx-10.0",
)
CASES = sorted(p.stem for p in DATA.glob("*.xml"))


def load(name: str) -> DomainDef:
    text = (DATA / f"{name}.xml").read_text()
    dom = parse_domain_xml(text)
    # determinism: random uuids/MACs from the defaults pass would make goldens flap
    assert dom.uuid is not None, f"{name}.xml must give <uuid>"
    assert all(n.mac for n in dom.devices.interfaces), f"{name}.xml must give every MAC"
    apply_defaults(dom, HOST)
    return dom


def fill_runtime(dom: DomainDef) -> None:
    """What the driver resolves before argv time, with fixed values."""
    run = f"/run/pyvirt/qemu/{dom.name}"
    for i, g in enumerate(dom.devices.graphics):
        if g.port is None or g.port == -1:
            g.port = 5900 + i
        if g.tls_port == -1:
            g.tls_port = 5950 + i
    for i, net in enumerate(dom.devices.interfaces):
        if net.type == "bridge" and net.target_dev is None:
            net.target_dev = f"vnet{i}"
    for i, chan in enumerate(dom.devices.channels):
        if chan.type == "unix" and chan.source_path is None:
            chan.source_path = f"{run}/{chan.target_name or f'channel{i}'}"


#: first fd number given to the tap queues of a golden (what QEMU would inherit)
FIRST_TAP_FD = 30


def launch_paths(dom: DomainDef) -> LaunchPaths:
    name = dom.name
    taps = [net.target_dev for net in dom.devices.interfaces
            if net.type == "bridge" and net.target_dev is not None]
    return LaunchPaths(
        monitor_socket=f"/run/pyvirt/qemu/{name}/monitor.sock",
        pidfile=f"/run/pyvirt/qemu/{name}/qemu.pid",
        serial_log_prefix=f"/var/log/pyvirt/qemu/{name}-serial",
        tap_fds={tap: FIRST_TAP_FD + i for i, tap in enumerate(taps)},
    )


def launch_options(case: str) -> LaunchOptions:
    return LaunchOptions(incoming="defer" if case.endswith("-incoming") else None)


def check_golden(path: Path, actual: str) -> None:
    if REGENERATE:
        path.write_text(actual)
        return
    assert path.exists(), f"{path.name} missing: run with PYVIRT_REGENERATE_GOLDENS=1"
    assert actual == path.read_text(), f"{path.name} differs"


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("err-")])
def test_xml2argv(case: str) -> None:
    dom = load(case)
    fill_runtime(dom)
    argv = build_argv(dom, launch_paths(dom), launch_options(case))
    check_golden(DATA / f"{case}.args", format_args(argv))


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("err-")])
def test_assigned_aliases_are_the_argv_ids(case: str) -> None:
    dom = load(case)
    fill_runtime(dom)
    before = build_argv(dom, launch_paths(dom))
    assign_aliases(dom)
    assert build_argv(dom, launch_paths(dom)) == before
    ids = {p[3:] for a in before for p in a.split(",") if p.startswith("id=")}
    devices = dom.devices
    aliases = {*(d.alias for d in devices.disks), *(n.alias for n in devices.interfaces),
               *(v.alias for v in devices.videos), *(c.alias for c in devices.channels)}
    assert aliases - {None} <= ids


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("err-")])
def test_xml2argv_refused(case: str) -> None:
    dom = load(case)
    fill_runtime(dom)
    with pytest.raises(VirtError) as info:
        build_argv(dom, launch_paths(dom))
    check_golden(DATA / f"{case}.err", f"{info.value}\n")


def test_every_golden_has_an_input() -> None:
    expected = {f"{c}.err" if c.startswith("err-") else f"{c}.args" for c in CASES}
    present = {p.name for p in DATA.iterdir() if p.suffix in (".args", ".err")}
    assert present == expected


# --- real QEMU -----------------------------------------------------------------------------

#: goldens worth launching (no host devices, taps, TLS certificates or kernels needed)
QEMU_CASES = [
    "minimal", "minimal-q35-kvm", "cpu-host-passthrough", "cpu-maximum", "cpu-custom",
    "clock-kvm-timers", "clock-tcg-timers", "features-lifecycle", "boot-os-order",
    "boot-device-order", "disk-virtio-cache", "disk-ide", "disk-sata-q35", "disk-scsi",
    "net-user-models", "serial-pty-console", "serial-file-log", "serial-unix",
    "console-virtio-channels", "graphics-vnc-autoport", "graphics-vnc-passwd",
    "graphics-spice-autoport", "video-virtio", "video-bochs", "video-none",
    "usb-xhci-inputs", "usb-none",
]


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@functools.cache
def _kvm_host_cpu_usable() -> bool:
    """Whether ``-accel kvm -cpu host`` starts here (nested KVM may reject host MSRs)."""
    qmp = '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'
    probe = [EMULATOR, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
             "-display", "none", "-S", "-qmp", "stdio"]
    try:
        done = subprocess.run(probe, input=qmp, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _free_port(start: int) -> int:
    for port in range(start, start + 1000):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _relocate(dom: DomainDef, tmp: Path) -> None:
    """Point every host path into ``tmp`` and create what QEMU opens at startup."""
    for i, disk in enumerate(dom.devices.disks):
        if disk.source is None:
            continue
        fmt = disk.driver_type or "raw"
        disk.source = str(tmp / f"disk{i}.{fmt}")
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, disk.source, "16M"],
                       check=True)
    chardevs = [*dom.devices.serials, *dom.devices.consoles, *dom.devices.channels]
    for i, c in enumerate(chardevs):
        if c.source_path is not None:
            c.source_path = str(tmp / f"c{i}")
        if c.log_file is not None:
            c.log_file = str(tmp / f"c{i}.log")
        if c.type == "unix" and c.source_mode == "connect":
            # QEMU connects at startup: give it a listener
            c.source_mode = "bind"
    port = 5900 + (37 * os.getpid()) % 3000  # spread parallel runs over the range
    for g in dom.devices.graphics:
        g.port = port = _free_port(port)
        port += 1  # the port just chosen is not bound yet: never hand it out twice
        if g.type == "vnc":
            g.listen = "127.0.0.1"


def _qmp_quit(path: str, timeout: float = 10.0) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:  # the socket file exists from bind(), QEMU listens a moment later
            try:
                s.connect(path)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "QEMU monitor never listened"
                time.sleep(0.02)
        reader = s.makefile("rb")
        assert b"QMP" in reader.readline()
        for cmd in ("qmp_capabilities", "quit"):
            s.sendall(json.dumps({"execute": cmd}).encode())
            while True:  # skip events until the reply
                reply = json.loads(reader.readline())
                if "return" in reply or "error" in reply:
                    break
            assert "return" in reply, reply


@contextlib.contextmanager
def _tmpdir() -> Iterator[Path]:
    # short: unix socket paths must stay under 108 bytes
    path = Path(tempfile.mkdtemp(prefix="pv-argv-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_monitor(proc: subprocess.Popen[str], path: str, timeout: float = 30.0) -> None:
    """Wait for QEMU's monitor socket; fail with QEMU's own message if it exits first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"QEMU refused the argv: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, "QEMU monitor did not appear"
        time.sleep(0.02)


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-img") is None or not Path(EMULATOR).exists(),
                    reason="QEMU not installed")
@pytest.mark.parametrize("case", QEMU_CASES)
def test_qemu_accepts_golden_argv(case: str) -> None:
    dom = load(case)
    if dom.type == "kvm" and not _kvm_usable():
        pytest.skip("/dev/kvm not usable")
    if dom.cpu is not None and dom.cpu.mode in ("host-passthrough", "host-model") \
            and not _kvm_host_cpu_usable():
        pytest.skip("-cpu host does not start under this host's KVM")
    fill_runtime(dom)
    with _tmpdir() as tmp:
        _relocate(dom, tmp)
        paths = LaunchPaths(str(tmp / "mon.sock"), str(tmp / "qemu.pid"), str(tmp / "serial"))
        argv = build_argv(dom, paths)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            _wait_monitor(proc, paths.monitor_socket)
            _qmp_quit(paths.monitor_socket)
            assert proc.wait(timeout=30) == 0, proc.communicate()[1]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
