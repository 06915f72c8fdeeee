"""The migration flag rules, said once (pyvirt.migrate_flags), and the three layers using them.

Each layer (pyvirsh, the client library, the daemon's request parser) must apply exactly the
rules the table gives it, in the table's words for that layer; the messages themselves are
pinned by test_virsh_migrate, test_client_migrate and test_migration_params.
"""

from __future__ import annotations

import pytest

from pyvirt import migrate_flags as mf
from pyvirt.constants import MigrateFlags as F
from pyvirt.errors import VirtError
from pyvirt.migrate_flags import LIBRARY_CHECKS, FlagRule, Layer, first_broken, rules_of
from pyvirt.qemu.migration import params as mp
from pyvirt.virsh import migrate as virsh_migrate
from pyvirt.virsh.migrate import MigrateRequest, TimeoutAction
from pyvirt.virsh.options import CommandError


def breaking(rule: FlagRule) -> F:
    """Flags that break ``rule``: its flag, with the first flag it excludes (if any)."""
    flags = F(rule.when)
    if rule.excludes:
        flags |= F(rule.excludes & -rule.excludes)  # the lowest excluded bit
    return flags


# -- the table ---------------------------------------------------------------------------------
def test_rules_are_named_once_and_each_is_checked_somewhere() -> None:
    assert len({rule.name for rule in mf.RULES}) == len(mf.RULES)
    for rule in mf.RULES:
        assert rule.layers, rule.name
        assert rule.broken(breaking(rule)) or rule.needs_all or rule.needs_any, rule.name
        assert set(rule.wording) <= {layer for layer in Layer if layer in rule.layers}


@pytest.mark.parametrize(("rule", "flags", "broken"), [
    (mf.DISK_INC_EXCLUSIVE, F.NON_SHARED_DISK | F.NON_SHARED_INC, True),
    (mf.DISK_INC_EXCLUSIVE, F.NON_SHARED_DISK, False),
    (mf.TUNNELLED_NEEDS_P2P, F.TUNNELLED, True),
    (mf.TUNNELLED_NEEDS_P2P, F.TUNNELLED | F.PEER2PEER, False),
    (mf.SYNC_WRITES_NEED_STORAGE_COPY, F.NON_SHARED_SYNCHRONOUS_WRITES, True),
    (mf.SYNC_WRITES_NEED_STORAGE_COPY, F.NON_SHARED_SYNCHRONOUS_WRITES | F.NON_SHARED_INC,
     False),
    (mf.POSTCOPY_NEEDS_LIVE, F.POSTCOPY, True),
    (mf.POSTCOPY_NEEDS_LIVE, F.POSTCOPY | F.LIVE, False),
    (mf.POSTCOPY_NEEDS_LIVE, F.POSTCOPY | F.LIVE | F.PAUSED, True),
    (mf.P2P_NEEDS_UNMANAGED_API, F.PEER2PEER, True),
    (mf.P2P_NEEDS_UNMANAGED_API, F.LIVE, False),
    (mf.OFFLINE_NEEDS_PERSIST, F.LIVE, False),  # a rule about OFFLINE says nothing without it
])  # fmt: skip
def test_broken(rule: FlagRule, flags: F, broken: bool) -> None:
    assert rule.broken(flags) is broken
    assert rule.broken(int(flags)) is broken


def test_every_flag_has_its_virsh_option() -> None:
    assert set(mf.OPTION_OF) == set(F)
    assert len({option for option, _ in mf.VIRSH_OPTIONS}) == len(mf.VIRSH_OPTIONS)
    assert mp.FLAG_OPTIONS is mf.OPTION_OF and virsh_migrate.FLAGS is mf.VIRSH_OPTIONS


def test_source_only_flags_never_reach_the_destination() -> None:
    request = mp.MigrationRequest(side=mp.Side.SOURCE, flags=F.LIVE | mf.SOURCE_ONLY_FLAGS)
    assert request.destination_flags == F.LIVE


# -- each layer applies exactly its rules -----------------------------------------------------
def _driver_rules() -> set[FlagRule]:
    return {check.rule for check in mp.FLAG_RULES + mp.STORAGE_RULES if check.rule is not None}


def test_each_layer_applies_the_rules_the_table_gives_it() -> None:
    assert _driver_rules() == set(rules_of(Layer.DRIVER))
    assert set().union(*LIBRARY_CHECKS.values()) | {mf.TUNNELLED_NEEDS_P2P} == \
        set(rules_of(Layer.LIBRARY))  # fmt: skip
    virsh_own = virsh_migrate.OPTION_RULES + virsh_migrate.FLAG_RULES
    assert set(virsh_own) == set(rules_of(Layer.VIRSH))


@pytest.mark.parametrize("rule", rules_of(Layer.DRIVER), ids=lambda rule: rule.name)
def test_the_daemon_refuses_in_the_table_s_words(rule: FlagRule) -> None:
    flags = breaking(rule)
    driver_order = [c.rule for c in mp.FLAG_RULES + mp.STORAGE_RULES if c.rule is not None]
    expected = first_broken(flags, driver_order)
    assert expected is not None
    with pytest.raises(VirtError) as info:
        mp.parse_request(int(flags), [], side="source")
    assert str(info.value).endswith(expected.message_for(Layer.DRIVER)), str(info.value)


def _virsh_request(flags: F, api: str) -> MigrateRequest:
    return MigrateRequest(domain="g1", desturi="qemu+tcp://h/system", flags=flags, params=(),
                          direct=api == "virDomainMigrateToURI3" and F.PEER2PEER not in flags,
                          verbose=False, timeout=0, timeout_action=TimeoutAction.DEFAULT,
                          postcopy_after_precopy=False)  # fmt: skip


@pytest.mark.parametrize(("api", "rule"), [
    (api, rule) for api in ("virDomainMigrate3", "virDomainMigrateToURI3")
    for rule in LIBRARY_CHECKS[api] if rule is not mf.P2P_NEEDS_UNMANAGED_API
])  # fmt: skip
def test_pyvirsh_repeats_the_library_checks(api: str, rule: FlagRule) -> None:
    # (virsh never gives PEER2PEER to virDomainMigrate3: it calls migrateToURI3 then)
    flags = breaking(rule)
    request = _virsh_request(flags, api)
    assert f"virDomain{request.api[0].upper()}{request.api[1:]}" == api
    expected = first_broken(flags, LIBRARY_CHECKS[api])
    assert expected is not None
    with pytest.raises(CommandError) as info:
        virsh_migrate.library_checks(request, readonly=False)
    assert info.value.messages == (expected.message_for(Layer.LIBRARY),)


def test_virsh_words_differ_where_virsh_s_do() -> None:
    assert mf.SYNC_WRITES_NEED_STORAGE_COPY.message_for(Layer.VIRSH).startswith(
        "'--copy-storage-synchronous-writes' requires one of")
    assert mf.SYNC_WRITES_NEED_STORAGE_COPY.message_for(Layer.DRIVER).startswith(
        "VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES requires")
    assert mf.LIVE_OFFLINE_EXCLUSIVE.message_for(Layer.VIRSH) == \
        "Options --live and --offline are mutually exclusive"  # fmt: skip
