"""Sessions in-process: open, step, finish and reset equal Keras on the whole sequence; limits
and misuse are refused with the field named."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from seqserve_server.core.errors import InvalidInput, LimitExceeded, LoadShed, Unsupported
from seqserve_server.core.sessions import SessionManager, SessionSupport
from tests.server.core.conftest import MAX_SESSIONS
from tests.support.model_zoo import FEATURES

TOLERANCE = 1e-5
CHUNKS = [1, 3, 2, 4]


def _sequence(seed: int, steps: int = sum(CHUNKS)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, FEATURES)).astype(np.float32)


def _pieces(x: np.ndarray) -> list[np.ndarray]:
    return np.split(x, np.cumsum(CHUNKS)[:-1])


def test_aligned_session_steps_equal_keras_on_the_whole_sequence(
    sessions: SessionManager, keras_model
) -> None:
    x = _sequence(1)
    session = sessions.open("aligned")
    assert session.support is SessionSupport.INCREMENTAL

    async def feed() -> list[np.ndarray]:
        outputs = []
        for chunk in _pieces(x):
            output = await sessions.step(session, chunk)
            assert output is not None and output.step == session.steps - len(chunk)
            outputs.append(output.values)
        return outputs

    try:
        outputs = asyncio.run(feed())
    finally:
        sessions.close(session)
    want = keras_model("aligned")(x[None], training=False)[0]
    np.testing.assert_allclose(np.concatenate(outputs), want, atol=TOLERANCE)


def test_many_to_one_session_gives_the_running_output_and_resets(
    sessions: SessionManager, keras_model
) -> None:
    x = _sequence(2)
    model = keras_model("classifier")
    session = sessions.open("classifier", k=2)

    async def feed() -> None:
        seen = 0
        for chunk in _pieces(x):
            output = await sessions.step(session, chunk)
            seen += len(chunk)
            assert output is not None and output.step == seen - 1
            want = model(x[None, :seen], training=False)[0]
            np.testing.assert_allclose(output.values, want, atol=TOLERANCE)
            assert output.top_k["output"][0].indices == list(np.argsort(-np.asarray(want))[:2])
        sessions.reset(session)
        assert session.steps == 0
        again = await sessions.step(session, x[:2])
        assert again is not None
        np.testing.assert_allclose(
            again.values, model(x[None, :2], training=False)[0], atol=TOLERANCE
        )

    try:
        asyncio.run(feed())
    finally:
        sessions.close(session)


def test_unaligned_session_decodes_at_end_input(sessions: SessionManager, keras_model) -> None:
    x = _sequence(3)
    session = sessions.open("enc_dec")

    async def feed() -> None:
        with pytest.raises(InvalidInput, match="at least 1 step"):
            await sessions.finish(session)
        for chunk in _pieces(x):
            assert await sessions.step(session, chunk) is None  # nothing until the input ends
        output = await sessions.finish(session)
        assert output.last and output.step == 0
        want = keras_model("enc_dec")(x[None], training=False)[0]
        np.testing.assert_allclose(output.values, want, atol=TOLERANCE)
        with pytest.raises(InvalidInput, match="a reset after end_input"):
            await sessions.step(session, x[:1])

    try:
        asyncio.run(feed())
    finally:
        sessions.close(session)


def test_open_sessions_are_counted_and_limited(sessions: SessionManager) -> None:
    opened = [sessions.open("classifier") for _ in range(MAX_SESSIONS)]
    try:
        assert sessions.open_count("classifier") == MAX_SESSIONS
        with pytest.raises(LimitExceeded, match=f"its limit is {MAX_SESSIONS}"):
            sessions.open("classifier")
    finally:
        for session in opened:
            sessions.close(session)
            sessions.close(session)  # idempotent
    assert sessions.open_count("classifier") == 0


def test_a_new_session_is_refused_when_the_front_door_says_so(sessions: SessionManager) -> None:
    def congested() -> None:
        raise LoadShed("past capacity", estimate_s=0.0, deadline_s=0.0, retry_after_s=1.0)

    sessions.admit_open = congested
    try:
        with pytest.raises(LoadShed, match="past capacity"):
            sessions.open("classifier")
        assert sessions.open_count("classifier") == 0
    finally:
        sessions.admit_open = lambda: None
    sessions.close(sessions.open("classifier"))


def test_what_sessions_refuse(sessions: SessionManager) -> None:
    with pytest.raises(Unsupported, match="does not support sessions: sessions are unsupported"):
        sessions.open("iris_like")
    with pytest.raises(InvalidInput, match=r"open\.top_k"):
        sessions.open("aligned", k=1)  # no labels
    session = sessions.open("aligned")

    async def misuse() -> None:
        with pytest.raises(InvalidInput) as wrong:
            await sessions.step(session, np.zeros((2, FEATURES + 1), np.float32))
        assert wrong.value.field == "steps.values.shape"
        with pytest.raises(InvalidInput, match="finite numbers"):
            await sessions.step(session, np.full((1, FEATURES), np.inf, np.float32))
        with pytest.raises(InvalidInput, match="at least one step"):
            await sessions.step(session, np.zeros((0, FEATURES), np.float32))
        with pytest.raises(Unsupported, match="end_input applies"):
            await sessions.finish(session)

    try:
        asyncio.run(misuse())
        assert session.steps == 0  # nothing refused was fed
    finally:
        sessions.close(session)


def test_support_is_reported_per_version(sessions: SessionManager, core_repository) -> None:
    support, reason = sessions.support(core_repository.status("aligned"))
    assert support is SessionSupport.INCREMENTAL and "stepped exactly" in reason
    support, reason = sessions.support(core_repository.status("iris_like"))
    assert support is SessionSupport.UNSUPPORTED and "one_to_one" in reason
    assert sessions.incremental_program(core_repository.resolve("aligned")) is not None
    assert sessions.incremental_program(core_repository.resolve("iris_like")) is None


def test_steps_get_the_same_value_check_as_predict_inputs(sessions: SessionManager) -> None:
    """One check for both (the runtime's): integer steps of a float model are taken as floats,
    a bad value is named by its step."""
    session = sessions.open("aligned")

    async def feed() -> None:
        as_ints = await sessions.step(session, np.ones((2, FEATURES), np.int64))
        sessions.reset(session)
        as_floats = await sessions.step(session, np.ones((2, FEATURES), np.float32))
        assert as_ints is not None and as_floats is not None
        np.testing.assert_array_equal(as_ints.values, as_floats.values)
        bad = np.zeros((3, FEATURES), np.float32)
        bad[2, 1] = np.nan
        with pytest.raises(
            InvalidInput, match=r"steps\.values: expected finite numbers, got nan in step 2"
        ):
            await sessions.step(session, bad)

    try:
        asyncio.run(feed())
    finally:
        sessions.close(session)
