"""Dev certificates and a dev token for the compose stack (`make certs`), in deploy/certs/.

Writes a CA (ca.crt), a server certificate for localhost, 127.0.0.1 and the compose service
names (server.crt/.key: the replicas and the load balancer), a client certificate
(client.crt/.key), tokens.yaml with one token's SHA-256 (the token itself is printed once and
stored nowhere) and grafana-admin-password (Grafana's admin password, also printed).
For development only: a real deployment brings its own CA and tokens.
Existing files are kept unless --force is given.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.certs import Authority  # noqa: E402  (shared with the security tests)

# "seqserve" is the nginx upstream name: the name the LB verifies the replicas against.
SERVICE_NAMES = ("lb", "seqserve", "seqserve-1", "seqserve-2")
DAYS = 90


def write_certs(out: Path) -> None:
    ca = Authority("seqserve dev CA", days=DAYS)
    (out / "ca.crt").write_bytes(ca.pem)
    ca.server("seqserve", dns_names=SERVICE_NAMES).write(out, "server")
    ca.client("seqserve dev client").write(out, "client")
    # Readable by the containers' unprivileged users (another uid than the host's): dev only.
    for key in out.glob("*.key"):
        key.chmod(0o644)


def write_tokens(path: Path) -> str:
    """A fresh token allowed every model and scope; only its SHA-256 is written."""
    token = secrets.token_urlsafe(32)
    entry = {
        "name": "dev",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "models": ["*"],
        "scopes": ["infer", "read", "admin"],
    }
    path.write_text(yaml.safe_dump({"tokens": [entry]}, sort_keys=False))
    path.chmod(0o644)
    return token


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
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_certs(out)
    token = write_tokens(out / "tokens.yaml")
    password = write_password(out / "grafana-admin-password")
    print(f"wrote dev certificates, tokens.yaml and grafana-admin-password to {out}")
    print(f"dev token (shown once, only its SHA-256 is stored): {token}")
    print(f"Grafana: user admin, password {password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
