"""Quality gates for the SHIPPED models in models/: reload each file in safe mode and re-score it.

No training here: the held-out data and gate logic come from models.training (the same code
that wrote the cards), so a stale or regressed model file fails this test.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from models.cards import CARD, split_card
from models.training import data, evaluate

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
NAMES = [
    "iris_classifier",
    "digit_classifier",
    "digit_generator",
    "co2_next_week",
    "co2_forecast_13w",
    "co2_forecast_13w_cropped",
    "word_language",
    "co2_interval",
]
MODES = {  # mode -> (input rank, output rank) including the batch axis and a feature axis
    "one_to_one": (2, 2),
    "one_to_many": (2, 3),
    "many_to_one": (3, 2),
    "many_to_many_aligned": (3, 3),
    "many_to_many_unaligned": (3, 3),
}
SCORERS = {
    "iris_classifier": lambda: evaluate.iris_classifier(load("iris_classifier")),
    "digit_classifier": lambda: evaluate.digit_classifier(load("digit_classifier")),
    "digit_generator": lambda: evaluate.digit_generator(
        load("digit_generator"), load("digit_classifier")
    ),
    "co2_next_week": lambda: evaluate.co2_next_week(load("co2_next_week")),
    "co2_forecast_13w": lambda: evaluate.co2_forecast(load("co2_forecast_13w")),
    "co2_forecast_13w_cropped": lambda: evaluate.co2_forecast(load("co2_forecast_13w_cropped")),
    "word_language": lambda: evaluate.word_language(load("word_language")),
    "co2_interval": lambda: evaluate.co2_interval(load("co2_interval")),
}


def model_path(name: str) -> Path:
    return MODELS_DIR / name / "1" / "model.keras"


@cache
def load(name: str) -> keras.Model:
    """Load exactly as the server does: no custom objects, safe mode on."""
    return keras.saving.load_model(model_path(name), safe_mode=True)


@cache
def config(name: str) -> dict:
    return yaml.safe_load((MODELS_DIR / name / "config.yaml").read_text())


@cache
def card(name: str) -> tuple[dict, str]:
    """The card's front matter (evaluation, vocabulary) and its markdown body."""
    return split_card((MODELS_DIR / name / CARD).read_text())


@pytest.mark.parametrize("name", NAMES)
def test_model_file_is_small_and_documented(name: str) -> None:
    assert model_path(name).stat().st_size < 2 * 1024 * 1024
    assert card(name)[1].startswith(f"# {name}")


@pytest.mark.parametrize("name", NAMES)
def test_config_mode_matches_shapes(name: str) -> None:
    cfg, model = config(name), load(name)
    assert cfg["mode"] in MODES
    in_shape = tuple(model.input.shape)
    token_ids = "int" in str(model.input.dtype)  # [batch, time] ids: no feature axis
    for out_shape in (tuple(out.shape) for out in model.outputs):  # every head fits the mode
        assert (len(in_shape) + token_ids, len(out_shape)) == MODES[cfg["mode"]]
        if cfg["mode"] == "many_to_many_aligned":
            assert in_shape[1] == out_shape[1]  # same (possibly dynamic) time axis
        if cfg["mode"] == "many_to_many_unaligned":
            assert in_shape[1] != out_shape[1]
    if "labels" in cfg:
        assert len(model.outputs) == 1 and len(cfg["labels"]) == model.outputs[0].shape[-1]


def test_digit_classifier_accepts_partial_sequences() -> None:
    assert load("digit_classifier").input.shape[1] is None


@cache
def score(name: str) -> evaluate.Evaluation:
    return SCORERS[name]()


@pytest.mark.parametrize("name", NAMES)
def test_held_out_gate(name: str) -> None:
    result = score(name)
    assert result.passed, f"{name}: {result.metric} {result.score:.4f} fails {result.gate}"
    recorded = card(name)[0]["evaluation"]
    assert recorded["score"] == pytest.approx(result.score, abs=1e-3), "MODEL_CARD.md is stale"
    assert recorded["baseline"] == pytest.approx(result.baseline, abs=1e-3)


def test_word_language_vocabulary_is_documented_and_matches_the_model() -> None:
    """Clients encode with the card's vocabulary: it must be the one the model was scored with."""
    vocab = card("word_language")[0]["vocabulary"]
    words = data.word_language_split()
    assert vocab["alphabet"] == words.alphabet
    assert (vocab["padding_id"], vocab["unknown_id"]) == (data.PAD_ID, data.UNKNOWN_ID)
    assert vocab["first_char_id"] == data.FIRST_CHAR_ID
    embedding = load("word_language").get_layer("char_embedding")
    assert embedding.input_dim == data.FIRST_CHAR_ID + len(words.alphabet)
    assert words.alphabet in card("word_language")[1]
    # Case-folded like wordfreq's lists, so capitals and "ß" map into the alphabet.
    assert (
        data.char_ids("Straße", words.alphabet).tolist()
        == data.char_ids("strasse", vocab["alphabet"]).tolist()
    )
    assert data.UNKNOWN_ID not in data.char_ids("Straße", words.alphabet)


def test_word_language_beats_its_char_ngram_baseline_on_the_same_split() -> None:
    """The gate: the shipped model beats a character n-gram naive Bayes fitted on the same
    training words, both scored on the same held-out words (recomputed here)."""
    result = score("word_language")
    words = data.word_language_split()
    bayes = float(np.mean(data.word_language_naive_bayes() == words.y_test))
    assert result.baseline_name == evaluate.WORD_LANGUAGE_BASELINE
    assert result.baseline == pytest.approx(bayes, abs=1e-12)
    assert result.score > bayes, f"word_language {result.score:.4f} <= naive Bayes {bayes:.4f}"
    majority = result.extra["accuracy_majority_class"]
    assert result.score > 5 * majority and bayes > 5 * majority  # both are real classifiers


def test_co2_interval_has_two_named_float32_vector_heads() -> None:
    """`forecast` [batch, 1] and `interval` [batch, 2] by name (the names the server serves),
    float32, any number of weeks; the interval's bounds are ordered on held-out windows."""
    model = load("co2_interval")
    assert isinstance(model.output, dict)
    assert {k: tuple(v.shape) for k, v in model.output.items()} == {
        "forecast": (None, 1),
        "interval": (None, 2),
    }
    assert {str(v.dtype) for v in model.output.values()} == {"float32"}
    assert tuple(model.input.shape) == (None, None, 1)
    x, _ = data.next_week_windows()
    out = model(x, training=False)
    interval = keras.ops.convert_to_numpy(out["interval"])
    assert np.all(interval[:, 0] <= interval[:, 1])
    short = keras.ops.convert_to_numpy(model(x[:3, -60:], training=False)["forecast"])
    assert short.shape == (3, 1) and np.all(np.isfinite(short))


def test_co2_interval_card_records_the_coverage() -> None:
    result = score("co2_interval")
    recorded = card("co2_interval")[0]["evaluation"]["extra"]
    assert recorded["interval_coverage"] == pytest.approx(
        result.extra["interval_coverage"], abs=1e-3
    )
    low, high = evaluate.INTERVAL_COVERAGE
    assert low <= result.extra["interval_coverage"] <= high
