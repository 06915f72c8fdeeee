"""QEMU's migration statuses: parsing QMP strings and the classifications the engine uses."""

from __future__ import annotations

import json
import logging

import pytest

from pyvirt.qemu.migration import qemu_status
from pyvirt.qemu.migration.qemu_status import MigrationStatus as S

#: QAPI MigrationStatus of QEMU 10.0 (qapi/migration.json), in its order
QEMU_10_STATUSES = (
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
    "postcopy-paused", "postcopy-recover-setup", "postcopy-recover", "completed", "failed",
    "colo", "pre-switchover", "device", "wait-unplug",
)

#: every member: (final, post-copy started, post-copy broken, paused before switchover,
#: pre-copy running) — what each means for the guest, written out once more by hand
TABLE = {
    S.NONE: (False, False, False, False, False),
    S.SETUP: (False, False, False, False, True),
    S.CANCELLING: (False, False, False, False, False),
    S.CANCELLED: (True, False, False, False, False),
    S.ACTIVE: (False, False, False, False, True),
    S.POSTCOPY_ACTIVE: (False, True, False, False, False),
    S.POSTCOPY_PAUSED: (False, True, True, False, False),
    S.POSTCOPY_RECOVER_SETUP: (False, True, True, False, False),
    S.POSTCOPY_RECOVER: (False, True, True, False, False),
    S.COMPLETED: (True, False, False, False, False),
    S.FAILED: (True, False, False, False, False),
    S.COLO: (False, False, False, False, False),
    S.PRE_SWITCHOVER: (False, False, False, True, True),
    S.DEVICE: (False, False, False, False, True),
    S.WAIT_UNPLUG: (False, False, False, False, True),
    S.UNKNOWN: (False, False, False, False, False),
}


def test_every_qemu_status_is_a_member() -> None:
    assert [s.value for s in S if s is not S.UNKNOWN] == list(QEMU_10_STATUSES)
    for text in QEMU_10_STATUSES:
        assert S.parse(text).value == text
        assert S.parse(text) == text  # a str: QMP answers and messages read as before


def test_the_table_covers_every_member() -> None:
    assert set(TABLE) == set(S)


@pytest.mark.parametrize("status", list(S), ids=[s.value for s in S])
def test_classification(status: S) -> None:
    got = (status.is_final, status.postcopy_started, status.postcopy_broken,
           status.paused_before_switchover, status.precopy_running)
    assert got == TABLE[status]


def test_broken_post_copy_has_started_and_is_not_over() -> None:
    # what the engine relies on: a broken post-copy is never "final" (a wait would return
    # as if done) and always "started" (so the source is never resumed)
    for status in qemu_status.POSTCOPY_BROKEN:
        assert status.postcopy_started and not status.is_final


def test_handed_over_is_where_the_destination_runs_the_guest() -> None:
    assert {S.POSTCOPY_ACTIVE, S.COMPLETED} == qemu_status.HANDED_OVER


@pytest.mark.parametrize("text", ["", "postcopy-device", "failing", "ACTIVE", None, 3])
def test_unknown_strings_do_not_crash(text: object) -> None:
    status = S.parse(text)
    assert status is S.UNKNOWN
    assert TABLE[status] == (False,) * 5  # a wait goes on until a known status arrives


def test_an_unknown_status_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=qemu_status.__name__)
    for _ in range(3):
        S.parse("fake-new-status")
    assert [r.getMessage() for r in caplog.records] == [
        "unknown QEMU migration status 'fake-new-status' (treated as still running)"]


def test_members_serialise_and_print_as_qemu_spells_them() -> None:
    assert json.dumps({"state": S.PRE_SWITCHOVER}) == '{"state": "pre-switchover"}'
    assert f"(QEMU status {S.POSTCOPY_PAUSED})" == "(QEMU status postcopy-paused)"
