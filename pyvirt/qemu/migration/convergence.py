"""Convergence policy as data: a schedule of (trigger → action) steps the engine only runs.

VDSM's idea (lib/vdsm/virt/migration.py): the policy is a list, not a tangle of ifs. The
engine calls :func:`next_actions` on every progress tick (MIGRATION / MIGRATION_PASS events,
or query-migrate) and performs what comes back; it never decides anything itself::

    Schedule( Step(AfterIterations(2), StartPostcopy()),     --postcopy-after-precopy
              Step(AfterSeconds(30),   SuspendGuest()) )     --timeout 30 (--timeout-suspend)

    tick:  Progress(elapsed_s, iteration, remaining_bytes, stalled_iterations)
           next_actions(schedule, progress, done) → [actions due now]      done |= fired

Steps form a ladder: a step fires only after every step before it has fired, and each fires
at most once (``done`` holds the actions already fired, so a schedule never repeats an
action). ``iteration`` is QEMU's dirty-sync count as libvirt's MIGRATION_ITERATION event
reports it: 1 during the first pass, 2 once the first full pass is done (virsh starts
post-copy for --postcopy-after-precopy at iteration 2).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence, Set
from dataclasses import dataclass

from pyvirt.errors import ArgumentUnsupportedError, InvalidArgError
from pyvirt.qemu.migration.params import MigrationRequest

#: the MIGRATION_ITERATION value at which the first full pre-copy pass is done
FIRST_PASS_DONE = 2


@dataclass(frozen=True)
class Progress:
    """One observation of a running migration."""

    elapsed_s: float
    iteration: int = 0
    remaining_bytes: int | None = None
    #: passes since remaining_bytes last reached a new low (see stalled_iterations())
    stalled_iterations: int = 0


# -- triggers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AfterSeconds:
    seconds: float

    def __call__(self, progress: Progress) -> bool:
        return progress.elapsed_s >= self.seconds


@dataclass(frozen=True)
class AfterIterations:
    iterations: int

    def __call__(self, progress: Progress) -> bool:
        return progress.iteration >= self.iterations


@dataclass(frozen=True)
class Stalled:
    """No new low of remaining_bytes for ``iterations`` passes."""

    iterations: int

    def __call__(self, progress: Progress) -> bool:
        return progress.stalled_iterations >= self.iterations


Trigger = AfterSeconds | AfterIterations | Stalled


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuspendGuest:
    """Pause the source guest; the copy then finishes without new dirty pages."""


@dataclass(frozen=True)
class StartPostcopy:
    """QMP migrate-start-postcopy: the guest runs on the destination from now on."""


@dataclass(frozen=True)
class Abort:
    """Cancel the migration; the source keeps running."""

    reason: str = "migration did not converge"


@dataclass(frozen=True)
class SetMaxDowntime:
    """Raise the tolerated downtime (QMP downtime-limit) to ``milliseconds``."""

    milliseconds: int


Action = SuspendGuest | StartPostcopy | Abort | SetMaxDowntime


@dataclass(frozen=True)
class Step:
    when: Trigger
    action: Action


@dataclass(frozen=True)
class Schedule:
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        actions = [step.action for step in self.steps]
        if len(set(actions)) != len(actions):
            raise ValueError("a schedule fires each action at most once; repeated action")
        for step in self.steps:
            _check_trigger(step.when)

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(step.action for step in self.steps)


def _check_trigger(trigger: Trigger) -> None:
    bad = trigger.seconds < 0 if isinstance(trigger, AfterSeconds) else trigger.iterations < 1
    if bad:
        raise ValueError(f"trigger never meaningful: {trigger}")


NO_SCHEDULE = Schedule()


class TimeoutAction(enum.StrEnum):
    """What --timeout does when it expires (virsh: --timeout-suspend, --timeout-postcopy)."""

    SUSPEND = "suspend"
    POSTCOPY = "postcopy"


_TIMEOUT_ACTIONS: dict[TimeoutAction, Action] = {
    TimeoutAction.SUSPEND: SuspendGuest(),
    TimeoutAction.POSTCOPY: StartPostcopy(),
}


def schedule_for(
    request: MigrationRequest,
    timeout_s: float | None,
    timeout_action: TimeoutAction | str = TimeoutAction.SUSPEND,
    postcopy_after_precopy: bool = False,
) -> Schedule:
    """virsh's --timeout / --timeout-* / --postcopy-after-precopy as a schedule.

    Post-copy after the first pass comes first; a timeout that would start post-copy again
    is then redundant and dropped (StartPostcopy fires once).
    """
    action = _TIMEOUT_ACTIONS[TimeoutAction(timeout_action)]
    wants_postcopy = postcopy_after_precopy or (bool(timeout_s) and isinstance(
        action, StartPostcopy))
    if wants_postcopy and not request.postcopy:
        raise ArgumentUnsupportedError(
            "switching to post-copy needs post-copy migration (VIR_MIGRATE_POSTCOPY)")
    if timeout_s is not None and timeout_s < 0:
        raise InvalidArgError(f"migration timeout must not be negative, got {timeout_s}")
    if timeout_s and not request.live:
        raise InvalidArgError("a migration timeout needs live migration")
    steps: list[Step] = []
    if postcopy_after_precopy:
        steps.append(Step(AfterIterations(FIRST_PASS_DONE), StartPostcopy()))
    if timeout_s and action not in (step.action for step in steps):
        steps.append(Step(AfterSeconds(timeout_s), action))
    return Schedule(tuple(steps))


def next_actions(schedule: Schedule, progress: Progress, done: Set[Action]) -> list[Action]:
    """The actions due now: the run of not-yet-fired steps, in order, whose triggers hold.

    Pure: the caller adds the result to ``done`` once it has performed the actions.
    """
    due: list[Action] = []
    for step in schedule.steps:
        if step.action in done:
            continue
        if not step.when(progress):
            break
        due.append(step.action)
    return due


def stalled_iterations(samples: Sequence[tuple[int, int]]) -> int:
    """Passes since remaining bytes last reached a new low, from (iteration, remaining) samples.

    ``[(1, 900), (2, 500), (3, 600), (4, 550)]`` → 2 (the low, 500, was at pass 2; now pass 4).
    """
    if not samples:
        return 0
    best_iteration, best = samples[0]
    for iteration, remaining in samples[1:]:
        if remaining < best:
            best_iteration, best = iteration, remaining
    return max(0, samples[-1][0] - best_iteration)
