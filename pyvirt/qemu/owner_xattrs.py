"""The original owner of a file QEMU was handed, kept in extended attributes as libvirt does.

Three attributes on the file itself (the ``trusted`` namespace: only a process with
CAP_SYS_ADMIN reads or writes them, so neither QEMU nor the file's owner can forge one)::

    trusted.libvirt.security.dac            "+UID:+GID"  the owner before the first labelling
    trusted.libvirt.security.ref_dac        "N"          how many users hold the file (decimal)
    trusted.libvirt.security.timestamp_dac  "SECONDS"    the host's boot time (UNIX seconds)

The names and formats are libvirt's DAC driver's (``security_util.c``), so pyvirtd and
libvirtd on one host, or hosts sharing a file system with xattrs, count each other's users.

* :func:`remember` — the first user records the owner and a count of 1; every later one only
  increments the count (the recorded owner is never overwritten).
* :func:`recall` — decrements; the last user gets the recorded owner back and the attributes
  are removed; earlier ones learn the file is still in use.
* :func:`drop_reference` — decrements without wanting the owner (the source of a migration
  on shared storage: the destination holds the file now).

The timestamp marks records from an earlier boot as stale: whoever held the file then is
gone, so a stale record is removed and treated as absent (libvirt's rule; the owner it
named is lost, the count starts again from the truth). libvirt takes the boot time from
utmp's BOOT_TIME record or ``/proc/uptime``; pyvirt reads the kernel's own ``btime`` from
``/proc/stat``, the same second on a normal host and stable across processes.

A file system without xattrs raises :class:`XattrsUnsupported` (ENOTSUP/ENOSYS); the caller
falls back to the domain's status file. Any other error is an ``OSError`` for the caller.
"""

from __future__ import annotations

import enum
import errno
import functools
import os
from dataclasses import dataclass

ATTR_OWNER = "trusted.libvirt.security.dac"
ATTR_REFS = "trusted.libvirt.security.ref_dac"
ATTR_TIMESTAMP = "trusted.libvirt.security.timestamp_dac"
_ALL_ATTRS = (ATTR_REFS, ATTR_OWNER, ATTR_TIMESTAMP)

_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: longest value read back: a uid:gid label or a decimal number fits many times over
_MAX_VALUE = 64


class XattrsUnsupported(Exception):
    """The file system keeps no extended attributes (or not in the trusted namespace)."""


class MalformedRecord(ValueError):
    """An attribute that is not what libvirt or pyvirt writes."""


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    def label(self) -> str:
        """libvirt's DAC label: ``+UID:+GID``."""
        return f"+{self.uid}:+{self.gid}"

    @classmethod
    def parse(cls, label: str) -> Owner:
        """``+UID:+GID`` (libvirt writes the ``+``; a bare number is accepted too)."""
        user, sep, group = label.partition(":")
        if not sep:
            raise MalformedRecord(f"owner label '{label}' is not UID:GID")
        return cls(_parse_id(user, label), _parse_id(group, label))


def _parse_id(text: str, label: str) -> int:
    digits = text[1:] if text.startswith("+") else text
    if not digits.isdigit() or int(digits) >= 2**32 - 1:
        raise MalformedRecord(f"owner label '{label}' is not UID:GID")
    return int(digits)


class Recalled(enum.Enum):
    """What :func:`recall` found when it did not give an owner back."""

    #: other users hold the file: leave its owner alone
    IN_USE = "in-use"
    #: no record (never remembered, removed, or stale from an earlier boot)
    NO_RECORD = "no-record"


@functools.cache
def boot_time() -> str:
    """The host's boot time in UNIX seconds, as the timestamp attribute holds it."""
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime "):
                return str(int(line.split()[1]))
    raise OSError(errno.ENODATA, "no btime in /proc/stat")


def remember(path: str, owner: Owner) -> tuple[int, Owner]:
    """Count one more user of ``path``; the first records ``owner``.

    Returns the new count and the owner on record (``owner`` itself for the first user).
    """
    refs = _current_refs(path)
    if refs == 0:
        _set(path, ATTR_OWNER, owner.label())
        _set(path, ATTR_TIMESTAMP, boot_time())
        recorded = owner
    else:
        recorded = _recorded_owner(path)
    _set(path, ATTR_REFS, str(refs + 1))
    return refs + 1, recorded


def recall(path: str) -> Owner | Recalled:
    """One user fewer: the recorded owner if it was the last (attributes removed)."""
    refs = _current_refs(path)
    if refs == 0:
        return Recalled.NO_RECORD
    if refs > 1:
        _set(path, ATTR_REFS, str(refs - 1))
        return Recalled.IN_USE
    try:
        owner = _recorded_owner(path)
    finally:
        forget(path)
    return owner


def drop_reference(path: str) -> int:
    """One user fewer without taking the owner back; returns how many remain (at 0 the
    attributes are gone and the file keeps its current owner)."""
    refs = _current_refs(path)
    if refs > 1:
        _set(path, ATTR_REFS, str(refs - 1))
        return refs - 1
    forget(path)
    return 0


def forget(path: str) -> None:
    """Remove every attribute of the record (those present)."""
    for name in _ALL_ATTRS:
        try:
            os.removexattr(path, name)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                raise XattrsUnsupported(str(exc)) from exc
            if exc.errno != errno.ENODATA:
                raise


def read_record(path: str) -> tuple[int, Owner | None]:
    """The count and recorded owner as they are (for tests and diagnostics)."""
    refs = _get(path, ATTR_REFS)
    owner = _get(path, ATTR_OWNER)
    return (int(refs) if refs is not None else 0,
            Owner.parse(owner) if owner is not None else None)


def _current_refs(path: str) -> int:
    """The count on record, 0 when there is none or it is stale (then removed)."""
    value = _get(path, ATTR_REFS)
    if value is None:
        return 0
    if _get(path, ATTR_TIMESTAMP) != boot_time():
        forget(path)  # recorded before this boot (or without a timestamp): stale
        return 0
    if not value.isdigit() or int(value) == 0:
        raise MalformedRecord(f"malformed refcount {value[:_MAX_VALUE]!r}")
    return int(value)


def _recorded_owner(path: str) -> Owner:
    value = _get(path, ATTR_OWNER)
    if value is None:
        raise MalformedRecord(f"{ATTR_REFS} without {ATTR_OWNER}")
    return Owner.parse(value)


def _get(path: str, name: str) -> str | None:
    try:
        raw = os.getxattr(path, name)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        if exc.errno in _UNSUPPORTED:
            raise XattrsUnsupported(str(exc)) from exc
        raise
    if len(raw) > _MAX_VALUE:
        raise MalformedRecord(f"{name} is {len(raw)} bytes long")
    # libvirt stores the string without a NUL; one written by another tool is tolerated
    return raw.rstrip(b"\0").decode("ascii", errors="replace")


def _set(path: str, name: str, value: str) -> None:
    try:
        os.setxattr(path, name, value.encode("ascii"))
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise XattrsUnsupported(str(exc)) from exc
        raise
