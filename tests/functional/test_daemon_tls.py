"""The TLS listener against the stock virsh: client certificates checked against the CA,
the CRL and tls_allowed_dn_list; libvirt's confirmation byte; bad credentials stop the
daemon at start; a client that never speaks TLS is dropped after handshake_timeout.

Certificates are made at test time (tests/functional/tls_pki.py); all traffic is loopback.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyvirt.client import sync as pyvirt_client
from pyvirt.client.error import libvirtError
from tests.functional.daemon_util import DaemonHandle, running_daemon
from tests.functional.test_daemon_abuse import free_tcp_port
from tests.functional.tls_pki import ALLOWED_DN_GLOB, NOT_ALLOWED_DN, PKI, make_pki

pytestmark = pytest.mark.skipif(shutil.which("virsh") is None, reason="needs the stock virsh")

HANDSHAKE_TIMEOUT_S = 3
VIRSH_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def pki() -> Iterator[PKI]:
    root = Path(tempfile.mkdtemp(prefix="pvtls-", dir="/tmp"))
    try:
        yield make_pki(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tls_conf(pki: PKI, port: int, **extra: Any) -> dict[str, Any]:
    return {"listen_tls": 1, "listen_tcp": 0, "listen_addr": "127.0.0.1",
            "tls_port": str(port), "ca_file": str(pki.ca), "crl_file": str(pki.crl),
            "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
            "tls_allowed_dn_list": [ALLOWED_DN_GLOB],
            "handshake_timeout": HANDSHAKE_TIMEOUT_S, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def tls_daemon(pki: PKI) -> Iterator[tuple[DaemonHandle, int]]:
    port = free_tcp_port()
    with running_daemon(emulator="fake", conf=tls_conf(pki, port), listen=True) as daemon:
        yield daemon, port


def tls_uri(port: int, pkipath: Path, extra: str = "") -> str:
    return f"qemu+tls://127.0.0.1:{port}/system?pkipath={pkipath}{extra}"


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=VIRSH_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip


def wait_log(daemon: DaemonHandle, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in daemon.daemon_log().splitlines() if text in line]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r}: {daemon.daemon_log()[-3000:]}")


@pytest.mark.skipif(shutil.which("virt-pki-query-dn") is None, reason="needs virt-pki-query-dn")
def test_dn_in_the_refusal_is_what_virt_pki_query_dn_prints(pki: PKI) -> None:
    printed = subprocess.run(["virt-pki-query-dn",
                              str(pki.client_dir("not-allowed") / "clientcert.pem")],
                             capture_output=True, text=True, timeout=10, check=True)
    assert printed.stdout.strip() == NOT_ALLOWED_DN  # the DN the refusal test expects


def test_stock_virsh_with_a_good_certificate_lists_domains(
        pki: PKI, tls_daemon: tuple[DaemonHandle, int]) -> None:
    _, port = tls_daemon
    result = virsh(tls_uri(port, pki.client_dir("good")), "list", "--all")
    assert result.returncode == 0, result.stderr
    assert "Id" in result.stdout and "Name" in result.stdout
    uri = virsh(tls_uri(port, pki.client_dir("good")), "uri")
    assert uri.returncode == 0, uri.stderr


@pytest.mark.parametrize(("client", "client_error", "daemon_reason"), [
    # the handshake fails on the server's check: the client reads no confirmation
    ("other-ca", "Unable to read TLS confirmation",
     "certificate verify failed: unable to get local issuer certificate"),
    ("revoked", "Unable to read TLS confirmation",
     "certificate verify failed: certificate revoked"),
    ("no-cert", "Unable to read TLS confirmation", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    # the handshake succeeds; the DN check fails and the server closes without the byte
    ("not-allowed", "server verification (of our certificate or IP address) failed",
     f"Client's Distinguished Name '{NOT_ALLOWED_DN}' is not on tls_allowed_dn_list"),
])  # fmt: skip
def test_stock_virsh_with_a_bad_certificate_is_refused_and_logged(
        pki: PKI, tls_daemon: tuple[DaemonHandle, int], client: str, client_error: str,
        daemon_reason: str) -> None:  # fmt: skip
    daemon, port = tls_daemon
    result = virsh(tls_uri(port, pki.client_dir(client)), "list", "--all")
    assert result.returncode != 0
    assert client_error in result.stderr
    line = wait_log(daemon, daemon_reason)
    assert "TLS client 127.0.0.1:" in line and "refused" in line


def test_a_client_that_never_speaks_tls_does_not_hang_the_daemon(
        pki: PKI, tls_daemon: tuple[DaemonHandle, int]) -> None:
    daemon, port = tls_daemon
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(b"\x00\x00\x00\x1c plain libvirt RPC, not TLS")
        began = time.monotonic()
        # the daemon serves others while the idle one sits in its handshake
        good = virsh(tls_uri(port, pki.client_dir("good")), "list", "--all")
        assert good.returncode == 0, good.stderr
        assert time.monotonic() - began < HANDSHAKE_TIMEOUT_S
        answer = plain.recv(4096)
        assert answer == b"" or answer.startswith(b"\x15")  # EOF or a TLS alert record
        assert idle.recv(1) == b""  # closed by the daemon, not by us
        assert time.monotonic() - began < HANDSHAKE_TIMEOUT_S + 3
    wait_log(daemon, "handshake failed: WRONG_VERSION_NUMBER")
    wait_log(daemon, f"taking longer than {HANDSHAKE_TIMEOUT_S} seconds")


@pytest.mark.parametrize(("change", "message"), [
    ({"key_file": "/nonexistent/serverkey.pem"},
     "Cannot read private key '/nonexistent/serverkey.pem': it does not exist"),
    ({"ca_file": "/nonexistent/cacert.pem"},
     "Cannot read CA certificate '/nonexistent/cacert.pem': it does not exist"),
    ({"crl_file": "/nonexistent/cacrl.pem"},
     "Cannot read CA revocation list '/nonexistent/cacrl.pem'"),
    ({"tls_priority": "SECURE256"}, "tls_priority: GnuTLS priority 'SECURE256' has no"),
])  # fmt: skip
def test_bad_tls_settings_stop_the_daemon_at_start(
        pki: PKI, change: dict[str, Any], message: str) -> None:
    conf = tls_conf(pki, free_tcp_port(), **change)
    with pytest.raises(AssertionError, match="pyvirtd exited") as failure, \
            running_daemon(emulator="fake", conf=conf, listen=True):
        pass
    assert message in str(failure.value)


def test_without_listen_there_is_no_tls_listener(pki: PKI) -> None:
    port = free_tcp_port()
    conf = tls_conf(pki, port, key_file="/nonexistent/serverkey.pem")
    # no --listen: as libvirtd, no network listener, so the bad key is not even read
    with running_daemon(emulator="fake", conf=conf), pytest.raises(OSError), \
            socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# -- pyvirt's own client and pyvirsh ------------------------------------------------------------
def pyvirsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "pyvirsh"), "-c", uri, *args],
                          capture_output=True, text=True, timeout=VIRSH_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_pyvirt_client_over_tls(pki: PKI, tls_daemon: tuple[DaemonHandle, int]) -> None:
    _, port = tls_daemon
    conn = pyvirt_client.open(tls_uri(port, pki.client_dir("good")))
    try:
        assert conn.listAllDomains() == []
    finally:
        conn.close()


#: libvirt's two messages for a refusal: the alert, or the close without the byte (which
#: one a client sees first for a handshake-time refusal depends on timing)
REFUSED = re.compile(r"Unable to read TLS confirmation|server verification \(of our "
                     r"certificate or IP address\) failed")


@pytest.mark.parametrize("client", ["other-ca", "revoked", "no-cert", "not-allowed"])
def test_pyvirt_client_with_a_bad_certificate_is_refused(
        pki: PKI, tls_daemon: tuple[DaemonHandle, int], client: str) -> None:
    _, port = tls_daemon
    with pytest.raises(libvirtError, match=REFUSED):
        pyvirt_client.open(tls_uri(port, pki.client_dir(client)))


def test_pyvirsh_over_tls(pki: PKI, tls_daemon: tuple[DaemonHandle, int]) -> None:
    _, port = tls_daemon
    good = pyvirsh(tls_uri(port, pki.client_dir("good")), "list", "--all")
    assert good.returncode == 0, good.stderr
    assert "Id" in good.stdout
    refused = pyvirsh(tls_uri(port, pki.client_dir("not-allowed")), "list", "--all")
    assert refused.returncode != 0
    assert "server verification (of our certificate or IP address) failed" in refused.stderr


def test_client_checks_the_server_name_unless_no_verify(pki: PKI) -> None:
    port = free_tcp_port()
    conf = tls_conf(pki, port, cert_file=str(pki.misnamed_server_cert),
                    key_file=str(pki.misnamed_server_key))
    with running_daemon(emulator="fake", conf=conf, listen=True):
        misnamed = tls_uri(port, pki.client_dir("good"))
        with pytest.raises(libvirtError, match="Unable to verify TLS peer"):
            pyvirt_client.open(misnamed)
        stock = virsh(misnamed, "uri")
        assert stock.returncode != 0 and "127.0.0.1" in stock.stderr, stock.stderr
        conn = pyvirt_client.open(misnamed + "&no_verify=1")
        try:
            assert conn.listAllDomains() == []
        finally:
            conn.close()
        unchecked = virsh(misnamed + "&no_verify=1", "uri")
        assert unchecked.returncode == 0, unchecked.stderr


# -- python3-libvirt ------------------------------------------------------------------------
SYSTEM_PYTHON = "/usr/bin/python3"
LIBVIRT_PROBE = """
import sys, libvirt
libvirt.registerErrorHandler(lambda ctx, err: None, None)
try:
    conn = libvirt.open(sys.argv[1])
except libvirt.libvirtError as exc:
    print("refused:", exc)
    sys.exit(1)
print("domains:", len(conn.listAllDomains()))
conn.close()
"""


def python_libvirt(uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEM_PYTHON, "-I", "-c", LIBVIRT_PROBE, uri], capture_output=True,
                          text=True, timeout=VIRSH_TIMEOUT_S)  # fmt: skip


@pytest.mark.skipif(subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import libvirt"],
                                   capture_output=True).returncode != 0,
                    reason="needs python3-libvirt")  # fmt: skip
def test_python3_libvirt_over_tls(pki: PKI, tls_daemon: tuple[DaemonHandle, int]) -> None:
    _, port = tls_daemon
    good = python_libvirt(tls_uri(port, pki.client_dir("good")))
    assert good.returncode == 0 and "domains: 0" in good.stdout, good.stdout + good.stderr
    for client in ("revoked", "not-allowed"):
        refused = python_libvirt(tls_uri(port, pki.client_dir(client)))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert REFUSED.search(refused.stdout), refused.stdout


@pytest.mark.skipif(shutil.which("virt-admin") is None, reason="needs the stock virt-admin")
def test_virt_admin_lists_a_tls_client_as_tls(pki: PKI, tls_daemon: tuple[DaemonHandle, int],
                                              ) -> None:
    daemon, port = tls_daemon
    conn = pyvirt_client.open(tls_uri(port, pki.client_dir("good")))
    try:
        listed = subprocess.run(["virt-admin", "-c", daemon.admin_uri, "srv-clients-list",
                                 "libvirtd"], capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        assert any(line.split()[1:2] == ["tls"] for line in listed.stdout.splitlines()
                   if line.strip() and line.split()[0].isdigit()), listed.stdout
    finally:
        conn.close()
