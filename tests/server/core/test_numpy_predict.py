"""Predict's numpy path: small batches computed in numpy where the model has a numpy form and it
equals Keras on the load-time probes; the traced path computes every other batch and model."""

from __future__ import annotations

import functools
from pathlib import Path

import keras
import numpy as np
import pytest

from seqserve_server.core import runtime as core_runtime
from seqserve_server.core.modes import Mode
from seqserve_server.core.proof import compare
from seqserve_server.core.runtime import NUMPY_MAX_CELLS, ModelRuntime
from seqserve_server.core.stepping import numpy_program
from tests.support.model_zoo import VOCAB, ZOO

IN_NUMPY = "computed in numpy"


@functools.cache
def _model(name: str) -> keras.Model:
    return ZOO[name][0]()


def _load(name: str, root: Path) -> ModelRuntime:
    path = root / f"{name}.keras"
    if not path.exists():
        _model(name).save(path)
    return ModelRuntime.load(path, Mode(ZOO[name][1]))


def _inputs(name: str, rng: np.random.Generator, batch: int, steps: int) -> np.ndarray:
    if name.startswith("token"):
        return rng.integers(0, VOCAB, size=(batch, steps)).astype(np.int32)
    features = int(_model(name).inputs[0].shape[-1])
    return rng.normal(size=(batch, steps, features)).astype(np.float32)


@pytest.mark.parametrize("name", ["many_to_one", "lstm_aligned", "token_classifier"])
def test_small_batches_are_computed_in_numpy_and_equal_keras(name: str, tmp_path: Path) -> None:
    """Batches on both sides of the threshold, short and long sequences (beyond the probes),
    padding (masked by token_classifier) at the start and the end."""
    runtime = _load(name, tmp_path)
    assert IN_NUMPY in runtime.proof, runtime.proof
    rng = np.random.default_rng(3)
    for batch in (1, 2, 16, 17):
        for steps in (1, 8, 60, NUMPY_MAX_CELLS + 1):
            x = _inputs(name, rng, batch, steps)
            x[0, : steps // 3] = 0
            x[-1, steps // 2 :] = 0
            want = keras.ops.convert_to_numpy(_model(name)(x, training=False))
            compare(f"batch {batch} x {steps} steps", runtime.compute(x), want)


def test_the_numpy_path_serves_only_small_batches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[int] = []
    real = numpy_program.numpy_model

    def counted(model: keras.Model, mode: Mode):
        run = real(model, mode)
        return lambda x: (calls.append(len(x)), run(x))[1]

    monkeypatch.setattr(core_runtime, "numpy_model", counted)
    runtime = _load("many_to_one", tmp_path)
    calls.clear()  # the proof's probes
    rng = np.random.default_rng(4)
    for batch, steps in ((1, 1), (1, NUMPY_MAX_CELLS), (1, NUMPY_MAX_CELLS + 1), (16, 8), (17, 8)):
        runtime.compute(_inputs("many_to_one", rng, batch, steps))
    assert calls == [1, 1, 16]  # batch x steps <= NUMPY_MAX_CELLS (128)


def test_a_numpy_path_that_differs_is_not_served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Off by 1e-3 on every output: the proof drops it and the traced path serves all batches."""
    real = numpy_program.numpy_model

    def off(model: keras.Model, mode: Mode):
        run = real(model, mode)
        return lambda x: run(x) + np.float32(1e-3)

    monkeypatch.setattr(core_runtime, "numpy_model", off)
    runtime = _load("many_to_one", tmp_path)
    assert IN_NUMPY not in runtime.proof
    x = _inputs("many_to_one", np.random.default_rng(5), 1, 6)
    compare("batch 1", runtime.compute(x), _model("many_to_one")(x, training=False))


@pytest.mark.parametrize("name", ["masked_time_distributed", "bidirectional"])
def test_a_model_without_numpy_form_is_computed_by_the_traced_path(
    name: str, tmp_path: Path
) -> None:
    runtime = _load(name, tmp_path)
    assert IN_NUMPY not in runtime.proof
    x = _inputs(name, np.random.default_rng(6), 2, 9)
    x[1, 4:] = 0  # padding, where the model masks it
    compare(name, runtime.compute(x), _model(name)(x, training=False))
