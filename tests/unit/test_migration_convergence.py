"""Convergence schedules: virsh's options as data, and the properties the engine relies on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.constants import MigrateFlags
from pyvirt.errors import VirtError
from pyvirt.qemu.migration.convergence import (
    Abort,
    Action,
    AfterIterations,
    AfterSeconds,
    Progress,
    Schedule,
    SetMaxDowntime,
    Stalled,
    StartPostcopy,
    Step,
    SuspendGuest,
    TimeoutAction,
    Trigger,
    next_actions,
    schedule_for,
    stalled_iterations,
)
from pyvirt.qemu.migration.params import MigrationRequest, parse_request

F = MigrateFlags
LIVE = parse_request(F.LIVE | F.PEER2PEER, [], side="source")
POSTCOPY = parse_request(F.LIVE | F.PEER2PEER | F.POSTCOPY, [], side="source")
OFFLINE = parse_request(F.OFFLINE | F.PERSIST_DEST | F.PEER2PEER, [], side="source")


# -- schedule_for: virsh's --timeout, --timeout-suspend/-postcopy, --postcopy-after-precopy ----
def test_no_options_no_schedule() -> None:
    assert schedule_for(LIVE, None) == Schedule()
    assert schedule_for(LIVE, 0) == Schedule()  # virsh: 0 means no timeout


def test_timeout_suspends_by_default() -> None:
    assert schedule_for(LIVE, 30) == Schedule((Step(AfterSeconds(30), SuspendGuest()),))


def test_timeout_postcopy() -> None:
    assert schedule_for(POSTCOPY, 30, "postcopy") \
        == Schedule((Step(AfterSeconds(30), StartPostcopy()),))


def test_postcopy_after_precopy_then_timeout() -> None:
    schedule = schedule_for(POSTCOPY, 60, TimeoutAction.SUSPEND, postcopy_after_precopy=True)
    assert schedule.actions == (StartPostcopy(), SuspendGuest())
    assert schedule.steps[0].when == AfterIterations(2)


def test_postcopy_once_even_if_asked_twice() -> None:
    schedule = schedule_for(POSTCOPY, 60, TimeoutAction.POSTCOPY, postcopy_after_precopy=True)
    assert schedule.actions == (StartPostcopy(),)


@pytest.mark.parametrize(("request_", "timeout", "action", "after", "message"), [
    (LIVE, 30, "postcopy", False, "needs post-copy migration"),
    (LIVE, None, "suspend", True, "needs post-copy migration"),
    (OFFLINE, 30, "suspend", False, "needs live migration"),
    (LIVE, -1, "suspend", False, "must not be negative"),
])
def test_refused(request_: MigrationRequest, timeout: float | None, action: str, after: bool,
                 message: str) -> None:
    with pytest.raises(VirtError, match=message):
        schedule_for(request_, timeout, action, after)


def test_schedule_refuses_repeated_actions_and_empty_triggers() -> None:
    with pytest.raises(ValueError, match="at most once"):
        Schedule((Step(AfterSeconds(1), SuspendGuest()), Step(AfterSeconds(2), SuspendGuest())))
    with pytest.raises(ValueError, match="never meaningful"):
        Schedule((Step(AfterIterations(0), Abort()),))
    with pytest.raises(ValueError, match="never meaningful"):
        Schedule((Step(AfterSeconds(-1), Abort()),))


# -- next_actions ---------------------------------------------------------------------------
def test_a_vdsm_style_ladder() -> None:
    """Raise the downtime as the copy stalls, then give up (VDSM's convergence schedule)."""
    ladder = Schedule((Step(Stalled(2), SetMaxDowntime(500)),
                       Step(Stalled(4), SetMaxDowntime(1000)),
                       Step(Stalled(6), Abort("stalled for 6 passes"))))
    done: set[Action] = set()
    fired = []
    for stalled in (0, 1, 2, 3, 0, 5, 6, 7):
        due = next_actions(ladder, Progress(elapsed_s=1.0, stalled_iterations=stalled), done)
        done |= set(due)
        fired.append(due)
    assert fired == [[], [], [SetMaxDowntime(500)], [], [], [SetMaxDowntime(1000)],
                     [Abort("stalled for 6 passes")], []]


def test_several_due_at_once_come_in_order() -> None:
    schedule = schedule_for(POSTCOPY, 5, postcopy_after_precopy=True)
    assert next_actions(schedule, Progress(elapsed_s=9, iteration=3), set()) \
        == [StartPostcopy(), SuspendGuest()]


def test_a_later_step_waits_for_the_earlier_one() -> None:
    schedule = schedule_for(POSTCOPY, 5, postcopy_after_precopy=True)
    assert next_actions(schedule, Progress(elapsed_s=9, iteration=1), set()) == []


def test_stalled_iterations() -> None:
    assert stalled_iterations([]) == 0
    assert stalled_iterations([(1, 900), (2, 500), (3, 600), (4, 550)]) == 2
    assert stalled_iterations([(1, 900), (2, 500), (3, 400)]) == 0


# -- properties -------------------------------------------------------------------------------
_triggers: st.SearchStrategy[Trigger] = st.one_of(
    st.builds(AfterSeconds, st.floats(0, 100, allow_nan=False)),
    st.builds(AfterIterations, st.integers(1, 10)),
    st.builds(Stalled, st.integers(1, 10)),
)
_actions: st.SearchStrategy[Action] = st.one_of(
    st.just(SuspendGuest()), st.just(StartPostcopy()), st.builds(Abort, st.text(max_size=3)),
    st.builds(SetMaxDowntime, st.integers(1, 5000)),
)
schedules = st.lists(st.tuples(_triggers, _actions), max_size=6, unique_by=lambda s: s[1]).map(
    lambda steps: Schedule(tuple(Step(t, a) for t, a in steps)))


@st.composite
def runs(draw: st.DrawFn) -> list[Progress]:
    """A migration's ticks: time and passes never go back; the stall count may."""
    ticks: list[Progress] = []
    elapsed, iteration = 0.0, 0
    for _ in range(draw(st.integers(0, 30))):
        elapsed += draw(st.floats(0, 10, allow_nan=False))
        iteration += draw(st.integers(0, 2))
        stalled = draw(st.integers(0, 12))
        ticks.append(Progress(elapsed, iteration, draw(st.none() | st.integers(0, 1 << 30)),
                              stalled))
    return ticks


@settings(max_examples=400)
@given(schedules, runs())
def test_actions_fire_once_in_order_never_early(schedule: Schedule,
                                                ticks: list[Progress]) -> None:
    done: set[Action] = set()
    log: list[Action] = []
    for progress in ticks:
        due = next_actions(schedule, progress, done)
        for action in due:
            step = next(s for s in schedule.steps if s.action == action)
            assert step.when(progress), "fired before its trigger"
        done |= set(due)
        log.extend(due)
        pending = [s for s in schedule.steps if s.action not in done]
        assert not pending or not pending[0].when(progress), "a due action was held back"
    assert len(log) == len(set(log)), "an action fired twice"
    assert tuple(log) == schedule.actions[:len(log)], "out of order"


@given(schedules, runs())
def test_next_actions_is_pure(schedule: Schedule, ticks: list[Progress]) -> None:
    done = frozenset(schedule.actions[:1])
    for progress in ticks:
        assert next_actions(schedule, progress, done) == next_actions(schedule, progress, done)
        assert not set(next_actions(schedule, progress, done)) & done


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1000)), min_size=1))
def test_stall_count_is_passes_since_the_low(samples: list[tuple[int, int]]) -> None:
    ordered = sorted(samples)
    count = stalled_iterations(ordered)
    assert 0 <= count <= ordered[-1][0]
    if all(b[1] < a[1] for a, b in itertools.pairwise(ordered)):
        assert count == 0
