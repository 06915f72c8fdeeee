"""Migration URIs: an allow-list, parsed once into typed addresses.

Every URI that can reach QEMU comes from outside the daemon: the client's ``migrate_uri``,
``disks_uri``, ``graphics_uri`` and ``listen_address``, and — not trusted at all — the
``uri_out`` a destination daemon answers from Prepare. QEMU's ``migrate`` takes many more
transports than libvirt's (``exec:`` runs a shell command, ``file:`` writes a file), so no
string goes to QMP as given: it is parsed here and rebuilt from its checked parts.

==================  ======================================================================
scheme              accepted
==================  ======================================================================
``tcp``             ``tcp://HOST[:PORT]``, ``tcp:HOST:PORT`` (libvirt's legacy form),
                    ``tcp://[V6]:PORT``. HOST: a DNS name or an IP literal, nothing else
                    (no ``,`` that QEMU would read as an option). On the destination a
                    client-chosen port must lie in ``migration_port_min..max``.
``unix``            ``unix:///PATH`` or ``unix:/PATH``: where libvirt allows it — a URI
                    the *client* chose (the socket is the client's). PATH absolute and
                    normalized, short enough for a socket; an existing non-socket file
                    there is refused (QEMU would remove it to bind). A peer may answer a
                    unix ``uri_out`` only when the client asked for that same socket.
``rdma``            refused: pyvirt does not support RDMA migration
anything else       refused with libvirt's "unsupported scheme" error
==================  ======================================================================
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass

from pyvirt import safefs
from pyvirt.errors import ArgumentUnsupportedError, InvalidArgError
from pyvirt.safefs import shown

#: sun_path holds 108 bytes with the terminating NUL
UNIX_PATH_MAX = 107
#: RFC 1123 host names (underscores tolerated: they occur in internal names)
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_HOST_MAX = 253
#: the schemes a migration URI may use, as libvirt (qemuMigrationDstPrepareDirect)
MIGRATION_SCHEMES = ("tcp", "unix")
GRAPHICS_SCHEMES = ("spice", "vnc")


@dataclass(frozen=True, slots=True)
class MigrationAddress:
    """A checked migration or NBD address: TCP host (maybe) + port (maybe), or a socket."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def qemu(self) -> str:
        """The URI QEMU's ``migrate`` takes (``tcp:HOST:PORT`` / ``unix:PATH``)."""
        if self.scheme == "unix":
            return f"unix:{self.path}"
        if self.host is None or self.port is None:
            raise InvalidArgError("a migration URI needs a host and a port")
        return f"tcp:{bracket(self.host)}:{self.port}"

    def libvirt(self) -> str:
        """libvirt's form (``tcp://HOST:PORT``, ``unix://PATH``), as Prepare answers it."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        port = f":{self.port}" if self.port is not None else ""
        return f"tcp://{bracket(self.host or '')}{port}"


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_host(host: str, what: str) -> str:
    """A DNS name or an IP literal (IPv6 without brackets), else InvalidArgError."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    labels = candidate.rstrip(".").split(".")
    if not candidate or len(candidate) > _HOST_MAX or \
            not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidArgError(f"invalid host '{shown(host)}' in {what}")
    return candidate


def check_port(text: str, uri: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidArgError(f"invalid port in migration URI '{shown(uri)}'")
    return int(text)


def check_socket_path(path: str, what: str) -> str:
    """Absolute, normalized, short enough for sun_path, not an existing non-socket file."""
    try:
        safefs.check_path(path, what)
    except safefs.UnsafePathError:
        raise InvalidArgError(f"{what}: '{shown(path)}' is not an absolute, normalized path") \
            from None
    if len(path.encode()) > UNIX_PATH_MAX:
        raise InvalidArgError(f"{what}: socket path '{shown(path)}' is longer than "
                              f"{UNIX_PATH_MAX} bytes")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise InvalidArgError(f"{what}: cannot check '{path}': {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise InvalidArgError(f"{what}: '{path}' exists and is not a socket")
    return path


def _refuse_controls(uri: str, what: str) -> None:
    # urllib silently drops tabs and newlines; here they are an error, as spaces are
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        raise InvalidArgError(f"{what} '{shown(uri)}' contains spaces or control characters")


def _scheme_of(uri: str) -> str:
    scheme, sep, _ = uri.partition(":")
    if not sep or not scheme:
        raise InvalidArgError(f"missing scheme in migration URI: {shown(uri)}")
    return scheme.lower()


def _refuse_scheme(scheme: str, uri: str, allowed: tuple[str, ...]) -> None:
    if scheme in allowed:
        return
    if scheme == "rdma":
        raise ArgumentUnsupportedError(
            f"migration over RDMA is not supported (migration URI {shown(uri)})")
    # libvirt's wording (VIR_ERR_ARGUMENT_UNSUPPORTED)
    raise ArgumentUnsupportedError(
        f"unsupported scheme {shown(scheme)} in migration URI {shown(uri)}")


def parse_migration_uri(uri: str, *, allow_unix: bool = True,
                        what: str = "migration URI") -> MigrationAddress:
    """Parse and check ``uri`` (see the module table); raise VirtError when refused."""
    scheme = _scheme_of(uri)
    _refuse_scheme(scheme, uri, MIGRATION_SCHEMES if allow_unix else ("tcp",))
    _refuse_controls(uri, what)
    rest = uri[len(scheme) + 1:]
    if scheme == "unix":
        path = rest[2:] if rest.startswith("//") else rest
        return MigrationAddress("unix", path=check_socket_path(path, what))
    return _tcp_address(uri, rest, what)


def _tcp_address(uri: str, rest: str, what: str) -> MigrationAddress:
    if rest.startswith("//"):
        netloc, _, tail = rest[2:].partition("/")
        if tail or any(c in netloc for c in "?#@"):
            raise InvalidArgError(f"unexpected path, query or user in {what} '{shown(uri)}'")
    else:
        netloc = rest  # tcp:HOST:PORT
    host, port = _split_host_port(netloc, uri)
    checked = check_host(host, what) if host else None
    return MigrationAddress("tcp", host=checked, port=port)


def _split_host_port(netloc: str, uri: str) -> tuple[str, int | None]:
    if netloc.startswith("["):
        host, sep, tail = netloc[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise InvalidArgError(f"invalid IPv6 address in migration URI '{shown(uri)}'")
        return host, check_port(tail[1:], uri) if tail else None
    if netloc.count(":") > 1:  # a bare IPv6 literal without a port
        return netloc, None
    host, sep, port = netloc.partition(":")
    return host, check_port(port, uri) if sep else None


def check_peer_uri(uri_out: str, asked: str | None) -> MigrationAddress:
    """The destination's ``uri_out``: TCP with host and port, or the very unix socket the
    client asked for. Anything else never reaches QEMU."""
    address = parse_migration_uri(uri_out, what="the destination's migration URI")
    if address.scheme == "unix":
        mine = parse_migration_uri(asked) if asked else None
        if mine is None or mine.scheme != "unix" or mine.path != address.path:
            raise ArgumentUnsupportedError(
                f"the destination answered a unix migration URI ({shown(uri_out)}) that "
                "the client did not ask for")
    elif address.host is None or address.port is None:
        raise InvalidArgError(
            f"the destination's migration URI '{shown(uri_out)}' has no host or port")
    return address


def check_graphics_uri(uri: str) -> urllib.parse.SplitResult:
    """``spice://HOST[:PORT][?tlsPort=N]`` or ``vnc://...``; other schemes refused."""
    _refuse_controls(uri, "graphics URI")
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        raise InvalidArgError(f"invalid graphics URI '{shown(uri)}'") from None
    if parts.scheme not in GRAPHICS_SCHEMES:
        # libvirt (qemuMigrationCookieAddGraphics / ParseURI) says "unknown graphics type"
        raise ArgumentUnsupportedError(f"unknown graphics type {shown(parts.scheme or uri)}")
    if parts.hostname:
        check_host(parts.hostname, "graphics URI")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidArgError(f"invalid port in graphics URI '{shown(uri)}'") from None
    for key, values in urllib.parse.parse_qs(parts.query).items():
        if key != "tlsPort":
            raise InvalidArgError(f"unknown parameter '{shown(key)}' in graphics URI")
        check_port(values[0], uri)
    return parts


def check_listen_address(address: str) -> str:
    """--listen-address: an IP literal or a host name."""
    return check_host(address, "listen address")
