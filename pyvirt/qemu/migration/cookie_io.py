"""The migration cookie as the engine's phases use it: ours to send, the peer's checked."""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING

from pyvirt.qemu.migration.cookie import (
    CookieNBD,
    CookieStatistics,
    MigrationCookie,
    check_peer,
)

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver


def make_cookie(driver: QemuDriver, name: str, uuid: str,
                statistics: CookieStatistics | None = None,
                nbd: CookieNBD | None = None) -> bytes:
    cookie = MigrationCookie(name=name, uuid=uuid, hostname=socket.gethostname(),
                             hostuuid=driver.settings.host_uuid)
    if statistics is not None:
        cookie = dataclasses.replace(cookie, statistics=statistics)
    if nbd is not None:
        cookie = dataclasses.replace(cookie, nbd=nbd)
    return cookie.to_bytes()


def read_cookie(driver: QemuDriver, data: bytes, *, name: str | None = None,
                uuid: str | None = None) -> MigrationCookie | None:
    """Parse the peer's cookie; refuse one from this very host (same host UUID)."""
    cookie = MigrationCookie.from_bytes(data)
    if cookie is None:
        return None
    check_peer(cookie, expected_name=name or cookie.name, expected_uuid=uuid or cookie.uuid,
               local_host_uuid=driver.settings.host_uuid)
    return cookie
