"""Paths from outside, and the only ways pyvirtd deletes anything.

pyvirtd runs as root; names and paths arrive from clients and peer daemons. Two rules
(docs/security.md):

* a path given from outside is **absolute and normalized** (no ``.``/``..`` component, no
  ``//``, no NUL or control character) before anything uses it — :func:`check_path`;
  a single name that becomes a file name is one safe component — :func:`check_component`;
* the daemon **deletes only** (a) inside its own directories (:func:`remove_in`: one entry
  of a directory the configuration names), or (b) a file it created itself and recorded
  with its identity (:class:`CreatedFile`, :func:`remove_created`). Both open the parent by
  file descriptor and follow no symlink from there on: a directory swapped for a symlink
  after the check cannot redirect the deletion. Anything else is refused and logged.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: PATH_MAX including the terminating NUL
PATH_MAX = 4096
NAME_MAX = 255


class UnsafePathError(ValueError):
    """A path or name that must not be used; the message says why."""


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def check_path(path: str, what: str = "path") -> str:
    """``path`` if it is absolute and normalized, else :class:`UnsafePathError`."""
    if not path.startswith("/"):
        raise UnsafePathError(f"{what} '{shown(path)}' is not an absolute path")
    if _has_control(path) or os.path.normpath(path) != path or path.startswith("//"):
        raise UnsafePathError(f"{what} '{shown(path)}' is not a normalized path")
    if len(path.encode(errors="surrogateescape")) >= PATH_MAX:
        raise UnsafePathError(f"{what} is longer than {PATH_MAX - 1} bytes")
    return path


def check_component(name: str, what: str = "name") -> str:
    """``name`` if it can be one file name: not empty, ``.``, ``..``; no ``/``, NUL or
    control character; at most 255 bytes."""
    if not name or name in (".", "..") or "/" in name or _has_control(name):
        raise UnsafePathError(f"{what} '{shown(name)}' cannot be a file name")
    if len(name.encode(errors="surrogateescape")) > NAME_MAX:
        raise UnsafePathError(f"{what} is longer than {NAME_MAX} bytes")
    return name


def is_within(root: Path | str, path: str) -> bool:
    """True when normalized ``path`` is ``root`` or below it (lexically: for paths inside
    the daemon's own directories, where nobody else can plant a symlink)."""
    top = str(root).rstrip("/")
    return path == top or path.startswith(top + "/")


def shown(text: str, limit: int = 200) -> str:
    """A hostile string for a message or a log line: escaped and bounded."""
    escaped = text.encode("unicode_escape", errors="replace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_dir_nofollow(path: str) -> int:
    """Open directory ``path`` walking from ``/`` without following any symlink."""
    fd = _open_dir("/")
    try:
        for part in Path(path).parts[1:]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_in(root: Path | str, name: str) -> bool:
    """Remove entry ``name`` of the daemon's own directory ``root`` (a tree, a file or a
    symlink — never what a symlink points to). ``root`` comes from the configuration, so
    its own path is resolved; ``name`` must be one component. False when refused."""
    try:
        check_component(name, "entry")
        fd = _open_dir(os.path.realpath(root))
    except (UnsafePathError, OSError) as exc:
        log.error("refusing to remove %s in %s: %s", shown(name), root, exc)
        return False
    try:
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return True
        if stat.S_ISDIR(mode):
            shutil.rmtree(name, dir_fd=fd)  # fd-based: immune to symlink swaps (3.11+)
        else:
            os.unlink(name, dir_fd=fd)
        return True
    except OSError as exc:
        log.error("cannot remove %s in %s: %s", shown(name), root, exc)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class CreatedFile:
    """A file the daemon created outside its own directories (e.g. a migration's
    pre-created disk image): where (parent resolved at creation) and which inode."""

    path: str
    dev: int
    ino: int

    @classmethod
    def of(cls, path: str) -> CreatedFile:
        """Record ``path`` right after creating it."""
        parent = os.path.realpath(os.path.dirname(check_path(path, "created file")))
        resolved = os.path.join(parent, os.path.basename(path))
        info = os.lstat(resolved)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"{path} is not a regular file")
        return cls(resolved, info.st_dev, info.st_ino)

    @classmethod
    def from_json(cls, value: object) -> CreatedFile | None:
        """A journal's record (``{"path", "dev", "ino"}``); None for anything else (an
        older journal's bare path: without an identity it is never deleted)."""
        if not isinstance(value, dict):
            return None
        path, dev, ino = value.get("path"), value.get("dev"), value.get("ino")
        if isinstance(path, str) and isinstance(dev, int) and isinstance(ino, int):
            return cls(path, dev, ino)
        return None


def remove_created(created: CreatedFile) -> bool:
    """Unlink ``created`` if the same inode is still there, reached without following
    a symlink; anything else (replaced, a symlink now, gone) is left and logged."""
    try:
        check_path(created.path, "created file")
        fd = _open_dir_nofollow(os.path.dirname(created.path))
    except (UnsafePathError, OSError) as exc:
        log.error("refusing to remove %s: %s", shown(created.path), exc)
        return False
    name = os.path.basename(created.path)
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != \
                (created.dev, created.ino):
            log.error("refusing to remove %s: it is no longer the file this daemon created",
                      shown(created.path))
            return False
        os.unlink(name, dir_fd=fd)
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.error("cannot remove %s: %s", shown(created.path), exc)
        return False
    finally:
        os.close(fd)
