"""virConnectListAllDomains filter semantics."""

from __future__ import annotations

from pyvirt.conf.domain import DomainDef
from pyvirt.constants import DomainState, ListFlags
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.qemu.domain_ops import list_filter_matches


def _obj(active: bool, persistent: bool, state: DomainState) -> DomainObj:
    definition = DomainDef(type="qemu", name="g", uuid="u")
    obj = DomainObj(uuid="u", name="g", config=definition if persistent else None)
    if active:
        obj.live = DomainDef(type="qemu", name="g", uuid="u", dom_id=3)
    obj.state = state
    return obj


def test_no_flags_matches_everything() -> None:
    assert list_filter_matches(_obj(False, True, DomainState.SHUTOFF), ListFlags(0))


def test_active_inactive() -> None:
    running = _obj(True, True, DomainState.RUNNING)
    off = _obj(False, True, DomainState.SHUTOFF)
    assert list_filter_matches(running, ListFlags.ACTIVE)
    assert not list_filter_matches(off, ListFlags.ACTIVE)
    assert list_filter_matches(off, ListFlags.INACTIVE)
    assert list_filter_matches(off, ListFlags.ACTIVE | ListFlags.INACTIVE)


def test_groups_combine_with_and() -> None:
    transient_paused = _obj(True, False, DomainState.PAUSED)
    assert list_filter_matches(transient_paused, ListFlags.TRANSIENT | ListFlags.PAUSED)
    assert not list_filter_matches(transient_paused, ListFlags.PERSISTENT | ListFlags.PAUSED)
    assert not list_filter_matches(transient_paused, ListFlags.TRANSIENT | ListFlags.RUNNING)


def test_other_state() -> None:
    crashed = _obj(True, True, DomainState.CRASHED)
    assert list_filter_matches(crashed, ListFlags.OTHER)
    assert not list_filter_matches(crashed, ListFlags.RUNNING)
