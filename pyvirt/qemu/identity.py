"""Who QEMU runs as: qemu.conf's ``user`` and ``group``, resolved once.

pyvirtd is root; QEMU is not. Every QEMU (and every probe of a QEMU binary) starts as the
configured user and group with no supplementary groups, switched in the child between
``fork`` and ``exec`` (``subprocess``'s ``user``/``group``/``extra_groups``), so not one
instruction of the emulator, not even of a custom ``<emulator>`` wrapper, runs as root.

Values are read as libvirt reads them (pyvirt.sysids: a name, else a number; ``+N`` always
the raw id). A daemon that is
not root cannot switch users: it runs QEMU as itself, and refuses a configured user other
than itself rather than pretend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pyvirt import sysids
from pyvirt.errors import ConfigUnsupportedError

#: the system user and group ``make setup`` creates for QEMU (``tools/setup-host.sh``)
DEFAULT_QEMU_USER = "pyvirt-qemu"
DEFAULT_QEMU_GROUP = "pyvirt-qemu"
#: QEMU's file-creation mask: what it creates (monitor socket, pid file, channel sockets)
#: is for its own user and group only
QEMU_UMASK = 0o007


@dataclass(frozen=True)
class QemuIdentity:
    uid: int
    gid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def popen_kwargs(self) -> dict[str, Any]:
        """Arguments for ``subprocess.Popen``/``run`` that make the child this identity."""
        if self.uid == os.geteuid() and self.gid == os.getegid() and os.geteuid() != 0:
            return {"umask": QEMU_UMASK}  # an unprivileged daemon: already this identity
        return {"user": self.uid, "group": self.gid, "extra_groups": [],
                "umask": QEMU_UMASK}

    def describe(self) -> str:
        return f"{self.uid}:{self.gid}"


def resolve_identity(user: str, group: str) -> QemuIdentity:
    """The uid/gid QEMU runs as; a missing user or group is a configuration error."""
    uid = _resolve_user(user)
    gid = _resolve_group(group)
    if os.geteuid() != 0 and (uid, gid) != (os.geteuid(), os.getegid()):
        raise ConfigUnsupportedError(
            f"cannot run QEMU as {user}:{group}: pyvirtd is not running as root "
            f"(it runs QEMU as itself, uid {os.geteuid()})")
    return QemuIdentity(uid, gid)


def _resolve_user(user: str) -> int:
    try:
        return sysids.user_id(user)
    except LookupError:
        raise ConfigUnsupportedError(
            f"Failed to parse user '{user}': no such user (qemu.conf 'user'; "
            f"'make setup' creates {DEFAULT_QEMU_USER})") from None


def _resolve_group(group: str) -> int:
    try:
        return sysids.group_id(group)
    except LookupError:
        raise ConfigUnsupportedError(
            f"Failed to parse group '{group}': no such group (qemu.conf 'group'; "
            f"'make setup' creates {DEFAULT_QEMU_GROUP})") from None
