"""The real test guest: built from Debian's kernel, booted with plain QEMU (TCG).

These check the oracle the migration tests rely on: heartbeats that count up, a memory
and a disk verifier that stay silent on a healthy guest, and (on the host, where we can
damage memory on purpose) verifiers that do report a lost write; and the guest's power
handling: an ACPI power-button press or ``pvw.poweroff_after`` powers it off (a
guest-initiated SHUTDOWN), a reset boots it again with the heartbeat counter from 0.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyvirt.lab import guest
from pyvirt.lab.guest import (
    CORRUPT_MARK,
    DISK_CORRUPT_RE,
    DISK_PROGRESS_RE,
    DISK_READY_RE,
    MEM_CORRUPT_RE,
    POWEROFF_RE,
    READY_RE,
    SELFTEST_RE,
    GuestImage,
    Heartbeat,
    parse_heartbeat,
)

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 20.0
#: From the power-button press (or the timer) to QEMU having exited.
POWEROFF_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return guest.build_guest()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private temp dir, removed even when pytest keeps its own tmp_path dirs."""
    path = Path(tempfile.mkdtemp(prefix="pvguest-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Qmp:
    """A minimal QMP client: commands, and the events that arrive meanwhile."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:  # QEMU creates the socket shortly after it starts
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        self._read()  # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any] | None:
        line = self.reader.readline()
        return json.loads(line) if line else None

    def command(self, name: str) -> object:
        self.sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
        while (msg := self._read()) is not None:
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise AssertionError(f"QMP {name}: {msg['error']}")
            else:
                return msg["return"]
        raise AssertionError(f"QMP connection closed during {name}")

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The first ``name`` event not yet waited for (QEMU may exit right after it)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    self.events.remove(event)
                    return event
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                msg = self._read()
            except TimeoutError:
                raise AssertionError(f"no QMP {name} event within {timeout} s") from None
            if msg is None:
                raise AssertionError(f"QMP connection closed before a {name} event")
            if "event" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class RunningGuest:
    """A QEMU process, its serial log file and (connected on first use) its QMP socket."""

    def __init__(
        self, proc: subprocess.Popen[bytes], log: Path, qmp_path: Path, started: float
    ) -> None:
        self.proc = proc
        self.log = log
        self.qmp_path = qmp_path
        self.started = started
        self._qmp: Qmp | None = None

    @property
    def qmp(self) -> Qmp:
        """The QMP connection; connect early when the guest may soon power off."""
        if self._qmp is None:
            self._qmp = Qmp(self.qmp_path)
        return self._qmp

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()

    def lines(self) -> list[str]:
        try:
            text = self.log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line.rstrip("\r") for line in text.splitlines()]

    def heartbeats(self) -> list[Heartbeat]:
        return [hb for line in self.lines() if (hb := parse_heartbeat(line)) is not None]

    def wait_for(self, what: str, ready: Callable[[list[str]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready(self.lines()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.lines()[-20:])
                raise AssertionError(f"{what}: not seen (qemu rc={self.proc.poll()}):\n{tail}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tail = "\n".join(self.lines()[-20:])
            raise AssertionError(f"QEMU still running after {timeout} s:\n{tail}") from None


@contextlib.contextmanager
def boot(image: GuestImage, workdir: Path, cmdline: str, disk: Path | None = None, *,
         reboot: bool = False) -> Iterator[RunningGuest]:  # fmt: skip
    """Boot the guest under TCG (KVM guests hang on this host); always kill QEMU after.

    QEMU exits when the guest powers off (no ``-no-shutdown``); a guest reset ends it
    too unless ``reboot`` (``-no-reboot`` also turns QMP's system_reset into an exit).
    """
    log, qmp = workdir / "serial.log", workdir / "qmp.sock"
    argv = [
        QEMU, "-accel", "tcg", "-machine", "pc", "-m", "256", "-nodefaults",
        "-display", "none", "-serial", f"file:{log}",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
    ]  # fmt: skip
    if not reboot:
        argv.append("-no-reboot")
    if disk is not None:
        argv += ["-drive", f"file={disk},format=raw,if=none,id=d0,cache=writeback",
                 "-device", "virtio-blk-pci,drive=d0"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    vm = RunningGuest(proc, log, qmp, started)
    try:
        yield vm
    finally:
        vm.close()
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _count(pattern_lines: list[str], needle: str) -> int:
    return sum(1 for line in pattern_lines if needle in line)


def _assert_counting_heartbeats(beats: list[Heartbeat]) -> None:
    assert [b.n for b in beats] == list(range(len(beats))), "heartbeat counter skipped"
    for before, after in itertools.pairwise(beats):
        assert after.t_ms > before.t_ms
        assert after.passes >= before.passes and after.dirtied_mib >= before.dirtied_mib
    assert all(b.corrupt == 0 for b in beats)


# ---- build ---------------------------------------------------------------------------


@pytest.mark.qemu
def test_build_outputs_and_second_build_does_nothing(guest_image: GuestImage) -> None:
    manifest = json.loads(guest_image.manifest.read_text())
    assert manifest["kernel_package"].startswith("linux-image-")
    assert manifest["kernel_package"].endswith("-cloud-amd64")
    assert manifest["kernel_package_version"] == guest_image.kernel_version
    assert guest_image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    mtimes = [p.stat().st_mtime_ns for p in (guest_image.kernel, guest_image.initrd)]
    again = guest.build_guest()
    assert not again.rebuilt
    assert [p.stat().st_mtime_ns for p in (again.kernel, again.initrd)] == mtimes


@pytest.mark.qemu
def test_initramfs_holds_workload_and_modules(guest_image: GuestImage) -> None:
    archive = gzip.decompress(guest_image.initrd.read_bytes())
    manifest = json.loads(guest_image.manifest.read_text())
    for name in ("init", "bin/busybox", "bin/pvworkload", "dev/console"):
        assert name.encode() + b"\0" in archive
    for name in ("lib/modules/disk.order", "lib/modules/power.order"):
        assert name.encode() + b"\0" in archive
    if manifest["virtio_blk"] == "module":
        assert "virtio_blk" in manifest["disk_modules"]
    if manifest["power_button"] == "module":  # Debian's cloud kernel: button and evdev
        assert {"button", "evdev"} <= set(manifest["power_modules"])
    for module in manifest["modules"]:
        assert f"lib/modules/{module}.ko".encode() + b"\0" in archive


# ---- boot ----------------------------------------------------------------------------


@pytest.mark.qemu
def test_boot_heartbeats_and_dirtying_without_corruption(
    guest_image: GuestImage, scratch: Path, record_property: Callable[[str, object], None]
) -> None:
    with boot(guest_image, scratch, guest.kernel_cmdline(dirty_mb=32, dirty_rate=0)) as vm:
        vm.wait_for("first heartbeat", lambda ls: _count(ls, "PVW HB ") > 0, BOOT_TIMEOUT)
        boot_s = time.monotonic() - vm.started
        record_property("boot_to_first_heartbeat_s", round(boot_s, 2))
        vm.wait_for("12 heartbeats", lambda ls: _count(ls, "PVW HB ") >= 12, 10)
        lines = vm.lines()
    ready = [m for line in lines if (m := READY_RE.match(line))]
    assert len(ready) == 1 and ready[0].group("dirty_mb") == "32"
    beats = [hb for line in lines if (hb := parse_heartbeat(line)) is not None]
    _assert_counting_heartbeats(beats)
    assert beats[-1].passes > beats[1].passes > 0, "the working set is not being cycled"
    assert beats[-1].dirtied_mib >= 32
    # Every 200 ms: several a second, never a flood (a loaded host may delay some).
    span_s = (beats[-1].t_ms - beats[0].t_ms) / 1000
    assert 2.0 <= len(beats[1:]) / span_s <= 5.5
    assert not [line for line in lines if CORRUPT_MARK in line]
    assert boot_s < BOOT_TIMEOUT


@pytest.mark.qemu
def test_dirty_rate_is_limited(guest_image: GuestImage, scratch: Path) -> None:
    with boot(guest_image, scratch, guest.kernel_cmdline(dirty_mb=16, dirty_rate=8)) as vm:
        vm.wait_for("4 s of heartbeats", lambda ls: _count(ls, "PVW HB ") >= 21, BOOT_TIMEOUT)
        beats = vm.heartbeats()
    _assert_counting_heartbeats(beats)
    seconds = (beats[-1].t_ms - beats[0].t_ms) / 1000
    rate = (beats[-1].dirtied_mib - beats[0].dirtied_mib) / seconds
    # Never above the asked rate (plus one batch of slack); below only if starved.
    assert 4 <= rate <= 9, f"dirtied {rate:.1f} MiB/s, asked for 8"


@pytest.mark.qemu
def test_disk_pattern_is_written_and_verified(guest_image: GuestImage, scratch: Path) -> None:
    disk = scratch / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(8 << 20)
    cmdline = guest.kernel_cmdline(8, 0, disk=True, disk_mb=1, disk_rate=0)

    def passes_verified(lines: list[str]) -> bool:
        # gen counts the pass being written; gen >= 4 means passes 2 and 3 each
        # checked every block still held the previous pass's stamp.
        return any((m := DISK_PROGRESS_RE.match(ln)) and int(m["gen"]) >= 4 for ln in lines)

    with boot(guest_image, scratch, cmdline, disk=disk) as vm:
        vm.wait_for("disk passes", passes_verified, BOOT_TIMEOUT + 10)
        lines = vm.lines()
    disk_ready = [m for line in lines if (m := DISK_READY_RE.match(line))]
    assert len(disk_ready) == 1 and disk_ready[0]["dev"] == "/dev/vda"
    assert disk_ready[0]["blocks"] == "256"  # pvw.disk_mb=1 of the 8 MiB
    progress = [m for line in lines if (m := DISK_PROGRESS_RE.match(line))]
    assert all(m["corrupt"] == "0" for m in progress)
    assert int(progress[-1]["verified"]) > 3 * 256
    assert not [line for line in lines if CORRUPT_MARK in line or "PVW ERROR" in line]
    _assert_counting_heartbeats([hb for line in lines if (hb := parse_heartbeat(line)) is not None])
    # The guest really wrote our stamp ("PVWDISK1", then block 0) to the image.
    head = disk.read_bytes()[:16]
    assert head == b"PVWDISK1" + b"\0" * 8


# ---- power: ACPI power button, self power-off, reset ------------------------------------


def _pvw_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PVW ")]


def _assert_powered_off(vm: RunningGuest, reason: str) -> None:
    """QEMU reported a guest-initiated shutdown, exited, and POWEROFF was the last word."""
    shutdown = vm.qmp.wait_event("SHUTDOWN", POWEROFF_TIMEOUT)
    assert shutdown["data"]["guest"] is True, shutdown
    assert shutdown["data"]["reason"] == "guest-shutdown", shutdown
    assert vm.wait_exit(POWEROFF_TIMEOUT) == 0
    last = _pvw_lines(vm.lines())[-1]
    m = POWEROFF_RE.match(last)
    assert m is not None and m["reason"] == reason, last


@pytest.mark.qemu
def test_acpi_power_button_powers_the_guest_off(
    guest_image: GuestImage, scratch: Path, record_property: Callable[[str, object], None]
) -> None:
    disk = scratch / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(4 << 20)
    cmdline = guest.kernel_cmdline(dirty_mb=16, disk=True, disk_mb=1, disk_rate=0)
    with boot(guest_image, scratch, cmdline, disk=disk) as vm:
        qmp = vm.qmp  # connected before the guest can go away
        # The disk writer runs too: it must be stopped before the last line.
        vm.wait_for("disk progress", lambda ls: _count(ls, "PVW DISK ") >= 1, BOOT_TIMEOUT)
        pressed = time.monotonic()
        qmp.command("system_powerdown")
        qmp.wait_event("POWERDOWN", 5)
        _assert_powered_off(vm, "acpi")
        record_property("powerdown_to_exit_s", round(time.monotonic() - pressed, 2))
        lines = vm.lines()
    assert not [line for line in lines if "PVW ERROR" in line or CORRUPT_MARK in line]
    _assert_counting_heartbeats([hb for line in lines if (hb := parse_heartbeat(line)) is not None])


@pytest.mark.qemu
def test_poweroff_after_powers_the_guest_off(guest_image: GuestImage, scratch: Path) -> None:
    cmdline = guest.kernel_cmdline(dirty_mb=8, dirty_rate=4, poweroff_after=2)
    with boot(guest_image, scratch, cmdline) as vm:
        assert vm.qmp.events == []  # connected before the guest can go away
        vm.wait_for("READY", lambda ls: any(READY_RE.match(line) for line in ls), BOOT_TIMEOUT)
        ready = time.monotonic()
        _assert_powered_off(vm, "timer")
        elapsed = time.monotonic() - ready
        beats = vm.heartbeats()
    assert 1.5 <= elapsed <= 2 + POWEROFF_TIMEOUT
    # Two seconds of 200 ms heartbeats, then the timer: nothing lost, nothing after.
    _assert_counting_heartbeats(beats)
    assert 1000 <= beats[-1].t_ms <= 2000


@pytest.mark.qemu
def test_reset_restarts_heartbeats_from_zero(guest_image: GuestImage, scratch: Path) -> None:
    with boot(guest_image, scratch, guest.kernel_cmdline(dirty_mb=8), reboot=True) as vm:
        vm.wait_for("6 heartbeats", lambda ls: _count(ls, "PVW HB ") >= 6, BOOT_TIMEOUT)
        vm.qmp.command("system_reset")
        reset = vm.qmp.wait_event("RESET", 5)

        def rebooted(lines: list[str]) -> bool:
            readies = [i for i, line in enumerate(lines) if READY_RE.match(line)]
            return len(readies) >= 2 and _count(lines[readies[1] :], "PVW HB ") >= 3

        vm.wait_for("second boot's heartbeats", rebooted, BOOT_TIMEOUT)
        lines = vm.lines()
    assert reset["data"]["guest"] is False
    second = max(i for i, line in enumerate(lines) if READY_RE.match(line))
    before = [hb for line in lines[:second] if (hb := parse_heartbeat(line)) is not None]
    after = [hb for line in lines[second:] if (hb := parse_heartbeat(line)) is not None]
    assert before[-1].n >= 5
    _assert_counting_heartbeats(after)  # from 0 again: a reboot, not a resume
    assert not [line for line in lines if "PVW ERROR" in line or "POWEROFF" in line]


# ---- the verifiers catch damage (workload run on the host) -----------------------------


@pytest.fixture(scope="module")
def workload() -> Iterator[Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    directory = Path(tempfile.mkdtemp(prefix="pvworkload-"))
    try:
        yield guest.compile_workload(directory / "pvworkload")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run_workload(binary: Path, *args: str) -> tuple[int, list[str]]:
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    return proc.returncode, proc.stdout.splitlines()


def test_selftest_detects_memory_and_disk_corruption(workload: Path, scratch: Path) -> None:
    disk = scratch / "disk.img"
    disk.write_bytes(b"\0" * (64 * 4096))
    rc, lines = _run_workload(
        workload, "--selftest-corrupt", "--cmdline", f"pvw.dirty_mb=2 pvw.disk={disk}"
    )
    assert rc == 0, lines
    mem = [m for line in lines if (m := MEM_CORRUPT_RE.match(line))]
    # A middle word of page 3 was flipped: a first-word-only check would miss it.
    assert [(m["page"], m["word"], m["pass_"]) for m in mem] == [("3", "146", "2")]
    assert int(mem[0]["expected"], 16) ^ int(mem[0]["got"], 16) == 1
    bad = [(m["block"], m["why"], m["got_gen"]) for ln in lines if (m := DISK_CORRUPT_RE.match(ln))]
    assert bad == [("2", "checksum", "2"), ("5", "gen", "1")]
    result = [m for line in lines if (m := SELFTEST_RE.match(line))]
    assert len(result) == 1 and result[0]["result"] == "OK"


def test_workload_on_host_runs_clean(workload: Path, scratch: Path) -> None:
    disk = scratch / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    rc, lines = _run_workload(
        workload, "--seconds", "1.1", "--cmdline",
        f"pvw.dirty_mb=4 pvw.dirty_rate=0 pvw.disk={disk} pvw.disk_rate=0",
    )  # fmt: skip
    assert rc == 0, lines
    beats = [hb for line in lines if (hb := parse_heartbeat(line)) is not None]
    assert len(beats) >= 5
    _assert_counting_heartbeats(beats)
    assert beats[-1].passes > 0
    assert any(DISK_PROGRESS_RE.match(line) for line in lines)
    assert not [line for line in lines if CORRUPT_MARK in line or "PVW ERROR" in line]


def test_bad_cmdline_value_is_reported(workload: Path) -> None:
    rc, lines = _run_workload(workload, "--seconds", "0.1", "--cmdline", "pvw.dirty_mb=lots")
    assert rc == 2
    assert lines == ["PVW ERROR bad value in pvw.dirty_mb=lots"]


def test_poweroff_timer_on_host_only_ends_the_workload(workload: Path) -> None:
    # Without --guest the workload never calls reboot(2): it says why and exits.
    started = time.monotonic()
    rc, lines = _run_workload(workload, "--cmdline", "pvw.dirty_mb=1 pvw.poweroff_after=1")
    assert rc == 0, lines
    assert 0.9 <= time.monotonic() - started < 10
    m = POWEROFF_RE.match(lines[-1])
    assert m is not None and m["reason"] == "timer"
    beats = [hb for line in lines if (hb := parse_heartbeat(line)) is not None]
    _assert_counting_heartbeats(beats)
    assert 500 <= beats[-1].t_ms <= 1000
