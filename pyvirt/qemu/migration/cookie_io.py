"""The migration cookie as the engine's phases use it: ours to send, the peer's checked."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import TYPE_CHECKING

from pyvirt.conf.domain_validate import validate_domain_name
from pyvirt.qemu.migration.cookie import (
    CookieNBD,
    CookieStatistics,
    MigrationCookie,
    check_peer,
)

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver

#: cookies up to this size (every real one: a few KiB, a persistent definition included)
#: are parsed right away; a bigger one is parsed off the event loop
INLINE_PARSE_MAX = 64 * 1024


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


async def read_cookie(driver: QemuDriver, data: bytes, *, name: str | None = None,
                      uuid: str | None = None) -> MigrationCookie | None:
    """Parse the peer's cookie; refuse one from this very host (same host UUID).

    A big cookie is parsed on a thread: up to COOKIE_MAX_BYTES of hostile XML costs a few
    hundred milliseconds of parsing (bounded, but too long for the event loop); the thread
    gives the GIL back to the loop between the parser's callbacks.
    """
    if len(data) > INLINE_PARSE_MAX:
        cookie = await asyncio.to_thread(MigrationCookie.from_bytes, data)
    else:
        cookie = MigrationCookie.from_bytes(data)
    if cookie is None:
        return None
    # the cookie's name may stand in for the domain's (Finish without destination_name):
    # checked like every name from outside (docs/security.md)
    validate_domain_name(cookie.name)
    check_peer(cookie, expected_name=name or cookie.name, expected_uuid=uuid or cookie.uuid,
               local_host_uuid=driver.settings.host_uuid)
    return cookie
