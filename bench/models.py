"""The benchmark's model repositories, written as an operator would lay them out.

- `lstm64_8x8`: LSTM(64) -> Dense(10) softmax, many-to-one, 8 features, dynamic time axis (the
  reference workload at 8 steps; also the many-to-one model of the sessions bench).
- `lstm64_aligned`: LSTM(64, return_sequences) -> Dense(1), aligned, 8 features, dynamic time.
- `lstm64_aligned_recompute`: the same weights behind an identity `Permute((1, 2))`, a layer the
  session stepper has no incremental form for: sessions fall back to recompute (same math).
- bundled trained models, when `models/<name>/1/model.keras` exists: `digit_classifier`
  (many-to-one, 8x8) and `co2_next_week` (aligned, input (None, 1)).

Untrained built models are seeded: serving cost does not depend on the weights.
`write_repositories(new, old, names)` writes the same models twice: `new` with each model's
batching config, `old` with `max_batch_size: 1` (every item computed alone: no batching).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUNDLED = Path(__file__).resolve().parents[1] / "models"


# The sessions bench feeds prefixes of 10,000 steps (and recomputes or Predicts them): above the
# server's default max_sequence_length (4096), so these models' configs raise it.
LONG_PREFIX = 16_384


@dataclass(frozen=True)
class BenchModel:
    name: str
    steps: int  # Predict requests' sequence length
    features: int
    description: str
    output_shape: tuple[int, ...]  # per sequence, without batch (for the echo server)
    bundled: bool = False
    config: dict = field(default_factory=dict)

    def inputs(self, rng: np.random.Generator, seqs: int, steps: int | None = None) -> np.ndarray:
        """Realistic inputs [seqs, steps, features] (float32)."""
        steps = steps or self.steps
        if self.name == "digit_classifier":  # raw 8x8 pixel intensities 0..16
            return rng.integers(0, 17, size=(seqs, steps, self.features)).astype(np.float32)
        if self.name == "co2_next_week":  # weekly ppm: level + trend + season + noise
            t = np.arange(steps)[None, :] + rng.integers(0, 2000, size=(seqs, 1))
            ppm = 330 + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52.18)
            ppm = ppm + rng.normal(0, 0.3, size=ppm.shape)
            return ppm[..., None].astype(np.float32)
        return rng.uniform(0, 1, size=(seqs, steps, self.features)).astype(np.float32)


REFERENCE = BenchModel(
    "lstm64_8x8", 8, 8, "LSTM(64) many-to-one, 8 steps x 8 features", (10,),
    config={"labels": [str(i) for i in range(10)]},
)  # fmt: skip
ALIGNED = BenchModel(
    "lstm64_aligned", 16, 8, "LSTM(64) -> Dense(1) aligned, 8 features", (16, 1),
    config={"mode": "many_to_many_aligned", "max_sequence_length": LONG_PREFIX},
)  # fmt: skip
RECOMPUTE = BenchModel(
    "lstm64_aligned_recompute", 16, 8,
    "lstm64_aligned behind an identity Permute: sessions recompute", (16, 1),
    config={"mode": "many_to_many_aligned", "max_sequence_length": LONG_PREFIX},
)  # fmt: skip
DIGIT = BenchModel(
    "digit_classifier", 8, 8, "bundled, LSTM many-to-one, 8x8 image rows 0..16", (10,), True
)
CO2 = BenchModel("co2_next_week", 52, 1, "bundled, aligned, 52 weekly ppm values", (52, 1), True)
MODELS = {m.name: m for m in (REFERENCE, ALIGNED, RECOMPUTE, DIGIT, CO2)}


def bundled_available(model: BenchModel) -> bool:
    return (BUNDLED / model.name / "1" / "model.keras").is_file()


def available(models: list[BenchModel]) -> list[BenchModel]:
    return [m for m in models if not m.bundled or bundled_available(m)]


def _build(name: str):
    import keras
    from keras import layers

    keras.utils.set_random_seed(42)
    if name == REFERENCE.name:
        inp = keras.Input((None, 8))
        x = layers.LSTM(64)(inp)
        return keras.Model(inp, layers.Dense(10, activation="softmax")(x))
    if name in (ALIGNED.name, RECOMPUTE.name):
        inp = keras.Input((None, 8))
        x = layers.Permute((1, 2))(inp) if name == RECOMPUTE.name else inp
        x = layers.LSTM(64, return_sequences=True)(x)
        return keras.Model(inp, layers.Dense(1)(x))
    raise KeyError(name)


def _config_text(model: BenchModel, max_batch_size: int | None) -> str:
    import yaml

    if model.bundled:
        config = yaml.safe_load((BUNDLED / model.name / "config.yaml").read_text()) or {}
    else:
        config = dict(model.config)
    if max_batch_size is not None:
        config["max_batch_size"] = max_batch_size
    return yaml.safe_dump(config, sort_keys=False)


def write_repositories(new: Path, old: Path | None, names: list[str]) -> None:
    """`new`: production configs; `old`: the same model files with `max_batch_size: 1`."""
    built = {}
    for name in names:
        model = MODELS[name]
        target = new / name / "1"
        target.mkdir(parents=True, exist_ok=True)
        if model.bundled:
            shutil.copyfile(BUNDLED / name / "1" / "model.keras", target / "model.keras")
        else:
            keras_model = _build(name)
            if name == RECOMPUTE.name and ALIGNED.name in built:  # exactly the same weights
                keras_model.set_weights(built[ALIGNED.name].get_weights())
            built[name] = keras_model
            keras_model.save(target / "model.keras")
        (new / name / "config.yaml").write_text(_config_text(model, None))
        if old is not None:
            (old / name / "1").mkdir(parents=True, exist_ok=True)
            os.link(target / "model.keras", old / name / "1" / "model.keras")
            (old / name / "config.yaml").write_text(_config_text(model, 1))


def loaded_repository(names: list[str], prefix: str):
    """These models written to a temporary repository and loaded in-process, as the server
    loads them (TensorFlow imported on first use)."""
    import tempfile

    from seqserve_server.core.repository import ModelRepository

    root = Path(tempfile.mkdtemp(prefix=prefix))
    write_repositories(root, None, names)
    repository = ModelRepository(root)
    repository.scan()
    repository.load_all()
    return repository


if __name__ == "__main__":
    import sys

    old_dir = None if sys.argv[2] == "-" else Path(sys.argv[2])
    write_repositories(Path(sys.argv[1]), old_dir, sys.argv[3:])
