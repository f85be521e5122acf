"""Model directories written for in-process tests, and the repository loading them as the server
does (scan, then load every version)."""

from __future__ import annotations

from pathlib import Path

import keras

from seqserve_server.core.repository import ModelRepository
from tests.support.model_zoo import Builder


def save_model(version_dir: Path, build: Builder, seed: int) -> None:
    keras.utils.set_random_seed(seed)
    version_dir.mkdir(parents=True)
    build().save(version_dir / "model.keras")


def save_corrupt(version_dir: Path) -> None:
    version_dir.mkdir(parents=True)
    (version_dir / "model.keras").write_bytes(b"not a zip file")


def loaded(root: Path) -> ModelRepository:
    repository = ModelRepository(root)
    repository.scan()
    repository.load_all()
    return repository
