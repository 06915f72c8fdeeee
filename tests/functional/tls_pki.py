"""A throw-away x509 PKI for TLS tests, made at test time with ``cryptography``.

:func:`make_pki` writes, under one directory: the CA (``cacert.pem``), a CRL that revokes
one client (``cacrl.pem``), the server pair for 127.0.0.1/localhost, and client directories
laid out as libvirt's ``pkipath=`` expects (``cacert.pem``, ``clientcert.pem``,
``clientkey.pem``): ``good``, ``other-ca`` (signed by an unrelated CA), ``revoked`` and
``not-allowed`` (a DN outside the allow-list the tests use: :data:`ALLOWED_DN_GLOB`), and
``no-cert`` (only the CA).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: what the tests put in tls_allowed_dn_list: the good, other-CA and revoked clients match
ALLOWED_DN_GLOB = "C=GB,ST=London,L=London,O=pyvirt tests,CN=client*"
GOOD_DN = "C=GB,ST=London,L=London,O=pyvirt tests,CN=client-good"
NOT_ALLOWED_DN = "C=GB,ST=London,L=London,O=pyvirt tests,CN=intruder"
CLIENTS = ("good", "other-ca", "revoked", "not-allowed", "no-cert")


@dataclass(frozen=True)
class PKI:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "cacert.pem"

    @property
    def crl(self) -> Path:
        return self.root / "cacrl.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "servercert.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "serverkey.pem"

    @property
    def misnamed_server_cert(self) -> Path:
        """Signed by the CA, but for another host name (no 127.0.0.1, no localhost)."""
        return self.root / "misnamed-servercert.pem"

    @property
    def misnamed_server_key(self) -> Path:
        return self.root / "misnamed-serverkey.pem"

    def client_dir(self, name: str) -> Path:
        return self.root / name


def _name(common_name: str, org: str = "pyvirt tests") -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "London"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "London"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2)))


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(common_name)
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: x509.Name,
          *, server: bool, names: tuple[str, ...] = ("localhost", "127.0.0.1"),
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(subject, ca.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [_general_name(name) for name in names]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(root: Path) -> PKI:
    pki = PKI(root)
    ca, ca_key = _ca("pyvirt test CA")
    other_ca, other_key = _ca("some other CA")
    _write(pki.ca, _pem(ca))
    server, server_key = _leaf(ca, ca_key, _name("localhost"), server=True)
    _write(pki.server_cert, _pem(server))
    _write(pki.server_key, _pem_key(server_key), 0o600)
    misnamed, misnamed_key = _leaf(ca, ca_key, _name("elsewhere.invalid"), server=True,
                                   names=("elsewhere.invalid",))
    _write(pki.misnamed_server_cert, _pem(misnamed))
    _write(pki.misnamed_server_key, _pem_key(misnamed_key), 0o600)
    subjects = {"good": _name("client-good"), "other-ca": _name("client-other"),
                "revoked": _name("client-revoked"), "not-allowed": _name("intruder")}
    revoked_serial = 0
    for client, subject in subjects.items():
        issuer, issuer_key = (other_ca, other_key) if client == "other-ca" else (ca, ca_key)
        cert, key = _leaf(issuer, issuer_key, subject, server=False)
        if client == "revoked":
            revoked_serial = cert.serial_number
        # the other-CA client trusts both CAs: libvirt's client checks its own certificate
        # against its cacert.pem before connecting, and the test is about the server's check
        trusted = _pem(ca) + (_pem(other_ca) if client == "other-ca" else b"")
        _write(pki.client_dir(client) / "cacert.pem", trusted)
        _write(pki.client_dir(client) / "clientcert.pem", _pem(cert))
        _write(pki.client_dir(client) / "clientkey.pem", _pem_key(key), 0o600)
    _write(pki.client_dir("no-cert") / "cacert.pem", _pem(ca))
    now = datetime.datetime.now(datetime.UTC)
    revoked = (x509.RevokedCertificateBuilder().serial_number(revoked_serial)
               .revocation_date(now - datetime.timedelta(minutes=5)).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - datetime.timedelta(minutes=10))
           .next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(revoked).sign(ca_key, hashes.SHA256()))
    _write(pki.crl, crl.public_bytes(serialization.Encoding.PEM))
    return pki
