"""Stateful streaming sessions through the real server: exact, batched across sessions, bounded,
and freed when the caller goes away."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from seqserve_client import AsyncSeqServeClient, SeqServeClient, SeqServeError
from tests.support.metrics import scrape, value
from tests.support.model_zoo import FEATURES

TOLERANCE = 1e-5
CHUNKS = [1, 3, 2, 1, 4]  # 11 steps fed in uneven pieces


def pieces(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


def sequence(seed: int, steps: int = sum(CHUNKS)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, FEATURES)).astype(np.float32)


@pytest.mark.parametrize("name", ["aligned", "gru", "masked", "stacked"])
def test_aligned_session_equals_predict(client: SeqServeClient, name: str) -> None:
    x = sequence(1)
    with client.session(name) as s:
        outputs = [s.step(chunk) for chunk in pieces(x, CHUNKS)]
    assert [len(o) for o in outputs] == CHUNKS
    expected = client.predict(name, x[None])[0]
    np.testing.assert_allclose(np.concatenate(outputs), expected, atol=TOLERANCE)


def test_recompute_session_equals_predict_on_each_prefix(client: SeqServeClient) -> None:
    """A Bidirectional layer sees the future: each step's output is the one its prefix gives."""
    x = sequence(1)
    with client.session("stacked_bi") as s:
        assert s.info.session_support == "session_recompute"
        outputs = [s.step(chunk) for chunk in pieces(x, CHUNKS)]
    ends = np.cumsum(CHUNKS)
    for out, end, k in zip(outputs, ends, CHUNKS, strict=True):
        expected = client.predict("stacked_bi", x[None, :end])[0][-k:]
        np.testing.assert_allclose(out, expected, atol=TOLERANCE)


@pytest.mark.parametrize("name", ["classifier", "simple_rnn", "conv"])
def test_many_to_one_running_prediction_equals_predict_on_prefix(
    client: SeqServeClient, name: str
) -> None:
    x = sequence(2)
    with client.session(name) as s:
        running = [s.step(chunk) for chunk in pieces(x, CHUNKS)]
    ends = np.cumsum(CHUNKS)
    expected = client.predict(name, [x[:end] for end in ends])
    for got, want in zip(running, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)


@pytest.mark.parametrize(("name", "steps"), [("enc_dec", 11), ("cropped", 10)])
def test_unaligned_session_decodes_on_end_input(
    client: SeqServeClient, name: str, steps: int
) -> None:
    x = sequence(3, steps)
    with client.session(name) as s:
        for chunk in pieces(x, [1, 3, 2, steps - 6]):
            assert s.step(chunk) is None
        parts = list(s.decode())
    assert [p.step for p in parts] == list(range(len(parts)))
    assert parts[-1].last and not any(p.last for p in parts[:-1])
    decoded = np.concatenate([p.values for p in parts])
    np.testing.assert_allclose(decoded, client.predict(name, x[None])[0], atol=TOLERANCE)


def test_fixed_length_model_takes_its_length_at_most(client: SeqServeClient) -> None:
    x = sequence(4, 7)
    with client.session("fixed") as s:
        s.step(x[:4])
        np.testing.assert_allclose(
            s.step(x[4:6]), client.predict("fixed", x[None, :6])[0], atol=TOLERANCE
        )
        with pytest.raises(SeqServeError) as caught:
            s.step(x[6:])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 6 steps" in caught.value.message


def test_reset_starts_a_new_sequence(client: SeqServeClient) -> None:
    a, b = sequence(5, 4), sequence(6, 4)
    with client.session("gru") as s:
        s.step(a)
        s.reset()
        got = s.step(b)
    np.testing.assert_allclose(got, client.predict("gru", b[None])[0], atol=TOLERANCE)


def test_emit_on_request_and_top_k(client: SeqServeClient) -> None:
    x = sequence(7, 6)
    with client.session("classifier", emit_on_request=True, top_k=2) as s:
        assert s.step(x[:3]) is None
        output = s.step_full(x[3:], emit=True)
    assert output is not None and output.step == 5
    # the same labels; the scores equal Keras' within the proof's tolerance (a session may
    # compute in numpy, Predict in TensorFlow: they can differ in the last bits)
    want = client.classify("classifier", x[None], top_k=2)[0]
    assert [label for label, _ in output.top_k[0]] == [label for label, _ in want]
    np.testing.assert_allclose(
        [score for _, score in output.top_k[0]], [score for _, score in want], atol=TOLERANCE
    )


def test_session_support_is_in_metadata(client: SeqServeClient) -> None:
    assert client.metadata("gru").session_support == "session_incremental"
    assert client.metadata("enc_dec").session_support == "session_incremental"
    assert client.metadata("stacked_bi").session_support == "session_recompute"
    assert client.metadata("iris_like").session_support == "session_unsupported"


@pytest.mark.parametrize("name", ["iris_like", "generator"])
def test_vector_input_models_refuse_sessions(client: SeqServeClient, name: str) -> None:
    with pytest.raises(SeqServeError) as caught, client.session(name):
        pass
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no sequence" in caught.value.message or "not a sequence" in caught.value.message


def test_bad_step_ends_only_that_session(client: SeqServeClient) -> None:
    x = sequence(8, 4)
    with client.session("gru") as good:
        good.step(x[:2])
        with pytest.raises(SeqServeError) as caught, client.session("gru") as bad:
            bad.step(np.ones((2, FEATURES + 1), np.float32))
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field == "steps.values.shape"
        rest = good.step(x[2:])
    np.testing.assert_allclose(rest, client.predict("gru", x[None])[0][2:], atol=TOLERANCE)


def open_sessions(client: SeqServeClient, name: str, want: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    count = client.metadata(name).open_sessions
    while count != want and time.monotonic() < deadline:
        time.sleep(0.05)
        count = client.metadata(name).open_sessions
    return count


def test_limit_idle_timeout_and_cleanup(client: SeqServeClient) -> None:
    first, second = client.session("limited"), client.session("limited")
    assert open_sessions(client, "limited", 2) == 2
    with pytest.raises(SeqServeError) as caught, client.session("limited"):
        pass
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.close()
    second.cancel()
    assert open_sessions(client, "limited", 0) == 0
    idle = client.session("limited")
    time.sleep(1.5)  # the model's idle timeout is 1 s
    with pytest.raises(SeqServeError) as caught:
        idle.step(sequence(9, 1))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle" in caught.value.message
    assert open_sessions(client, "limited", 0) == 0


def test_deadline_frees_the_session(client: SeqServeClient) -> None:
    with client.session("gru", timeout=0.5) as s:
        s.step(sequence(10, 1))
        time.sleep(1.0)
        with pytest.raises(SeqServeError) as caught:
            s.step(sequence(10, 1))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert open_sessions(client, "gru", 0) == 0


def test_200_concurrent_sessions_match_their_references(client: SeqServeClient, server) -> None:
    count, steps = 200, 6
    data = [sequence(100 + i, steps) for i in range(count)]
    references = client.predict("gru", np.stack(data))
    before = scrape(server)

    async def one(c: AsyncSeqServeClient, x: np.ndarray) -> np.ndarray:
        async with c.session("gru") as s:
            return np.concatenate([await s.step(x[t]) for t in range(steps)])

    async def run_all() -> list[np.ndarray]:
        async with AsyncSeqServeClient(server.target) as c:
            return await asyncio.gather(*(one(c, x) for x in data))

    results = asyncio.run(run_all())
    for got, want in zip(results, references, strict=True):
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
    after = scrape(server)
    batches = value(after, "seqserve_batch_size_count", model="gru") - value(
        before, "seqserve_batch_size_count", model="gru"
    )
    stepped = value(after, "seqserve_session_steps_total", model="gru") - value(
        before, "seqserve_session_steps_total", model="gru"
    )
    assert stepped == count * steps
    assert batches < stepped, "steps of concurrent sessions must share computations"
    assert open_sessions(client, "gru", 0) == 0


def test_cancelled_sessions_leave_nothing_behind(server, client: SeqServeClient) -> None:
    async def run() -> None:
        async with AsyncSeqServeClient(server.target) as c:
            sessions = [await c.session("gru").__aenter__() for _ in range(20)]
            for s in sessions:
                await s.step(sequence(11, 2))
            assert (await c.metadata("gru")).open_sessions == 20
            for s in sessions:
                s.cancel()

    asyncio.run(run())
    assert open_sessions(client, "gru", 0) == 0
