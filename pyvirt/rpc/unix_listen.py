"""Listening unix sockets with libvirtd's ownership rules (``unix_sock_*`` in pyvirtd.conf).

A socket gets its configured mode and group at creation, with no moment in which it is
more open than configured: ``bind`` runs under a umask that keeps only the owner's
configured bits (the socket starts owner-only), then the group is changed, then the full
mode is set. libvirtd binds under ``umask(~mode)`` and then chowns; we keep the umask at
least ``077`` instead, because the umask is the whole process's and a file created by
another thread meanwhile must not come out group- or world-writable (the read-only
socket's ``0777`` would make that umask ``000``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from pyvirt import sysids
from pyvirt.errors import InvalidArgError, SystemError_


def group_id(group: str) -> int:
    """The gid of ``unix_sock_group`` (libvirt's rule, pyvirt.sysids); an unknown name
    stops the daemon as libvirtd does."""
    try:
        return sysids.group_id(group)
    except LookupError:
        raise InvalidArgError(f"Failed to parse group '{group.removeprefix('+')}'") from None


def ensure_socket_dir(path: Path) -> None:
    """Create ``unix_sock_dir`` (and missing parents) 0755 whatever the daemon's umask; an
    existing directory is left as it is (as libvirtd does)."""
    if path.is_dir():
        return
    old_umask = os.umask(0o022)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise SystemError_(f"unable to create socket directory {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)


def bind_unix_listener(path: str, mode: int, gid: int | None) -> socket.socket:
    """A unix stream socket bound at *path* with *mode* and, if given, group *gid* (not yet
    listening). A stale socket at *path* from a previous run is replaced."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind_owner_only(sock, path, mode)
        try:
            if gid is not None:
                _change_group(path, gid)
            os.chmod(path, mode)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_owner_only(sock: socket.socket, path: str, mode: int) -> None:
    # bind() creates the socket file as 0777 & ~umask.
    old_umask = os.umask(0o777 & ~(mode & 0o700))
    try:
        sock.bind(path)
    except OSError as exc:
        raise SystemError_(f"Failed to bind socket to '{path}': {exc.strerror}") from exc
    finally:
        os.umask(old_umask)


def _change_group(path: str, gid: int) -> None:
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        raise SystemError_(
            f"Failed to change ownership of '{path}' to {os.geteuid()}:{gid}: {exc.strerror}"
        ) from exc
