"""The benchmark's model repository: the reference workload and a sequence-output model.

Untrained but seeded: serving cost does not depend on the weights. The bundled trained models are
used instead when `models/<name>/1/model.keras` exists in the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class BenchModel:
    name: str
    steps: int
    features: int
    description: str


REFERENCE = BenchModel("lstm64_8x8", 8, 8, "LSTM(64) many-to-one, 8 steps x 8 features")
ALIGNED = BenchModel("gru32_aligned", 16, 4, "GRU(32) many-to-many aligned, 16 steps x 4 features")
MODELS = {m.name: m for m in (REFERENCE, ALIGNED)}


def _build(name: str):
    import keras
    from keras import layers

    keras.utils.set_random_seed(42)
    if name == REFERENCE.name:
        inp = keras.Input((None, 8))
        x = layers.LSTM(64)(inp)
        return keras.Model(inp, layers.Dense(10, activation="softmax")(x))
    if name == ALIGNED.name:
        inp = keras.Input((None, 4))
        x = layers.GRU(32, return_sequences=True)(inp)
        return keras.Model(inp, layers.Dense(2)(x))
    raise KeyError(name)


def write_repository(root: Path, names: list[str]) -> Path:
    for name in names:
        target = root / name / "1"
        target.mkdir(parents=True, exist_ok=True)
        _build(name).save(target / "model.keras")
    return root


if __name__ == "__main__":
    import sys

    write_repository(Path(sys.argv[1]), sys.argv[2:])
