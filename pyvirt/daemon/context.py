"""What a remote-procedure handler works with: the daemon, the calling client, helpers.

Handlers are plain async functions ``handler(call, args) -> ret`` collected in tables
(``host_procs.HANDLERS``, ``domain_procs.HANDLERS``); :class:`Call` gives them the driver,
the client's connection state and the conversions between wire handles and domain objects.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvirt.errors import ErrorCode, ErrorDomain, InvalidArgError, NoDomainError, VirtError
from pyvirt.qemu.domain_obj import DomainObj
from pyvirt.rpc.remote_types import NonnullDomain
from pyvirt.rpc.server_client import ClientContext

if TYPE_CHECKING:
    from pyvirt.daemon.events import ClientEvents
    from pyvirt.daemon.server import Daemon
    from pyvirt.qemu.driver import QemuDriver

#: ``user_data`` key of a client's :class:`ClientState`
STATE_KEY = "pyvirt"


@dataclass
class ClientState:
    """Per-connection state the remote program keeps (libvirt's daemonClientPrivate)."""

    opened: bool = False
    keepalive: bool = False
    close_callback: bool = False
    events: ClientEvents | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    daemon: Daemon
    client: ClientContext

    @property
    def driver(self) -> QemuDriver:
        return self.daemon.driver

    @property
    def state(self) -> ClientState:
        state = self.client.user_data.get(STATE_KEY)
        if state is None:
            state = ClientState()
            self.client.user_data[STATE_KEY] = state
        return state

    def require_open(self) -> None:
        if not self.state.opened:
            raise VirtError("internal error: connection not open",
                            code=ErrorCode.INTERNAL_ERROR, domain=ErrorDomain.RPC)

    def domain(self, handle: NonnullDomain) -> DomainObj:
        """The domain a wire handle names (by UUID, as libvirt's remote driver does)."""
        uuid = str(uuidlib.UUID(bytes=bytes(handle.uuid)))
        try:
            return self.driver.lookup_by_uuid(uuid)
        except NoDomainError:
            raise NoDomainError(
                f"Domain not found: no domain with matching uuid '{uuid}' ({handle.name})"
            ) from None


Handler = Callable[[Call, Any], Awaitable[Any]]


def handle_of(obj: DomainObj) -> NonnullDomain:
    return NonnullDomain(name=obj.name, uuid=uuidlib.UUID(obj.uuid).bytes, id=obj.dom_id)


def check_flags(flags: int, allowed: int, api: str) -> None:
    """libvirt's virCheckFlags: unknown flag bits are refused, never ignored.

    ``allowed`` may be an IntFlag: ``~`` on one inverts only within its members (``~`` of all
    of them is 0), so it is taken as a plain int first.
    """
    unknown = int(flags) & ~int(allowed)
    if unknown:
        raise InvalidArgError(f"unsupported flags (0x{unknown:x}) in function {api}")
