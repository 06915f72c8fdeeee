"""pyvirt.rpc.tls without a network: DN text, allow-list globs, priority mapping, PKI paths."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pyvirt.rpc.tls import (
    PRIORITY_MAP,
    ServerTLS,
    TLSConfigError,
    check_priority,
    dn_allowed,
    locate_client_pki,
    server_tls,
    subject_dn,
)
from tests.functional.tls_pki import make_pki

#: getpeercert()'s form of a subject, and what virt-pki-query-dn prints for that certificate
#: (checked with certtool and virt-pki-query-dn 9.0)
PEERCERT = {"subject": (
    (("countryName", "GB"),), (("organizationName", "Red, Hat+Co"),),
    (("organizationalUnitName", "a=b"),), (("commonName", " lead#x"),),
    (("domainComponent", "example"),),
)}  # fmt: skip
GNUTLS_DN = "C=GB,O=Red\\, Hat\\+Co,OU=a=b,CN=\\ lead#x,DC=example"


def test_subject_dn_is_written_as_virt_pki_query_dn_prints_it() -> None:
    assert subject_dn(PEERCERT) == GNUTLS_DN
    plain = {"subject": ((("countryName", "GB"),), (("stateOrProvinceName", "London"),),
                         (("localityName", "London"),), (("organizationName", "Red Hat"),),
                         (("commonName", "client1"),))}  # fmt: skip
    assert subject_dn(plain) == "C=GB,ST=London,L=London,O=Red Hat,CN=client1"


@pytest.mark.parametrize(("patterns", "allowed"), [
    (["C=GB,ST=London,L=London,O=Red Hat,CN=client1"], True),
    (["C=GB,*"], True),
    (["*CN=client?"], True),
    (["C=GB,ST=London,L=London,O=Red Hat,CN=client"], False),  # whole-string match
    (["c=gb,*"], False),  # case-sensitive
    ([], False),
])  # fmt: skip
def test_allow_list_entries_are_shell_globs(patterns: list[str], allowed: bool) -> None:
    assert dn_allowed("C=GB,ST=London,L=London,O=Red Hat,CN=client1", patterns) is allowed


def test_refusal_names_the_dn_and_applies_only_with_a_list() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert ServerTLS(ctx, True, None).refusal(PEERCERT) is None
    assert ServerTLS(ctx, True, (GNUTLS_DN,)).refusal(PEERCERT) is None
    refusal = ServerTLS(ctx, True, ("C=FR,*",)).refusal(PEERCERT)
    assert refusal is not None and GNUTLS_DN in refusal
    assert ServerTLS(ctx, True, ("*",)).refusal(None) == "no client certificate"


def test_only_mapped_priorities_are_accepted() -> None:
    assert check_priority("tls_priority", "NORMAL") == "NORMAL"
    assert PRIORITY_MAP["NORMAL:-VERS-ALL:+VERS-TLS1.3"][0] is ssl.TLSVersion.TLSv1_3
    for bad in ("SECURE256", "NORMAL:%COMPAT", "", "normal"):
        with pytest.raises(ValueError, match="has no OpenSSL mapping"):
            check_priority("tls_priority", bad)


def test_client_pki_search_follows_libvirt(tmp_path: Path) -> None:
    given = locate_client_pki(str(tmp_path))
    assert given.ca_file == f"{tmp_path}/cacert.pem"
    assert (given.cert_file, given.key_file) == (f"{tmp_path}/clientcert.pem",
                                                 f"{tmp_path}/clientkey.pem")
    root = locate_client_pki(None, uid=0, home=str(tmp_path))
    assert root.cert_file == "/etc/pki/libvirt/clientcert.pem"
    assert root.key_file == "/etc/pki/libvirt/private/clientkey.pem"
    user_dir = tmp_path / ".pki" / "libvirt"
    user_dir.mkdir(parents=True)
    (user_dir / "clientcert.pem").write_text("x")
    user = locate_client_pki(None, uid=1000, home=str(tmp_path))
    assert user.cert_file == str(user_dir / "clientcert.pem")
    assert user.ca_file == "/etc/pki/CA/cacert.pem"  # per file: the system CA as fallback


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSConfigError, match="Unable to set x509 key and certificate"):
        server_tls(cert_file=str(pki.server_cert), key_file=str(encrypted),
                   ca_file=str(pki.ca), crl_file=None, verify=True, allowed_dns=None,
                   priority="NORMAL")
