"""Connection URIs, libvirt's syntax: ``driver[+transport]://[user@][host][:port]/path[?k=v&...]``.

Supported: ``qemu:///system`` (pyvirt's own unix socket), ``qemu+unix:///system?socket=P``,
``qemu+tcp://host[:port]/system`` (port 16509), ``qemu+tls://host[:port]/system`` (port
16514; also ``qemu://host/system``) with ``pkipath=`` and ``no_verify=``,
``qemu+ssh://[user@]host[:port]/system`` with ``socket=``, ``keyfile=``, ``no_verify=``,
``no_tty=``, ``netcat=`` as libvirt. Other transports are refused with a clear error rather
than misread.

The URI sent in CONNECT_OPEN is the driver part only (``qemu:///system``), as libvirt's
remote driver sends it once the transport has been stripped.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError

DEFAULT_UNIX_SOCK_DIR = "/run/pyvirt"
RW_SOCKET_NAME = "libvirt-sock"
RO_SOCKET_NAME = "libvirt-sock-ro"
ADMIN_SOCKET_NAME = "libvirt-admin-sock"
DEFAULT_TCP_PORT = 16509
DEFAULT_TLS_PORT = 16514
#: what a NULL/empty URI means when neither environment variable is set (libvirt: the
#: first driver that accepts; pyvirt has one)
DEFAULT_URI = "qemu:///system"
#: checked in this order: pyvirt's own variable wins over the one the stock virsh reads
DEFAULT_URI_ENV = ("PYVIRT_DEFAULT_URI", "LIBVIRT_DEFAULT_URI")

#: query parameters the client consumes itself (libvirt strips them from the open name)
_CLIENT_PARAMS = frozenset({
    "socket", "keyfile", "no_verify", "no_tty", "netcat", "command", "name", "mode",
    "known_hosts", "sshauth", "proxy", "pkipath",
})
_SUPPORTED_DRIVERS = frozenset({"qemu"})
_SUPPORTED_PATHS = frozenset({"/system"})


class URIError(VirtError):
    code = ErrorCode.INVALID_ARG
    domain = ErrorDomain.REMOTE


@dataclass(frozen=True)
class ConnectURI:
    text: str
    driver: str
    #: unix, tcp, tls or ssh
    transport: str
    host: str | None
    port: int | None
    user: str | None
    path: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def open_name(self) -> str:
        """What CONNECT_OPEN carries: the driver URI without transport, host or port."""
        extra = {k: v for k, v in self.params.items() if k not in _CLIENT_PARAMS}
        query = "?" + urllib.parse.urlencode(extra) if extra else ""
        return f"{self.driver}://{self.path}{query}"

    def socket_path(self, readonly: bool = False) -> str:
        if "socket" in self.params:
            return self.params["socket"]
        name = RO_SOCKET_NAME if readonly else RW_SOCKET_NAME
        return f"{DEFAULT_UNIX_SOCK_DIR}/{name}"

    @property
    def no_verify(self) -> bool:
        return self.params.get("no_verify", "0") not in ("", "0")

    @property
    def no_tty(self) -> bool:
        return self.params.get("no_tty", "0") not in ("", "0")


def resolve_default_uri(name: str | None) -> str:
    """libvirt's rule for a NULL or empty URI: the environment, else the default."""
    if name:
        return name
    for var in DEFAULT_URI_ENV:
        value = os.environ.get(var)
        if value:
            return value
    return DEFAULT_URI


def parse_uri(text: str) -> ConnectURI:
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme
    if not scheme or "://" not in text:
        raise URIError(f"invalid argument: unable to parse URI {text}")
    driver, _, transport = scheme.partition("+")
    if driver not in _SUPPORTED_DRIVERS:
        raise URIError(f"no connection driver available for {text}",
                       code=ErrorCode.NO_CONNECT)
    host = parts.hostname
    transport = transport or ("tls" if host else "unix")
    if transport not in ("unix", "tcp", "tls", "ssh"):
        raise URIError(f"transport '{transport}' is not supported: {text}",
                       code=ErrorCode.NO_SUPPORT)
    if transport in ("tcp", "tls", "ssh") and not host:
        raise URIError(f"invalid argument: transport '{transport}' needs a host: {text}")
    path = parts.path or "/system"
    if path not in _SUPPORTED_PATHS:
        raise URIError(f"unsupported connection path '{path}' (pyvirt has only /system)",
                       code=ErrorCode.NO_CONNECT)
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    try:
        port = parts.port
    except ValueError as exc:
        raise URIError(f"invalid argument: bad port in URI {text}") from exc
    return ConnectURI(text=text, driver=driver, transport=transport, host=host, port=port,
                      user=urllib.parse.unquote(parts.username) if parts.username else None,
                      path=path, params=params)
