"""The phases of each side of a migration job, and the only moves between them.

libvirt's async migration jobs (``qemuMigrationJobPhase``): the source holds a
MIGRATION_OUT job from Begin to Confirm, the destination a MIGRATION_IN job from Prepare to
Finish. A job's phase is journalled before the daemon acts on it (journal.py), so a
restarted daemon knows how far it got; the values are the journal's words::

    source        begin3 ──► perform3 ──► perform3_done ──► confirm3
                     │           │  └──────────────────────► confirm3  (Finish took the
                     │           │              │                       guest anyway)
                     └───────────┴──────────────┴─────────► confirm3_cancelled
    destination   prepare ──► finish3

Every change is checked against the table: a move that is not in it is a bug in the
engine (InternalError), never silently taken.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from pyvirt.errors import InternalError


class SourcePhase(enum.Enum):
    BEGIN3 = "begin3"
    PERFORM3 = "perform3"
    PERFORM3_DONE = "perform3_done"
    CONFIRM3_CANCELLED = "confirm3_cancelled"
    CONFIRM3 = "confirm3"


class DestinationPhase(enum.Enum):
    PREPARE = "prepare"
    FINISH3 = "finish3"


Phase = SourcePhase | DestinationPhase

_S, _D = SourcePhase, DestinationPhase

#: phase → the phases it may move to
SOURCE_MOVES: Mapping[SourcePhase, frozenset[SourcePhase]] = {
    _S.BEGIN3: frozenset({_S.PERFORM3, _S.CONFIRM3_CANCELLED}),
    # a failed Perform whose Finish still gave the domain: the guest runs there (the
    # phase driver trusts Finish, as libvirt), so the source confirms the move
    _S.PERFORM3: frozenset({_S.PERFORM3_DONE, _S.CONFIRM3, _S.CONFIRM3_CANCELLED}),
    _S.PERFORM3_DONE: frozenset({_S.CONFIRM3, _S.CONFIRM3_CANCELLED}),
    _S.CONFIRM3: frozenset(),
    _S.CONFIRM3_CANCELLED: frozenset(),
}
DESTINATION_MOVES: Mapping[DestinationPhase, frozenset[DestinationPhase]] = {
    _D.PREPARE: frozenset({_D.FINISH3}),
    _D.FINISH3: frozenset(),
}


def check_move(current: Phase, new: Phase) -> None:
    """Refuse a move the table does not allow (a different side's phase included)."""
    if isinstance(current, SourcePhase):
        allowed = new in SOURCE_MOVES[current]
    else:
        allowed = new in DESTINATION_MOVES[current]
    if not allowed:
        raise InternalError(f"migration phase cannot move from {current.value} to "
                            f"{new.value}")


def phase_of(side_out: bool, value: str) -> Phase:
    """The phase a journal entry names (ValueError for a word of the other side)."""
    return SourcePhase(value) if side_out else DestinationPhase(value)
