"""``--graphicsuri``: tell SPICE clients where to reconnect after the migration.

QEMU relocates SPICE clients (``client_migrate_info``); VNC clients cannot be relocated by
QEMU, so for VNC pyvirt does what libvirt does: nothing. Any other scheme is refused.
"""

from __future__ import annotations

import urllib.parse

from pyvirt.conf.domain import DomainDef
from pyvirt.errors import InvalidArgError
from pyvirt.qemu.migration import uris
from pyvirt.qemu.monitor import Monitor


async def relocate_clients(monitor: Monitor, definition: DomainDef, uri: str | None) -> None:
    if not uri:
        return
    parts = uris.check_graphics_uri(uri)
    if parts.scheme == "vnc" or not any(g.type == "spice" for g in definition.devices.graphics):
        return  # nothing QEMU could relocate
    if not parts.hostname:
        raise InvalidArgError(f"graphics URI '{uri}' has no host")
    args: dict[str, object] = {"protocol": "spice", "hostname": parts.hostname}
    if parts.port:
        args["port"] = parts.port
    query = urllib.parse.parse_qs(parts.query)  # checked: at most tlsPort
    if "tlsPort" in query:
        args["tls-port"] = int(query["tlsPort"][0])
    await monitor.execute("client_migrate_info", args)
