"""What the migration flags and parameters change on each QEMU (capabilities, parameters).

Both ends enable ``events`` and ``return-path``, as libvirt does for native migration;
the source programs the bandwidth (libvirt's "unlimited" when none is given). Every
other flag or parameter that needs QEMU support is refused here until the engine
implements it, so nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any

from pyvirt.constants import UNLIMITED_BANDWIDTH_BYTES, MigrateFlags
from pyvirt.errors import ArgumentUnsupportedError

MIB = 1024 * 1024
#: flags whose meaning is fully handled by the phases (not by QEMU knobs)
_PHASE_FLAGS = (MigrateFlags.LIVE | MigrateFlags.PEER2PEER | MigrateFlags.PERSIST_DEST
                | MigrateFlags.UNDEFINE_SOURCE | MigrateFlags.PAUSED | MigrateFlags.UNSAFE
                | MigrateFlags.OFFLINE | MigrateFlags.CHANGE_PROTECTION)
#: typed parameters the phases handle
_PHASE_PARAMS = frozenset({"migrate_uri", "destination_name", "destination_xml",
                           "persistent_xml", "bandwidth", "listen_address"})


def check_supported(flags: int, params: dict[str, Any]) -> None:
    unsupported = MigrateFlags(flags & ~_PHASE_FLAGS)
    if unsupported:
        names = ", ".join(sorted(f.name or "?" for f in unsupported))
        raise ArgumentUnsupportedError(f"migration flags not supported yet: {names}")
    extra = sorted(set(params) - _PHASE_PARAMS)
    if extra:
        raise ArgumentUnsupportedError(
            f"migration parameters not supported yet: {', '.join(extra)}")


def _common_caps() -> dict[str, bool]:
    return {"events": True, "return-path": True}


def source_setup(flags: int, params: dict[str, Any],
                 max_speed_mib: int | None) -> tuple[dict[str, bool], dict[str, Any]]:
    check_supported(flags, params)
    bandwidth = params.get("bandwidth", max_speed_mib)
    max_bw = UNLIMITED_BANDWIDTH_BYTES if not bandwidth else int(bandwidth) * MIB
    return _common_caps(), {"max-bandwidth": max_bw}


def destination_setup(flags: int,
                      params: dict[str, Any]) -> tuple[dict[str, bool], dict[str, Any]]:
    check_supported(flags, params)
    return _common_caps(), {}
