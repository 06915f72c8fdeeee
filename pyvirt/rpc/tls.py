"""TLS for the RPC transport with libvirt's conventions (x509 PKI, DN allow-list, ``\\1``).

libvirt's PKI layout (``virnettlscontext``):

=============================  ==========================================================
server                         ``/etc/pki/libvirt/servercert.pem``,
                               ``/etc/pki/libvirt/private/serverkey.pem``
client (root)                  ``/etc/pki/libvirt/clientcert.pem``,
                               ``/etc/pki/libvirt/private/clientkey.pem``
client (other users)           ``~/.pki/libvirt/clientcert.pem``, ``clientkey.pem``,
                               ``cacert.pem`` (each file falls back to the system one)
CA / CRL                       ``/etc/pki/CA/cacert.pem``, ``/etc/pki/CA/cacrl.pem``
``pkipath=DIR`` (client URI)   ``DIR/cacert.pem``, ``DIR/clientcert.pem``,
                               ``DIR/clientkey.pem``, ``DIR/cacrl.pem``
=============================  ==========================================================

After the handshake and the certificate checks the server writes one byte, ``\\1``; the
client reads it before its first RPC packet. A refused client is closed without it.

The checks are OpenSSL's (Python's :mod:`ssl`): the chain against the CA file and, when
one is loaded, the leaf against the CRL, during the handshake; then the subject DN
against ``tls_allowed_dn_list``, with the DN written as ``virt-pki-query-dn`` prints it
(``C=GB,ST=London,L=London,O=Red Hat,CN=client1``: RDNs in certificate order, short
attribute names, no spaces) and each entry matched as a shell glob (``fnmatch``).

``tls_priority`` takes GnuTLS priority strings; only those with a faithful OpenSSL
equivalent are accepted (:data:`PRIORITY_MAP`), any other value stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import logging
import os
import socket
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.packet import READER_LIMIT

log = logging.getLogger(__name__)

#: the byte libvirt's server sends once the client's certificate passed every check
TLS_CONFIRMATION = b"\x01"
#: how long a refused client's close_notify exchange may take
CLOSE_TIMEOUT_S = 5.0

PKI_DIR = "/etc/pki"
DEFAULT_CA_FILE = f"{PKI_DIR}/CA/cacert.pem"
DEFAULT_CRL_FILE = f"{PKI_DIR}/CA/cacrl.pem"
DEFAULT_SERVER_CERT = f"{PKI_DIR}/libvirt/servercert.pem"
DEFAULT_SERVER_KEY = f"{PKI_DIR}/libvirt/private/serverkey.pem"
DEFAULT_CLIENT_CERT = f"{PKI_DIR}/libvirt/clientcert.pem"
DEFAULT_CLIENT_KEY = f"{PKI_DIR}/libvirt/private/clientkey.pem"
DEFAULT_TLS_PORT = 16514

#: GnuTLS priority string -> (lowest, highest) TLS version under OpenSSL's default cipher
#: list. "NORMAL" (libvirt's built-in default) and "@LIBVIRT,SYSTEM"/"@SYSTEM" (what
#: distributions build libvirt with: the system crypto policy) are OpenSSL's defaults,
#: which are the system policy too; the VERS variants restrict the protocol version.
PRIORITY_MAP: dict[str, tuple[ssl.TLSVersion, ssl.TLSVersion]] = {
    "NORMAL": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    "@SYSTEM": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    "@LIBVIRT,SYSTEM": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    "NORMAL:-VERS-ALL:+VERS-TLS1.3": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
    "NORMAL:-VERS-TLS-ALL:+VERS-TLS1.3": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
    "NORMAL:-VERS-ALL:+VERS-TLS1.2": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    "NORMAL:-VERS-TLS-ALL:+VERS-TLS1.2": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
}

#: OpenSSL's long attribute names (what ``getpeercert()`` gives) -> GnuTLS's short ones
_DN_SHORT_NAMES = {
    "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
    "organizationName": "O", "organizationalUnitName": "OU", "commonName": "CN",
    "emailAddress": "EMAIL", "domainComponent": "DC", "userId": "UID",
    "streetAddress": "STREET", "serialNumber": "serialNumber", "title": "title",
    "surname": "SN", "givenName": "GN", "initials": "initials", "pseudonym": "pseudonym",
    "generationQualifier": "generationQualifier", "dnQualifier": "dnQualifier",
}  # fmt: skip
_DN_SPECIAL = ',+"\\<>;'  # GnuTLS leaves '=' in values as it is


class TLSConfigError(VirtError):
    """Unusable TLS credentials or settings (the daemon does not start)."""

    code = ErrorCode.SYSTEM_ERROR
    domain = ErrorDomain.RPC


def check_priority(name: str, value: str) -> str:
    """Schema check of ``tls_priority``: only strings with a faithful mapping."""
    if value not in PRIORITY_MAP:
        known = ", ".join(f'"{p}"' for p in PRIORITY_MAP)
        raise ValueError(f"{name}: GnuTLS priority '{value}' has no OpenSSL mapping in "
                         f"pyvirtd (accepted: {known})")  # fmt: skip
    return value


def _apply_priority(ctx: ssl.SSLContext, priority: str) -> None:
    low, high = PRIORITY_MAP[check_priority("tls_priority", priority)]
    ctx.minimum_version, ctx.maximum_version = low, high


def _readable(what: str, path: str) -> None:
    if not os.access(path, os.R_OK):
        reason = "does not exist" if not os.path.exists(path) else "is not readable"
        raise TLSConfigError(f"Cannot read {what} '{path}': it {reason}")


def _load_ca(ctx: ssl.SSLContext, ca_file: str, crl_file: str | None) -> None:
    _readable("CA certificate", ca_file)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(f"Unable to set x509 CA certificate: {ca_file}: {exc}") from exc
    if crl_file is None:
        return
    _readable("CA revocation list", crl_file)
    try:
        ctx.load_verify_locations(cafile=crl_file)
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(
            f"Unable to set x509 certificate revocation list: {crl_file}: {exc}") from exc
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _load_pair(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    _readable("certificate", cert_file)
    _readable("private key", key_file)
    try:
        # an empty password: an encrypted key fails here instead of OpenSSL prompting on
        # the daemon's terminal (libvirt takes no encrypted keys either)
        ctx.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"Unable to set x509 key and certificate: {key_file}, {cert_file}: {exc}"
        ) from exc


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """The daemon's TLS settings (pyvirtd.conf) and the context built from them."""

    context: ssl.SSLContext
    verify: bool
    allowed_dns: tuple[str, ...] | None

    def refusal(self, peercert: dict[str, Any] | None) -> str | None:
        """Why a client that completed the handshake is refused; None: accepted."""
        if not self.verify or self.allowed_dns is None:
            return None
        if not peercert:
            return "no client certificate"
        dn = subject_dn(peercert)
        if dn_allowed(dn, self.allowed_dns):
            return None
        return f"Client's Distinguished Name '{dn}' is not on tls_allowed_dn_list"


def server_tls(*, cert_file: str, key_file: str, ca_file: str, crl_file: str | None,
               verify: bool, allowed_dns: Sequence[str] | None,
               priority: str) -> ServerTLS:  # fmt: skip
    """Build the server context: our pair, the CA (and CRL) clients are checked against.

    ``crl_file`` None: libvirt's default ``/etc/pki/CA/cacrl.pem`` if it exists. With
    ``verify`` off the server does not ask for a certificate (OpenSSL cannot ask and
    then ignore a bad one), so the DN list cannot apply either: see docs/security.md.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_priority(ctx, priority)
    # No TLS 1.3 session tickets: the stock client polls for the confirmation byte, and a
    # ticket record arriving first makes its one read fail with EAGAIN. libvirtd (GnuTLS
    # without a ticket key) sends none either.
    ctx.num_tickets = 0
    _load_pair(ctx, cert_file, key_file)
    if crl_file is None and os.path.exists(DEFAULT_CRL_FILE):
        crl_file = DEFAULT_CRL_FILE
    _load_ca(ctx, ca_file, crl_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    dns = tuple(allowed_dns) if allowed_dns is not None else None
    return ServerTLS(ctx, verify, dns)


@dataclasses.dataclass(frozen=True)
class ClientPKI:
    ca_file: str
    cert_file: str
    key_file: str
    crl_file: str | None


def locate_client_pki(pkipath: str | None, *, uid: int | None = None,
                      home: str | None = None) -> ClientPKI:  # fmt: skip
    """libvirt's search: ``pkipath`` as given; else root uses /etc/pki, other users
    ``~/.pki/libvirt`` file by file, falling back to /etc/pki for a missing one."""
    if pkipath:
        base = Path(pkipath)
        crl = base / "cacrl.pem"
        return ClientPKI(str(base / "cacert.pem"), str(base / "clientcert.pem"),
                         str(base / "clientkey.pem"), str(crl) if crl.exists() else None)
    system_crl = DEFAULT_CRL_FILE if os.path.exists(DEFAULT_CRL_FILE) else None
    system = ClientPKI(DEFAULT_CA_FILE, DEFAULT_CLIENT_CERT, DEFAULT_CLIENT_KEY, system_crl)
    if (os.geteuid() if uid is None else uid) == 0:
        return system
    user = Path(home or os.path.expanduser("~")) / ".pki" / "libvirt"

    def pick(name: str, fallback: str) -> str:
        return str(user / name) if (user / name).exists() else fallback

    crl = user / "cacrl.pem"
    return ClientPKI(pick("cacert.pem", system.ca_file), pick("clientcert.pem", system.cert_file),
                     pick("clientkey.pem", system.key_file),
                     str(crl) if crl.exists() else system.crl_file)  # fmt: skip


def client_context(pki: ClientPKI, *, verify: bool, priority: str = "NORMAL") -> ssl.SSLContext:
    """The client context: our certificate if present, the server checked against the CA
    (and its name against the URI's host) unless ``no_verify=1``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_priority(ctx, priority)
    if os.path.exists(pki.cert_file) and os.path.exists(pki.key_file):
        _load_pair(ctx, pki.cert_file, pki.key_file)
    if verify:
        _load_ca(ctx, pki.ca_file, pki.crl_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _escape_dn_value(value: str) -> str:
    out = "".join(f"\\{ch}" if ch in _DN_SPECIAL else ch for ch in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def subject_dn(peercert: dict[str, Any]) -> str:
    """The subject as ``virt-pki-query-dn`` prints it (RDNs in certificate order)."""
    parts = []
    for rdn in peercert.get("subject", ()):
        parts.append("+".join(f"{_DN_SHORT_NAMES.get(name, name)}={_escape_dn_value(value)}"
                              for name, value in rdn))  # fmt: skip
    return ",".join(parts)


def dn_allowed(dn: str, patterns: Iterable[str]) -> bool:
    """libvirt matches each ``tls_allowed_dn_list`` entry as a shell glob, case-sensitively."""
    return any(fnmatch.fnmatchcase(dn, pattern) for pattern in patterns)


def tls_failure_reason(exc: BaseException) -> str:
    """A handshake failure as one line: OpenSSL's verify message when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "no handshake within handshake_timeout"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__


async def tls_accept(sock: socket.socket, peer: str, tls: ServerTLS,
                     handshake_timeout: float | None, server_name: str,
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Server side of one accepted connection: the handshake (asyncio's, off the loop's
    blocking path, bounded by *handshake_timeout*), the DN check, then libvirt's
    confirmation byte. None: refused, the reason logged, the socket closed without ``\\1``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READER_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    # asyncio closes the socket when the handshake fails; this duplicate keeps the
    # connection for an orderly close (below)
    linger = sock.dup()
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=tls.context,
            ssl_handshake_timeout=handshake_timeout or None)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        log.warning("%s: TLS client %s refused: handshake failed: %s", server_name, peer,
                    tls_failure_reason(exc))  # fmt: skip
        await _close_orderly(linger)
        return None
    except BaseException:
        linger.close()
        raise
    linger.close()
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    refusal = tls.refusal(writer.get_extra_info("peercert"))
    if refusal is not None:
        log.warning("%s: TLS client %s refused: %s", server_name, peer, refusal)
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)
        return None
    writer.write(TLS_CONFIRMATION)
    return reader, writer


async def _close_orderly(sock: socket.socket) -> None:
    """Send FIN and read what the client still sends until it closes (at most
    CLOSE_TIMEOUT_S), then close. Closing with its last flight unread would answer with
    a reset, and the stock client, writing into it, dies of SIGPIPE instead of reporting
    the refusal ("Unable to read TLS confirmation")."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            while await loop.sock_recv(sock, 4096):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()
