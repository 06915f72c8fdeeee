"""Dynamic ownership on a live pyvirtd with real QEMUs (issue 11): images are handed to QEMU's
user while the guest runs and given back at stop, across a daemon SIGKILL too.

The oracle is the image's owner and its ``trusted.libvirt.security.*`` record: an image
owned 4242:4242 with mode 0600 (nobody else may read it) is ``pyvirt-qemu``'s while the
guest runs (the guest writes and verifies it: QEMU really opened it as its own user) and
4242:4242 again, with no record left, once the guest is gone. Files pyvirtd must never hand
over (its own status files, /proc) are refused and left untouched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pyvirt
from pyvirt.errors import VirtError
from pyvirt.lab.guest import GuestImage, build_guest, domain_xml
from pyvirt.qemu import owner_xattrs
from pyvirt.qemu.owner_xattrs import Owner
from tests.functional.daemon_util import (
    DaemonHandle,
    kill_processes_mentioning,
    real_qemu_pids,
    start_daemon,
    stop_daemon,
    tear_down,
)
from tests.functional.guestlog import SerialLog

pytestmark = pytest.mark.qemu

ORIGINAL = Owner(4242, 4242)


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    return build_guest()


@pytest.fixture
def root() -> Iterator[Path]:
    """A daemon root (QEMU's user may pass through it); every daemon started on it and
    every QEMU mentioning it is gone afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pvo-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        tear_down(None, path)


@pytest.fixture
def image(root: Path) -> Path:
    path = root / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    os.chown(path, ORIGINAL.uid, ORIGINAL.gid)
    path.chmod(0o600)
    return path


def qemu_owner() -> Owner:
    user = pwd.getpwnam("pyvirt-qemu")
    return Owner(user.pw_uid, user.pw_gid)


def owner_of(path: Path) -> Owner:
    info = path.stat()
    return Owner(info.st_uid, info.st_gid)


def record(path: Path) -> tuple[int, Owner | None]:
    return owner_xattrs.read_record(str(path))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def wait_disk_written(handle: DaemonHandle, name: str) -> None:
    log = SerialLog(handle.serial_log(name))
    wait_for(lambda: any(line.startswith("PVW DISK ") for line in log.lines()),
             f"{name} never wrote its disk: {log.lines()[-5:]}", timeout=60)
    assert log.corrupt_lines() == []


@contextlib.contextmanager
def connection(handle: DaemonHandle) -> Iterator[pyvirt.virConnect]:
    conn = pyvirt.open(handle.uri)
    try:
        yield conn
    finally:
        conn.close()


def qemu_pid(root: Path, name: str) -> int:
    (pid,) = real_qemu_pids(root, name)
    return pid


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_image_is_qemus_while_running_and_given_back_at_destroy(
        root: Path, image: Path, guest: GuestImage) -> None:
    handle = start_daemon(root)
    try:
        with connection(handle) as conn:
            dom = conn.createXML(domain_xml("own-run", guest=guest, disk=image))
            wait_disk_written(handle, "own-run")  # QEMU (pyvirt-qemu) reads and writes it
            assert owner_of(image) == qemu_owner()
            assert image.stat().st_mode & 0o777 == 0o600
            assert record(image) == (1, ORIGINAL)
            dom.destroy()
        assert owner_of(image) == ORIGINAL
        assert record(image) == (0, None)
    finally:
        stop_daemon(handle)


def test_daemon_sigkill_restart_then_destroy_gives_back(
        root: Path, image: Path, guest: GuestImage) -> None:
    # the record survives in the status file: the restarted daemon restores at destroy
    first = start_daemon(root)
    with connection(first) as conn:
        conn.createXML(domain_xml("own-kill", guest=guest, disk=image))
    status = (root / "run" / "qemu" / "own-kill.status").read_text()
    assert f'<file path="{image}"' in status and "owner='+4242:+4242'" in status
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    pid = qemu_pid(root, "own-kill")
    assert not gone(pid) and owner_of(image) == qemu_owner()
    second = start_daemon(root)
    try:
        with connection(second) as conn:
            conn.lookupByName("own-kill").destroy()
        assert gone(pid)
        assert owner_of(image) == ORIGINAL and record(image) == (0, None)
    finally:
        stop_daemon(second)


def test_qemu_dies_while_the_daemon_is_dead_restart_gives_back(
        root: Path, image: Path, guest: GuestImage) -> None:
    first = start_daemon(root)
    with connection(first) as conn:
        conn.createXML(domain_xml("own-gone", guest=guest, disk=image))
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    pid = qemu_pid(root, "own-gone")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), "QEMU survived SIGKILL")
    assert owner_of(image) == qemu_owner()  # nobody has given it back yet
    second = start_daemon(root)
    try:
        wait_for(lambda: owner_of(image) == ORIGINAL, "not given back after the restart")
        assert record(image) == (0, None)
        with connection(second) as conn:
            assert conn.listDomainsID() == []
    finally:
        stop_daemon(second)


def test_daemon_files_and_proc_are_never_handed_to_qemu(
        root: Path, guest: GuestImage) -> None:
    # Attack: a disk naming the status file of another guest (directly, or through an
    # innocent-looking symlink), or the daemon's own environment in /proc: refused before
    # anything changes, the start fails, the other guest runs on.
    handle = start_daemon(root)
    try:
        with connection(handle) as conn:
            victim_dom = conn.createXML(domain_xml("own-victim", guest=guest))
            victim = root / "run" / "qemu" / "own-victim.status"
            link = root / "innocent.qcow2"
            link.symlink_to(victim)
            for source, place in ((victim, root / "run" / "qemu"),
                                  (link, root / "run" / "qemu"),
                                  (Path(f"/proc/{handle.proc.pid}/environ"), Path("/proc"))):
                xml = domain_xml("own-attack", guest=guest, disk=source, disk_format="raw")
                with pytest.raises(VirtError, match=f"is in {place}: pyvirtd does not "
                                                    "hand such files to QEMU"):
                    conn.createXML(xml)
            info = victim.stat()
            assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o600)
            assert record(victim) == (0, None)
            assert [d.name() for d in conn.listAllDomains()] == ["own-victim"]
            victim_dom.destroy()
    finally:
        stop_daemon(handle)
        kill_processes_mentioning(root)
