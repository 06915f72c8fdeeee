"""The QEMU driver with real QEMU (TCG) and the test guest.

Each test boots the real test guest; the serial log's heartbeat counter is the oracle for
"the guest is running", "the guest is paused" and "the guest was not restarted".
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pyvirt.constants import DomainState, PausedReason, RunningReason, ShutoffReason
from pyvirt.lab.guest import GuestImage, build_guest, domain_xml
from pyvirt.qemu.driver import QemuDriver
from tests.conftest import DriverFactory
from tests.functional.guestlog import SerialLog

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    return build_guest()


def serial(driver: QemuDriver, name: str) -> SerialLog:
    return SerialLog(driver.serial_log_path(driver.lookup_by_name(name)))


async def test_define_start_pause_resume_destroy_undefine(
        drivers: DriverFactory, guest: GuestImage) -> None:
    # Checks: heartbeats while running; none while paused; the counter continues
    # (no restart) after resume; destroy leaves no process, socket or status file;
    # undefine removes the definition.
    driver = await drivers()
    obj = await driver.define_xml(domain_xml("life1", guest=guest, dirty_mb=16))
    await driver.create(obj)
    assert driver.get_state(obj) == (DomainState.RUNNING, RunningReason.BOOTED)
    log = serial(driver, "life1")
    first = await log.wait_heartbeat(above=2)
    await driver.suspend(obj)
    assert driver.get_state(obj) == (DomainState.PAUSED, PausedReason.USER)
    paused_at = log.last()
    assert paused_at is not None
    await asyncio.sleep(1.5)
    after_pause = log.last()
    assert after_pause is not None and after_pause.n <= paused_at.n + 1
    await driver.resume(obj)
    resumed = await log.wait_heartbeat(above=after_pause.n)
    assert resumed.n == after_pause.n + 1 or resumed.n <= after_pause.n + 3
    assert resumed.n > first.n and resumed.t_ms > first.t_ms  # same boot, counter continues
    assert driver.get_state(obj)[0] == DomainState.RUNNING
    assert log.corrupt_lines() == []
    process = obj.process
    assert process is not None
    run_dir = obj.resources.run_dir
    await driver.destroy(obj)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
    assert (not process.alive() and not Path(f"/proc/{process.pid}/cmdline").exists()) or \
        b"life1" not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert run_dir is not None and not run_dir.exists()
    assert not driver.runner.status_store.exists("life1")
    await driver.undefine(obj)
    assert driver.list_all() == []
    assert not driver.config_store.exists("life1")


async def test_reattach_after_driver_restart(drivers: DriverFactory, guest: GuestImage) -> None:
    # Checks: a new driver over the same state finds the running QEMU, the guest was not
    # disturbed (counter keeps rising across the restart), and it can still be controlled.
    driver = await drivers()
    obj = await driver.define_xml(domain_xml("re1", guest=guest))
    await driver.create(obj)
    log = serial(driver, "re1")
    before = await log.wait_heartbeat(above=1)
    pid = obj.process.pid if obj.process else -1
    await driver.close()
    del driver
    restarted = await drivers()
    again = restarted.lookup_by_name("re1")
    assert again.active and again.process is not None and again.process.pid == pid
    assert restarted.get_state(again)[0] == DomainState.RUNNING
    after = await log.wait_heartbeat(above=before.n + 2)
    assert after.t_ms > before.t_ms
    await restarted.suspend(again)
    assert restarted.get_state(again) == (DomainState.PAUSED, PausedReason.USER)
    await restarted.destroy(again)
    assert not os.path.exists(f"/proc/{pid}/cmdline") or \
        b"re1" not in Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_transient_guest_with_disk(drivers: DriverFactory, guest: GuestImage,
                                         short_tmp: Path) -> None:
    # Checks: a transient guest with a qcow2 disk boots, writes and verifies its disk
    # pattern, and disappears from the driver when destroyed.
    image = short_tmp / "disk.qcow2"
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M")
    assert await proc.wait() == 0
    driver = await drivers()
    obj = await driver.create_xml(domain_xml("disk1", guest=guest, disk=image))
    log = serial(driver, "disk1")
    deadline = asyncio.get_running_loop().time() + 60
    while not any(line.startswith("PVW DISK ") for line in log.lines()):
        assert asyncio.get_running_loop().time() < deadline, "\n".join(log.lines()[-10:])
        await asyncio.sleep(0.2)
    assert log.corrupt_lines() == []
    await driver.destroy(obj)
    assert driver.list_all() == []


async def test_start_failure_reports_qemu_error(drivers: DriverFactory, guest: GuestImage,
                                                short_tmp: Path) -> None:
    # Checks: QEMU refusing to start (missing disk image) gives QEMU's own reason, the
    # domain stays defined and shut off (failed), nothing is left running.
    driver = await drivers()
    missing = short_tmp / "nope.raw"
    obj = await driver.define_xml(domain_xml("bad1", guest=guest, disk=missing,
                                             disk_format="raw"))
    with pytest.raises(Exception, match=r"nope\.raw"):
        await driver.create(obj)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.FAILED)
    assert obj.process is None and not obj.active


async def test_acpi_shutdown_and_guest_poweroff(drivers: DriverFactory,
                                                guest: GuestImage) -> None:
    # Checks: shutdown() asks the guest via ACPI and waits; the guest powers off and the
    # domain ends shut off (shutdown); a guest that powers itself off ends the same way.
    driver = await drivers()
    obj = await driver.define_xml(domain_xml("acpi1", guest=guest))
    await driver.create(obj)
    await serial(driver, "acpi1").wait_heartbeat(above=1)
    await driver.shutdown(obj, timeout=30)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert obj.process is None
    self_off = await driver.create_xml(domain_xml("self1", guest=guest, poweroff_after=2))
    deadline = asyncio.get_running_loop().time() + 60
    while self_off.active:
        assert asyncio.get_running_loop().time() < deadline, "guest did not power off"
        await asyncio.sleep(0.2)
    assert driver.list_all() == [obj]  # the transient one is gone


async def test_reboot_restarts_the_guest_in_the_same_qemu(drivers: DriverFactory,
                                                          guest: GuestImage) -> None:
    # Checks: reboot() (ACPI power-off, then reset) boots the guest again (its counter
    # starts over) inside the same QEMU process, and the domain stays running.
    driver = await drivers()
    obj = await driver.create_xml(domain_xml("boot1", guest=guest))
    log = serial(driver, "boot1")
    before = await log.wait_heartbeat(above=3)
    pid = obj.process.pid if obj.process else -1
    await driver.reboot(obj)
    deadline = asyncio.get_running_loop().time() + 60
    while not ((last := log.last()) is not None and last.n < before.n):
        assert asyncio.get_running_loop().time() < deadline, "guest did not reboot"
        await asyncio.sleep(0.2)
    assert obj.active and obj.process is not None and obj.process.pid == pid
    assert driver.get_state(obj)[0] == DomainState.RUNNING
