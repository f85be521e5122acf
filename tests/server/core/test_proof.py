"""The load-time proof in-process: wrong compiled paths are caught, the next one is proven, and a
model no path serves exactly fails to load naming the probe."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from seqserve_server.core import runtime as runtime_module
from seqserve_server.core.errors import ModelLoadError
from seqserve_server.core.modes import Mode
from seqserve_server.core.proof import InputKind, ProofFailed, Reference, compare, probes, prove
from seqserve_server.core.runtime import ModelRuntime
from seqserve_server.core.sessions import proven_program
from seqserve_server.core.stepping.programs import IncrementalProgram, SessionSupport
from tests.support.model_zoo import ZOO

TOL = 1e-5


@functools.cache
def _saved(name: str, root: Path) -> Path:
    path = root / f"{name}.keras"
    ZOO[name][0]().save(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("proof")
    return lambda name: _saved(name, root)


def test_keras_traced_time_distributed_is_wrong_on_a_dynamic_time_axis() -> None:
    """The bug the proof exists for: Keras 3.15 maps TimeDistributed over the batch size."""
    model = ZOO["time_distributed_head"][0]()
    spec = tf.TensorSpec([None, None, 5], tf.float32)
    traced = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    x = np.random.default_rng(0).normal(size=(1, 5, 5)).astype(np.float32)
    assert tuple(traced(x).shape) == (1, 1, 4)  # if Keras fixes this, the proof keeps "traced"
    assert tuple(model(x, training=False).shape) == (1, 5, 4)


def test_time_distributed_head_is_served_by_the_graph_path(saved: Callable) -> None:
    runtime = ModelRuntime.load(saved("time_distributed_head"))
    assert runtime.compute_path == "graph"
    assert (
        "traced: probe batch 1 x 2 steps: shape [1, 1, 4], Keras gives [1, 2, 4]" in runtime.proof
    )
    rng = np.random.default_rng(1)
    for batch, steps in ((1, 5), (4, 9), (2, 13), (7, 3)):
        x = rng.normal(size=(batch, steps, 5)).astype(np.float32)
        want = keras.ops.convert_to_numpy(runtime.model(x, training=False))
        np.testing.assert_allclose(runtime.compute(x), want, atol=TOL)


def _off_by(delta: float) -> Callable[[ModelRuntime], Callable]:
    def build(runtime: ModelRuntime) -> Callable:
        exact = ModelRuntime._traced(runtime)
        return lambda x: exact(x) + delta

    return build


def test_no_exact_path_fails_the_model_naming_the_probe(
    saved: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "PATHS", (("a", _off_by(1e-3)), ("b", _off_by(-1.0))))
    with pytest.raises(ModelLoadError, match=r"a: probe batch 1 x 1 steps: value .* Keras gives"):
        ModelRuntime.load(saved("lstm_aligned"))


def test_a_wrong_path_falls_through_to_the_per_length_one(
    saved: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = (("wrong", _off_by(1e-4)), ("per_length", ModelRuntime._per_length))
    monkeypatch.setattr(runtime_module, "PATHS", paths)
    monkeypatch.setattr(runtime_module, "PER_LENGTH_CACHE", 2)
    runtime = ModelRuntime.load(saved("masked_many_to_one"))
    assert runtime.compute_path == "per_length" and "wrong: probe" in runtime.proof
    rng = np.random.default_rng(2)
    for steps in (3, 8, 3, 11):
        x = rng.normal(size=(2, steps, 3)).astype(np.float32)
        want = keras.ops.convert_to_numpy(runtime.model(x, training=False))
        np.testing.assert_allclose(runtime.compute(x), want, atol=TOL)
    assert len(runtime._fn._fns) == 2  # type: ignore[attr-defined]


def test_a_step_program_that_differs_is_replaced_by_recompute(
    saved: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = ModelRuntime.load(saved("lstm_aligned"))
    exact_step = IncrementalProgram.step

    def drifting(self: IncrementalProgram, state: dict, x: np.ndarray) -> tuple:
        new_state, y = exact_step(self, state, x)
        return new_state, y + (1e-3 if x.shape[1] > 4 else 0.0)  # stream windows drift

    monkeypatch.setattr(IncrementalProgram, "step", drifting)
    program = proven_program(runtime)
    assert program.support is SessionSupport.RECOMPUTE
    assert "incremental step program differs from Keras (probe batch" in program.reason
    assert "fed in chunks of 32" in program.reason  # as PredictStream feeds it


def test_proof_compares_shapes_values_and_nans() -> None:
    compare("p", np.array([1.0, np.nan]), np.array([1.0 + 1e-6, np.nan]))
    with pytest.raises(ProofFailed, match=r"probe p: shape \[2\], Keras gives \[3\]"):
        compare("p", np.zeros(2), np.zeros(3))
    with pytest.raises(ProofFailed, match="value nan"):
        compare("p", np.array([np.nan]), np.array([0.0]))
    compare("p", np.array([1000.0]), np.array([1000.005]))  # relative above magnitude 1


def test_probes_stay_inside_the_vocabulary_and_include_padding() -> None:
    kind = InputKind((None,), np.dtype("int32"), True, vocabulary=7)
    cases = probes(kind)
    assert {(p.x.shape[0], p.steps) for p in cases} >= {(1, 1), (1, 2), (3, 9)}
    assert all(p.x.dtype == np.int32 and p.x.min() >= 0 and p.x.max() < 7 for p in cases)
    assert any((p.x == 0).any() for p in cases)


def test_a_raising_candidate_is_a_failed_probe() -> None:
    ref = Reference(lambda x: x)

    def broken(x: np.ndarray) -> np.ndarray:
        raise ValueError("no")

    kind = InputKind((4,), np.dtype("float32"), False)
    with pytest.raises(ProofFailed, match="probe batch 1: ValueError: no"):
        prove(broken, probes(kind), ref)


def test_integer_input_without_embedding_takes_the_stated_mode(tmp_path: Path) -> None:
    inp = keras.Input((6,), dtype="int32")
    x = keras.layers.CategoryEncoding(num_tokens=10, output_mode="count")(inp)
    keras.Model(inp, keras.layers.Dense(2)(x)).save(tmp_path / "m.keras")
    assert ModelRuntime.load(tmp_path / "m.keras").mode is Mode.ONE_TO_ONE
    stated = ModelRuntime.load(tmp_path / "m.keras", Mode.MANY_TO_ONE)
    assert stated.mode is Mode.MANY_TO_ONE and stated.signature.fixed_steps == 6


def _save(model: keras.Model, root: Path, name: str) -> Path:
    path = root / f"{name}.keras"
    model.save(path)
    return path


def test_outputs_of_different_kinds_are_refused_naming_them(tmp_path: Path) -> None:
    inp = keras.Input((None, 3))
    steps = keras.layers.LSTM(4, return_sequences=True)(inp)
    summary = keras.layers.GlobalAveragePooling1D()(steps)
    model = keras.Model(inp, [keras.layers.Dense(2, name="per_step")(steps), summary])
    with pytest.raises(ModelLoadError, match=r"all vectors or all sequences.*per_step \[None, 2\]"):
        ModelRuntime.load(_save(model, tmp_path, "mixed"))


def test_several_inputs_are_served_or_refused_with_the_reason(tmp_path: Path) -> None:
    """Served with a mode from every input; an input of a shape seqserve does not serve (here
    [steps, height, width]) fails the load naming it."""
    seq, static = keras.Input((None, 3), name="seq"), keras.Input((2,), name="static")
    merged = keras.layers.Concatenate()([keras.layers.LSTM(4)(seq), static])
    model = keras.Model([seq, static], keras.layers.Dense(1)(merged))
    runtime = ModelRuntime.load(_save(model, tmp_path, "two_inputs"))
    assert runtime.mode is Mode.MANY_TO_ONE and "equals Keras" in runtime.proof
    image = keras.Input((None, 4, 4), name="frames")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((-1, 16))(image))
    odd = keras.Model([image, static], keras.layers.Concatenate()([pooled, static]))
    with pytest.raises(ModelLoadError, match="shape of input frames"):
        ModelRuntime.load(_save(odd, tmp_path, "odd_input"))


def test_several_outputs_are_computed_packed_and_split_by_name(saved: Callable) -> None:
    runtime = ModelRuntime.load(saved("two_heads"))
    assert runtime.signature.output_names == ("label", "value")
    x = np.random.default_rng(2).normal(size=(4, 7, 3)).astype(np.float32)
    label, value = runtime.model(x, training=False)
    split = runtime.signature.split(runtime.compute(x))
    np.testing.assert_allclose(split["label"], keras.ops.convert_to_numpy(label), atol=TOL)
    np.testing.assert_allclose(split["value"], keras.ops.convert_to_numpy(value), atol=TOL)
