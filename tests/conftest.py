"""Shared fixtures: a throwaway model repository and the real server serving it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from seqserve_client import SeqServeClient
from tests.support.bundled import MODELS
from tests.support.model_zoo import write_repository
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model only (`aligned`): for the tests that start servers of their own."""
    return write_repository(tmp_path_factory.mktemp("small"), only={"aligned"})


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ServerProcess]:
    with served(repository, "--max-message-bytes", str(4 * 1024 * 1024)) as process:
        yield process


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def reference(repository: Path) -> Callable[..., Any]:
    """The same files loaded in-process: what every served output is checked against."""
    return loader(repository)


@pytest.fixture(scope="session")
def bundled_server() -> Iterator[ServerProcess]:
    """The bundled models as `make serve` serves them (one server for every test using them)."""
    with served(MODELS) as process:
        yield process


@pytest.fixture(scope="session")
def bundled(bundled_server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(bundled_server.target, timeout=60) as c:
        yield c
