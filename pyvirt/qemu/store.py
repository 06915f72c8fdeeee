"""On-disk state of the QEMU driver, always written atomically.

Layout (``DriverSettings``)::

    state_dir/qemu/config/NAME.xml      persistent definition (inactive XML)
    state_dir/qemu/autostart/NAME       present = autostart on
    run_dir/qemu/NAME.status            runtime status of an active domain (see status.py)
    run_dir/qemu/domain-ID-NAME/        monitor socket, pid file, channel sockets

Every write goes to a temporary file in the same directory, is fsync'ed, renamed over the
target and the directory fsync'ed, so a crash leaves either the old or the new file, never a
torn one (the migration journal relies on the same helper).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pyvirt.conf.domain_validate import validate_domain_name


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    # not named after the target: ".NAME.status.XXXXXXXX" would not fit in 255 bytes when
    # NAME is long
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


class NamedFileStore:
    """One file per domain name in one directory; names are validated before use."""

    def __init__(self, directory: Path, suffix: str) -> None:
        self.directory = directory
        self.suffix = suffix

    def path(self, name: str) -> Path:
        # Names reach the filesystem here: validate again so that no caller can escape
        # the directory with '/', '..', NUL or a newline.
        validate_domain_name(name)
        return self.directory / f"{name}{self.suffix}"

    def write(self, name: str, text: str) -> None:
        atomic_write(self.path(name), text)

    def read(self, name: str) -> str:
        return self.path(name).read_text()

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def remove(self, name: str) -> None:
        remove_file(self.path(name))

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        out = []
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(".") or not entry.name.endswith(self.suffix):
                continue
            out.append(entry.name[: len(entry.name) - len(self.suffix)])
        return out
