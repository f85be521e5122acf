"""Exactness of incremental step programs against the full model, in-process (no server)."""

from __future__ import annotations

import functools
import itertools

import keras
import numpy as np
import pytest

from seqserve_server.core.errors import Unsupported
from seqserve_server.core.modes import Mode
from seqserve_server.core.stepping.programs import SessionSupport, StepProgram, build_step_program
from seqserve_server.core.stepping.state import STEPS as STEPS_KEY
from tests.support.model_zoo import STEPPER_CASES, ZOO, dense_one_to_one

TOL = 1e-5
STEPS = 11  # length fed to models whose input length is free
FALLBACK = {"bidirectional", "bidirectional_many_to_one", "pooled_many_to_one"}


@functools.cache
def _model(name: str) -> keras.Model:
    return ZOO[name][0]()


@functools.cache
def _program(name: str) -> StepProgram:
    return build_step_program(_model(name), Mode(ZOO[name][1]))


def _chunks(total: int) -> list[tuple[int, int]]:
    """Boundaries of chunks of sizes 1, 3, 2, 4, 1, 3, ... covering ``total`` steps."""
    out, start = [], 0
    for size in itertools.cycle((1, 3, 2, 4)):
        if start >= total:
            return out
        out.append((start, min(total, start + size)))
        start += size
    raise AssertionError("unreachable")


def _data(name: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    model = _model(name)
    steps = ZOO[name][2] or STEPS
    x = np.random.default_rng(seed).normal(size=(batch, steps, model.inputs[0].shape[-1]))
    if "masked" in name:  # masked steps at a sequence start, chunk starts and mid-chunk
        x[0, [0, 1, 4, 7]] = 0.0
        x[1, [2, 6, 10]] = 0.0
    return x.astype(np.float32)


def _full(name: str, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(_model(name)(x, training=False))


def _run(program: StepProgram, x: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    state, outs = program.initial_state(x.shape[0]), []
    for a, b in _chunks(x.shape[1]):
        state, y = program.step(state, x[:, a:b])
        outs.append(y)
    return state, outs


@pytest.mark.parametrize("name", STEPPER_CASES)
def test_stepping_matches_full_model(name: str) -> None:
    program, mode = _program(name), ZOO[name][1]
    support = SessionSupport.RECOMPUTE if name in FALLBACK else SessionSupport.INCREMENTAL
    assert program.support is support, program.reason
    x = _data(name)
    state, outs = _run(program, x)
    if mode == "many_to_many_aligned":
        # Each chunk's outputs are what the model gives on the prefix seen so far ...
        for (start, end), y in zip(_chunks(x.shape[1]), outs, strict=True):
            if ZOO[name][2] is None:  # a fixed-length model rejects shorter prefixes
                np.testing.assert_allclose(y, _full(name, x[:, :end])[:, start:end], atol=TOL)
        # ... and for causal (incremental) models they are also the full-sequence outputs.
        if program.support is SessionSupport.INCREMENTAL:
            np.testing.assert_allclose(np.concatenate(outs, axis=1), _full(name, x), atol=TOL)
    elif mode == "many_to_one":
        for (_, end), y in zip(_chunks(x.shape[1]), outs, strict=True):
            if ZOO[name][2] not in (None, end):  # fixed-length model: undefined on a prefix
                assert np.isnan(y).all()
                continue
            np.testing.assert_allclose(y, _full(name, x[:, :end]), atol=TOL)
        np.testing.assert_allclose(program.finish(state), outs[-1], atol=TOL)
    else:
        assert all(y.shape[1] == 0 for y in outs)
        np.testing.assert_allclose(program.finish(state), _full(name, x), atol=TOL)


def test_fallback_reasons_name_the_layer() -> None:
    assert "Bidirectional" in _program("bidirectional").reason
    assert "GlobalAveragePooling1D" in _program("pooled_many_to_one").reason


@pytest.mark.parametrize("incremental", [True, False])
def test_fixed_length_model_is_undefined_before_its_length(incremental: bool) -> None:
    """The session core refuses end_input before the fixed length; the program says NaN."""
    model = _model("encoder_decoder")
    program = build_step_program(model, Mode.MANY_TO_MANY_UNALIGNED, incremental=incremental)
    assert program.fixed_length == 12
    x = _data("encoder_decoder", 1)
    state, _ = program.step(program.initial_state(), x[:, :5])
    early = program.finish(state)
    assert early.shape == _full("encoder_decoder", x).shape and np.isnan(early).all()


@pytest.mark.parametrize("name", ["diff_forecaster", "masked_many_to_one", "encoder_decoder"])
def test_stacked_sessions_equal_sessions_alone(name: str) -> None:
    """Three sessions at different prefix lengths stepped as one batch == each alone."""
    program, mode = _program(name), ZOO[name][1]
    x = _data(name, batch=3, seed=7)
    starts = (5, 2, 0) if ZOO[name][2] is None else (0, 0, 0)
    states = []
    for i, start in enumerate(starts):
        state = program.initial_state()
        if start:
            state, _ = program.step(state, x[i : i + 1, :start])
        states.append(state)
    chunk = x[:, 5:8] if ZOO[name][2] is None else x
    alone = [program.step(s, chunk[i : i + 1]) for i, s in enumerate(states)]
    batched_state, batched_y = program.step(program.stack(states), chunk)
    splits = program.split(batched_state)
    for j, ((state_i, y_i), split_i) in enumerate(zip(alone, splits, strict=True)):
        np.testing.assert_allclose(batched_y[j : j + 1], y_i, atol=TOL)
        for key in state_i:
            np.testing.assert_allclose(split_i[key], state_i[key], atol=TOL)
    if mode == "many_to_many_unaligned":
        alone_out = np.concatenate([program.finish(s) for s, _ in alone])
        np.testing.assert_allclose(program.finish(batched_state), alone_out, atol=TOL)


def test_stack_split_roundtrip_is_exact() -> None:
    program = _program("stacked_lstm")
    x = _data("stacked_lstm", batch=3)
    state, _ = program.step(program.initial_state(3), x[:, :4])
    parts = program.split(state)
    assert len(parts) == 3 and all(p[STEPS_KEY].shape == (1,) for p in parts)
    again = program.stack(parts)
    assert all(np.array_equal(again[k], state[k]) for k in state)


def test_recompute_stacks_only_equal_prefixes() -> None:
    program = _program("bidirectional")
    x = _data("bidirectional", batch=2)
    a, _ = program.step(program.initial_state(), x[:1, :3])
    b, _ = program.step(program.initial_state(), x[1:, :2])
    with pytest.raises(ValueError):  # the step queue groups states of equal shapes only
        program.stack([a, b])
    b, _ = program.step(b, x[1:, 2:3])
    _, y = program.step(program.stack([a, b]), x[:, 3:5])
    np.testing.assert_allclose(y, _full("bidirectional", x[:, :5])[:, 3:5], atol=TOL)


@pytest.mark.parametrize("mode", [Mode.ONE_TO_ONE, Mode.ONE_TO_MANY])
def test_vector_modes_have_no_sessions(mode: Mode) -> None:
    with pytest.raises(Unsupported, match=r"sessions are unsupported .* no(t a)? sequence"):
        build_step_program(dense_one_to_one(), mode)


def test_mode_must_fit_output_rank() -> None:
    with pytest.raises(Unsupported, match="rank-2"):
        build_step_program(_model("lstm_aligned"), Mode.MANY_TO_ONE)
