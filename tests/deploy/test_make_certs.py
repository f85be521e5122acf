"""`make certs` (deploy/make_certs.py): the dev files the compose stack mounts at /certs."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import sys
from pathlib import Path

import yaml
from cryptography import x509

from seqserve_server.core.session_tokens import SessionKeys

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "make_certs.py"


def run(out: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


def test_make_certs_writes_what_compose_mounts(tmp_path: Path) -> None:
    stdout = run(tmp_path)
    token = stdout.split("dev token (shown once, only its SHA-256 is stored): ")[1].split()[0]
    for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"):
        assert (tmp_path / name).read_bytes().startswith(b"-----BEGIN"), name
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "lb", "seqserve", "seqserve-1", "seqserve-2"} <= set(
        sans.get_values_for_type(x509.DNSName)
    )
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    (entry,) = yaml.safe_load((tmp_path / "tokens.yaml").read_text())["tokens"]
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (tmp_path / "tokens.yaml").read_text()
    assert (tmp_path / "grafana-admin-password").read_text()
    assert len(SessionKeys.from_file(tmp_path / "session.keys").key_ids) == 1


def test_make_certs_adds_a_missing_session_key_to_existing_certificates(tmp_path: Path) -> None:
    run(tmp_path)
    (tmp_path / "session.keys").unlink()
    first = (tmp_path / "ca.crt").read_bytes()
    run(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == first
    SessionKeys.from_file(tmp_path / "session.keys")


def test_make_certs_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    run(tmp_path)
    first = (tmp_path / "ca.crt").read_bytes()
    assert "already has certificates" in run(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == first
    run(tmp_path, "--force")
    assert (tmp_path / "ca.crt").read_bytes() != first
