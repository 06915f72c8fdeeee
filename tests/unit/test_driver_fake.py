"""Driver logic against the fake QEMU: states, reasons, events, faults, reattach.

Fast (no guest boots); real-QEMU coverage of the same paths is in
tests/functional/test_driver_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from pyvirt.constants import (
    DomainState,
    EventStoppedDetail,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutdownReason,
    ShutoffReason,
)
from pyvirt.errors import (
    ErrorCode,
    InternalError,
    NoDomainError,
    OperationFailedError,
    OperationInvalidError,
    OperationTimeoutError,
    VirtError,
)
from pyvirt.qemu.driver import QemuDriver
from pyvirt.qemu.events import AnyEvent, DomainEvent
from tests.conftest import FAKE_QEMU, DriverFactory


def domain_xml(name: str = "g1", uuid: str | None = None, extra: str = "") -> str:
    uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>{uuid_el}
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {extra}
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>"""


def record(driver: QemuDriver) -> list[DomainEvent]:
    events: list[DomainEvent] = []

    def keep(event: AnyEvent) -> None:
        if isinstance(event, DomainEvent):
            events.append(event)

    driver.events.subscribe(keep)
    return events


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def control(driver: QemuDriver, uuid: str, order: dict[str, Any]) -> None:
    prefix = driver.settings.extra_env["FAKE_QEMU_CONTROL"]
    reader, writer = await asyncio.open_unix_connection(f"{prefix}.{uuid}")
    writer.write((json.dumps(order) + "\n").encode())
    await writer.drain()
    await reader.readline()
    writer.close()


async def fake_driver(drivers: DriverFactory, short_tmp: Path, **kw: Any) -> QemuDriver:
    env = {"FAKE_QEMU_CONTROL": str(short_tmp / "ctl")}
    return await drivers(FAKE_QEMU, extra_env=env, kill_grace_s=1.0, **kw)


async def test_lifecycle_states_and_events(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    events = record(driver)
    obj = await driver.define_xml(domain_xml())
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.UNKNOWN)
    await driver.create(obj)
    assert obj.dom_id == 1
    assert driver.get_state(obj) == (DomainState.RUNNING, RunningReason.BOOTED)
    await driver.suspend(obj)
    assert driver.get_state(obj) == (DomainState.PAUSED, PausedReason.USER)
    await driver.resume(obj)
    await eventually(lambda: obj.state == DomainState.RUNNING)
    assert obj.reason == RunningReason.UNPAUSED
    pid = obj.process.pid if obj.process else 0
    await driver.destroy(obj)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
    assert not Path(f"/proc/{pid}").exists() or b"fake_qemu" not in \
        Path(f"/proc/{pid}/cmdline").read_bytes()
    kinds = [(e.event, e.detail) for e in events]
    assert kinds == [
        (LifecycleEvent.DEFINED, 0), (LifecycleEvent.STARTED, 0),
        (LifecycleEvent.SUSPENDED, 0), (LifecycleEvent.RESUMED, 0),
        (LifecycleEvent.STOPPED, EventStoppedDetail.DESTROYED),
    ]
    assert not list(driver.settings.status_dir.iterdir())


async def test_pty_path_recorded_in_live_xml(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.create_xml(domain_xml())
    xml = driver.get_xml(obj)
    assert "/dev/pts/" in xml and "id='1'" in xml
    assert "/dev/pts/" not in driver.get_xml(obj, 2) or obj.config is None


async def test_state_errors(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.define_xml(domain_xml())
    with pytest.raises(OperationInvalidError, match="domain is not running"):
        await driver.destroy(obj)
    with pytest.raises(OperationInvalidError, match="domain is not running"):
        await driver.suspend(obj)
    await driver.create(obj)
    with pytest.raises(OperationInvalidError, match="domain is already running") as info:
        await driver.create(obj)
    assert info.value.code == ErrorCode.OPERATION_INVALID


async def test_name_and_uuid_clashes(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    first = str(uuidlib.uuid4())
    await driver.define_xml(domain_xml("a", first))
    await driver.define_xml(domain_xml("a", first))  # same name + uuid = update
    with pytest.raises(OperationFailedError, match="already exists with uuid"):
        await driver.define_xml(domain_xml("a", str(uuidlib.uuid4())))
    with pytest.raises(OperationFailedError, match="already defined with uuid"):
        await driver.define_xml(domain_xml("b", first))
    with pytest.raises(OperationFailedError, match="already exists"):
        await driver.create_xml(domain_xml("a"))
    assert [o.name for o in driver.list_all()] == ["a"]


@pytest.mark.parametrize("name", ["../../etc/x", "a/b", "..", "a\nb"])
async def test_escaping_names_refused(drivers: DriverFactory, short_tmp: Path,
                                      name: str) -> None:
    driver = await fake_driver(drivers, short_tmp)
    with pytest.raises(VirtError):
        await driver.define_xml(domain_xml(name.replace("\n", "&#10;")))
    assert driver.list_all() == []
    assert list(driver.settings.config_dir.iterdir()) == []


async def test_transient_domain_vanishes_and_cannot_be_undefined(
        drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.create_xml(domain_xml("t1"))
    assert not obj.persistent
    with pytest.raises(OperationInvalidError, match="cannot undefine transient domain"):
        await driver.undefine(obj)
    await driver.destroy(obj)
    assert driver.list_all() == []


async def test_undefine_running_makes_transient(drivers: DriverFactory,
                                                short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.define_xml(domain_xml())
    await driver.create(obj)
    await driver.undefine(obj)
    assert obj.active and not obj.persistent
    assert not driver.config_store.exists("g1")
    await driver.destroy(obj)
    assert driver.list_all() == []


async def test_guest_poweroff_applies_on_poweroff(drivers: DriverFactory,
                                                  short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    events = record(driver)
    obj = await driver.define_xml(domain_xml())
    await driver.create(obj)
    await driver.shutdown(obj, timeout=5)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    kinds = [e.event for e in events]
    assert LifecycleEvent.SHUTDOWN in kinds
    assert events[-1].event == LifecycleEvent.STOPPED
    assert events[-1].detail == EventStoppedDetail.SHUTDOWN


async def test_shutdown_timeout_when_guest_ignores_acpi(drivers: DriverFactory,
                                                        short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp, faults={"ignore_powerdown": True})
    obj = await driver.create_xml(domain_xml())
    with pytest.raises(OperationTimeoutError, match=r"did not shut down within 0\.3 s"):
        await driver.shutdown(obj, timeout=0.3)
    assert obj.state == DomainState.RUNNING


async def test_on_poweroff_restart(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.define_xml(domain_xml(extra="<on_poweroff>restart</on_poweroff>"))
    await driver.create(obj)
    first_id = obj.dom_id
    await driver.runner.monitor(obj).execute("system_powerdown")
    await eventually(lambda: obj.active and obj.dom_id != first_id
                     and obj.state == DomainState.RUNNING)


async def test_reboot_keeps_domain_running(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.create_xml(domain_xml())
    pid = obj.process.pid if obj.process else 0
    await driver.reboot(obj)
    await eventually(lambda: not obj.fake_reboot)
    await asyncio.sleep(0.2)
    assert obj.active and obj.process is not None and obj.process.pid == pid
    assert obj.state == DomainState.RUNNING


async def test_qemu_crash_is_reported(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    events = record(driver)
    obj = await driver.define_xml(domain_xml())
    await driver.create(obj)
    await control(driver, obj.uuid, {"exit": 1})
    await eventually(lambda: not obj.active)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.CRASHED)
    assert events[-1].event == LifecycleEvent.STOPPED
    assert events[-1].detail == EventStoppedDetail.FAILED
    assert not driver.runner.status_store.exists("g1")


async def test_guest_panic_on_crash_destroy(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.define_xml(domain_xml())
    await driver.create(obj)
    await control(driver, obj.uuid, {"emit": "GUEST_PANICKED", "data": {"action": "pause"}})
    await eventually(lambda: not obj.active)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.CRASHED)


async def test_io_error_pause_reason(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.create_xml(domain_xml())
    await control(driver, obj.uuid, {"emit": "BLOCK_IO_ERROR",
                                     "data": {"action": "stop", "operation": "write"}})
    await control(driver, obj.uuid, {"emit": "STOP"})
    await eventually(lambda: obj.state == DomainState.PAUSED)
    assert obj.reason == PausedReason.IOERROR


async def test_start_failure_leaves_nothing(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp, faults={"exit_before_monitor": 1})
    obj = await driver.define_xml(domain_xml())
    with pytest.raises(InternalError,
                       match=r"process exited while connecting to monitor: .*injected"):
        await driver.create(obj)
    assert driver.get_state(obj) == (DomainState.SHUTOFF, ShutoffReason.FAILED)
    assert not obj.active and obj.process is None
    assert list(driver.settings.status_dir.iterdir()) == []


async def test_failing_cont_kills_qemu(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp,
                               faults={"fail_commands": {"cont": "injected cont failure"}})
    with pytest.raises(OperationFailedError, match="injected cont failure"):
        await driver.create_xml(domain_xml())
    assert driver.list_all() == []


async def test_destroy_escalates_to_sigkill(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp, faults={"ignore_sigterm": True})
    obj = await driver.create_xml(domain_xml())
    process = obj.process
    assert process is not None
    await driver.destroy(obj)
    assert not process.alive()


async def test_create_racing_destroy_of_a_transient_domain(drivers: DriverFactory,
                                                          short_tmp: Path) -> None:
    # found by the wire fuzzer: CREATE waited for the lock DESTROY held, then found the
    # transient domain gone (no definition) and failed an assertion
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.create_xml(domain_xml())
    results = await asyncio.gather(driver.destroy(obj), driver.create(obj),
                                   return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], NoDomainError), results[1]


async def test_reattach_after_driver_restart(drivers: DriverFactory, short_tmp: Path) -> None:
    first = await fake_driver(drivers, short_tmp)
    obj = await first.define_xml(domain_xml())
    await first.create(obj)
    await first.suspend(obj)
    pid = obj.process.pid if obj.process else 0
    await first.close()
    second = await fake_driver(drivers, short_tmp)
    again = second.lookup_by_name("g1")
    assert again.active and again.process is not None and again.process.pid == pid
    assert second.get_state(again) == (DomainState.PAUSED, PausedReason.USER)
    assert second.lookup_by_id(again.dom_id) is again
    await second.resume(again)
    await eventually(lambda: again.state == DomainState.RUNNING)
    third_obj = await second.create_xml(domain_xml("g2"))
    assert third_obj.dom_id > again.dom_id  # ids never collide with re-attached ones
    await second.destroy(again)
    assert not again.active


async def test_reattach_when_qemu_died_meanwhile(drivers: DriverFactory,
                                                 short_tmp: Path) -> None:
    first = await fake_driver(drivers, short_tmp)
    obj = await first.define_xml(domain_xml())
    await first.create(obj)
    await first.create_xml(domain_xml("t"))
    await first.close()
    for dom in first.list_all():
        assert dom.process is not None
        dom.process._signal(signal.SIGKILL)
        await dom.process.wait_exit(5)
    second = await fake_driver(drivers, short_tmp)
    assert [o.name for o in second.list_all()] == ["g1"]
    assert second.get_state(second.lookup_by_name("g1"))[0] == DomainState.SHUTOFF
    assert list(second.settings.status_dir.iterdir()) == []


async def test_autostart(drivers: DriverFactory, short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.define_xml(domain_xml())
    await driver.set_autostart(obj, True)
    assert driver.get_autostart(obj)
    transient = await driver.create_xml(domain_xml("t"))
    with pytest.raises(OperationInvalidError):
        await driver.set_autostart(transient, True)
    await driver.destroy(transient)
    await driver.close()
    restarted = QemuDriver(driver.settings)
    await restarted.initialize(autostart=True)
    try:
        again = restarted.lookup_by_name("g1")
        assert again.autostart and again.state == DomainState.RUNNING
    finally:
        await restarted.destroy(restarted.lookup_by_name("g1"))


async def test_shutdown_state_from_guest_event(drivers: DriverFactory,
                                               short_tmp: Path) -> None:
    driver = await fake_driver(drivers, short_tmp)
    obj = await driver.define_xml(domain_xml(extra="<on_poweroff>preserve</on_poweroff>"))
    await driver.create(obj)
    await driver.runner.monitor(obj).execute("system_powerdown")
    await eventually(lambda: obj.state == DomainState.SHUTDOWN)
    assert obj.reason == ShutdownReason.USER and obj.active


async def test_runtime_values_filled_at_start(drivers: DriverFactory, short_tmp: Path) -> None:
    # A unix channel without a path gets one in the run dir; autoport VNC gets a port in
    # the display range and the configured listen address; all show in the live XML only.
    driver = await fake_driver(drivers, short_tmp, vnc_listen="127.0.0.1",
                               remote_display_port_min=15900, remote_display_port_max=15999)
    devices = """<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>
      </channel><graphics type='vnc' autoport='yes'/>"""
    xml = domain_xml("rt1").replace("<memballoon model='none'/>",
                                    devices + "<memballoon model='none'/>")
    obj = await driver.define_xml(xml)
    await driver.create(obj)
    live = driver.get_xml(obj)
    assert "org.qemu.guest_agent.0'/>" in live
    assert str(driver.settings.run_dir) in live
    port = obj.live.devices.graphics[0].port if obj.live else None
    assert port is not None and 15900 <= port <= 15999 and f"port='{port}'" in live
    assert "listen='127.0.0.1'" in live
    inactive = driver.get_xml(obj, 2)
    assert str(driver.settings.run_dir) not in inactive and "port='-1'" in inactive
    await driver.destroy(obj)
    assert port not in driver.runner.display_ports._used
