"""The phase tables of migration jobs (pyvirt.qemu.migration.phases)."""

from __future__ import annotations

import itertools

import pytest

from pyvirt.errors import InternalError
from pyvirt.qemu.migration.phases import (
    DESTINATION_MOVES,
    SOURCE_MOVES,
    DestinationPhase,
    Phase,
    SourcePhase,
    check_move,
    phase_of,
)

S, D = SourcePhase, DestinationPhase
ALLOWED = {
    (S.BEGIN3, S.PERFORM3), (S.BEGIN3, S.CONFIRM3_CANCELLED),
    (S.PERFORM3, S.PERFORM3_DONE), (S.PERFORM3, S.CONFIRM3), (S.PERFORM3, S.CONFIRM3_CANCELLED),
    (S.PERFORM3_DONE, S.CONFIRM3), (S.PERFORM3_DONE, S.CONFIRM3_CANCELLED),
    (D.PREPARE, D.FINISH3),
}
EVERY: list[Phase] = [*SourcePhase, *DestinationPhase]


@pytest.mark.parametrize(("current", "new"), list(itertools.product(EVERY, EVERY)),
                         ids=lambda p: p.value)
def test_only_the_tables_moves_are_allowed(current: Phase, new: Phase) -> None:
    if (current, new) in ALLOWED:
        check_move(current, new)
    else:
        with pytest.raises(InternalError, match=f"cannot move from {current.value} to "
                                                f"{new.value}"):
            check_move(current, new)


def test_every_phase_has_a_row_and_ends_are_final() -> None:
    assert set(SOURCE_MOVES) == set(SourcePhase)
    assert set(DESTINATION_MOVES) == set(DestinationPhase)
    assert SOURCE_MOVES[S.CONFIRM3] == SOURCE_MOVES[S.CONFIRM3_CANCELLED] == frozenset()
    assert DESTINATION_MOVES[D.FINISH3] == frozenset()


def test_journal_words_name_the_side_s_phases() -> None:
    assert phase_of(True, "perform3_done") is S.PERFORM3_DONE
    assert phase_of(False, "prepare") is D.PREPARE
    with pytest.raises(ValueError):
        phase_of(False, "begin3")
