"""What the installed QEMU binary is and can do, probed once per binary.

pyvirt refuses QEMU older than 9.0: QEMU 7.2's dirty tracking misses TCG fast-path stores
during migration (fixed upstream in 9.0), so migrated TCG guests panic or carry stale memory.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from pyvirt.conf.domain_defaults import HostDefaults
from pyvirt.errors import ConfigUnsupportedError, OperationFailedError
from pyvirt.qemu.identity import QemuIdentity

MIN_QEMU_VERSION = (9, 0, 0)

_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)")
_MACHINE_RE = re.compile(r"^(\S+)\s+(.*)$")
_ALIAS_RE = re.compile(r"\(alias of ([^)]+)\)")


@dataclass(frozen=True)
class QemuCaps:
    emulator: str
    version: tuple[int, int, int]
    machines: frozenset[str]
    machine_aliases: dict[str, str]
    default_machine: str

    @property
    def version_number(self) -> int:
        """libvirt's encoding: major * 1,000,000 + minor * 1,000 + micro."""
        major, minor, micro = self.version
        return major * 1_000_000 + minor * 1_000 + micro

    def host_defaults(self, arch: str = "x86_64") -> HostDefaults:
        return HostDefaults(
            emulator=self.emulator,
            arch=arch,
            machine_aliases=dict(self.machine_aliases),
            machines=self.machines,
            default_machine=self.default_machine,
        )


def parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION_RE.search(text)
    if not match:
        raise OperationFailedError(f"cannot parse QEMU version from: {text.strip()[:200]!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def check_version(emulator: str, version: tuple[int, int, int]) -> None:
    if version < MIN_QEMU_VERSION:
        found = ".".join(map(str, version))
        raise ConfigUnsupportedError(
            f"QEMU {found} at '{emulator}' is too old: pyvirt requires QEMU >= 9.0 "
            "(older QEMU under TCG loses guest writes during migration; on Debian 12 "
            "install qemu-system-x86 from bookworm-backports)"
        )


def parse_machines(text: str) -> tuple[frozenset[str], dict[str, str], str]:
    """Parse ``-machine help``: canonical names, alias → canonical, the default machine."""
    machines: set[str] = set()
    aliases: dict[str, str] = {}
    default = ""
    for line in text.splitlines()[1:]:
        match = _MACHINE_RE.match(line)
        if not match:
            continue
        name, desc = match.groups()
        alias_of = _ALIAS_RE.search(desc)
        if alias_of:
            aliases[name] = alias_of.group(1)
        else:
            machines.add(name)
        if "(default)" in desc:
            default = aliases.get(name, name)
    if not default:
        default = aliases.get("pc", "pc")
    return frozenset(machines), aliases, default


_CACHE: dict[tuple[str, float, QemuIdentity | None], QemuCaps] = {}


def probe(emulator: str, run_as: QemuIdentity | None = None) -> QemuCaps:
    """Probe (and cache by path + mtime) the QEMU binary; refuse QEMU < 9.0.

    ``run_as``: the identity QEMU runs as (the binary is probed as it will run: never as
    root when guests are not)."""
    try:
        mtime = os.stat(emulator).st_mtime
    except OSError as exc:
        raise OperationFailedError(f"cannot find QEMU binary '{emulator}': {exc.strerror}") from exc
    cached = _CACHE.get((emulator, mtime, run_as))
    if cached:
        return cached
    version = parse_version(_run(emulator, run_as, "--version"))
    check_version(emulator, version)
    machines, aliases, default = parse_machines(_run(emulator, run_as, "-machine", "help"))
    caps = QemuCaps(emulator, version, machines, aliases, default)
    _CACHE[(emulator, mtime, run_as)] = caps
    return caps


def _run(emulator: str, run_as: QemuIdentity | None, *args: str) -> str:
    identity = run_as.popen_kwargs() if run_as is not None else {}
    try:
        proc = subprocess.run(
            [emulator, *args], capture_output=True, text=True, timeout=30, check=True,
            cwd="/", env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}, **identity,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise OperationFailedError(f"failed to run '{emulator} {' '.join(args)}': {exc}") from exc
    return str(proc.stdout)
