"""Certificates made on the spot with `cryptography`: CAs, a server certificate for
127.0.0.1/localhost (plus any extra DNS names), client certificates. The tests make fresh ones
every run; deploy/make_certs.py (`make certs`) uses the same code for the compose stack's dev
certificates. Never committed."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: bytes  # PEM
    key: bytes  # PEM

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """`<stem>.crt` and `<stem>.key` in `directory`."""
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


class Authority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, name: str, days: int = 1) -> None:
        self._days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = _base(self._name, self._key.public_key(), days).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        self._cert = builder.issuer_name(self._name).sign(self._key, hashes.SHA256())

    @property
    def pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def server(self, common_name: str = "localhost", dns_names: tuple[str, ...] = ()) -> Issued:
        """Valid for localhost, 127.0.0.1 and `dns_names` (e.g. compose service names)."""
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in ("localhost", *dns_names)]
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        return self._issue(common_name, ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, common_name: str = "client") -> Issued:
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(self, common_name: str, usage: x509.ObjectIdentifier, names: list) -> Issued:  # type: ignore[type-arg]
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _base(subject, key.public_key(), self._days)
            .issuer_name(self._name)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), pem_key)


def _base(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
