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
    if x.dtype == object:  # whole texts: Keras on each text alone, as the server computes them
        want = np.concatenate([model(x[i : i + 1], training=False) for i in range(len(x))])
        assert_close(bundled.predict(name, list(x)), want)
        return
    assert_close(bundled.predict(name, x), model(x, training=False))


def assert_close(got: object, want: object) -> None:
    """Equal within the tolerance; several outputs are dicts by output name on both sides."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=TOLERANCE)
        return
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=TOLERANCE)


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
        for i, got in enumerate(outputs):
            if isinstance(expected, dict):  # several outputs: the i-th row of each
                assert_close(got, {key: value[i] for key, value in expected.items()})
            else:
                assert_close(got, expected[i])
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


def test_two_headed_co2_interval_answers_by_output_name(bundled: SeqServeClient) -> None:
    """Metadata names both heads with their widths; Predict answers a dict by those names
    (its session: test_bundled_sessions_equal_predict)."""
    meta = bundled.metadata("co2_interval")
    assert [(s.name, s.shape) for s in meta.outputs] == [
        ("forecast", (-1, 1)),
        ("interval", (-1, 2)),
    ]
    assert meta.session_support == "session_incremental"
    out = bundled.predict("co2_interval", example_input("co2_interval", np.random.default_rng(2)))
    assert isinstance(out, dict) and {k: v.shape for k, v in out.items()} == {
        "forecast": (3, 1),
        "interval": (3, 2),
    }
