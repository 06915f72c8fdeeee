"""Where the driver sends a QEMU's output (fake QEMU): the log writer, or the file itself.

"logd": one writer per QEMU, started before it, holding the read ends; the daemon keeps no
write end, so the writer ends with QEMU; QEMU's last words (a failed start's reason) are in
the log before the driver reads them. "file": no writer, QEMU appends to the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvirt.errors import InternalError
from tests.conftest import FAKE_QEMU, DriverFactory
from tests.unit.test_driver_fake import domain_xml


def pipes_of(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = fd.readlink().as_posix() if fd.is_symlink() else ""
        if target.startswith("pipe:"):
            found.add(target)
    return found


async def test_logd_writer_lives_and_ends_with_qemu(drivers: DriverFactory) -> None:
    driver = await drivers(FAKE_QEMU)
    obj = await driver.create_xml(domain_xml())
    process = obj.process
    assert process is not None and process.log_writer is not None
    writer = process.log_writer
    assert writer.poll() is None
    # QEMU's stdout/stderr and the serial log fd are the writer's pipes, and the daemon
    # (this process) holds none of them
    qemu_pipes = pipes_of(process.pid)
    assert len(qemu_pipes) == 2 and qemu_pipes <= pipes_of(writer.pid)
    assert not qemu_pipes & pipes_of(os.getpid())
    log = driver.runner.log_path("g1")
    assert b": starting up\n" in log.read_bytes()
    await driver.destroy(obj)
    assert writer.poll() is not None, "the writer ends with its QEMU (and is reaped)"


async def test_file_handler_has_no_writer(drivers: DriverFactory) -> None:
    driver = await drivers(FAKE_QEMU, stdio_handler="file")
    obj = await driver.create_xml(domain_xml())
    assert obj.process is not None and obj.process.log_writer is None
    assert b": starting up\n" in driver.runner.log_path("g1").read_bytes()
    await driver.destroy(obj)


@pytest.mark.parametrize("handler", ["logd", "file"])
async def test_a_failed_start_reports_qemus_words(drivers: DriverFactory,
                                                  handler: str) -> None:
    driver = await drivers(FAKE_QEMU, faults={"exit_before_monitor": 1},
                           stdio_handler=handler)
    obj = await driver.define_xml(domain_xml())
    with pytest.raises(InternalError, match="injected start failure"):
        await driver.create(obj)
    assert obj.process is None
