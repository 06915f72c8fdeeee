"""pyvirtd's network listeners: TLS (``listen_tls``) and plain TCP (``listen_tcp``).

Both exist only when the daemon runs with ``--listen``, as libvirtd's; with it the
defaults are libvirtd's: TLS on port 16514, no plain TCP. The TLS credentials are read
before the daemon touches any guest, so a missing key or unreadable CA stops it at start.
"""

from __future__ import annotations

import logging

from pyvirt.conf.daemon_conf import DaemonConfig
from pyvirt.rpc.server import RPCServer
from pyvirt.rpc.tls import ServerTLS, server_tls

log = logging.getLogger(__name__)


def network_tls(cfg: DaemonConfig, *, listen: bool) -> ServerTLS | None:
    """The TLS listener's context, or None when there is no TLS listener.
    Raises TLSConfigError naming the file and the reason."""
    if not (listen and cfg.listen_tls):
        return None
    if cfg.tls_no_verify_certificate and cfg.tls_allowed_dn_list is not None:
        log.warning("tls_no_verify_certificate = 1: the server asks for no client "
                    "certificate, so tls_allowed_dn_list is not checked")
    return server_tls(cert_file=cfg.cert_file, key_file=cfg.key_file, ca_file=cfg.ca_file,
                      crl_file=cfg.crl_file, verify=not cfg.tls_no_verify_certificate,
                      allowed_dns=cfg.tls_allowed_dn_list, priority=cfg.tls_priority)


async def listen_network(server: RPCServer, cfg: DaemonConfig, *, listen: bool,
                         tls: ServerTLS | None) -> None:  # fmt: skip
    host = cfg.listen_addr or "0.0.0.0"
    if tls is not None:
        await server.listen_tcp(host, cfg.tls_port, auth=cfg.auth_tls, tls=tls)
    if listen and cfg.listen_tcp:
        await server.listen_tcp(host, cfg.tcp_port, auth=cfg.auth_tcp)
