"""Write a stand-in model repository for the stack test when models/ has no trained model yet.

`iris_classifier` here is an untrained, seeded Dense 4 -> 3 softmax model with the bundled one's
interface (float32 [batch, 4] in, 3 class probabilities out): enough to prove the deployment
(image, load balancer, metrics), not the model.
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


def main(out: Path) -> None:
    keras.utils.set_random_seed(6)
    inp = keras.Input((4,), name="measurements")
    hidden = layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, layers.Dense(3, activation="softmax")(hidden))
    root = out / "iris_classifier"
    (root / "1").mkdir(parents=True, exist_ok=True)
    model.save(root / "1" / "model.keras")
    config = {
        "description": "stack-test stand-in for iris_classifier (untrained)",
        "mode": "one_to_one",
        "labels": ["setosa", "versicolor", "virginica"],
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/.stack-models"))
