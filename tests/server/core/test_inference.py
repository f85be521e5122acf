"""The inference service in-process: Predict and PredictStream outputs equal Keras', inputs are
checked before anything computes, streams come in parts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from seqserve_server.core.batch import Batch
from seqserve_server.core.errors import DeadlineExpired, InvalidInput
from seqserve_server.core.inference import STREAM_CHUNK, InferencePart, InferenceService
from seqserve_server.core.modes import Mode
from seqserve_server.core.repository import ModelRepository
from seqserve_server.core.sessions import STREAM_WINDOW
from tests.support.model_zoo import FEATURES

TOLERANCE = 1e-5


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


async def _collect(parts: AsyncIterator[InferencePart]) -> list[InferencePart]:
    return [part async for part in parts]


def test_predict_vectors_equal_keras_with_top_k(
    inference: InferenceService, core_repository: ModelRepository, keras_model
) -> None:
    x = _rng(1).normal(size=(5, 4)).astype(np.float32)
    target = core_repository.resolve("iris_like")
    result = asyncio.run(inference.predict(target, Batch(x), k=2))
    want = keras_model("iris_like")(x, training=False).numpy()
    assert (result.model, result.version, result.mode) == ("iris_like", 1, Mode.ONE_TO_ONE)
    np.testing.assert_allclose(result.outputs.values, want, atol=TOLERANCE)
    assert result.top_k is not None and len(result.top_k["output"]) == 5
    best = want.argmax(-1)
    assert [t.labels[0] for t in result.top_k["output"]] == [["a", "b", "c"][i] for i in best]
    assert result.named is None


def test_predict_ragged_sequences_equal_keras_one_by_one(
    inference: InferenceService, core_repository: ModelRepository, keras_model
) -> None:
    items = [_rng(2 + n).normal(size=(n, FEATURES)).astype(np.float32) for n in (3, 7, 3, 1)]
    target = core_repository.resolve("classifier")
    result = asyncio.run(inference.predict(target, Batch.from_items(items)))
    model = keras_model("classifier")
    for item, out in zip(items, result.outputs.items(), strict=True):
        np.testing.assert_allclose(out, model(item[None], training=False)[0], atol=TOLERANCE)


@pytest.mark.parametrize(
    ("values", "k", "field"),
    [
        (np.zeros((2, 5), np.float32), 0, "inputs.values.shape"),  # 5 features, not 4
        (np.full((2, 4), np.nan, np.float32), 0, "inputs.values"),
        (np.zeros((2, 4), np.int32), 0, "inputs.values.dtype"),
        (np.zeros((0, 4), np.float32), 0, "inputs"),
        (np.zeros((2, 4), np.float32), 4, "top_k"),  # 3 labels
        (np.zeros((2, 4), np.float32), -1, "top_k"),
    ],
)
def test_invalid_inputs_are_refused_before_computing(
    inference: InferenceService,
    core_repository: ModelRepository,
    values: np.ndarray,
    k: int,
    field: str,
) -> None:
    target = core_repository.resolve("iris_like")
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(inference.predict(target, Batch(values), k=k))
    assert refused.value.field == field


def test_top_k_needs_labels(inference: InferenceService, core_repository: ModelRepository) -> None:
    target = core_repository.resolve("aligned")  # its config names no labels
    x = np.zeros((1, 4, FEATURES), np.float32)
    with pytest.raises(InvalidInput, match="names no labels"):
        asyncio.run(inference.predict(target, Batch(x), k=1))


def test_an_expired_deadline_never_computes(
    inference: InferenceService, core_repository: ModelRepository
) -> None:
    target = core_repository.resolve("iris_like")
    with pytest.raises(DeadlineExpired):
        asyncio.run(
            inference.predict(target, Batch(np.zeros((1, 4), np.float32)), 0, time.monotonic() - 1)
        )


def test_stream_of_vectors_comes_in_chunks_in_order(
    inference: InferenceService, core_repository: ModelRepository, keras_model
) -> None:
    x = _rng(3).normal(size=(STREAM_CHUNK + 2, 4)).astype(np.float32)
    target = core_repository.resolve("iris_like")
    parts = asyncio.run(_collect(inference.predict_stream(target, Batch(x), k=1)))
    assert [p.indices for p in parts] == [
        list(range(STREAM_CHUNK)),
        [STREAM_CHUNK, STREAM_CHUNK + 1],
    ]
    outputs = np.stack([o for p in parts for o in p.outputs])
    np.testing.assert_allclose(outputs, keras_model("iris_like")(x, training=False), atol=TOLERANCE)
    assert all(p.top_k is not None and len(p.top_k) == len(p.indices) for p in parts)


def test_stream_of_an_aligned_model_steps_windows_exactly(
    inference: InferenceService, core_repository: ModelRepository, keras_model
) -> None:
    """Where the model has an incremental step program, long sequences leave a window of steps
    at a time; stitched together they are what Keras computes on the whole sequence."""
    steps = STREAM_WINDOW + 5
    x = _rng(4).normal(size=(2, steps, FEATURES)).astype(np.float32)
    target = core_repository.resolve("aligned")
    parts = asyncio.run(_collect(inference.predict_stream(target, Batch(x))))
    assert [p.first_step for p in parts] == [0, STREAM_WINDOW]
    assert all(p.indices == [0, 1] and p.lengths == [steps, steps] for p in parts)
    stitched = np.concatenate([np.stack(p.outputs) for p in parts], axis=1)
    np.testing.assert_allclose(stitched, keras_model("aligned")(x, training=False), atol=TOLERANCE)
