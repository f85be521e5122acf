"""TLS server credentials whose certificate files can be replaced while the server runs.

gRPC asks `CertificateFiles.fetch` before each new TLS handshake (`dynamic_ssl_server_credentials`,
which works with `grpc.aio` servers too); it answers None (keep the current certificate) unless a
file's modification time changed, then the new PEM files. Connections already open keep the
certificate they were opened with, so rotating a certificate drops no call and no session.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class CertificateFiles:
    """The server's certificate chain and key, and optionally the CA that signs its callers'
    certificates (mutual TLS: a caller without a certificate from that CA is refused)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.paths = tuple(p for p in (cert, key, client_ca) if p is not None)
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamps = self._mtimes()
        self.initial = self._configuration()  # unreadable files at start: fail loudly

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(p.stat().st_mtime_ns for p in self.paths)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        root = self.client_ca.read_bytes() if self.client_ca else None
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC per handshake: the new configuration once the files changed."""
        try:
            stamps = self._mtimes()
            if stamps == self._stamps:
                return None
            configuration = self._configuration()
        except OSError as exc:  # a file replaced non-atomically, caught mid-way: keep the old
            log.warning("TLS files unreadable, keeping the current certificate: %s", exc)
            return None
        self._stamps = stamps
        log.info("TLS certificate reloaded from %s", self.cert)
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=self.client_ca is not None
        )
