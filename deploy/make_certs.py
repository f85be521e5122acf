"""Dev certificates and a dev token (`make certs`), and the certificate code the tests share.

As a program it writes, into deploy/certs/: a CA (ca.crt), a server certificate for localhost,
127.0.0.1 and the compose service names (server.crt/.key: the replicas and the load balancer), a
client certificate (client.crt/.key), tokens.yaml with one token's SHA-256 (the token itself is
printed once and stored nowhere), grafana-admin-password (Grafana's admin password, also
printed) and session.keys (the session key every replica shares: resume tokens and the shared
session store). Existing files are kept unless --force is given; a missing session.keys is
added to an existing directory.
As a module (`from deploy.make_certs import Authority`), the security tests make fresh CAs and
certificates with the same code every run. For development only: a real deployment brings its
own CA and tokens.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from seqserve_server.core.session_tokens import SessionKeys

ROOT = Path(__file__).resolve().parents[1]
# "seqserve" is the nginx upstream name: the name the LB verifies the replicas against.
SERVICE_NAMES = ("lb", "seqserve", "seqserve-1", "seqserve-2")
DAYS = 90


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


# -- `make certs` ------------------------------------------------------------------------------


def write_certs(out: Path) -> None:
    ca = Authority("seqserve dev CA", days=DAYS)
    (out / "ca.crt").write_bytes(ca.pem)
    ca.server("seqserve", dns_names=SERVICE_NAMES).write(out, "server")
    ca.client("seqserve dev client").write(out, "client")
    # Readable by the containers' unprivileged users (another uid than the host's): dev only.
    for key in out.glob("*.key"):
        key.chmod(0o644)


@dataclass(frozen=True)
class Grant:
    """One token and what it may do; the tokens file holds its SHA-256, never the token."""

    name: str
    models: tuple[str, ...] = ("*",)
    scopes: tuple[str, ...] = ("infer", "read", "admin")
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def entry(self) -> dict[str, object]:
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        return {"name": self.name, "sha256": digest, "models": [*self.models],
                "scopes": [*self.scopes]}  # fmt: skip


def write_tokens(path: Path, grants: list[Grant]) -> None:
    path.write_text(yaml.safe_dump({"tokens": [g.entry() for g in grants]}, sort_keys=False))
    path.chmod(0o644)


def write_session_keys(path: Path) -> None:
    """A session key file with one new key (`--session-key-file`): every replica mounts the same
    one, so any of them opens the tokens the others seal."""
    path.write_text(
        "# seqserve session keys (dev): the first seals, every one opens. To rotate, put a new\n"
        "# key first and keep this one until its tokens expired.\n"
        f"{SessionKeys.generate_line()}\n"
    )
    path.chmod(0o644)  # the containers' user reads it (another uid than the host's): dev only


def write_password(path: Path) -> str:
    password = secrets.token_urlsafe(18)
    path.write_text(password)
    path.chmod(0o644)
    return password


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "deploy" / "certs")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args()
    out: Path = args.out
    if (out / "ca.crt").exists() and not args.force:
        print(f"{out} already has certificates; --force replaces them (and the token)")
        if not (out / "session.keys").exists():
            write_session_keys(out / "session.keys")
            print(f"wrote session.keys to {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_certs(out)
    dev = Grant("dev")  # every model, every scope
    write_tokens(out / "tokens.yaml", [dev])
    password = write_password(out / "grafana-admin-password")
    write_session_keys(out / "session.keys")
    print(f"wrote dev certificates, tokens.yaml, grafana-admin-password and session.keys to {out}")
    print(f"dev token (shown once, only its SHA-256 is stored): {dev.token}")
    print(f"Grafana: user admin, password {password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
