"""libvirt's admin interface: the stock ``virt-admin`` reads and changes pyvirtd at run time.

Wiring (the daemon)::

    dispatcher = AdminDispatcher({"libvirtd": main_server}, lib_version=LIB_VERSION)
    admin = RPCServer(dispatcher, programs=(ADMIN,), limits=admin_server_limits(),
                      name="admin")
    dispatcher.add_server("admin", admin)  # listed by srv-list; needed for the uid check
    await admin.listen_unix(f"{unix_sock_dir}/libvirt-admin-sock", mode=0o700)
    await admin.start()

    $ virt-admin -c 'libvirtd:///system?socket=<unix_sock_dir>/libvirt-admin-sock' srv-list

The server names are libvirtd's: ``libvirtd`` serves the remote program, ``admin`` this one.
Each procedure works through :class:`~pyvirt.rpc.server.RPCServer`'s public hooks, so a
change takes effect at once (a lower ``max_clients`` stops accepting, a higher
``max_workers`` lets the pool grow).  Semantics and messages are libvirt 9.0's
(``admin_server.c``, ``virnetserver.c``, ``virthreadpool.c``, ``virtypedparam.c``), checked
against a real libvirtd 9.0 driven by the same ``virt-admin``.

Access: libvirt refuses admin clients whose uid differs from the daemon's euid, on top of
the socket's 0700 mode; so does CONNECT_OPEN here, and every other procedure needs an
opened connection.  The daemon-wide procedures (logging, TLS files, auto-shutdown timeout)
answer "not supported" until pyvirtd has the matching hooks.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pyvirt.errors import (
    ArgumentUnsupportedError,
    ErrorCode,
    ErrorDomain,
    InvalidArgError,
    NoSupportError,
    VirtError,
)
from pyvirt.rpc.admin_protocol import AdminClient, AdminProc, AdminServer, ClientTransport
from pyvirt.rpc.protocol import ProcSpec
from pyvirt.rpc.remote_types import TypedParam, TypedParamType, TypedValue
from pyvirt.rpc.server import ClientRecord, RPCServer, ServerLimits
from pyvirt.rpc.server_client import ClientContext

log = logging.getLogger(__name__)

AP = AdminProc
T = TypedParamType
Handler = Callable[[ClientContext, Any], Awaitable[Any]]

#: what CONNECT_GET_LIB_VERSION reports by default (pyvirtd implements libvirt 9.0's API)
LIB_VERSION = 9_000_000

# libvirt's order and names (VIR_THREADPOOL_*, VIR_SERVER_CLIENTS_*), all sent as UINT
THREADPOOL_FIELDS = ("minWorkers", "maxWorkers", "nWorkers", "freeWorkers", "prioWorkers",
                     "jobQueueDepth")  # fmt: skip
CLIENT_LIMIT_FIELDS = ("nclients_max", "nclients", "nclients_unauth_max", "nclients_unauth")
_THREADPOOL_SETTABLE = {"minWorkers": T.UINT, "maxWorkers": T.UINT, "prioWorkers": T.UINT}
_CLIENT_LIMITS_SETTABLE = {"nclients_max": T.UINT, "nclients_unauth_max": T.UINT}

#: min and prio workers are started at once (max only allows growth), so an absurd value
#: would start that many tasks; libvirt has no such cap (it would try to start the threads)
EAGER_WORKERS_MAX = 1000

_TRANSPORTS = {"unix": ClientTransport.UNIX, "tcp": ClientTransport.TCP,
               "tls": ClientTransport.TLS}  # fmt: skip
_TYPE_NAMES = {T.INT: "int", T.UINT: "uint", T.LLONG: "llong", T.ULLONG: "ullong",
               T.DOUBLE: "double", T.BOOLEAN: "boolean", T.STRING: "string"}  # fmt: skip

# libvirt words a missing server two ways: virNetDaemonGetServer's, and the one some admin
# dispatchers report over it; virt-admin shows whichever the procedure produced
_NO_SERVER = "No server named '{}'"
_NO_SERVER_FOUND = "no server with matching name '{}' found"
_NO_CLIENT = "No client with matching ID '{}'"
_NO_CLIENT_FOUND = "no client with matching id '{}' found"
# libvirt 9.0's text for max < unauth (its wording has the two limits the wrong way round)
_CLIENT_LIMITS_ORDER = (
    "The overall maximum number of clients waiting for authentication must not be less "
    "than the overall maximum number of clients"
)
#: where libvirt's virCheckFlags(0) names the function refusing unknown flags
_FLAGS_CHECKED_IN: dict[int, str] = {
    AP.CONNECT_OPEN: "adminDispatchConnectOpen",
    AP.CONNECT_LIST_SERVERS: "adminConnectListServers",
    AP.CONNECT_LOOKUP_SERVER: "adminConnectLookupServer",
    AP.SERVER_GET_THREADPOOL_PARAMETERS: "adminServerGetThreadPoolParameters",
    AP.SERVER_SET_THREADPOOL_PARAMETERS: "adminServerSetThreadPoolParameters",
    AP.SERVER_LIST_CLIENTS: "adminServerListClients",
    AP.SERVER_LOOKUP_CLIENT: "adminServerLookupClient",
    AP.CLIENT_GET_INFO: "adminClientGetInfo",
    AP.CLIENT_CLOSE: "adminClientClose",
    AP.SERVER_GET_CLIENT_LIMITS: "adminServerGetClientLimits",
    AP.SERVER_SET_CLIENT_LIMITS: "adminServerSetClientLimits",
}
_BEFORE_OPEN = frozenset({AP.CONNECT_OPEN, AP.CONNECT_CLOSE})


def admin_server_limits(
    *,
    min_workers: int = 5,
    max_workers: int = 20,
    max_clients: int = 5000,
    max_queued_clients: int = 20,
    max_client_requests: int = 5,
    keepalive_interval: float = 5.0,
    keepalive_count: int = 5,
) -> ServerLimits:
    """Limits of the admin server: libvirtd's ``admin_*`` defaults, no priority workers.

    The admin socket's auth is "none", so its clients never count as anonymous (as in
    libvirt); the anonymous cap (20) only satisfies the server's consistency check.
    ``max_requests`` (global in pyvirt, no admin counterpart in libvirt) follows
    ``max_workers``.  The server never pings admin
    clients (nothing on the admin program enables keepalive); it answers their pings.
    """
    return ServerLimits(
        max_clients=max_clients, max_queued_clients=max_queued_clients,
        max_anonymous_clients=min(max_clients, 20), min_workers=min_workers,
        max_workers=max_workers, prio_workers=0, max_requests=max_workers,
        max_client_requests=max_client_requests, keepalive_interval=keepalive_interval,
        keepalive_count=keepalive_count,
    )  # fmt: skip


class AdminDispatcher:
    """Serves the ADMIN program over named :class:`RPCServer` instances.

    ``servers``: name → server, listed in this order by ``srv-list`` (libvirtd's order is
    "libvirtd", then "admin").  ``allowed_uid``: the only peer uid that may open (default:
    this process's euid, as libvirt).  ``loop_stats``: extra UINT fields appended to every
    server's ``srv-threadpool-info`` (the daemon's event-loop lag, see
    :mod:`pyvirt.daemon.loopwatch`; all servers share the one loop).
    """

    def __init__(
        self,
        servers: Mapping[str, RPCServer],
        *,
        lib_version: int = LIB_VERSION,
        allowed_uid: int | None = None,
        loop_stats: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._servers: dict[str, RPCServer] = dict(servers)
        self._loop_stats = loop_stats
        self.lib_version = lib_version
        self.allowed_uid = os.geteuid() if allowed_uid is None else allowed_uid
        self._warned_unregistered = False
        self._handlers: dict[int, Handler] = {
            AP.CONNECT_OPEN: self._connect_open,
            AP.CONNECT_CLOSE: self._connect_close,
            AP.CONNECT_GET_LIB_VERSION: self._get_lib_version,
            AP.CONNECT_LIST_SERVERS: self._list_servers,
            AP.CONNECT_LOOKUP_SERVER: self._lookup_server,
            AP.SERVER_GET_THREADPOOL_PARAMETERS: self._get_threadpool,
            AP.SERVER_SET_THREADPOOL_PARAMETERS: self._set_threadpool,
            AP.SERVER_LIST_CLIENTS: self._list_clients,
            AP.SERVER_LOOKUP_CLIENT: self._lookup_client,
            AP.CLIENT_GET_INFO: self._client_info,
            AP.CLIENT_CLOSE: self._client_close,
            AP.SERVER_GET_CLIENT_LIMITS: self._get_client_limits,
            AP.SERVER_SET_CLIENT_LIMITS: self._set_client_limits,
        }

    @property
    def servers(self) -> Mapping[str, RPCServer]:
        return dict(self._servers)

    def add_server(self, name: str, server: RPCServer) -> None:
        """Register a server after construction (the admin server itself, typically)."""
        if name in self._servers:
            raise ValueError(f"a server named {name!r} is already registered")
        self._servers[name] = server

    async def dispatch(self, client: ClientContext, spec: ProcSpec, args: Any) -> Any:
        handler = self._handlers.get(spec.number)
        if handler is None:
            raise NoSupportError(spec.api, domain=ErrorDomain.ADMIN)
        if spec.number not in _BEFORE_OPEN and not client.opened:
            raise VirtError("internal error: connection not open",
                            code=ErrorCode.INTERNAL_ERROR, domain=ErrorDomain.ADMIN)  # fmt: skip
        flags = args.get("flags", 0) if isinstance(args, dict) else 0
        if flags:  # no admin procedure takes flags yet
            where = _FLAGS_CHECKED_IN.get(spec.number, spec.api)
            raise _invalid(f"unsupported flags (0x{flags:x}) in function {where}")
        return await handler(client, args)

    # -- connection --------------------------------------------------------------------------
    async def _connect_open(self, client: ClientContext, args: Any) -> None:
        self._check_owner(client)
        client.mark_opened()

    async def _connect_close(self, client: ClientContext, args: Any) -> None:
        # libvirt closes the connection once this reply is out (DelayedClose).  The reply
        # is queued before the loop runs the callback, and closing flushes queued packets.
        asyncio.get_running_loop().call_soon(client.abort, "closed by the client")

    async def _get_lib_version(self, client: ClientContext, args: Any) -> Any:
        return {"lib_ver": self.lib_version}

    async def _list_servers(self, client: ClientContext, args: Any) -> Any:
        names = list(self._servers)
        servers = [AdminServer(name) for name in names] if args["need_results"] else []
        return {"servers": servers, "ret": len(names)}

    async def _lookup_server(self, client: ClientContext, args: Any) -> Any:
        self._server(args["name"])
        return {"srv": AdminServer(args["name"])}

    def _check_owner(self, client: ClientContext) -> None:
        record = self._own_record(client)
        if record is None:
            return
        if record.uid != self.allowed_uid:
            client.abort("peer uid not allowed on the admin socket")
            raise VirtError(
                f"operation forbidden: Disallowing client {record.pid} with uid {record.uid}",
                code=ErrorCode.OPERATION_DENIED, domain=ErrorDomain.ADMIN,
            )  # fmt: skip

    def _own_record(self, client: ClientContext) -> ClientRecord | None:
        """The record of ``client`` on the server this dispatcher serves, if registered."""
        for server in self._servers.values():
            if server.dispatcher is self:
                return server.client_record(client.id)
        if not self._warned_unregistered:
            self._warned_unregistered = True
            log.warning("admin server not registered with its dispatcher: peer uid unchecked")
        return None

    # -- servers -----------------------------------------------------------------------------
    def _server(self, name: str, wording: str = _NO_SERVER) -> RPCServer:
        server = self._servers.get(name)
        if server is None:
            raise VirtError(f"Server not found: {wording.format(name)}",
                            code=ErrorCode.NO_SERVER, domain=ErrorDomain.ADMIN)  # fmt: skip
        return server

    async def _get_threadpool(self, client: ClientContext, args: Any) -> Any:
        info = self._server(args["srv"].name).threadpool_info()
        params = [TypedParam.of_uint(f, info[f]) for f in THREADPOOL_FIELDS]
        # pyvirt's extra fields come after libvirt's, which keep their order; virt-admin
        # prints every field it receives
        if self._loop_stats is not None:
            params += [TypedParam.of_uint(f, v) for f, v in self._loop_stats().items()]
        return {"params": params}

    async def _set_threadpool(self, client: ClientContext, args: Any) -> None:
        server = self._server(args["srv"].name, _NO_SERVER_FOUND)
        values = validate_params(args["params"], _THREADPOOL_SETTABLE)
        check_threadpool_change(server.threadpool_info(), values)
        await server.set_threadpool_params(
            min_workers=_opt_int(values, "minWorkers"),
            max_workers=_opt_int(values, "maxWorkers"),
            prio_workers=_opt_int(values, "prioWorkers"),
        )

    async def _get_client_limits(self, client: ClientContext, args: Any) -> Any:
        info = self._server(args["srv"].name).clients_info()
        return {"params": [TypedParam.of_uint(f, info[f]) for f in CLIENT_LIMIT_FIELDS]}

    async def _set_client_limits(self, client: ClientContext, args: Any) -> None:
        server = self._server(args["srv"].name, _NO_SERVER_FOUND)
        values = validate_params(args["params"], _CLIENT_LIMITS_SETTABLE)
        info = server.clients_info()
        new_max = int(values.get("nclients_max", info["nclients_max"]))
        new_unauth = int(values.get("nclients_unauth_max", info["nclients_unauth_max"]))
        if new_max < new_unauth:
            raise _invalid(_CLIENT_LIMITS_ORDER)
        server.set_client_limits(
            max_clients=_opt_int(values, "nclients_max"),
            max_anonymous_clients=_opt_int(values, "nclients_unauth_max"),
        )

    # -- clients -----------------------------------------------------------------------------
    def _record(self, server: RPCServer, client_id: int, wording: str = _NO_CLIENT) -> ClientRecord:
        record = server.client_record(client_id)
        if record is None:
            raise _no_client(client_id, wording)
        return record

    async def _list_clients(self, client: ClientContext, args: Any) -> Any:
        name = args["srv"].name
        records = self._server(name).client_records()
        clients = [client_handle(name, r) for r in records] if args["need_results"] else []
        return {"clients": clients, "ret": len(records)}

    async def _lookup_client(self, client: ClientContext, args: Any) -> Any:
        name = args["srv"].name
        record = self._record(self._server(name), args["id"])
        return {"clnt": client_handle(name, record)}

    async def _client_info(self, client: ClientContext, args: Any) -> Any:
        handle: AdminClient = args["clnt"]
        server = self._server(handle.srv.name, _NO_SERVER_FOUND)
        record = self._record(server, handle.id, _NO_CLIENT_FOUND)
        return {"params": client_info_params(record)}

    async def _client_close(self, client: ClientContext, args: Any) -> None:
        handle: AdminClient = args["clnt"]
        server = self._server(handle.srv.name)
        if not server.close_client(handle.id, "disconnected through the admin interface"):
            raise _no_client(handle.id, _NO_CLIENT)


# -- helpers (pure) ----------------------------------------------------------------------------
def _invalid(detail: str) -> InvalidArgError:
    return InvalidArgError(detail, domain=ErrorDomain.ADMIN)


def _no_client(client_id: int, wording: str) -> VirtError:
    return VirtError(f"Client not found: {wording.format(client_id)}",
                     code=ErrorCode.NO_CLIENT, domain=ErrorDomain.ADMIN)  # fmt: skip


def _opt_int(values: Mapping[str, TypedValue], name: str) -> int | None:
    value = values.get(name)
    return None if value is None else int(value)


def validate_params(
    params: Sequence[TypedParam], allowed: Mapping[str, TypedParamType]
) -> dict[str, TypedValue]:
    """libvirt's virTypedParamsValidate: only ``allowed`` names, of their type, once each."""
    values: dict[str, TypedValue] = {}
    for param in params:
        expected = allowed.get(param.field)
        if expected is None:
            raise ArgumentUnsupportedError(
                f"parameter '{param.field}' not supported", domain=ErrorDomain.ADMIN
            )
        if param.type != expected:
            raise _invalid(f"invalid type '{_TYPE_NAMES[param.type]}' for parameter "
                           f"'{param.field}', expected '{_TYPE_NAMES[expected]}'")  # fmt: skip
        if param.field in values:
            raise _invalid(f"parameter '{param.field}' occurs multiple times")
        values[param.field] = param.value
    return values


def check_threadpool_change(current: Mapping[str, int], values: Mapping[str, TypedValue]) -> None:
    """virThreadPoolSetParameters' checks, in its order, with its messages."""
    new_min = int(values.get("minWorkers", current["minWorkers"]))
    new_max = int(values.get("maxWorkers", current["maxWorkers"]))
    if new_min > new_max:
        raise _invalid("minWorkers cannot be larger than maxWorkers")
    if "maxWorkers" in values and (new_max == 0) != (current["maxWorkers"] == 0):
        raise _invalid("maxWorkers must not be switched from zero to non-zero and vice versa")
    for name in ("minWorkers", "prioWorkers"):
        if int(values.get(name, 0)) > EAGER_WORKERS_MAX:
            raise _invalid(f"{name} must not exceed {EAGER_WORKERS_MAX}")


def client_handle(server_name: str, record: ClientRecord) -> AdminClient:
    transport = _TRANSPORTS.get(record.transport, ClientTransport.UNIX)
    return AdminClient(AdminServer(server_name), record.id, int(record.connected_at), transport)


def client_info_params(record: ClientRecord) -> list[TypedParam]:
    """libvirt's adminClientGetInfo: read-only flag, then the peer's identity."""
    params = [TypedParam.of_bool("readonly", record.readonly)]
    if record.transport != "unix":
        if record.sock_addr is not None:
            params.append(TypedParam.of_string("sock_addr", record.sock_addr))
        return params
    if record.uid is None or record.gid is None or record.pid is None:
        return params
    params.append(TypedParam.of_int("unix_user_id", record.uid))
    if (user := _user_name(record.uid)) is not None:
        params.append(TypedParam.of_string("unix_user_name", user))
    params.append(TypedParam.of_int("unix_group_id", record.gid))
    if (group := _group_name(record.gid)) is not None:
        params.append(TypedParam.of_string("unix_group_name", group))
    params.append(TypedParam.of_int("unix_process_id", record.pid))
    return params


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None
