"""Retrain every bundled model, rewrite its config.yaml and MODEL_CARD.md, and models/README.md.

Run from the repository root: `python -m models.training.train_all [name ...]` (or `make
models`); names retrain only those models (the README table is rebuilt from every card).
Deterministic on CPU (seeded, op determinism on); exits non-zero if any quality gate fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # CPU only: determinism and equal timings
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys
import time
from functools import partial

import keras
import yaml

from models.cards import card_metadata
from models.training import (
    co2_forecast_13w,
    co2_forecast_13w_cropped,
    co2_interval,
    co2_next_week,
    digit_classifier,
    digit_generator,
    iris_classifier,
    word_language,
    word_language_text,
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
    "word_language_text": "wordfreq word lists",
    "co2_interval": "statsmodels co2 (weekly)",
}


ORDER = list(DATA_NAMES)  # training order: the generator is judged by the digit classifier


def train(names: list[str]) -> list[Artifact]:
    """Train the named models in ORDER; the generator is judged by the freshly trained digit
    classifier and word_language_text wraps the freshly trained word_language (the shipped
    ones when retrained alone)."""
    simple = {
        "iris_classifier": iris_classifier.train,
        "digit_classifier": digit_classifier.train,
        "co2_next_week": co2_next_week.train,
        "co2_forecast_13w": co2_forecast_13w.train,
        "co2_forecast_13w_cropped": co2_forecast_13w_cropped.train,
        "word_language": word_language.train,
        "co2_interval": co2_interval.train,
    }
    artifacts: dict[str, Artifact] = {}

    def fresh(name: str) -> keras.Model:
        trained = artifacts.get(name)
        return trained.model if trained else shipped_model(name)

    for name in (n for n in ORDER if n in names):
        if name == "digit_generator":
            artifacts[name] = timed(partial(digit_generator.train, fresh("digit_classifier")))
        elif name == "word_language_text":
            artifacts[name] = timed(partial(word_language_text.train, fresh("word_language")))
        else:
            artifacts[name] = timed(simple[name])
    return list(artifacts.values())


def shipped_model(name: str) -> keras.Model:
    """A bundled model as committed (safe mode, as the server loads it)."""
    return keras.saving.load_model(MODELS_DIR / name / "1" / "model.keras", safe_mode=True)


def readme(names: list[str]) -> str:
    """models/README.md with the scores recorded in the models' cards (written just before by
    `make models`; read from the cards so the table always matches the shipped files)."""
    rows = ""
    for name in names:
        ev = card_metadata(MODELS_DIR / name)["evaluation"]
        mode = yaml.safe_load((MODELS_DIR / name / "config.yaml").read_text())["mode"]
        rows += (
            f"| [`{name}`]({name}/MODEL_CARD.md) | `{mode}` | {DATA_NAMES[name]} | "
            f"{ev['metric']} | {ev['score']:.3f} | {ev['baseline']:.3f} "
            f"({ev['baseline_name']}) | {ev['gate']} |\n"
        )
    return f"""# Bundled models

Pretrained Keras 3 recurrent models served by seqserve, one per sequence mode, plus a token-id
model (`word_language`: integer character ids into an `Embedding`), the same network taking the
word as text (`word_language_text`: the tokenizer inside) and a model with two named outputs
(`co2_interval`: a next-week forecast and its 80% prediction interval). Each directory
holds `config.yaml` (what the server reads: mode, labels, limits), `1/model.keras` (version 1)
and `MODEL_CARD.md` (front matter: the measured evaluation, input/output meaning and, for
`word_language`, the vocabulary; then data, split, metric, baselines, units). All
preprocessing is inside the models with built-in layers: clients send raw values (for
`word_language`, character ids by the mapping in its card's front matter under `vocabulary`),
and every file loads with `keras.saving.load_model(path, safe_mode=True)`.

Scores are on held-out data the model never trained on (lower is better for rmse and mae):

| model | mode | data | metric | score | baseline | gate |
|---|---|---|---|---|---|---|
{rows}
## Retrain

    make models        # = .venv/bin/python -m models.training.train_all
    .venv/bin/python -m models.training.train_all co2_interval   # only the named models

Retrains the models deterministically on CPU (about 45 minutes for all on 2 busy cores, about
32 of them `word_language`; seeded with deterministic kernels, so two runs in one environment give
identical weights and `.keras` bytes), rewrites each retrained model's `config.yaml` and
`MODEL_CARD.md` and this file (its table from every card), and exits non-zero if a quality gate
fails. `tests/models/test_model_quality.py` reloads the shipped files and re-checks every gate.
Across library versions the weights are not identical: retrained on 2026-11-30 with the then
current packages, the six earlier models came out slightly different from their committed files
(e.g. `co2_next_week` RMSE 0.370 against the committed 0.378; every gate still passed), so each
committed file is that of the run that wrote its card (models added later were trained alone,
by name).
Code: `models/training/` (`data.py` datasets and baselines, `evaluate.py` gates, `common.py`
seeding and file writing, one module per model).

## Examples

With a server running (`make serve`), each model has a client example using real held-out
inputs:

    .venv/bin/python -m models.examples.<model_name> --target 127.0.0.1:8500
    .venv/bin/python -m models.examples.word_language bonjour thanks Straße   # any words, as text
    .venv/bin/python -m models.examples.co2_interval   # Predict and a session, two outputs
"""


def main(argv: list[str]) -> int:
    """Train the named models (all without names), write their artifacts and the README, print a
    summary; 1 if any gate failed or a name is unknown."""
    unknown = sorted(set(argv) - set(ORDER))
    if unknown:
        print(f"unknown model(s) {unknown}; known: {ORDER}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    artifacts = train(argv or ORDER)
    for a in artifacts:
        path = write_artifact(a)
        ev = a.evaluation
        print(
            f"{a.name:26s} {ev.metric} {ev.score:.4f} vs {ev.baseline_name} {ev.baseline:.4f} "
            f"[{'PASS' if ev.passed else 'FAIL'}] {a.seconds:.0f}s {path.stat().st_size} B"
        )
    total = time.perf_counter() - start
    (MODELS_DIR / "README.md").write_text(readme(ORDER))
    print(f"total {total:.0f}s")
    return 0 if all(a.evaluation.passed for a in artifacts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
