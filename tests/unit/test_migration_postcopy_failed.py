"""The one post-copy-failure path (``MigrationEngine.postcopy_failed``) against the fake QEMU:
the guest stays paused (post-copy failed), announced once however many paths notice; an
incoming job ends with its ports given back unless a phase still waits on it; an outgoing
job is left to its phase. End to end (daemons, virsh, a link broken during Finish):
tests/functional/test_migration_postcopy.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest

from pyvirt.constants import (
    DomainState,
    EventSuspendedDetail,
    LifecycleEvent,
    PausedReason,
    ShutoffReason,
)
from pyvirt.errors import OperationFailedError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.driver import QemuDriver
from pyvirt.qemu.events import DomainEvent
from pyvirt.qemu.migration.job import IncomingJob, MigrationJob, OutgoingJob
from pyvirt.qemu.migration.phases import SourcePhase
from pyvirt.qemu.migration.qemu_status import MigrationStatus
from pyvirt.qemu.resources import PortAllocator
from pyvirt.qemu.status import parse_status
from tests.conftest import DriverFactory
from tests.unit.test_driver_fake import control, domain_xml, eventually, fake_driver, record

LOOPBACK = "127.0.0.1"
J = TypeVar("J", bound=MigrationJob)
FAILED = (LifecycleEvent.SUSPENDED, EventSuspendedDetail.POSTCOPY_FAILED)


async def running_guest(drivers: DriverFactory, short_tmp: Path) -> tuple[QemuDriver, DomainObj]:
    driver = await fake_driver(drivers, short_tmp)
    return driver, await driver.create_xml(domain_xml())


def give_incoming(driver: QemuDriver, obj: DomainObj) -> IncomingJob:
    """A job as Prepare leaves it (with a migration and an NBD port), in post-copy."""
    ports = driver.migration.ports
    job = IncomingJob(name=obj.name, uuid=obj.uuid, port=ports.allocate(LOOPBACK),
                      nbd_port=ports.allocate(LOOPBACK))
    return _hand(obj, job)


def give_outgoing(obj: DomainObj) -> OutgoingJob:
    """A job as a post-copy Perform leaves it."""
    return _hand(obj, OutgoingJob(name=obj.name, uuid=obj.uuid,
                                  source_phase=SourcePhase.PERFORM3_DONE))


def _hand(obj: DomainObj, job: J) -> J:
    job.status = MigrationStatus.POSTCOPY_ACTIVE
    obj.migration = job
    return job


def taken(ports: PortAllocator, port: int | None) -> bool:
    assert port is not None
    try:
        ports.claim(port, LOOPBACK)
    except OperationFailedError:
        return True
    ports.release(port)
    return False


def failures(events: list[DomainEvent]) -> int:
    return sum((e.event, e.detail) == FAILED for e in events)


async def test_a_broken_link_marks_the_guest_once_and_finish_ends_the_job(
        drivers: DriverFactory, short_tmp: Path) -> None:
    # QEMU's MIGRATION event (postcopy-paused) while Finish waits: the guest is paused
    # (post-copy failed) and announced at once, the job stays for Finish; when Finish gives
    # up, the job ends and both ports are free, with no second event; the QEMU stays.
    driver, obj = await running_guest(drivers, short_tmp)
    events = record(driver)
    job = give_incoming(driver, obj)
    await control(driver, obj.uuid, {"emit": "MIGRATION", "data": {"status": "postcopy-paused"}})
    await eventually(lambda: job.status is MigrationStatus.POSTCOPY_PAUSED)
    assert (obj.state, obj.reason) == (DomainState.PAUSED, PausedReason.POSTCOPY_FAILED)
    assert failures(events) == 1
    assert obj.migration is job and taken(driver.migration.ports, job.port)
    driver.migration.postcopy_failed(obj)  # Finish's wait raised: it gives up
    assert obj.migration is None
    assert not taken(driver.migration.ports, job.port)
    assert not taken(driver.migration.ports, job.nbd_port)
    driver.migration.postcopy_failed(obj)  # another path noticing changes nothing
    assert failures(events) == 1 and obj.active
    assert (obj.state, obj.reason) == (DomainState.PAUSED, PausedReason.POSTCOPY_FAILED)
    saved = parse_status(driver.runner.status_store.read(obj.name))  # a restart keeps it
    assert (saved.state, saved.reason) == (DomainState.PAUSED, PausedReason.POSTCOPY_FAILED)


async def test_an_outgoing_job_is_left_to_its_phase(drivers: DriverFactory,
                                                    short_tmp: Path) -> None:
    # On the source the guest is paused and announced, but Confirm (or p2p) ends the job.
    driver, obj = await running_guest(drivers, short_tmp)
    events = record(driver)
    job = give_outgoing(obj)
    driver.migration.postcopy_failed(obj)
    driver.migration.postcopy_failed(obj)
    assert obj.migration is job
    assert (obj.state, obj.reason) == (DomainState.PAUSED, PausedReason.POSTCOPY_FAILED)
    assert failures(events) == 1


async def test_a_guest_that_is_gone_is_not_marked_paused(drivers: DriverFactory,
                                                         short_tmp: Path) -> None:
    # The incoming QEMU died (its job ended with it): a late caller changes nothing.
    driver, obj = await running_guest(drivers, short_tmp)
    job = give_incoming(driver, obj)
    await driver.destroy(obj)
    events = record(driver)
    driver.migration.postcopy_failed(obj)
    assert (obj.state, obj.reason) == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
    assert failures(events) == 0 and obj.migration is None
    assert not taken(driver.migration.ports, job.port)


@pytest.mark.parametrize("status", ["postcopy-active", "active"])
async def test_client_gone_in_post_copy_keeps_the_guest_and_frees_the_ports(
        drivers: DriverFactory, short_tmp: Path, status: str) -> None:
    # The client that prepared an incoming migration vanished: after the post-copy switch
    # the guest stays here, paused (post-copy failed), and the job with its ports ends;
    # before it, the incoming QEMU is killed (abandon), the ports freed too.
    driver, obj = await running_guest(drivers, short_tmp)
    job = give_incoming(driver, obj)
    job.client_id, job.status = 7, MigrationStatus(status)
    await driver.migration.client_closed(7)
    assert obj.migration is None and not taken(driver.migration.ports, job.port)
    if status == "active":
        assert not obj.active
    else:
        assert obj.active and obj.reason == PausedReason.POSTCOPY_FAILED
