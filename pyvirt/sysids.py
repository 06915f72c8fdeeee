"""User and group names from configuration files, as libvirt reads them.

libvirt's rule (virGetUserID / virGetGroupID): a name is looked up; a name that is not found
but is a number is that id; ``+N`` is always the number N, never looked up. Callers turn a
:class:`LookupError` into their own message (qemu.conf's ``user``, pyvirtd.conf's
``unix_sock_group``).
"""

from __future__ import annotations

import contextlib
import grp
import pwd
from collections.abc import Callable

#: (uid_t)-1 / (gid_t)-1 mean "no change" to chown: never a valid id
_ID_LIMIT = 2**32 - 1


def user_id(name: str) -> int:
    return _resolve(name, lambda n: pwd.getpwnam(n).pw_uid)


def group_id(name: str) -> int:
    return _resolve(name, lambda n: grp.getgrnam(n).gr_gid)


def _resolve(name: str, lookup: Callable[[str], int]) -> int:
    if not name.startswith("+"):
        with contextlib.suppress(KeyError):
            return lookup(name)
    number = name.removeprefix("+")
    if not number.isascii() or not number.isdigit() or int(number) >= _ID_LIMIT:
        raise LookupError(name)
    return int(number)
