"""What guards a migration job, on two live pyvirtd with fake QEMUs.

- ``domjobabort --postcopy`` (virDomainAbortJobFlags with VIR_DOMAIN_ABORT_JOB_POSTCOPY,
  procedure 442) interrupts a post-copy migration with QMP ``migrate-pause``: both halves
  of the guest stay, paused (post-copy failed); outside post-copy it is refused in libvirt's
  words; flags 0 aborts a pre-copy migration as DOMAIN_ABORT_JOB does;
- two Begins racing for one guest: exactly one gets the job (the other: libvirt's "another
  migration job is already running"), even while the first waits on QEMU;
- a Finish whose cookie (the source's Perform cookie) is about another domain is refused
  and the incoming migration stays as it was.
The daemons live for the module; every test uses fresh guests and the ``pair`` fixture
removes every domain, fault and QEMU after it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid as uuidlib
from collections.abc import Iterator

import pytest

import pyvirt
from pyvirt.client.aio import AsyncConnection
from pyvirt.constants import MigrateFlags as F
from pyvirt.qemu.migration.cookie import MigrationCookie
from tests.functional.daemon_util import HOST_UUID, DaemonHandle
from tests.functional.gridutil import (
    MODES,
    Background,
    Guest,
    Pair,
    assert_destination_clean,
    assert_no_job,
    assert_source_runs,
    commands,
    daemon_pair,
    disk_image,
    domstate,
    emptied_after_test,
    eventually,
    fake_qemus,
    new_guest,
    virsh,
)

#: a pre-copy slow enough to switch to post-copy, and a post-copy slow enough to pause
SLOW = {"migrate_duration_s": 30.0}
NOT_IN_POSTCOPY = ("Requested operation is not valid: current job is not outgoing migration "
                   "in post-copy mode")


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with daemon_pair(tmp_path_factory, "job-guards") as pair:
        yield pair


@pytest.fixture
def pair(daemons: Pair) -> Iterator[Pair]:
    yield from emptied_after_test(daemons)


def settles(daemon: DaemonHandle, name: str, state: str) -> None:
    eventually(lambda: domstate(daemon, name) == state,
               f"{daemon.root}: {name} is {domstate(daemon, name)}, not {state}")


def migrating(pair: Pair, guest: Guest, *options: str) -> Background:
    """``virsh migrate --live`` of ``guest`` in a thread, once its copy moves data."""
    result: list[tuple[int, str, str]] = []
    argv = ("migrate", "--live", *options, guest.name, pair.dst.uri)
    thread = threading.Thread(target=lambda: result.append(virsh(pair.src, *argv)))
    thread.start()
    eventually(lambda: "Memory processed" in virsh(pair.src, "domjobinfo", guest.name)[1]
               and bool(fake_qemus(pair.dst, guest.name)), "the migration did not start")
    return Background(thread, result)


# -- domjobabort --postcopy ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ("normal", "p2p"))
def test_domjobabort_postcopy_pauses_a_postcopy_migration(pair: Pair, mode: str) -> None:
    # Checks: during post-copy the stock virsh's domjobabort --postcopy succeeds; the source
    # QEMU got migrate-pause; the migration fails as a broken post-copy (virsh says so); both
    # halves stay, paused (post-copy failed), each QEMU alive, no job left.
    guest = new_guest(pair, faults=SLOW)
    mark = pair.src.journal_mark()
    running = migrating(pair, guest, "--postcopy", *MODES[mode])
    rc, _, err = virsh(pair.src, "migrate-postcopy", guest.name)
    assert rc == 0, err
    settles(pair.src, guest.name, "paused (post-copy)")
    rc, _, err = virsh(pair.src, "domjobabort", "--postcopy", guest.name)
    assert rc == 0, err
    assert "migrate-pause" in commands(pair.src, mark, guest.name)
    rc, _, err = running.wait()
    assert rc == 1 and "post-copy" in err, err
    for daemon in (pair.src, pair.dst):
        settles(daemon, guest.name, "paused (post-copy failed)")
        assert len(fake_qemus(daemon, guest.name)) == 1
        assert_no_job(daemon, guest.name)


def test_domjobabort_postcopy_refused_outside_postcopy(pair: Pair) -> None:
    # Checks: --postcopy on a guest without a job, and during a pre-copy migration, is
    # refused in libvirt's words (no migrate-pause sent) and the pre-copy goes on to succeed;
    # on a guest that is not running: "domain is not running".
    guest = new_guest(pair, faults={"migrate_duration_s": 2.0})
    rc, _, err = virsh(pair.src, "domjobabort", "--postcopy", guest.name)
    assert rc == 1 and NOT_IN_POSTCOPY in err, err
    mark = pair.src.journal_mark()
    running = migrating(pair, guest, "--postcopy")
    rc, _, err = virsh(pair.src, "domjobabort", "--postcopy", guest.name)
    assert rc == 1 and NOT_IN_POSTCOPY in err, err
    rc, _, err = running.wait()
    assert rc == 0, err
    assert domstate(pair.dst, guest.name) == "running (migrated)"
    assert "migrate-pause" not in commands(pair.src, mark, guest.name)
    idle = new_guest(pair, defined=True, running=False)
    rc, _, err = virsh(pair.src, "domjobabort", "--postcopy", idle.name)
    assert rc == 1 and "domain is not running" in err, err


def test_abort_job_flags_zero_aborts_and_unknown_flags_are_refused(pair: Pair) -> None:
    # Checks: virDomainAbortJobFlags(0) cancels a pre-copy migration as virDomainAbortJob
    # does (the guest runs on the source, nothing left on the destination); an unknown
    # flag is refused by name, before anything else.
    guest = new_guest(pair, faults={"migrate_duration_s": 3.0})
    running = migrating(pair, guest)
    with pyvirt.open(pair.src.uri) as conn:
        dom = conn.lookupByName(guest.name)
        with pytest.raises(pyvirt.libvirtError, match=r"unsupported flags \(0x2\) in function "
                                                       "qemuDomainAbortJobFlags"):
            dom.abortJobFlags(2)
        assert dom.abortJobFlags(0) == 0
    rc, _, err = running.wait()
    assert rc == 1 and "cancel" in err.lower(), err
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)


# -- two Begins at once ----------------------------------------------------------------------
async def _two_begins(pair: Pair, guest: Guest) -> list[BaseException | None]:
    conns = [await AsyncConnection.open(pair.src.uri) for _ in range(2)]
    try:
        doms = [await conn.lookupByName(guest.name) for conn in conns]
        flags = F.LIVE | F.NON_SHARED_DISK
        results = await asyncio.gather(*(dom.migrate_begin3_params({}, flags) for dom in doms),
                                       return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]
    finally:
        for conn in conns:
            await conn.close()


def test_two_begins_at_once_one_gets_the_job(pair: Pair) -> None:
    # Checks: Begin with a storage copy waits on QEMU (query-named-block-nodes, delayed);
    # a second Begin meanwhile is refused with libvirt's message, the first one succeeds;
    # once its client is gone the job is over and the guest still runs.
    disk = disk_image(pair, "local")
    guest = new_guest(pair, disk=disk,
                      faults={"delay_commands": {"query-named-block-nodes": 1.0}})
    errors = asyncio.run(_two_begins(pair, guest))
    refused = [e for e in errors if e is not None]
    assert len(refused) == 1, errors
    assert f"another migration job is already running for domain '{guest.name}'" in \
        str(refused[0])  # fmt: skip
    eventually(lambda: "Job type:         None" in virsh(pair.src, "domjobinfo", guest.name)[1],
               "the Begin's job outlived its client")
    assert domstate(pair.src, guest.name).startswith("running")


# -- a Finish cookie about another domain ----------------------------------------------------
async def _finish_with_forged_cookie(pair: Pair, guest: Guest) -> str:
    src = await AsyncConnection.open(pair.src.uri)
    dst = await AsyncConnection.open(pair.dst.uri)
    try:
        dom = await src.lookupByName(guest.name)
        cookie, xml = await dom.migrate_begin3_params({}, F.LIVE)
        await dst.migrate_prepare3_params({"destination_xml": xml}, cookie, F.LIVE)
        forged = MigrationCookie(name=guest.name, uuid=str(uuidlib.uuid4()),
                                 hostname="source", hostuuid=HOST_UUID)
        try:
            await dst.migrate_finish3_params({}, forged.to_bytes(), F.LIVE, False)
        except pyvirt.libvirtError as exc:
            assert domstate(pair.dst, guest.name).startswith("paused")  # still incoming
            return str(exc)
        raise AssertionError("Finish took a cookie about another domain")
    finally:
        await dst.close()
        await src.close()


def test_finish_refuses_a_cookie_about_another_domain(pair: Pair) -> None:
    # Checks: the forged cookie names the incoming guest but another UUID: Finish refuses
    # it with libvirt's words and does not resume anything; once the client is gone both
    # sides clean up (the guest runs on the source only).
    guest = new_guest(pair)
    message = asyncio.run(_finish_with_forged_cookie(pair, guest))
    assert "Incoming cookie data had unexpected UUID" in message and guest.uuid in message
    assert_destination_clean(pair, guest.name)
    assert_source_runs(pair, guest)
