"""Retrain every bundled model, rewrite its config.yaml and MODEL_CARD.md, and models/README.md.

Run from the repository root: `python -m models.training.train_all` (or `make models`).
Deterministic on CPU (seeded, op determinism on); exits non-zero if any quality gate fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # CPU only: determinism and equal timings
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys
import time

from models.training import (
    co2_forecast_13w,
    co2_forecast_13w_cropped,
    co2_next_week,
    digit_classifier,
    digit_generator,
    iris_classifier,
    word_language,
)
from models.training.common import MODELS_DIR, Artifact, timed, write_artifact

DATA_NAMES = {
    "iris_classifier": "sklearn iris",
    "digit_classifier": "sklearn digits",
    "digit_generator": "sklearn digits",
    "co2_next_week": "statsmodels co2 (weekly)",
    "co2_forecast_13w": "statsmodels co2 (weekly)",
    "co2_forecast_13w_cropped": "statsmodels co2 (weekly)",
    "word_language": "wordfreq word lists",
}


def train_everything() -> list[Artifact]:
    """Train in dependency order (the generator is judged by the freshly trained classifier)."""
    artifacts = [timed(iris_classifier.train)]
    classifier = timed(digit_classifier.train)
    artifacts += [classifier, timed(lambda: digit_generator.train(classifier.model))]
    for module in (co2_next_week, co2_forecast_13w, co2_forecast_13w_cropped):
        artifacts.append(timed(module.train))
    artifacts.append(timed(word_language.train))
    return artifacts


def readme(artifacts: list[Artifact]) -> str:
    """models/README.md with the measured scores."""
    rows = "".join(
        f"| [`{a.name}`]({a.name}/MODEL_CARD.md) | `{a.mode}` | {DATA_NAMES[a.name]} | "
        f"{a.evaluation.metric} | {a.evaluation.score:.3f} | {a.evaluation.baseline:.3f} "
        f"({a.evaluation.baseline_name}) | {a.evaluation.gate} |\n"
        for a in artifacts
    )
    return f"""# Bundled models

Pretrained Keras 3 recurrent models served by seqserve, one per sequence mode, plus a token-id
model (`word_language`: integer character ids into an `Embedding`). Each directory holds
`config.yaml` (what the server reads: mode, labels, limits), `1/model.keras` (version 1) and
`MODEL_CARD.md` (front matter: the measured evaluation, input/output meaning and, for
`word_language`, the vocabulary; then data, split, metric, baselines, units). All
preprocessing is inside the models with built-in layers: clients send raw values (for
`word_language`, character ids by the mapping in its card's front matter under `vocabulary`),
and every file loads with `keras.saving.load_model(path, safe_mode=True)`.

Scores are on held-out data the model never trained on (lower is better for rmse):

| model | mode | data | metric | score | baseline | gate |
|---|---|---|---|---|---|---|
{rows}
## Retrain

    make models        # = .venv/bin/python -m models.training.train_all

Retrains all models deterministically on CPU (about 10-15 minutes on 2 busy cores, 3 of them
`word_language`; identical weights and `.keras` bytes on every run), rewrites each
`config.yaml`, `MODEL_CARD.md` and this file, and exits non-zero if a quality gate fails.
`tests/models/test_model_quality.py` reloads the shipped files and re-checks every gate.
Code: `models/training/` (`data.py` datasets and baselines, `evaluate.py` gates, `common.py`
seeding and file writing, one module per model).

## Examples

With a server running (`make serve`), each model has a client example using real held-out
inputs:

    .venv/bin/python -m models.examples.<model_name> --target 127.0.0.1:8500
    .venv/bin/python -m models.examples.word_language bonjour thanks Straße   # any words
"""


def main() -> int:
    """Train, write artifacts and README, print a summary; 1 if any gate failed."""
    start = time.perf_counter()
    artifacts = train_everything()
    for a in artifacts:
        path = write_artifact(a)
        ev = a.evaluation
        print(
            f"{a.name:26s} {ev.metric} {ev.score:.4f} vs {ev.baseline_name} {ev.baseline:.4f} "
            f"[{'PASS' if ev.passed else 'FAIL'}] {a.seconds:.0f}s {path.stat().st_size} B"
        )
    total = time.perf_counter() - start
    (MODELS_DIR / "README.md").write_text(readme(artifacts))
    print(f"total {total:.0f}s")
    return 0 if all(a.evaluation.passed for a in artifacts) else 1


if __name__ == "__main__":
    sys.exit(main())
