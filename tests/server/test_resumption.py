"""Resumable sessions on the wire (seqserve.v1, raw stubs): a session checkpointed on one server
process continues on another that shares the session key, exactly; a stopping server hands its
open sessions off; tokens that must not open are refused with the right code and reason.

Each session is compared with the same session run without interruption on one server (the same
compiled path computes both: bit-equal) and with eager Keras on the prefix.
"""

from __future__ import annotations

import functools
import queue
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import from_tensor, to_tensor
from tests.support.model_zoo import FEATURES, save_zoo
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served, start_server

# incremental, recompute, several outputs, a static input, unaligned (decoded at end_input)
MODELS = ["lstm_aligned", "bidirectional", "two_heads", "sequence_and_static"]
MODELS += ["encoder_decoder_dynamic"]
STATICS = {"sequence_and_static": {"static": np.array([0.5, -1.0], np.float32)}}
SEQUENCE_INPUT = {"sequence_and_static": "steps"}
CHUNKS = (1, 3, 2, 1, 2, 3, 1)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_zoo(tmp_path_factory.mktemp("resume"), MODELS)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "session.keys"
    path.write_text(f"# shared by every replica\n{secrets.token_hex(32)}\n")
    return path


@pytest.fixture(scope="module")
def pair(root: Path, key_file: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two replicas sharing the key."""
    with (
        served(root, "--session-key-file", str(key_file)) as a,
        served(root, "--session-key-file", str(key_file)) as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
def eager(root: Path) -> functools._lru_cache_wrapper:
    return loader(root)


class Call:
    """One Session call driven message by message."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.requests: queue.Queue[pb.SessionRequest | None] = queue.Queue()
        stub = pb_grpc.SeqServeStub(self.channel)
        self.responses = stub.Session(iter(self.requests.get, None), timeout=60)

    def send(self, request: pb.SessionRequest) -> None:
        self.requests.put(request)

    def receive(self) -> pb.SessionResponse:
        return next(self.responses)

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def _open(model: str, **fields: object) -> pb.SessionRequest:
    statics = {k: to_tensor(v) for k, v in STATICS.get(model, {}).items()}
    return pb.SessionRequest(open=pb.SessionOpen(model_name=model, named_inputs=statics, **fields))


def _steps(model: str, x: np.ndarray) -> pb.SessionRequest:
    if model in SEQUENCE_INPUT:
        return pb.SessionRequest(
            steps=pb.SessionSteps(named_values={SEQUENCE_INPUT[model]: to_tensor(x)})
        )
    return pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(x)))


def _values(output: pb.SessionOutput) -> dict[str, np.ndarray]:
    if output.named_outputs:
        return {k: from_tensor(v) for k, v in output.named_outputs.items()}
    return {"": from_tensor(output.values)}


def _answered(model: str) -> bool:
    return model != "encoder_decoder_dynamic"


def _chunks(x: np.ndarray) -> list[np.ndarray]:
    out, start = [], 0
    for size in CHUNKS:
        out.append(x[start : start + size])
        start += size
    return out


def _run(target: str, model: str, chunks: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The uninterrupted session: every answer (and the decoded sequence, unaligned)."""
    call = Call(target)
    call.send(_open(model))
    assert call.receive().WhichOneof("kind") == "opened"
    answers = []
    for chunk in chunks:
        call.send(_steps(model, chunk))
        if _answered(model):
            answers.append(_values(call.receive().output))
    if not _answered(model):
        answers += _decoded(call)
    call.close()
    return answers


def _decoded(call: Call) -> list[dict[str, np.ndarray]]:
    call.send(pb.SessionRequest(end_input=pb.SessionEndInput()))
    steps = []
    while True:
        output = call.receive().output
        steps.append(_values(output))
        if output.last:
            return [{k: np.concatenate([s[k] for s in steps]) for k in steps[0]}]


@pytest.mark.parametrize("model", MODELS)
def test_a_checkpointed_session_continues_exactly_on_another_replica(
    model: str, pair: tuple[ServerProcess, ServerProcess], eager: functools._lru_cache_wrapper
) -> None:
    """checkpoint_every 3: the last checkpoint before message 5 resumes on the other replica,
    which answers the messages after it as the uninterrupted session does (bit-equal)."""
    a, b = pair
    x = np.random.default_rng(len(model)).normal(size=(sum(CHUNKS), FEATURES)).astype(np.float32)
    chunks = _chunks(x)
    want = _run(a.target, model, chunks)

    call = Call(a.target)
    call.send(_open(model, checkpoint_every=3))
    assert call.receive().opened.resumable
    got, checkpoints, fed, since = [], [], 0, 0
    for number, chunk in enumerate(chunks[:5], start=1):
        call.send(_steps(model, chunk))
        if _answered(model):
            got.append(_values(call.receive().output))
        fed, since = fed + len(chunk), since + len(chunk)
        if since >= 3:  # the rule both ends know: a checkpoint follows this message's answer
            checkpoint = call.receive().checkpoint
            assert (checkpoint.steps, checkpoint.messages) == (fed, number)
            checkpoints.append(checkpoint)
            since = 0
    call.close()
    last = checkpoints[-1]
    assert [c.messages for c in checkpoints] == [2, 4]

    resumed = Call(b.target)
    resumed.send(pb.SessionRequest(open=pb.SessionOpen(model_name=model, resume=last.token)))
    opened = resumed.receive().opened
    assert opened.resumed_at_message == last.messages
    assert opened.resumed_at_step == sum(len(c) for c in chunks[: last.messages])
    after = []
    for chunk in chunks[last.messages :]:
        resumed.send(_steps(model, chunk))
        if _answered(model):
            after.append(_values(resumed.receive().output))
    if not _answered(model):
        after += _decoded(resumed)
    resumed.close()
    expected = want[last.messages :] if _answered(model) else want
    assert len(after) == len(expected)
    for g, w in zip(after, expected, strict=True):
        assert g.keys() == w.keys()
        for name in w:
            np.testing.assert_array_equal(g[name], w[name])
    if model == "lstm_aligned":  # and Keras on the whole sequence
        keras_out = keras.ops.convert_to_numpy(eager(model)(x[np.newaxis], training=False))[0]
        served = np.concatenate([o[""] for o in [*got[: last.messages], *after]])
        np.testing.assert_allclose(served, keras_out, atol=1e-5)


def test_a_stopping_server_hands_its_sessions_off(
    root: Path, key_file: Path, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    """SIGTERM: the open session gets a `handoff` instead of its next answer, then UNAVAILABLE
    "session moved"; the token continues on another replica as if nothing happened."""
    _, b = pair
    model = "lstm_aligned"
    x = np.random.default_rng(7).normal(size=(sum(CHUNKS), FEATURES)).astype(np.float32)
    chunks = _chunks(x)
    want = _run(b.target, model, chunks)
    stopping = start_server(root, "--session-key-file", str(key_file))
    try:
        call = Call(stopping.target)
        call.send(_open(model))
        call.receive()
        for chunk in chunks[:3]:
            call.send(_steps(model, chunk))
            call.receive()
        threading.Thread(target=stopping.stop, daemon=True).start()
        handoff = call.receive()
        assert handoff.WhichOneof("kind") == "handoff", handoff
        assert handoff.handoff.messages == 3
        with pytest.raises(grpc.RpcError) as ended:
            call.receive()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "session moved" in (ended.value.details() or "")
        call.close()
    finally:
        stopping.stop()
    resumed = Call(b.target)
    resumed.send(
        pb.SessionRequest(open=pb.SessionOpen(model_name=model, resume=handoff.handoff.token))
    )
    assert resumed.receive().opened.resumed_at_message == 3
    for chunk, expected in zip(chunks[3:], want[3:], strict=True):
        resumed.send(_steps(model, chunk))
        np.testing.assert_array_equal(_values(resumed.receive().output)[""], expected[""])
    resumed.close()


def _token(target: str, model: str) -> bytes:
    call = Call(target)
    call.send(_open(model))
    call.receive()
    call.send(_steps(model, np.ones((2, FEATURES), np.float32)))
    call.receive()
    call.send(pb.SessionRequest(checkpoint=pb.SessionCheckpointRequest()))
    token = call.receive().checkpoint.token
    call.close()
    return token


def _resume_error(target: str, model: str, token: bytes) -> grpc.RpcError:
    call = Call(target)
    call.send(pb.SessionRequest(open=pb.SessionOpen(model_name=model, resume=token)))
    with pytest.raises(grpc.RpcError) as caught:
        call.receive()
    call.close()
    return caught.value


def test_tokens_that_must_not_open_are_refused(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    token = _token(a.target, "lstm_aligned")
    tampered = bytearray(token)
    tampered[len(token) // 2] ^= 1
    cases = [
        ("lstm_aligned", bytes(tampered), grpc.StatusCode.INVALID_ARGUMENT, "not authentic"),
        ("lstm_aligned", token[:40], grpc.StatusCode.INVALID_ARGUMENT, "resume"),
        ("lstm_aligned", b"not a token at all", grpc.StatusCode.INVALID_ARGUMENT, "resume"),
        ("bidirectional", token, grpc.StatusCode.FAILED_PRECONDITION, "lstm_aligned"),
    ]
    for model, bad, code, words in cases:
        error = _resume_error(b.target, model, bad)
        assert error.code() == code and words in (error.details() or ""), error
        assert token.hex() not in (error.details() or "")
    # the replica still serves sessions
    np.testing.assert_array_equal(
        _run(b.target, "lstm_aligned", [np.ones((1, FEATURES), np.float32)])[0][""].shape, (1, 2)
    )


def test_without_a_key_sessions_say_they_are_not_resumable(server: ServerProcess) -> None:
    """The shared test server runs without --session-key-file."""
    call = Call(server.target)
    call.send(pb.SessionRequest(open=pb.SessionOpen(model_name="aligned")))
    assert not call.receive().opened.resumable
    call.send(pb.SessionRequest(checkpoint=pb.SessionCheckpointRequest()))
    with pytest.raises(grpc.RpcError) as caught:
        call.receive()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--session-key-file" in (caught.value.details() or "")
    call.close()
    meta = pb_grpc.SeqServeStub(grpc.insecure_channel(server.target)).GetModelMetadata(
        pb.GetModelMetadataRequest(model_name="aligned"), timeout=30
    )
    assert not meta.resumable_sessions
