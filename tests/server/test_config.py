"""Settings come from flags or SEQSERVE_* variables (one definition, config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import CliApp

from seqserve_server.config import Settings


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_PORT", "9100")
    monkeypatch.setenv("SEQSERVE_MODEL_REPOSITORY", "/srv/models")
    settings = CliApp.run(Settings, cli_args=["--metrics-port", "9101"])
    assert (settings.port, settings.metrics_port) == (9100, 9101)
    assert settings.model_repository == Path("/srv/models")
    assert CliApp.run(Settings, cli_args=["--port", "9200"]).port == 9200


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
        (["--metrics-tls-client-ca", "ca.pem"], "--metrics-tls-client-ca needs --metrics-tls-cert"),
        (["--metrics-tls-cert", "c.pem"], "go together"),
    ],
)
def test_half_a_tls_setting_is_refused(flags: list[str], says: str) -> None:
    """A certificate without its key, or a client CA without a certificate, is a mistake: the
    server must not quietly serve plaintext."""
    with pytest.raises(ValueError, match=says):
        CliApp.run(Settings, cli_args=flags)
