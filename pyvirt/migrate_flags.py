"""Migration flag combinations: every rule once, as data, with the layers that check it.

Three layers refuse a bad combination of VIR_MIGRATE_* flags, each at its own time and in
its own words (the words are part of the behaviour: callers and tests match them)::

    layer     who                                           when
    VIRSH     virsh's own option checks (tools/virsh-domain.c)   before the domain lookup /
                                                            while it builds the flags
    LIBRARY   libvirt.so before any RPC (src/libvirt-domain.c):  per API, see LIBRARY_CHECKS
              pyvirt.client.migrate, and pyvirsh again (it may
              run over libvirt-python or a fake)
    DRIVER    the daemon's QEMU driver (qemu_migration.c),  pyvirt.qemu.migration.params,
              pyvirt's own refusals included            step 7 of parse_request

A rule says which layers check it; a layer whose words differ from :attr:`FlagRule.message`
says so in :attr:`FlagRule.wording`. The error *kind* (code, prefix) is each layer's own:
the layer wraps the rule's words into its error. Where libvirt checks a rule in one layer
only, the table says so rather than checking it everywhere.

Import-light on purpose (pyvirsh loads it): only :mod:`pyvirt.constants`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyvirt.constants import MigrateFlags

F = MigrateFlags


class Layer(enum.Flag):
    VIRSH = enum.auto()
    LIBRARY = enum.auto()
    DRIVER = enum.auto()


@dataclass(frozen=True, eq=False)  # each rule is one object: compared and hashed by identity
class FlagRule:
    """When ``when`` is set: every flag of ``needs_all``, one of ``needs_any`` (if given),
    and none of ``excludes`` must hold, else the rule is broken."""

    name: str
    when: MigrateFlags
    message: str
    layers: Layer
    needs_all: int = 0
    needs_any: int = 0
    excludes: int = 0
    #: a layer whose words differ from ``message`` (libvirt's virsh vs its QEMU driver)
    wording: Mapping[Layer, str] = field(default_factory=dict)

    def broken(self, flags: int) -> bool:
        flags = int(flags)
        if not flags & self.when:
            return False
        missing_all = flags & self.needs_all != self.needs_all
        missing_any = bool(self.needs_any) and not flags & self.needs_any
        return missing_all or missing_any or bool(flags & self.excludes)

    def message_for(self, layer: Layer) -> str:
        return self.wording.get(layer, self.message)


def _exclusive(first: MigrateFlags, second: MigrateFlags, layers: Layer,
               **wording: str) -> FlagRule:
    """VIR_EXCLUSIVE_FLAGS: libvirt generates the words from the two names."""
    return FlagRule(
        f"{first.name}-{second.name}-exclusive".lower(), first,
        f"Flags 'VIR_MIGRATE_{first.name}' and 'VIR_MIGRATE_{second.name}' are mutually "
        "exclusive", layers, excludes=second,
        wording={Layer[layer]: words for layer, words in wording.items()})


STORAGE_COPY = F.NON_SHARED_DISK | F.NON_SHARED_INC
#: flags the destination never sees: libvirt strips them from Prepare's and Finish's flags
#: (virDomainMigrateVersion3Full, qemuMigrationSrcPerformPeer2Peer3)
SOURCE_ONLY_FLAGS = F.ABORT_ON_ERROR | F.AUTO_CONVERGE

# -- shared by layers --------------------------------------------------------------------------
DISK_INC_EXCLUSIVE = _exclusive(F.NON_SHARED_DISK, F.NON_SHARED_INC,
                                Layer.LIBRARY | Layer.DRIVER)
TUNNELLED_PARALLEL_EXCLUSIVE = _exclusive(F.TUNNELLED, F.PARALLEL, Layer.LIBRARY | Layer.DRIVER)
TUNNELLED_NEEDS_P2P = FlagRule(
    "tunnelled-needs-p2p", F.TUNNELLED,
    "cannot perform tunnelled migration without using peer2peer flag",
    Layer.LIBRARY | Layer.DRIVER, needs_all=F.PEER2PEER)
#: virDomainMigrate3 refuses PEER2PEER (the rule's flag excludes itself)
P2P_NEEDS_UNMANAGED_API = FlagRule(
    "p2p-needs-unmanaged-api", F.PEER2PEER,
    "use virDomainMigrateToURI3 for peer-to-peer migration", Layer.LIBRARY, excludes=F.PEER2PEER)
SYNC_WRITES_NEED_STORAGE_COPY = FlagRule(
    "sync-writes-need-storage-copy", F.NON_SHARED_SYNCHRONOUS_WRITES,
    "VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES requires VIR_MIGRATE_NON_SHARED_DISK or "
    "VIR_MIGRATE_NON_SHARED_INC", Layer.VIRSH | Layer.DRIVER, needs_any=STORAGE_COPY,
    # virsh's own words, second pair of dashes missing included
    wording={Layer.VIRSH: "'--copy-storage-synchronous-writes' requires one of "
                          "'--copy-storage-all', 'copy-storage-inc'"})
#: virsh refuses the two options; libvirt's driver never sees them together, pyvirt's says why
LIVE_OFFLINE_EXCLUSIVE = _exclusive(
    F.LIVE, F.OFFLINE, Layer.VIRSH | Layer.DRIVER,
    VIRSH="Options --live and --offline are mutually exclusive",
    DRIVER="offline migration cannot be live: --offline moves only the definition")

# -- the driver's alone (qemuMigrationSrcBeginPhase, qemuMigrationParamsFromFlags, pyvirt) ------
POSTCOPY_NEEDS_LIVE = FlagRule(
    "postcopy-needs-live", F.POSTCOPY,
    "post-copy migration is not supported with non-live or paused migration", Layer.DRIVER,
    needs_all=F.LIVE, excludes=F.PAUSED)
POSTCOPY_NOT_TUNNELLED = FlagRule(
    "postcopy-not-tunnelled", F.POSTCOPY, "post-copy is not supported with tunnelled migration",
    Layer.DRIVER, excludes=F.TUNNELLED)
OFFLINE_NO_STORAGE_COPY = FlagRule(
    "offline-no-storage-copy", F.OFFLINE, "offline migration cannot handle non-shared storage",
    Layer.DRIVER, excludes=STORAGE_COPY)
OFFLINE_NEEDS_PERSIST = FlagRule(
    "offline-needs-persist", F.OFFLINE,
    "offline migration must be specified with the persistent flag set", Layer.DRIVER,
    needs_all=F.PERSIST_DEST)
OFFLINE_NOT_TUNNELLED = FlagRule(
    "offline-not-tunnelled", F.OFFLINE, "tunnelled offline migration does not make sense",
    Layer.DRIVER, excludes=F.TUNNELLED)
ZEROCOPY_NEEDS_PARALLEL = FlagRule(
    "zerocopy-needs-parallel", F.ZEROCOPY, "zero-copy is only available for parallel migration",
    Layer.DRIVER, needs_all=F.PARALLEL)
STORAGE_COPY_NOT_TUNNELLED = FlagRule(
    "storage-copy-not-tunnelled", F.TUNNELLED,
    "migration of non-shared storage is not supported with tunnelled migration and this QEMU",
    Layer.DRIVER, excludes=STORAGE_COPY)
#: pyvirt's: the mirrors end at pre-switchover, which post-copy would have to move
POSTCOPY_NO_STORAGE_COPY = FlagRule(
    "postcopy-no-storage-copy", F.POSTCOPY,
    "post-copy with storage migration (--copy-storage-*) is not supported yet", Layer.DRIVER,
    excludes=STORAGE_COPY)

RULES: tuple[FlagRule, ...] = (
    DISK_INC_EXCLUSIVE, TUNNELLED_PARALLEL_EXCLUSIVE, TUNNELLED_NEEDS_P2P,
    P2P_NEEDS_UNMANAGED_API, SYNC_WRITES_NEED_STORAGE_COPY, LIVE_OFFLINE_EXCLUSIVE,
    POSTCOPY_NEEDS_LIVE, POSTCOPY_NOT_TUNNELLED, OFFLINE_NO_STORAGE_COPY, OFFLINE_NEEDS_PERSIST,
    OFFLINE_NOT_TUNNELLED, ZEROCOPY_NEEDS_PARALLEL, STORAGE_COPY_NOT_TUNNELLED,
    POSTCOPY_NO_STORAGE_COPY,
)

#: libvirt.so's flag checks per API, in its order (the first broken one is reported). Other
#: checks (read-only, driver features) come before or after a run, never inside one:
#: pyvirt.client.migrate writes each API's order out; pyvirsh repeats the first two runs
LIBRARY_CHECKS: Mapping[str, tuple[FlagRule, ...]] = {
    "virDomainMigrate3": (DISK_INC_EXCLUSIVE, P2P_NEEDS_UNMANAGED_API, TUNNELLED_NEEDS_P2P),
    # VIR_EXCLUSIVE_FLAGS, then virDomainMigrateUnmanagedCheckCompat's
    "virDomainMigrateToURI3": (TUNNELLED_PARALLEL_EXCLUSIVE, DISK_INC_EXCLUSIVE),
    "virDomainMigrateToURI": (DISK_INC_EXCLUSIVE,),
    # virDomainMigrate checks TUNNELLED_NEEDS_P2P too, on its managed path only, after the
    # driver features, as an OPERATION_INVALID error
    "virDomainMigrate": (DISK_INC_EXCLUSIVE,),
}

#: virsh's option → flag, in the order cmdMigrate sets them
VIRSH_OPTIONS: tuple[tuple[str, MigrateFlags], ...] = (
    ("live", F.LIVE),
    ("p2p", F.PEER2PEER),
    ("tunnelled", F.TUNNELLED),
    ("persistent", F.PERSIST_DEST),
    ("undefinesource", F.UNDEFINE_SOURCE),
    ("suspend", F.PAUSED),
    ("copy-storage-all", F.NON_SHARED_DISK),
    ("copy-storage-inc", F.NON_SHARED_INC),
    ("copy-storage-synchronous-writes", F.NON_SHARED_SYNCHRONOUS_WRITES),
    ("change-protection", F.CHANGE_PROTECTION),
    ("unsafe", F.UNSAFE),
    ("compressed", F.COMPRESSED),
    ("auto-converge", F.AUTO_CONVERGE),
    ("rdma-pin-all", F.RDMA_PIN_ALL),
    ("offline", F.OFFLINE),
    ("abort-on-error", F.ABORT_ON_ERROR),
    ("postcopy", F.POSTCOPY),
    ("postcopy-resume", F.POSTCOPY_RESUME),
    ("zerocopy", F.ZEROCOPY),
    ("tls", F.TLS),
    ("parallel", F.PARALLEL),
)
#: every flag's virsh option, for messages ("needed for --postcopy")
OPTION_OF: Mapping[MigrateFlags, str] = {flag: f"--{option}" for option, flag in VIRSH_OPTIONS}


def first_broken(flags: int, rules: Iterable[FlagRule]) -> FlagRule | None:
    """The first rule of ``rules`` (in their order) that ``flags`` break."""
    return next((rule for rule in rules if rule.broken(flags)), None)


def rules_of(layer: Layer) -> tuple[FlagRule, ...]:
    return tuple(rule for rule in RULES if layer in rule.layers)
