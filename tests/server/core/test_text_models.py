"""Text models in-process (issue 24): raw strings in (and out), the server's answer for each text
is Keras' on that text alone, token strings step in sessions, bad text is refused by field."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from seqserve_server.core.batch import Batch
from seqserve_server.core.compute_threads import ModelThreads
from seqserve_server.core.errors import InvalidInput
from seqserve_server.core.observer import ModelObservers
from seqserve_server.core.repository import ModelRepository
from seqserve_server.core.sessions import SessionManager, SessionSupport
from tests.support.text_zoo import TEXT_ZOO, save_text_zoo, texts, token_lists

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_text_zoo(tmp_path_factory.mktemp("text-zoo"))


@pytest.fixture(scope="module")
def repository(root: Path) -> ModelRepository:
    repo = ModelRepository(root)
    repo.scan()
    repo.load_all()
    return repo


@pytest.fixture(scope="module")
def sessions(repository: ModelRepository) -> Iterator[SessionManager]:
    threads = ModelThreads(1)
    manager = SessionManager(repository, threads, ModelObservers())
    manager.prepare_all()
    yield manager
    threads.shutdown()


@pytest.fixture(scope="module")
def keras_model(root: Path) -> Callable[[str], Any]:
    @functools.cache
    def load(name: str) -> Any:
        return keras.saving.load_model(root / name / "1" / "model.keras", safe_mode=True)

    return load


def _runtime(repository: ModelRepository, name: str) -> Any:
    return repository.resolve(name, 0).runtime


def _support(sessions: SessionManager, name: str) -> tuple[SessionSupport, str]:
    return sessions.support(sessions.repository.status(name))


def _as_numpy(out: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(out))


@pytest.mark.parametrize("name", list(TEXT_ZOO))
def test_every_text_model_loads_in_its_mode(repository: ModelRepository, name: str) -> None:
    runtime = _runtime(repository, name)
    assert runtime.mode.value == TEXT_ZOO[name][1]
    assert any(spec.string for spec in runtime.signature.inputs)


@pytest.mark.parametrize("name", ["word_classifier", "char_classifier", "text_label"])
def test_each_text_gets_what_keras_gives_it_alone(
    repository: ModelRepository, keras_model: Callable[[str], Any], name: str
) -> None:
    """Texts of different token counts in one batch: each answer is Keras' on that text alone
    (the model pads a batch of texts to the longest)."""
    runtime = _runtime(repository, name)
    batch = [*texts(np.random.default_rng(3), 6), "Été à 東京, naïve café 🙂"]
    checked = runtime.validate(Batch(np.array(batch, dtype=object)))
    got = runtime.compute(checked.values)
    model = keras_model(name)
    shape = (1, *runtime.signature.inputs[0].shape)
    for i, text in enumerate(batch):
        want = _as_numpy(model(np.array([text.encode()], dtype=object).reshape(shape)))
        want = want.reshape(got[i : i + 1].shape)
        if want.dtype == object:
            assert got[i].tolist() == want[0].tolist()
        else:
            np.testing.assert_allclose(got[i : i + 1], want, rtol=TOLERANCE, atol=TOLERANCE)


def test_an_empty_text_gets_keras_own_refusal(repository: ModelRepository) -> None:
    """An LSTM fed no tokens fails in Keras itself: the server refuses that text alone."""
    runtime = _runtime(repository, "word_classifier")
    batch = runtime.validate(Batch(np.array(["the cat", "", "dog"], dtype=object)))
    with pytest.raises(InvalidInput, match="Keras fails on this text too") as caught:
        runtime.compute(batch.values)
    assert caught.value.field == "inputs[1]"
    assert "Graph execution" not in str(caught.value) and "/" not in caught.value.got


def test_token_strings_batch_like_token_ids(
    repository: ModelRepository, keras_model: Callable[[str], Any]
) -> None:
    runtime = _runtime(repository, "token_string_tagger")
    x = np.array(token_lists(np.random.default_rng(4), [5, 5, 5]), dtype=object)
    got = runtime.compute(runtime.validate(Batch(x)).values)
    want = _as_numpy(keras_model("token_string_tagger")(x))
    np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)


def test_string_tags_come_out_as_strings(
    repository: ModelRepository, keras_model: Callable[[str], Any]
) -> None:
    runtime = _runtime(repository, "tag_strings")
    x = np.array(token_lists(np.random.default_rng(5), [4, 4]), dtype=object)
    got = runtime.compute(runtime.validate(Batch(x)).values)
    want = _as_numpy(keras_model("tag_strings")(x))
    assert got.shape == (2, 4, 1) and got.dtype == object
    assert got[..., 0].tolist() == want.tolist()


@pytest.mark.parametrize(
    ("name", "values", "field", "why"),
    [
        ("word_classifier", np.array([b"ok", b"bad \xff here"], dtype=object), "inputs.values",
         "invalid UTF-8 at byte 4 of inputs\\[1\\]"),
        ("word_classifier", np.array([1.0, 2.0], np.float32), "inputs.values.dtype",
         "expected text"),
        ("word_classifier", np.array([["a", "b"]], dtype=object), "inputs.values.shape",
         "rank 1 \\[batch\\] texts"),
        ("word_classifier", np.array([b"ok", 3], dtype=object), "inputs.values", "int in"),
        ("token_string_tagger", np.array([[1, 2]], np.int32), "inputs.values.dtype",
         "expected text"),
    ],
)  # fmt: skip
def test_bad_text_is_refused_naming_the_field(
    repository: ModelRepository, name: str, values: np.ndarray, field: str, why: str
) -> None:
    with pytest.raises(InvalidInput, match=why) as caught:
        _runtime(repository, name).validate(Batch(values))
    assert caught.value.field == field


def test_text_to_a_numeric_input_is_refused(repository: ModelRepository) -> None:
    runtime = _runtime(repository, "tokens_and_values")
    inputs = {
        "tokens": Batch(np.array([["the", "cat"]], dtype=object)),
        "values": Batch(np.array([[["x"], ["y"]]], dtype=object)),
    }
    with pytest.raises(InvalidInput, match="got text") as caught:
        runtime.validate(inputs)
    assert caught.value.field == 'named_inputs["values"].values.dtype'


@pytest.mark.parametrize("name", [n for n, (_, _, steps) in TEXT_ZOO.items() if steps])
def test_token_string_sessions_step_exactly(
    sessions: SessionManager, keras_model: Callable[[str], Any], name: str
) -> None:
    """Fed a few tokens per message, every answer is Keras' on the tokens so far."""
    assert _support(sessions, name)[0] is SessionSupport.INCREMENTAL
    tokens = np.array(token_lists(np.random.default_rng(6), [7])[0], dtype=object)
    values = np.random.default_rng(7).normal(size=(7, 1)).astype(np.float32)
    session = sessions.open(name)
    model = keras_model(name)

    def inputs(end: int) -> Any:
        if name == "tokens_and_values":
            return {"tokens": tokens[None, :end], "values": values[None, :end]}
        return tokens[None, :end]

    async def feed() -> None:
        for start, end in ((0, 1), (1, 4), (4, 7)):
            chunk: Any = tokens[start:end]
            if name == "tokens_and_values":
                chunk = {"tokens": tokens[start:end], "values": values[start:end]}
            output = await sessions.step(session, chunk)
            assert output is not None
            want = _as_numpy(model(inputs(end)))[0]
            if want.ndim == 2:  # aligned: the new steps
                want = want[start:end]
            np.testing.assert_allclose(output.values, want, rtol=TOLERANCE, atol=TOLERANCE)

    try:
        asyncio.run(feed())
    finally:
        sessions.close(session)


@pytest.mark.parametrize("name", ["word_classifier", "text_label", "tag_strings"])
def test_sessions_are_refused_with_the_reason(sessions: SessionManager, name: str) -> None:
    support, reason = _support(sessions, name)
    assert support is SessionSupport.UNSUPPORTED
    assert "whole-text" in reason or "string outputs" in reason
