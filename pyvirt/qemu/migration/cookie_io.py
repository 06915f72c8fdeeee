"""The migration cookie as the engine uses it: make ours, read and check the peer's.

A thin seam over the cookie format so the engine's phases only name what they need.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET

from pyvirt.errors import OperationFailedError, OperationInvalidError

if TYPE_CHECKING:
    from pyvirt.qemu.driver import QemuDriver

COOKIE_MAX = 4 * 1024 * 1024


@dataclass(frozen=True)
class Cookie:
    name: str
    uuid: str
    hostname: str
    hostuuid: str

    def to_bytes(self) -> bytes:
        root = ET.Element("qemu-migration")
        for tag in ("name", "uuid", "hostname", "hostuuid"):
            ET.SubElement(root, tag).text = getattr(self, tag)
        # a real libvirtd peer reads <capabilities> without checking it exists
        ET.SubElement(root, "capabilities")
        ET.indent(root, "  ")
        return ET.tostring(root, encoding="unicode").encode() + b"\n\0"


def make_cookie(driver: QemuDriver, name: str, uuid: str) -> Cookie:
    return Cookie(name, uuid, socket.gethostname(), driver.settings.host_uuid)


def read_cookie(data: bytes, local_host_uuid: str) -> Cookie | None:
    if not data:
        return None
    if len(data) > COOKIE_MAX:
        raise OperationFailedError("migration cookie is too large")
    if not data.endswith(b"\0"):
        raise OperationFailedError("Migration cookie was not NULL terminated")
    try:
        root = SafeET.fromstring(data[:-1].decode())
        fields = {tag: (root.findtext(tag) or "").strip()
                  for tag in ("name", "uuid", "hostname", "hostuuid")}
    except (ET.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise OperationFailedError(f"cannot parse migration cookie: {exc}") from exc
    cookie = Cookie(**fields)
    if cookie.hostuuid.lower() == local_host_uuid.lower():
        raise OperationInvalidError(
            f"Attempt to migrate guest to the same host {cookie.hostuuid}")
    return cookie
