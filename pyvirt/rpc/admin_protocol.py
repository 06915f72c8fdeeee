"""The ADMIN program (0x06900690 v1): the daemon's run-time administration, as data.

This is the protocol of libvirt's admin socket (``libvirt-admin-sock``), spoken by the stock
``virt-admin`` and ``libvirt-admin.so``.  Numbers and layouts follow libvirt's
``src/admin/admin_protocol.x`` (written here by hand, nothing copied); field names are
snake_case forms of libvirt's (``libVer`` → ``lib_ver``).

Wire facts worth knowing:

* the client calls CONNECT_OPEN first (there is no AUTH_LIST: the socket's permissions and
  the peer's uid are the only gate) and CONNECT_CLOSE last; it answers keepalive PINGs but
  never starts keepalive itself, and the server does not either;
* ``admin_typed_param`` has exactly the layout of ``remote_typed_param``, so typed params
  decode to :class:`~pyvirt.rpc.remote_types.TypedParam`;
* a server handle is just its name; a client handle is (server, id, timestamp, transport)
  with the timestamp in seconds since the epoch and the transport a
  :class:`ClientTransport`;
* the list procedures return a count (``ret``) and, only when ``need_results`` is non-zero,
  the handles themselves.

No procedure is ``@priority: high`` and the admin socket has no read-only mode; ``readonly``
below only records which procedures change nothing.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from pyvirt.rpc.packet import ADMIN_PROGRAM
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_types import typed_params
from pyvirt.rpc.types import (
    Array,
    Field,
    Hyper,
    Optional,
    String,
    Struct,
    UHyper,
    UInt,
    Void,
    XDRType,
)

# -- limits (libvirt's numbers) --------------------------------------------------------------
ADMIN_STRING_MAX = 4_194_304
SERVER_LIST_MAX = 16_384
THREADPOOL_PARAMETERS_MAX = 32
CLIENT_LIST_MAX = 16_384
CLIENT_INFO_PARAMETERS_MAX = 64
SERVER_CLIENT_LIMITS_MAX = 32


class AdminProc(enum.IntEnum):
    CONNECT_OPEN = 1
    CONNECT_CLOSE = 2
    CONNECT_GET_LIB_VERSION = 3
    CONNECT_LIST_SERVERS = 4
    CONNECT_LOOKUP_SERVER = 5
    SERVER_GET_THREADPOOL_PARAMETERS = 6
    SERVER_SET_THREADPOOL_PARAMETERS = 7
    SERVER_LIST_CLIENTS = 8
    SERVER_LOOKUP_CLIENT = 9
    CLIENT_GET_INFO = 10
    CLIENT_CLOSE = 11
    SERVER_GET_CLIENT_LIMITS = 12
    SERVER_SET_CLIENT_LIMITS = 13
    CONNECT_GET_LOGGING_OUTPUTS = 14
    CONNECT_GET_LOGGING_FILTERS = 15
    CONNECT_SET_LOGGING_OUTPUTS = 16
    CONNECT_SET_LOGGING_FILTERS = 17
    SERVER_UPDATE_TLS_FILES = 18
    CONNECT_SET_DAEMON_TIMEOUT = 19


class ClientTransport(enum.IntEnum):
    """virClientTransport: how a client is connected (virt-admin prints the lower name)."""

    UNIX = 0
    TCP = 1
    TLS = 2


# -- handles ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class AdminServer:
    """``admin_nonnull_server``: a server handle is its name."""

    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class AdminClient:
    """``admin_nonnull_client``: the server, the client's id, its connection time in seconds
    since the epoch and its :class:`ClientTransport`."""

    srv: AdminServer
    id: int
    timestamp: int
    transport: int


AdminString: XDRType[str] = String(ADMIN_STRING_MAX, "admin_nonnull_string")
OptAdminString: XDRType[str | None] = Optional(AdminString, "admin_string")
Server: XDRType[Any] = Struct("admin_nonnull_server", [("name", AdminString)], AdminServer)
Client: XDRType[Any] = Struct(
    "admin_nonnull_client",
    [("srv", Server), ("id", UHyper), ("timestamp", Hyper), ("transport", UInt)],
    AdminClient,
)

_FLAGS: Field = ("flags", UInt)
_SRV: Field = ("srv", Server)
_CLNT: Field = ("clnt", Client)
_NEED: Field = ("need_results", UInt)


def _struct(name: str, *fields: Field) -> XDRType[Any]:
    return Struct(f"admin_{name}", fields)


def _params(max_count: int) -> Field:
    return ("params", typed_params(max_count))


_FLAGS_ONLY = _struct("flags_args", _FLAGS)
_SRV_FLAGS = _struct("server_flags_args", _SRV, _FLAGS)
_CLNT_FLAGS = _struct("client_flags_args", _CLNT, _FLAGS)


def _p(
    proc: AdminProc,
    args: XDRType[Any] = Void,
    ret: XDRType[Any] = Void,
    *,
    api: str,
    ro: bool = False,
) -> ProcSpec:
    # needs_auth=False: the admin program has no authentication step at all
    return ProcSpec(int(proc), proc.name, args, ret, readonly=ro, api=api, needs_auth=False)


AP = AdminProc

_CONNECTION = [
    _p(AP.CONNECT_OPEN, _struct("connect_open_args", _FLAGS),
       api="virAdmConnectOpen", ro=True),
    _p(AP.CONNECT_CLOSE, api="virAdmConnectClose", ro=True),
    _p(AP.CONNECT_GET_LIB_VERSION,
       ret=_struct("connect_get_lib_version_ret", ("lib_ver", UHyper)),
       api="virAdmConnectGetLibVersion", ro=True),
    _p(AP.CONNECT_LIST_SERVERS, _struct("connect_list_servers_args", _NEED, _FLAGS),
       _struct("connect_list_servers_ret", ("servers", Array(Server, SERVER_LIST_MAX)),
               ("ret", UInt)),
       api="virAdmConnectListServers", ro=True),
    _p(AP.CONNECT_LOOKUP_SERVER,
       _struct("connect_lookup_server_args", ("name", AdminString), _FLAGS),
       _struct("connect_lookup_server_ret", _SRV),
       api="virAdmConnectLookupServer", ro=True),
]  # fmt: skip

_SERVER = [
    _p(AP.SERVER_GET_THREADPOOL_PARAMETERS, _SRV_FLAGS,
       _struct("server_get_threadpool_parameters_ret", _params(THREADPOOL_PARAMETERS_MAX)),
       api="virAdmServerGetThreadPoolParameters", ro=True),
    _p(AP.SERVER_SET_THREADPOOL_PARAMETERS,
       _struct("server_set_threadpool_parameters_args", _SRV,
               _params(THREADPOOL_PARAMETERS_MAX), _FLAGS),
       api="virAdmServerSetThreadPoolParameters"),
    _p(AP.SERVER_LIST_CLIENTS, _struct("server_list_clients_args", _SRV, _NEED, _FLAGS),
       _struct("server_list_clients_ret", ("clients", Array(Client, CLIENT_LIST_MAX)),
               ("ret", UInt)),
       api="virAdmServerListClients", ro=True),
    _p(AP.SERVER_LOOKUP_CLIENT,
       _struct("server_lookup_client_args", _SRV, ("id", UHyper), _FLAGS),
       _struct("server_lookup_client_ret", _CLNT),
       api="virAdmServerLookupClient", ro=True),
    _p(AP.SERVER_GET_CLIENT_LIMITS, _SRV_FLAGS,
       _struct("server_get_client_limits_ret", _params(SERVER_CLIENT_LIMITS_MAX)),
       api="virAdmServerGetClientLimits", ro=True),
    _p(AP.SERVER_SET_CLIENT_LIMITS,
       _struct("server_set_client_limits_args", _SRV, _params(SERVER_CLIENT_LIMITS_MAX),
               _FLAGS),
       api="virAdmServerSetClientLimits"),
    _p(AP.SERVER_UPDATE_TLS_FILES, _SRV_FLAGS, api="virAdmServerUpdateTlsFiles"),
]  # fmt: skip

_CLIENT = [
    _p(AP.CLIENT_GET_INFO, _CLNT_FLAGS,
       _struct("client_get_info_ret", _params(CLIENT_INFO_PARAMETERS_MAX)),
       api="virAdmClientGetInfo", ro=True),
    _p(AP.CLIENT_CLOSE, _CLNT_FLAGS, api="virAdmClientClose"),
]  # fmt: skip

_DAEMON = [
    _p(AP.CONNECT_GET_LOGGING_OUTPUTS, _FLAGS_ONLY,
       _struct("connect_get_logging_outputs_ret", ("outputs", AdminString), ("noutputs", UInt)),
       api="virAdmConnectGetLoggingOutputs", ro=True),
    _p(AP.CONNECT_GET_LOGGING_FILTERS, _FLAGS_ONLY,
       _struct("connect_get_logging_filters_ret", ("filters", OptAdminString),
               ("nfilters", UInt)),
       api="virAdmConnectGetLoggingFilters", ro=True),
    _p(AP.CONNECT_SET_LOGGING_OUTPUTS,
       _struct("connect_set_logging_outputs_args", ("outputs", OptAdminString), _FLAGS),
       api="virAdmConnectSetLoggingOutputs"),
    _p(AP.CONNECT_SET_LOGGING_FILTERS,
       _struct("connect_set_logging_filters_args", ("filters", OptAdminString), _FLAGS),
       api="virAdmConnectSetLoggingFilters"),
    _p(AP.CONNECT_SET_DAEMON_TIMEOUT,
       _struct("connect_set_daemon_timeout_args", ("timeout", UInt), _FLAGS),
       api="virAdmConnectSetDaemonTimeout"),
]  # fmt: skip

ADMIN = Program.build("admin", ADMIN_PROGRAM, [*_CONNECTION, *_SERVER, *_CLIENT, *_DAEMON])
