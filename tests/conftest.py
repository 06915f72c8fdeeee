"""Shared fixtures: driver settings in temporary directories, drivers that clean up."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver
    from pyvirt.qemu.settings import DriverSettings

FAKE_QEMU = str(Path(__file__).parent / "fakes" / "fake_qemu.py")

DriverFactory = Callable[..., Awaitable["QemuDriver"]]


def make_settings(root: Path, emulator: str = "/usr/bin/qemu-system-x86_64",
                  **overrides: Any) -> DriverSettings:
    from pyvirt.qemu.settings import DriverSettings

    base: dict[str, Any] = {
        "state_dir": root / "state", "run_dir": root / "run", "log_dir": root / "log",
        "emulator": emulator, **fake_runs_as_root(emulator),
    }
    base.update(overrides)
    return DriverSettings(**base)


REAL_QEMU = "/usr/bin/qemu-system-x86_64"
#: a Python that QEMU's user can run: the system's, isolated (the checkout's venv may sit
#: in a directory only root can enter, as CI's does)
UNPRIVILEGED_PYTHON = ("/usr/bin/python3", "-I")


def fake_runs_as_root(emulator: str) -> dict[str, str]:
    """The fake QEMU (a Python test double of QMP, reading and writing files in the test's
    directories) runs as root; the real QEMU as the default unprivileged user, sandboxed."""
    return {} if emulator == REAL_QEMU else {"user": "root", "group": "root"}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory path: unix socket paths must stay under 108 bytes. QEMU's user may
    pass through it (not list it), as through any directory on the way to its files."""
    path = Path(tempfile.mkdtemp(prefix="pv-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def drivers(short_tmp: Path) -> AsyncIterator[DriverFactory]:
    """Make drivers over one state root; at teardown stop every guest they started."""
    from pyvirt.qemu.driver import QemuDriver

    made: list[QemuDriver] = []

    async def factory(emulator: str = "/usr/bin/qemu-system-x86_64",
                      faults: dict[str, Any] | None = None, **overrides: Any) -> QemuDriver:
        env = dict(overrides.pop("extra_env", {}))
        if faults is not None:
            env["FAKE_QEMU_FAULTS"] = json.dumps(faults)
        settings = make_settings(short_tmp, emulator, extra_env=env, **overrides)
        driver = QemuDriver(settings)
        await driver.initialize()
        made.append(driver)
        return driver

    yield factory
    for driver in reversed(made):
        for obj in driver.list_all():
            if obj.active and obj.monitor is not None:
                try:
                    await driver.destroy(obj)
                except Exception:
                    if obj.process is not None:
                        os.kill(obj.process.pid, 9)
        await driver.close()
    _assert_no_leftover_qemu(short_tmp)


def _assert_no_leftover_qemu(root: Path) -> None:
    """No process may still have the test's state root on its command line (a QEMU's log
    writer gets a moment: it exits on its own once it has written what QEMU left)."""
    deadline = time.monotonic() + 2.0
    while _processes_mentioning(root) and time.monotonic() < deadline:
        time.sleep(0.02)
    leftovers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(root).encode() in cmdline and state != "Z":
            leftovers.append(int(entry.name))
            os.kill(int(entry.name), 9)
    assert not leftovers, f"QEMU processes left behind: {leftovers}"


def _processes_mentioning(root: Path) -> bool:
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(root).encode() in (entry / "cmdline").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    return True
        except OSError:
            continue
    return False


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests that bring lab hosts up hold the lab for the rest of the run (one user at once)."""
    if item.path.name.startswith("test_lab_") and os.geteuid() == 0:
        from pyvirt.lab.uselock import acquire_lab

        acquire_lab(f"pytest {item.path.name}")
