"""Settings come from flags or SEQSERVE_* variables; modes come from shapes or the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import CliApp

from seqserve_server.config import Settings
from seqserve_server.core.errors import ModelLoadError
from seqserve_server.core.modes import Mode, infer_mode, resolve_mode


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_PORT", "9100")
    monkeypatch.setenv("SEQSERVE_MODEL_REPOSITORY", "/srv/models")
    settings = CliApp.run(Settings, cli_args=["--metrics-port", "9101"])
    assert (settings.port, settings.metrics_port) == (9100, 9101)
    assert settings.model_repository == Path("/srv/models")
    assert CliApp.run(Settings, cli_args=["--port", "9200"]).port == 9200


@pytest.mark.parametrize(
    ("inp", "out", "mode"),
    [
        ((4,), (3,), Mode.ONE_TO_ONE),
        ((4,), (8, 8), Mode.ONE_TO_MANY),
        ((None, 8), (10,), Mode.MANY_TO_ONE),
        ((None, 1), (None, 1), Mode.MANY_TO_MANY_ALIGNED),
        ((24, 2), (24, 2), Mode.MANY_TO_MANY_ALIGNED),
        ((52, 1), (13, 1), Mode.MANY_TO_MANY_UNALIGNED),
        ((None, 1), (13, 1), Mode.MANY_TO_MANY_UNALIGNED),
    ],
)
def test_infer_mode(inp: tuple, out: tuple, mode: Mode) -> None:
    assert infer_mode(inp, out) is mode


def test_stated_mode_must_fit_the_shapes() -> None:
    assert (
        resolve_mode(Mode.MANY_TO_MANY_UNALIGNED, (10, 1), (10, 1)) is Mode.MANY_TO_MANY_UNALIGNED
    )
    with pytest.raises(ModelLoadError, match="states mode many_to_one"):
        resolve_mode(Mode.MANY_TO_ONE, (None, 3), (None, 2))
    with pytest.raises(ModelLoadError, match="unsupported shapes"):
        infer_mode((8, 8, 1), (10,))
