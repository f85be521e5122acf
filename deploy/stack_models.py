"""Write a stand-in model repository for the stack test when models/ has no trained model yet.

`iris_classifier` here is an untrained, seeded Dense 4 -> 3 softmax model with the bundled one's
interface (float32 [batch, 4] in, 3 class probabilities out), and `co2_next_week` an untrained
LSTM with the bundled one's (float32 [batch, weeks, 1] in, one value per week out, sessions):
enough to prove the deployment (image, load balancer, sequence routing, metrics), not the models.
Usage: python deploy/stack_models.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import yaml
from keras import layers


def save(out: Path, name: str, model: keras.Model, config: dict) -> None:
    root = out / name
    (root / "1").mkdir(parents=True, exist_ok=True)
    model.save(root / "1" / "model.keras")
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {root}")


def main(out: Path) -> None:
    keras.utils.set_random_seed(6)
    inp = keras.Input((4,), name="measurements")
    hidden = layers.Dense(8, activation="relu")(inp)
    iris = keras.Model(inp, layers.Dense(3, activation="softmax")(hidden))
    save(out, "iris_classifier", iris, {
        "description": "stack-test stand-in for iris_classifier (untrained)",
        "mode": "one_to_one",
        "labels": ["setosa", "versicolor", "virginica"],
    })  # fmt: skip
    weeks = keras.Input((None, 1), name="weeks")
    state = layers.LSTM(8, return_sequences=True)(layers.Rescaling(1 / 400)(weeks))
    co2 = keras.Model(weeks, layers.Dense(1)(state))
    save(out, "co2_next_week", co2, {
        "description": "stack-test stand-in for co2_next_week (untrained)",
        "mode": "many_to_many_aligned",
    })  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/.stack-models"))
