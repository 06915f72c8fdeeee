"""The real test guest: built from Debian's kernel, booted with plain QEMU (TCG).

These check the oracle the migration tests rely on: heartbeats that count up, a memory
and a disk verifier that stay silent on a healthy guest, and (on the host, where we can
damage memory on purpose) verifiers that do report a lost write.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyvirt.lab import guest
from pyvirt.lab.guest import (
    CORRUPT_MARK,
    DISK_CORRUPT_RE,
    DISK_PROGRESS_RE,
    DISK_READY_RE,
    MEM_CORRUPT_RE,
    READY_RE,
    SELFTEST_RE,
    GuestImage,
    Heartbeat,
    parse_heartbeat,
)

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 20.0


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


class RunningGuest:
    """A QEMU process and its serial log file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, started: float) -> None:
        self.proc = proc
        self.log = log
        self.started = started

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


@contextlib.contextmanager
def boot(image: GuestImage, workdir: Path, cmdline: str, disk: Path | None = None,
         ) -> Iterator[RunningGuest]:  # fmt: skip
    """Boot the guest under TCG (KVM guests hang on this host); always kill QEMU after."""
    log = workdir / "serial.log"
    argv = [
        QEMU, "-accel", "tcg", "-machine", "pc", "-m", "256", "-nodefaults",
        "-display", "none", "-no-reboot", "-serial", f"file:{log}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
    ]  # fmt: skip
    if disk is not None:
        argv += ["-drive", f"file={disk},format=raw,if=none,id=d0,cache=writeback",
                 "-device", "virtio-blk-pci,drive=d0"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield RunningGuest(proc, log, started)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _count(pattern_lines: list[str], needle: str) -> int:
    return sum(1 for line in pattern_lines if needle in line)


def _assert_counting_heartbeats(beats: list[Heartbeat]) -> None:
    assert [b.n for b in beats] == list(range(len(beats))), "heartbeat counter skipped"
    for before, after in zip(beats, beats[1:], strict=False):
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
def test_initramfs_holds_workload_and_disk_modules(guest_image: GuestImage) -> None:
    archive = gzip.decompress(guest_image.initrd.read_bytes())
    manifest = json.loads(guest_image.manifest.read_text())
    for name in ("init", "bin/busybox", "bin/pvworkload", "dev/console", "lib/modules/order"):
        assert name.encode() + b"\0" in archive
    if manifest["virtio_blk"] == "module":
        assert "virtio_blk" in manifest["modules"]
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
    # ~5 a second (every 200 ms): modest output, yet several beats a second.
    span_s = (beats[-1].t_ms - beats[0].t_ms) / 1000
    assert 3.0 <= len(beats[1:]) / span_s <= 6.0
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
    assert 6 <= rate <= 10, f"dirtied {rate:.1f} MiB/s, asked for 8"


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
    _assert_counting_heartbeats(
        [hb for line in lines if (hb := parse_heartbeat(line)) is not None]
    )
    # The guest really wrote our stamp ("PVWDISK1", then block 0) to the image.
    head = disk.read_bytes()[:16]
    assert head == b"PVWDISK1" + b"\0" * 8


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
