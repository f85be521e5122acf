"""The numpy step program: equal to Keras wherever the server serves it, refused (the traced
program stays) where a layer has no numpy form or the proof finds a difference."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import layers

from seqserve_server.core import sessions as core_sessions
from seqserve_server.core.compute_threads import ModelThreads
from seqserve_server.core.modes import Mode
from seqserve_server.core.proof import compare
from seqserve_server.core.runtime import ModelRuntime
from seqserve_server.core.sessions import SessionManager, proven_program
from seqserve_server.core.stepping.analysis import Unsteppable
from seqserve_server.core.stepping.numpy_program import NumpyProgram, layer_fn, numpy_program
from seqserve_server.core.stepping.programs import IncrementalProgram, build_step_program
from tests.support.model_zoo import FEATURES, VOCAB, ZOO

# Every kind of node the numpy program computes: LSTM, GRU (reset after and before), SimpleRNN,
# Dense, TimeDistributed(Dense), Embedding (masking too), Masking, Rescaling, LayerNormalization,
# causal Conv1D, merges, dropout layers; both stepping modes.
NUMPY_CASES = [
    "lstm_aligned", "gru_aligned", "gru_reset_before", "simple_rnn_aligned",
    "time_distributed_head", "many_to_one", "token_unmasked_aligned", "dropout_layers",
    "masked_aligned", "masked_many_to_one", "token_classifier", "stacked_lstm",
    "diff_forecaster", "token_conv_many_to_one", "layer_norm_many_to_one",
]  # fmt: skip
FAST = {"lstm_aligned", "many_to_one"}  # the rest run with `-m slow` (each proof takes seconds)
MASKED = ["masked_aligned", "masked_many_to_one", "token_classifier"]


def _slow(name: str) -> object:
    return pytest.param(name, marks=pytest.mark.slow)


SERVED = [n if n in FAST else _slow(n) for n in NUMPY_CASES]
TRACED_CASES = {  # a node without a numpy form, named in the reason
    "masked_time_distributed": "TimeDistributed",
    "fixed_length_aligned": "BatchNormalization",
    "stacked_cells": "RNN",
    "encoder_decoder_dynamic": "many_to_many_unaligned",
}


@functools.cache
def _model(name: str) -> keras.Model:
    return ZOO[name][0]()


@functools.cache
def _loaded(name: str, root: Path) -> ModelRuntime:
    path = root / f"{name}.keras"
    _model(name).save(path)
    return ModelRuntime.load(path, Mode(ZOO[name][1]))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ModelRuntime]:
    """A zoo model saved and loaded as the server loads it (its compute path proven)."""
    root = tmp_path_factory.mktemp("numpy-program")
    return lambda name: _loaded(name, root)


def _inputs(name: str, rng: np.random.Generator, batch: int, steps: int) -> np.ndarray:
    if name.startswith("token"):
        return rng.integers(0, VOCAB, size=(batch, steps)).astype(np.int32)
    features = int(_model(name).inputs[0].shape[-1])
    return rng.normal(size=(batch, steps, features)).astype(np.float32)


def _fed(program, x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The program's outputs, `x` fed in chunks of `sizes` (cycled)."""
    state, outs, start, i = program.initial_state(len(x)), [], 0, 0
    while start < x.shape[1]:
        end = min(x.shape[1], start + sizes[i % len(sizes)])
        state, y = program.step(state, x[:, start:end])
        outs.append(y)
        start, i = end, i + 1
    return outs


@pytest.mark.parametrize("name", SERVED)
def test_the_server_serves_these_models_in_numpy(name: str, runtime: Callable) -> None:
    program = proven_program(runtime(name))
    assert isinstance(program, NumpyProgram), program.reason
    assert program.reason.endswith("computed in numpy") and program.light


@pytest.mark.parametrize(
    "name", [n if n in FAST | {"gru_reset_before"} else _slow(n) for n in NUMPY_CASES]
)
def test_numpy_program_equals_keras_over_long_chunked_sequences(name: str) -> None:
    """Beyond the load-time probes: 60 steps in chunks of 1..17, batch 3, the running output
    (many-to-one) or every step (aligned) against Keras on the same prefix."""
    program = numpy_program(build_step_program(_model(name), Mode(ZOO[name][1])))
    x = _inputs(name, np.random.default_rng(11), 3, 60)
    outs = _fed(program, x, [1, 17, 5, 2, 9])
    want = keras.ops.convert_to_numpy(_model(name)(x, training=False))
    if ZOO[name][1] == "many_to_one":
        compare(name, outs[-1], want)
    else:
        compare(name, np.concatenate(outs, axis=1), want)


@pytest.mark.parametrize("name", MASKED)
def test_numpy_program_equals_keras_on_padded_sequences(name: str) -> None:
    """Padding (what the model masks) first, mid-sequence and last, fed in chunks that start
    and end inside it: masked steps keep the state and repeat the previous output."""
    program = numpy_program(build_step_program(_model(name), Mode(ZOO[name][1])))
    x = _inputs(name, np.random.default_rng(12), 3, 24)
    x[0, :5] = 0
    x[1, 8:13] = 0
    x[2, 19:] = 0
    for sizes in ([1], [3, 7, 2], [24]):
        outs = _fed(program, x, sizes)
        want = keras.ops.convert_to_numpy(_model(name)(x, training=False))
        got = outs[-1] if ZOO[name][1] == "many_to_one" else np.concatenate(outs, axis=1)
        compare(f"chunks of {sizes}", got, want)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["lstm_aligned", "many_to_one"]),
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 4),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
)
def test_numpy_program_equals_keras_on_random_inputs(
    name: str, seed: int, batch: int, sizes: list[int], scale: float
) -> None:
    program = numpy_program(build_step_program(_model(name), Mode(ZOO[name][1])))
    x = _inputs(name, np.random.default_rng(seed), batch, 12) * np.float32(scale)
    outs = _fed(program, x, sizes)
    want = keras.ops.convert_to_numpy(_model(name)(x, training=False))
    got = outs[-1] if ZOO[name][1] == "many_to_one" else np.concatenate(outs, axis=1)
    compare(f"seed {seed}", got, want)


@pytest.mark.parametrize(
    "name",
    [n if n in ("masked_time_distributed", "stacked_cells") else _slow(n) for n in TRACED_CASES],
)
def test_a_node_without_numpy_form_keeps_the_traced_program(name: str) -> None:
    program = build_step_program(_model(name), Mode(ZOO[name][1]))
    with pytest.raises(Unsteppable, match=TRACED_CASES[name]):
        numpy_program(program)


def test_an_activation_without_numpy_form_is_named() -> None:
    dense = layers.Dense(2, activation="gelu", name="head")
    dense.build((None, FEATURES))
    with pytest.raises(Unsteppable, match="Dense 'head': activation 'gelu'"):
        layer_fn(dense)


def test_a_numpy_program_that_differs_is_not_served(
    monkeypatch: pytest.MonkeyPatch, runtime: Callable
) -> None:
    """The proof guards the numpy program as it guards every program: off by 1e-3, refused."""

    class OffByALittle(NumpyProgram):
        def step(self, state, x):
            new_state, y = super().step(state, x)
            return new_state, y + np.float32(1e-3)

    off = lambda base: OffByALittle(base.model, base.mode, base.graph, base.plan, base.signature)  # noqa: E731
    monkeypatch.setattr(core_sessions, "numpy_program", off)
    program = proven_program(runtime("lstm_aligned"))
    assert type(program) is IncrementalProgram


def test_a_long_message_is_one_computation(runtime: Callable) -> None:
    """Several steps in one message are one call of the program, not one per step."""
    calls: list[int] = []
    program = proven_program(runtime("lstm_aligned"))
    threads = ModelThreads(1)
    observer = _CountingObserver(calls)
    queue = core_sessions._StepQueue(program, threads.executor("m", 1), observer)  # type: ignore[arg-type]
    x = _inputs("lstm_aligned", np.random.default_rng(5), 1, 40)

    async def feed() -> np.ndarray:
        _, y = await queue.step(program.initial_state(1), x)
        return y

    try:
        y = asyncio.run(feed())
    finally:
        threads.shutdown()
    assert calls == [1]
    compare("40 steps", y, keras.ops.convert_to_numpy(_model("lstm_aligned")(x, training=False)))


def test_a_lone_sessions_step_computes_at_once_and_is_counted(runtime: Callable) -> None:
    """The model's only session: its short step is computed within the call (no queue task:
    the coroutine finishes without suspending) and counted as a computation of 1 once the loop
    is free; any other step is queued. Both equal Keras."""
    calls: list[int] = []
    program = proven_program(runtime("lstm_aligned"))
    threads = ModelThreads(1)
    queue = core_sessions._StepQueue(program, threads.executor("m", 1), _CountingObserver(calls))  # type: ignore[arg-type]
    x = _inputs("lstm_aligned", np.random.default_rng(6), 1, 3)
    want = keras.ops.convert_to_numpy(_model("lstm_aligned")(x, training=False))

    async def run() -> None:
        stepping = queue.step(program.initial_state(1), x, alone=True)
        with pytest.raises(StopIteration) as done:
            stepping.send(None)
        compare("alone", done.value.value[1], want)
        assert calls == []
        await asyncio.sleep(0)
        assert calls == [1]
        _, y = await queue.step(program.initial_state(1), x)
        compare("queued", y, want)
        assert calls == [1, 1]

    try:
        asyncio.run(run())
    finally:
        threads.shutdown()


class _CountingObserver:
    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def batch_executed(self, size: int, compute_seconds: float) -> None:
        self.calls.append(size)

    def queue_wait(self, seconds: float) -> None:
        pass


def test_concurrent_sessions_stepped_inline_equal_each_alone(
    sessions: SessionManager, keras_model
) -> None:
    """Lone steps of a numpy program compute inline on the event loop; sessions stepping at
    once still get each its own sequence's outputs."""
    assert sessions.incremental_program(sessions.repository.resolve("aligned")).light
    rng = np.random.default_rng(9)
    xs = [rng.normal(size=(7, FEATURES)).astype(np.float32) for _ in range(3)]
    opened = [sessions.open("aligned") for _ in xs]

    async def run(session, x: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(x), 2):
            output = await sessions.step(session, x[start : start + 2])
            assert output is not None
            outs.append(output.values)
        return np.concatenate(outs)

    async def all_at_once() -> list[np.ndarray]:
        return await asyncio.gather(*(run(s, x) for s, x in zip(opened, xs, strict=True)))

    try:
        got = asyncio.run(all_at_once())
    finally:
        for session in opened:
            sessions.close(session)
    for x, y in zip(xs, got, strict=True):
        compare("session", y, keras_model("aligned")(x[None], training=False)[0])
