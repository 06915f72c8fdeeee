"""pyvirt: libvirt-compatible virtualization for QEMU guests.

The client library has libvirt-python's names::

    import pyvirt
    conn = pyvirt.open("qemu+ssh://root@host2/system")
    for dom in conn.listAllDomains(pyvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        print(dom.name(), dom.state())

``import pyvirt`` stays cheap (no asyncio, no RPC): the client machinery is imported by
the first :func:`open`, and ``virConnect`` / ``virDomain`` on first access.  The flat
``VIR_*`` constants are generated from the enums in :mod:`pyvirt.constants` and
:mod:`pyvirt.errors` (see :mod:`pyvirt.client.names`).  The async API is
:mod:`pyvirt.client.aio`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyvirt.client.error import libvirtError
from pyvirt.client.names import flat_constants as _flat_constants

if TYPE_CHECKING:
    from pyvirt.client.sync import virConnect, virDomain

_CONSTANTS = _flat_constants()
globals().update(_CONSTANTS)

_LAZY = frozenset({"virConnect", "virDomain"})


def open(name: str | None = None) -> virConnect:
    """Open a connection (libvirt-python's ``libvirt.open``).

    ``name`` None or empty: $PYVIRT_DEFAULT_URI, else $LIBVIRT_DEFAULT_URI, else
    ``qemu:///system``.  Raises :class:`libvirtError` on failure.
    """
    from pyvirt.client import sync

    return sync.open(name)


def openReadOnly(name: str | None = None) -> virConnect:
    """Open a read-only connection (CONNECT_OPEN flag VIR_CONNECT_RO, the ``-ro`` socket)."""
    from pyvirt.client import sync

    return sync.openReadOnly(name)


def openAuth(uri: str | None, auth: object = None, flags: int = 0) -> virConnect:
    """libvirt-python's ``openAuth``; ``flags`` may hold VIR_CONNECT_RO."""
    from pyvirt.client import sync

    return sync.openAuth(uri, auth, flags)


def __getattr__(name: str) -> Any:
    # PEP 562: the sync classes import asyncio and the RPC layer, so only on demand
    if name in _LAZY:
        from pyvirt.client import sync

        return getattr(sync, name)
    raise AttributeError(f"module 'pyvirt' has no attribute {name!r}")


__all__ = ["libvirtError", "open", "openAuth", "openReadOnly", "virConnect", "virDomain",
           *_CONSTANTS]  # fmt: skip
