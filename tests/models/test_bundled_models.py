"""The bundled models as `make serve` serves them: served outputs equal the in-process model,
and every model that supports sessions streams exactly what Predict gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from models.training import data
from seqserve_client import SeqServeClient
from tests.support.server_process import served

MODELS = Path(__file__).resolve().parents[2] / "models"
TOLERANCE = 1e-4  # raw ppm (~350) in float32: 1e-5 relative to the values served
NAMES = sorted(p.parent.parent.name for p in MODELS.glob("*/1/model.keras"))


@pytest.fixture(scope="module")
def bundled() -> Iterator[SeqServeClient]:
    with served(MODELS) as server, SeqServeClient(server.target, timeout=60) as client:
        yield client


def example_input(name: str, rng: np.random.Generator) -> np.ndarray:
    """Plausible raw inputs of each model's signature."""
    if name == "iris_classifier":
        return rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], size=(5, 4)).astype(np.float32)
    if name == "digit_generator":
        return np.eye(10, dtype=np.float32)[[0, 3, 7]]
    if name == "digit_classifier":
        return rng.integers(0, 17, size=(4, 8, 8)).astype(np.float32)
    if name == "word_language":  # character ids; 0 is padding, masked by the Embedding
        ids = rng.integers(1, 60, size=(4, 9), dtype=np.int32)
        ids[1, 5:] = ids[2, 3:] = 0
        return ids
    weeks = {"co2_next_week": 80}.get(name, 52)
    trend = 340 + 0.03 * np.arange(weeks) + 3 * np.sin(np.arange(weeks) * 2 * np.pi / 52)
    return (trend + rng.normal(0, 0.3, size=(3, weeks)))[..., None].astype(np.float32)


def test_every_bundled_model_is_ready(bundled: SeqServeClient) -> None:
    assert len(NAMES) >= 6
    states = {m.name: m.state for m in bundled.list_models()}
    assert all(states[name] == "ready" for name in NAMES), states


@pytest.mark.parametrize("name", NAMES)
def test_served_equals_in_process(bundled: SeqServeClient, name: str) -> None:
    x = example_input(name, np.random.default_rng(0))
    model = keras.saving.load_model(MODELS / name / "1" / "model.keras", safe_mode=True)
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(bundled.predict(name, x), expected, rtol=1e-5, atol=TOLERANCE)


SESSION_MODELS = [
    "co2_next_week",
    "digit_classifier",
    "word_language",
    "co2_forecast_13w",
    "co2_forecast_13w_cropped",
]


@pytest.mark.parametrize("name", SESSION_MODELS)
def test_bundled_sessions_equal_predict(bundled: SeqServeClient, name: str) -> None:
    x = example_input(name, np.random.default_rng(1))[0]
    meta = bundled.metadata(name)
    assert meta.session_support in ("session_incremental", "session_recompute")
    chunks = np.array_split(x, [1, 4, 6, len(x) - 1])
    with bundled.session(name) as s:
        outputs = [s.step(chunk) for chunk in chunks]
        if meta.mode == "many_to_many_unaligned":
            outputs = [s.end_input()]
    if meta.mode == "many_to_one":
        ends = np.cumsum([len(c) for c in chunks])
        expected = bundled.predict(name, [x[:end] for end in ends])
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=TOLERANCE)
        return
    got = np.concatenate(outputs)
    np.testing.assert_allclose(got, bundled.predict(name, x[None])[0], rtol=1e-5, atol=TOLERANCE)


def test_aligned_co2_model_runs_incrementally(bundled: SeqServeClient) -> None:
    """Its differencing front end (a causal convolution) keeps its window in the session."""
    assert bundled.metadata("co2_next_week").session_support == "session_incremental"


def test_word_language_takes_ragged_words(bundled: SeqServeClient) -> None:
    """Words as clients send them: unpadded int32 character ids of different lengths."""
    alphabet = data.word_language_split().alphabet
    ids = [data.char_ids(w, alphabet) for w in ["bonjour", "thanks", "Straße", "kiitos", "ñ"]]
    model = keras.saving.load_model(MODELS / "word_language" / "1" / "model.keras", safe_mode=True)
    expected = np.concatenate([model(x[None], training=False).numpy() for x in ids])
    np.testing.assert_allclose(
        bundled.predict("word_language", ids), expected, rtol=1e-5, atol=1e-6
    )
    metadata = bundled.metadata("word_language")
    top = bundled.classify("word_language", ids, top_k=1)
    assert [t[0][0] for t in top] == [metadata.labels[i] for i in expected.argmax(-1)]
    embedding = next(x for x in model.layers if isinstance(x, keras.layers.Embedding))
    assert metadata.input.vocabulary == embedding.input_dim  # clients learn the id range
    assert metadata.input.dtype == "int32" and metadata.input.sequence
