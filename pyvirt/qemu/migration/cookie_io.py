"""The migration cookie as the engine's phases use it: ours to send, the peer's checked.

Who reads which cookie, and what it must be about (libvirt's qemuMigrationCookieParse)::

    Prepare  (destination)  the source's Begin cookie    the definition's name and UUID
    Perform  (source)       the destination's Prepare    this domain (read_prepare_cookie)
    Finish   (destination)  the source's Perform cookie  the incoming domain's UUID
                                                         (read_perform_cookie)

Every cookie from this very host (same host UUID) is refused.
"""

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
    from pyvirt.qemu.domain_obj import DomainObj
    from pyvirt.qemu.driver import QemuDriver
    from pyvirt.qemu.migration.params import MigrationRequest

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
                      uuid: str | None = None,
                      renamed_to: str | None = None) -> MigrationCookie | None:
    """Parse the peer's cookie; refuse one from this very host (same host UUID), and one
    about another domain than ``name``/``uuid`` (each checked when given: see check_peer).

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
    check_peer(cookie, expected_name=name, expected_uuid=uuid,
               local_host_uuid=driver.settings.host_uuid, renamed_to=renamed_to)
    return cookie


async def read_prepare_cookie(driver: QemuDriver, data: bytes, obj: DomainObj,
                              request: MigrationRequest) -> MigrationCookie | None:
    """The source reads the destination's Prepare cookie: it must be about ``obj``.

    libvirt's destination names the domain by its name here (the source's); a pyvirt
    destination by its ``destination_name``: both are accepted.
    """
    return await read_cookie(driver, data, name=obj.name, uuid=obj.uuid,
                             renamed_to=request.destination_name)


async def read_perform_cookie(driver: QemuDriver, data: bytes,
                              destination_name: str | None) -> MigrationCookie | None:
    """The destination's Finish reads the source's Perform cookie: it must be about the
    incoming domain (``destination_name``, else the cookie's own name) — its UUID.

    The name is not compared: without ``destination_name`` it is the one the domain is found
    by; with it, libvirt compares the source's name, which pyvirt's Prepare does not keep.
    A cookie naming no domain being migrated in here is left to Finish, which refuses it in
    its own words ("not being migrated in"), as libvirt checks the job before the cookie.
    """
    cookie = await read_cookie(driver, data)
    if cookie is None:
        return None
    obj = driver.domain_by_name(destination_name or cookie.name)
    if obj is not None and obj.migration is not None:
        check_peer(cookie, expected_name=None, expected_uuid=obj.uuid,
                   local_host_uuid=driver.settings.host_uuid)
    return cookie
