"""Guest-facing operations of the driver: shutdown, reboot, reset, suspend, resume.

Each takes the domain's job lock, checks the state as libvirt does, records the reason
for the QMP event it is about to cause, and issues the QMP command.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pyvirt.constants import DomainState, ListFlags, PausedReason, RunningReason
from pyvirt.errors import OperationInvalidError, OperationTimeoutError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.events import AnyEvent, DomainEvent

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver


async def shutdown(driver: QemuDriver, obj: DomainObj, timeout: float | None) -> None:
    """Ask the guest to power off (ACPI); with ``timeout``, wait until it has."""
    stopped = _stopped_waiter(driver, obj)
    try:
        async with obj.job_lock("shutdown", driver.settings.job_wait_s):
            obj.require_active()
            if obj.state == DomainState.PAUSED:
                raise OperationInvalidError("domain is paused; resume it before shutdown")
            await driver.runner.monitor(obj).execute("system_powerdown")
        if timeout is not None:
            try:
                await asyncio.wait_for(asyncio.shield(stopped[1]), timeout)
            except TimeoutError as exc:
                raise OperationTimeoutError(
                    f"domain '{obj.name}' did not shut down within {timeout:g} s") from exc
    finally:
        driver.events.unsubscribe(stopped[0])


def _stopped_waiter(driver: QemuDriver, obj: DomainObj) -> tuple[int, asyncio.Future[None]]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(event: AnyEvent) -> None:
        if isinstance(event, DomainEvent) and event.uuid == obj.uuid \
                and event.event.name == "STOPPED" and not future.done():
            future.set_result(None)

    return driver.events.subscribe(on_event), future


async def reboot(driver: QemuDriver, obj: DomainObj, flags: int) -> None:
    """libvirt's default reboot for QEMU: ACPI power-off, then reset and run again."""
    async with obj.job_lock("reboot", driver.settings.job_wait_s):
        obj.require_active()
        if obj.state != DomainState.RUNNING:
            raise OperationInvalidError("domain is not running")
        obj.fake_reboot = True
        try:
            await driver.runner.monitor(obj).execute("system_powerdown")
        except BaseException:
            obj.fake_reboot = False
            raise


async def reset(driver: QemuDriver, obj: DomainObj) -> None:
    async with obj.job_lock("reset", driver.settings.job_wait_s):
        obj.require_active()
        await driver.runner.monitor(obj).execute("system_reset")


async def suspend(driver: QemuDriver, obj: DomainObj) -> None:
    async with obj.job_lock("suspend", driver.settings.job_wait_s):
        obj.require_active()
        if obj.state == DomainState.PAUSED:
            return  # libvirt: suspending a paused domain is a no-op
        obj.pending_pause_reason = PausedReason.USER
        await driver.runner.monitor(obj).execute("stop")
        # The STOP event normally arrives before the reply; make sure the state is right.
        if current_state(obj) != DomainState.PAUSED:
            obj.set_state(DomainState.PAUSED, PausedReason.USER)
        driver.runner.save_status(obj)


async def resume(driver: QemuDriver, obj: DomainObj) -> None:
    async with obj.job_lock("resume", driver.settings.job_wait_s):
        obj.require_active()
        if obj.state == DomainState.PMSUSPENDED:
            raise OperationInvalidError("domain is pmsuspended")
        if obj.state == DomainState.RUNNING:
            return
        obj.pending_resume_reason = RunningReason.UNPAUSED
        await driver.runner.monitor(obj).execute("cont")
        if current_state(obj) != DomainState.RUNNING:
            obj.set_state(DomainState.RUNNING, RunningReason.UNPAUSED)
        driver.runner.save_status(obj)


def current_state(obj: DomainObj) -> DomainState:
    """The state now (QMP events may have changed it while we awaited)."""
    return obj.state


_STATE_FLAGS = {
    DomainState.RUNNING: ListFlags.RUNNING,
    DomainState.PAUSED: ListFlags.PAUSED,
    DomainState.SHUTOFF: ListFlags.SHUTOFF,
}


def list_filter_matches(obj: DomainObj, flags: ListFlags) -> bool:
    """virConnectListAllDomains filtering: each group given must match."""
    groups = [
        (ListFlags.ACTIVE | ListFlags.INACTIVE,
         ListFlags.ACTIVE if obj.active else ListFlags.INACTIVE),
        (ListFlags.PERSISTENT | ListFlags.TRANSIENT,
         ListFlags.PERSISTENT if obj.persistent else ListFlags.TRANSIENT),
        (ListFlags.RUNNING | ListFlags.PAUSED | ListFlags.SHUTOFF | ListFlags.OTHER,
         _STATE_FLAGS.get(obj.state, ListFlags.OTHER)),
        (ListFlags.AUTOSTART | ListFlags.NO_AUTOSTART,
         ListFlags.AUTOSTART if obj.autostart else ListFlags.NO_AUTOSTART),
        (ListFlags.MANAGEDSAVE | ListFlags.NO_MANAGEDSAVE, ListFlags.NO_MANAGEDSAVE),
        (ListFlags.HAS_SNAPSHOT | ListFlags.NO_SNAPSHOT, ListFlags.NO_SNAPSHOT),
        (ListFlags.HAS_CHECKPOINT | ListFlags.NO_CHECKPOINT, ListFlags.NO_CHECKPOINT),
    ]
    return all(not (flags & group) or bool(flags & mine) for group, mine in groups)
