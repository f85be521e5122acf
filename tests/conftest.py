"""Shared fixtures: a throwaway model repository and the real server serving it."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from seqserve_client import SeqServeClient
from tests.fixture_models import write_repository
from tests.server_process import ServerProcess, start_server

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ServerProcess]:
    process = start_server(repository, "--max-message-bytes", str(4 * 1024 * 1024))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def reference(repository: Path) -> Callable[..., Any]:
    """The same files loaded in-process: what every served output is checked against."""
    import keras

    @functools.cache
    def load(name: str, version: int = 0) -> Any:
        """Version 0: the newest, as the server serves it."""
        version = version or max(int(p.name) for p in (repository / name).iterdir() if p.is_dir())
        path = repository / name / str(version) / "model.keras"
        return keras.saving.load_model(path, safe_mode=True, compile=False)

    return load
