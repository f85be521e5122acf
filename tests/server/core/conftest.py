"""The core in-process: a repository of a few fixture-zoo models loaded as the server loads them,
its sessions prepared. No server process, no gRPC: numpy in, numpy out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from seqserve_server.core.compute_threads import ModelThreads
from seqserve_server.core.inference import InferenceService
from seqserve_server.core.observer import ModelObservers
from seqserve_server.core.repository import ModelRepository
from seqserve_server.core.sessions import SessionManager
from tests.support.model_zoo import write_repository

# one-to-one with labels, many-to-one with labels, aligned, unaligned (encoder-decoder)
MODELS = {"iris_like", "classifier", "aligned", "enc_dec"}
MAX_SESSIONS = 2  # the classifier's, so that crossing it is cheap


@pytest.fixture(scope="session")
def core_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_repository(tmp_path_factory.mktemp("core-models"), MODELS)
    config = root / "classifier" / "config.yaml"
    stated = yaml.safe_load(config.read_text()) | {"max_sessions": MAX_SESSIONS}
    config.write_text(yaml.safe_dump(stated))
    return root


@pytest.fixture(scope="session")
def threads() -> Iterator[ModelThreads]:
    pool = ModelThreads(1)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="session")
def core_repository(core_root: Path) -> ModelRepository:
    repo = ModelRepository(core_root)
    repo.scan()
    repo.load_all()
    return repo


@pytest.fixture(scope="session")
def sessions(core_repository: ModelRepository, threads: ModelThreads) -> SessionManager:
    manager = SessionManager(core_repository, threads, ModelObservers())
    manager.prepare_all()
    return manager


@pytest.fixture
def inference(
    core_repository: ModelRepository, threads: ModelThreads, sessions: SessionManager
) -> Iterator[InferenceService]:
    """A fresh service per test: its batchers belong to the test's own event loop."""
    service = InferenceService(core_repository, threads, step_programs=sessions.incremental_program)
    yield service
    service.close()


@pytest.fixture(scope="session")
def keras_model(core_root: Path) -> Callable[[str], Any]:
    """The same file loaded by Keras itself: what every output is compared with."""
    import keras

    @functools.cache
    def load(name: str) -> Any:
        path = core_root / name / "1" / "model.keras"
        return keras.saving.load_model(path, safe_mode=True, compile=False)

    return load
