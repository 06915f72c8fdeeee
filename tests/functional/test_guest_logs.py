"""The real test guest (QEMU, TCG) behind the log writer: capped serial log, live heartbeat.

QEMU writes the serial port's log into the fdset pipe the driver passed (``-add-fd`` +
``logfile=/dev/fdset/N``) and its stderr into another; the log writer caps both. With a tiny
``max_size`` (below qemu.conf's minimum of 4096, which DriverSettings does not enforce) the
heartbeats (a line every 200 ms) rotate the serial log within seconds; the current file
still shows the heartbeat counting up, which is what every reader relies on.
"""

from __future__ import annotations

import asyncio

import pytest

from pyvirt.lab.guest import GuestImage, build_guest, domain_xml
from tests.conftest import DriverFactory
from tests.functional.guestlog import SerialLog

pytestmark = pytest.mark.qemu

MAX_SIZE = 1024
MAX_BACKUPS = 2


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    return build_guest()


async def test_serial_log_is_capped_and_shows_the_heartbeat(
        drivers: DriverFactory, guest: GuestImage) -> None:
    # Checks: heartbeats keep arriving in the current serial log; it and every backup stay
    # within max_size, exactly max_backups backups exist; QEMU's own log is capped too.
    driver = await drivers(log_max_size=MAX_SIZE, log_max_backups=MAX_BACKUPS)
    obj = await driver.create_xml(domain_xml("logcap", guest=guest))
    serial_path = driver.serial_log_path(obj)
    log = SerialLog(serial_path)
    first = await log.wait_heartbeat(above=2)
    oldest = serial_path.with_name(f"{serial_path.name}.{MAX_BACKUPS - 1}")
    deadline = asyncio.get_running_loop().time() + 60
    while not oldest.exists():  # ~17 heartbeats fill a file
        assert asyncio.get_running_loop().time() < deadline, "the serial log never rotated"
        await asyncio.sleep(0.2)
    later = await log.wait_heartbeat(above=first.n + 3)
    assert log.corrupt_lines() == []
    for path in (serial_path, driver.runner.log_path("logcap")):
        sizes = {p.name: p.stat().st_size for p in path.parent.glob(path.name + "*")}
        assert all(size <= MAX_SIZE for size in sizes.values()), sizes
        assert set(sizes) <= {path.name, *(f"{path.name}.{i}" for i in range(MAX_BACKUPS))}
    # the newest heartbeat is in the current file, the ones before it rotated away in order
    newest = log.last()
    assert newest is not None and newest.n >= later.n
    rotated = SerialLog(serial_path.with_name(serial_path.name + ".0")).heartbeats()
    assert rotated and rotated[-1].n < later.n
    await driver.destroy(obj)
