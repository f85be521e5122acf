"""The in-process reference: the served files loaded as Keras loads them, to compare with."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any


def loader(repository: Path) -> Callable[..., Any]:
    """`load(name, version=0)`: that model file in safe mode; version 0 is the newest, as the
    server serves it. Each file loads once."""
    import keras

    @functools.cache
    def load(name: str, version: int = 0) -> Any:
        version = version or max(int(p.name) for p in (repository / name).iterdir() if p.is_dir())
        path = repository / name / str(version) / "model.keras"
        return keras.saving.load_model(path, safe_mode=True, compile=False)

    return load
