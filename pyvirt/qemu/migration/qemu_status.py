"""QEMU's migration statuses (QAPI ``MigrationStatus``, qapi/migration.json, QEMU 10.0) and
what each one means for the guest.

QEMU reports them in ``MIGRATION`` events and ``query-migrate``; the engine reads them through
:meth:`MigrationStatus.parse` and decides with the classifications below, never with the
strings. The same names on both sides::

    source:       none ─ setup ─ [wait-unplug] ─ active ─ [pre-switchover ─ device] ─ completed
                                                    │                                    ▲
                                                    └─ postcopy-active ──────────────────┘
                                                         └─ postcopy-paused ⇄ postcopy-recover-setup
                                                                              ─ postcopy-recover
    destination:  none ─ setup ─ active ─ [postcopy-active] ─ completed
    either end:   ─ failed;  source: ─ cancelling ─ cancelled

Who holds the guest: before the switchover the source (the destination has a copy in
progress); after ``completed`` the destination; in post-copy both (the destination runs it
and pulls the pages it lacks from the source), so a broken post-copy loses neither side.
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger(__name__)


class MigrationStatus(enum.StrEnum):
    #: no migration has happened in this QEMU (the answer before ``migrate``)
    NONE = "none"
    #: the migration was started and sets up its connection; nothing moved yet
    SETUP = "setup"
    #: migrate_cancel was asked; the source keeps the guest
    CANCELLING = "cancelling"
    #: cancelled: the source has the whole guest (running again if it ran)
    CANCELLED = "cancelled"
    #: pre-copy: RAM is copied while the guest runs on the source
    ACTIVE = "active"
    #: post-copy: the destination runs the guest, the source sends the pages it lacks
    POSTCOPY_ACTIVE = "postcopy-active"
    #: post-copy, but the link broke: the guest's memory is split between the hosts
    POSTCOPY_PAUSED = "postcopy-paused"
    #: a post-copy recovery sets up its new connection (still split)
    POSTCOPY_RECOVER_SETUP = "postcopy-recover-setup"
    #: a post-copy recovery runs (still split until it completes)
    POSTCOPY_RECOVER = "postcopy-recover"
    #: done: the destination has the whole guest
    COMPLETED = "completed"
    #: failed before the switchover: the source has the whole guest
    FAILED = "failed"
    #: COLO fault tolerance (never used by pyvirt)
    COLO = "colo"
    #: pause-before-switchover: the source stopped the guest and waits for migrate-continue
    PRE_SWITCHOVER = "pre-switchover"
    #: after migrate-continue: the device state is being sent (guest stopped on the source)
    DEVICE = "device"
    #: waiting for the guest to unplug a failover device before the copy starts
    WAIT_UNPLUG = "wait-unplug"
    #: a status this list does not have (a newer QEMU): no classification applies, so
    #: waits go on as for a running migration until a known status arrives
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: object) -> MigrationStatus:
        """The member for a QMP status string; UNKNOWN (logged once) for anything else."""
        name = str(text)
        try:
            return cls(name)
        except ValueError:
            if name not in _REPORTED_UNKNOWN:  # once: events and queries repeat it
                _REPORTED_UNKNOWN.add(name)
                log.warning("unknown QEMU migration status %r (treated as still running)",
                            name)
            return cls.UNKNOWN

    @property
    def is_final(self) -> bool:
        """Nothing more happens: completed (the destination has the guest), failed or
        cancelled (the source has it)."""
        return self in FINAL

    @property
    def postcopy_started(self) -> bool:
        """The switch to post-copy happened: the destination runs the guest (or did, until
        the link broke), so the source's memory is stale: it must never be resumed, and the
        destination's never discarded."""
        return self in POSTCOPY_STARTED

    @property
    def postcopy_broken(self) -> bool:
        """Post-copy lost its link: the guest is split between the hosts and paused in
        effect; only a post-copy recovery (not supported yet) could bring it together."""
        return self in POSTCOPY_BROKEN

    @property
    def paused_before_switchover(self) -> bool:
        """QEMU stopped the guest on the source before the switchover and waits for
        migrate-continue (the engine finishes the disk mirrors first)."""
        return self in PAUSED_BEFORE_SWITCHOVER

    @property
    def precopy_running(self) -> bool:
        """A pre-copy migration is under way: the source still owns the guest, and
        migrate_cancel gives it back whole."""
        return self in PRECOPY_RUNNING


_REPORTED_UNKNOWN: set[str] = set()

_S = MigrationStatus
#: after these nothing more happens
FINAL = frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED})
#: post-copy stopped (the link broke): the guest's state is split between the hosts
POSTCOPY_BROKEN = frozenset({_S.POSTCOPY_PAUSED, _S.POSTCOPY_RECOVER_SETUP,
                             _S.POSTCOPY_RECOVER})
#: the destination already runs (or ran) the guest from its memory: post-copy switched
POSTCOPY_STARTED = frozenset({_S.POSTCOPY_ACTIVE, *POSTCOPY_BROKEN})
#: QEMU stopped the guest and waits for migrate-continue
PAUSED_BEFORE_SWITCHOVER = frozenset({_S.PRE_SWITCHOVER})
#: pre-copy under way: the source owns the guest, a cancel gives it back
PRECOPY_RUNNING = frozenset({_S.SETUP, _S.WAIT_UNPLUG, _S.ACTIVE, _S.PRE_SWITCHOVER, _S.DEVICE})
#: the destination runs the guest (post-copy switched, or the copy completed): where a
#: post-copy Perform ends and a post-copy Finish stops waiting for the stream
HANDED_OVER = frozenset({_S.POSTCOPY_ACTIVE, _S.COMPLETED})
