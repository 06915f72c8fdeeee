"""The benchmark's scenarios and modes, as data (issue 6's table).

A scenario is one guest shape (memory, dirtier working set and rate), one link setting
(bandwidth) and one set of migration options; ``guests`` > 1 migrates that many guests at
once. Every scenario is run in every :class:`Mode`, alternating, and compared with
:attr:`Mode.RAW`, QEMU driven directly over QMP by the benchmark.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pyvirt.constants import MigrateFlags


class Mode(enum.StrEnum):
    """How one migration is driven."""

    NORMAL = "normal"  # pyvirsh migrate --live: the client drives the five phases
    P2P = "p2p"  # pyvirsh migrate --live --p2p: the source daemon drives them
    TUNNELLED = "tunnelled"  # --p2p --tunnelled: QEMU's stream inside the RPC connection
    RAW = "raw"  # the benchmark itself: QEMU + QMP, no pyvirt on the path

    @property
    def pyvirsh_options(self) -> tuple[str, ...]:
        return {Mode.NORMAL: (), Mode.P2P: ("--p2p",),
                Mode.TUNNELLED: ("--p2p", "--tunnelled"), Mode.RAW: ()}[self]

    @property
    def flags(self) -> MigrateFlags:
        """The libvirt flags of the mode (RAW programs QEMU as normal mode does)."""
        extra = {Mode.P2P: MigrateFlags.PEER2PEER,
                 Mode.TUNNELLED: MigrateFlags.PEER2PEER | MigrateFlags.TUNNELLED}
        return MigrateFlags.LIVE | extra.get(self, MigrateFlags(0))


ALL_MODES: tuple[Mode, ...] = (Mode.NORMAL, Mode.P2P, Mode.TUNNELLED, Mode.RAW)
PYVIRT_MODES: tuple[Mode, ...] = (Mode.NORMAL, Mode.P2P, Mode.TUNNELLED)


@dataclass(frozen=True)
class Scenario:
    name: str
    memory_mib: int
    #: the guest's dirtied working set (0: idle)
    dirty_mb: int = 0
    #: MiB/s the guest dirties; 0: as fast as it can
    dirty_rate: int = 0
    #: --bandwidth in MiB/s; None: unlimited (9223372036853727232 B/s, libvirt's value)
    bandwidth_mib: int | None = None
    #: further pyvirsh migrate options (and their raw-QEMU equivalent, see raw.py)
    options: tuple[str, ...] = ()
    guests: int = 1
    #: a migration still running after this many seconds is cancelled (not converged)
    cap_s: float = 40.0
    description: str = field(default="", compare=False)

    @property
    def pyvirsh_options(self) -> tuple[str, ...]:
        speed = () if self.bandwidth_mib is None else ("--bandwidth", str(self.bandwidth_mib))
        return (*speed, *self.options)

    @property
    def flags(self) -> MigrateFlags:
        """The extra libvirt flags ``options`` stand for."""
        flags = MigrateFlags(0)
        for option in self.options:
            flags |= OPTION_FLAGS[option]
        return flags

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The modes this scenario can run: libvirt (and pyvirt) refuse post-copy tunnelled."""
        if self.flags & MigrateFlags.POSTCOPY:
            return tuple(m for m in ALL_MODES if m != Mode.TUNNELLED)
        return ALL_MODES

    def describe(self) -> dict[str, object]:
        return {"memory_mib": self.memory_mib, "dirty_mb": self.dirty_mb,
                "dirty_rate_mib_s": self.dirty_rate or "max",
                "bandwidth_mib_s": self.bandwidth_mib or "unlimited",
                "options": list(self.options), "guests": self.guests, "cap_s": self.cap_s}


#: the pyvirsh options a scenario may use → libvirt flags (raw mode programs the same)
OPTION_FLAGS: dict[str, MigrateFlags] = {
    "--auto-converge": MigrateFlags.AUTO_CONVERGE,
    "--compressed": MigrateFlags.COMPRESSED,
    "--postcopy": MigrateFlags.POSTCOPY,
    "--postcopy-after-precopy": MigrateFlags.POSTCOPY,
}


def _hot(name: str, options: tuple[str, ...] = ()) -> Scenario:
    """hot-512: 256 MiB dirtied at full speed over a 100 MiB/s link (plus ``options``)."""
    return Scenario(name, 512, 256, 0, 100, options, description="hot, 100 MiB/s link")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("idle-256", 256, description="idle 256 MiB guest"),
    Scenario("idle-1g", 1024, description="idle 1 GiB guest"),
    Scenario("dirty-512", 512, 256, description="256 MiB dirtied as fast as it can"),
    Scenario("slow-512", 512, 256, 32, 100, description="256 MiB at 32 MiB/s, 100 MiB/s link"),
    _hot("hot-512"),
    _hot("hot-512-autoconverge", ("--auto-converge",)),
    _hot("hot-512-compressed", ("--compressed",)),
    _hot("hot-512-postcopy", ("--postcopy", "--postcopy-after-precopy")),
    Scenario("many", 256, 32, 16, guests=3, description="3 guests at once"),
)
QUICK = ("idle-256", "dirty-512")
#: the smoke test's scenario: small, idle, quick
SMOKE = Scenario("smoke-128", 128, cap_s=30.0, description="smoke test: idle 128 MiB guest")


def by_name(names: list[str]) -> list[Scenario]:
    known = {s.name: s for s in (*SCENARIOS, SMOKE)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    return [known[n] for n in names]
