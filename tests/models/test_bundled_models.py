"""The bundled models as `make serve` serves them: served outputs equal the in-process model,
and every model that supports sessions streams exactly what Predict gives."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.training import data
from seqserve_client import SeqServeClient
from tests.support.bundled import MODELS, NAMES, SESSION_MODELS, TOLERANCE, example_input


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
