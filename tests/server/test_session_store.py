"""Sessions that outlive their replica (issue 23): replicas sharing a session key and a real
Redis (`--session-store`, a throwaway redis-server on 127.0.0.1) continue each other's Triton
sequences (stock tritonclient) and seqserve.v1 sessions (`resume_session_id`).

Every continued sequence is compared with the same sequence run without interruption on one
server (the same compiled path computes both: bit-equal) and with eager Keras (1e-5).
"""

from __future__ import annotations

import functools
import hashlib
import queue
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
import yaml
from tritonclient.utils import InferenceServerException

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import from_tensor, to_tensor
from tests.support import redis_server
from tests.support.model_zoo import FEATURES, save_zoo
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served, start_server, v2_client

# incremental (aligned: an output per step) and a static input kept in the state (many-to-one)
MODELS = ["lstm_aligned", "sequence_and_static"]
STATIC = np.array([[0.5, -1.0]], np.float32)
SEQUENCE_INPUT = {"lstm_aligned": "input", "sequence_and_static": "steps"}
CHUNKS = (1, 3, 2, 1, 2, 3, 1)
TTL_S = 600

pytestmark = pytest.mark.skipif(not redis_server.available(), reason=redis_server.MISSING)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_zoo(tmp_path_factory.mktemp("store"), MODELS)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "session.keys"
    path.write_text(f"{secrets.token_hex(32)}\n")
    return path


@pytest.fixture(scope="module")
def store() -> Iterator[str]:
    with redis_server.redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def peek(store: str) -> Iterator[redis.Redis]:
    """The store as an operator sees it (redis-cli would do)."""
    client = redis.Redis.from_url(store)
    yield client
    client.close()


def _args(key_file: Path, store: str | None, write: str = "on-drain") -> list[str]:
    args = ["--session-key-file", str(key_file), "--session-token-ttl-s", str(TTL_S)]
    if store is not None:
        args += ["--session-store", store, "--session-store-write", write]
    return args


@pytest.fixture(scope="module")
def replica(root: Path, key_file: Path, store: str) -> Iterator[ServerProcess]:
    """A long-lived replica sharing the key and the store (writes on drain)."""
    with served(root, *_args(key_file, store)) as server:
        yield server


@pytest.fixture(scope="module")
def eager(root: Path) -> functools._lru_cache_wrapper:
    return loader(root)


def _x(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(sum(CHUNKS), FEATURES)).astype(np.float32)


def _chunks(x: np.ndarray) -> list[np.ndarray]:
    bounds = np.cumsum(CHUNKS)[:-1]
    return np.split(x, bounds)


def _tensor(name: str, x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _request(model: str, chunks: list[np.ndarray], i: int, sequence: int | str) -> dict[str, Any]:
    """The i-th request of a sequence fed `chunks` (static input on the first)."""
    inputs = [_tensor(SEQUENCE_INPUT[model], chunks[i][np.newaxis])]
    if i == 0 and model == "sequence_and_static":
        inputs.append(_tensor("static", STATIC))
    return {
        "model_name": model,
        "inputs": inputs,
        "sequence_id": sequence,
        "sequence_start": i == 0,
        "sequence_end": i == len(chunks) - 1,
    }


def _infer(client: triton.InferenceServerClient, request: dict[str, Any]) -> np.ndarray:
    return client.infer(**request).as_numpy("output")[0]


def _uninterrupted(target: str, model: str, chunks: list[np.ndarray], sequence: int) -> list:
    with v2_client(target) as client:
        return [_infer(client, _request(model, chunks, i, sequence)) for i in range(len(chunks))]


def _stream(target: str, requests: list[dict[str, Any]]) -> list[np.ndarray]:
    """The requests sent at once on one ModelStreamInfer stream; outputs in order."""
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with v2_client(target) as client:
        client.start_stream(callback=lambda result, error: received.put((result, error)))
        try:
            for request in requests:
                client.async_stream_infer(**request)
            answers = [received.get(timeout=60) for _ in requests]
        finally:
            client.stop_stream()
    assert [error for _, error in answers] == [None] * len(requests), answers
    return [result.as_numpy("output")[0] for result, _ in answers]


def _keras(eager: functools._lru_cache_wrapper, model: str, x: np.ndarray) -> np.ndarray:
    inputs = [x[np.newaxis], STATIC] if model == "sequence_and_static" else x[np.newaxis]
    return keras.ops.convert_to_numpy(eager(model)(inputs, training=False))[0]


def _check(
    model: str, got: list[np.ndarray], want: list[np.ndarray], eager: Any, x: np.ndarray
) -> None:
    """Bit-equal to the uninterrupted sequence, and equal to Keras on the whole of it."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    served = np.concatenate(got) if model == "lstm_aligned" else got[-1]
    np.testing.assert_allclose(served, _keras(eager, model, x), atol=1e-5, rtol=1e-5)


def _failure(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


class Call:
    """One seqserve.v1 Session call driven message by message."""

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


def _steps(x: np.ndarray) -> pb.SessionRequest:
    return pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(x)))


def _kill(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)


# -- written on drain ----------------------------------------------------------------------------


def test_a_stopping_replica_leaves_its_sequences_and_sessions_to_another(
    root: Path,
    key_file: Path,
    store: str,
    replica: ServerProcess,
    peek: redis.Redis,
    eager: functools._lru_cache_wrapper,
) -> None:
    """SIGTERM: the stopping replica writes its open Triton sequences and v1 sessions to the
    store; a new client of the other replica continues each exactly where it stopped."""
    xs = {model: _x(i) for i, model in enumerate(MODELS)}
    chunks = {model: _chunks(x) for model, x in xs.items()}
    want = {m: _uninterrupted(replica.target, m, chunks[m], 900 + i) for i, m in enumerate(MODELS)}
    ids = {"lstm_aligned": 101, "sequence_and_static": "weekly-7"}  # integer and string ids
    got: dict[str, list[np.ndarray]] = {model: [] for model in MODELS}
    stopping = start_server(root, *_args(key_file, store))
    try:
        with v2_client(stopping.target) as client:
            for model in MODELS:
                for i in range(3):
                    got[model].append(_infer(client, _request(model, chunks[model], i, ids[model])))
        session = Call(stopping.target)
        session.send(pb.SessionRequest(open=pb.SessionOpen(model_name="lstm_aligned")))
        session_id = session.receive().opened.session_id
        v1 = []
        for chunk in chunks["lstm_aligned"][:3]:
            session.send(_steps(chunk))
            v1.append(from_tensor(session.receive().output.values))
        threading.Thread(target=stopping.stop, daemon=True).start()
        assert session.receive().WhichOneof("kind") == "handoff"
        session.close()
    finally:
        assert stopping.stop() == 0, stopping.output()
    assert "2 open sequences written to the session store" in stopping.output()
    keys = {k.decode() for k in peek.keys("seqserve:*")}
    assert {
        "seqserve:seq:lstm_aligned:101",
        'seqserve:seq:sequence_and_static:"weekly-7"',
        f"seqserve:session:{session_id}",
    } <= keys
    assert 0 < peek.ttl("seqserve:seq:lstm_aligned:101") <= TTL_S

    # Triton: the rest of lstm_aligned's sequence at once on one stream (taken from the store
    # once, the requests queued behind it in order); the other one request by request.
    rest = [_request("lstm_aligned", chunks["lstm_aligned"], i, 101) for i in range(3, 7)]
    got["lstm_aligned"] += _stream(replica.target, rest)
    with v2_client(replica.target) as client:
        for i in range(3, 7):
            request = _request("sequence_and_static", chunks["sequence_and_static"], i, "weekly-7")
            got["sequence_and_static"].append(_infer(client, request))
        for model in MODELS:
            _check(model, got[model], want[model], eager, xs[model])
        assert not peek.exists("seqserve:seq:lstm_aligned:101"), "taken: no second copy"
        assert replica.output().count("sequence 101 of 'lstm_aligned' continued") == 1
        ended = _failure(
            lambda: _infer(client, _request("lstm_aligned", chunks["lstm_aligned"], 3, 101))
        )
        assert ended.status() == "StatusCode.FAILED_PRECONDITION"
        assert "101" in ended.message() and "nor in the shared session store" in ended.message()

    # seqserve.v1: open with resume_session_id, then the messages after the handed-off ones.
    resumed = Call(replica.target)
    resumed.send(
        pb.SessionRequest(
            open=pb.SessionOpen(model_name="lstm_aligned", resume_session_id=session_id)
        )
    )
    opened = resumed.receive().opened
    assert (opened.resumed_at_message, opened.resumed_at_step) == (3, 6)
    for chunk in chunks["lstm_aligned"][3:]:
        resumed.send(_steps(chunk))
        v1.append(from_tensor(resumed.receive().output.values))
    resumed.close()
    np.testing.assert_array_equal(np.concatenate(v1), np.concatenate(want["lstm_aligned"]))


def test_a_stored_state_that_does_not_fit_is_refused_with_the_resume_codes(
    replica: ServerProcess, peek: redis.Redis
) -> None:
    """What the store holds for a sequence is a resume token, refused as SessionOpen.resume
    refuses one: not a token, INVALID_ARGUMENT; another model's, FAILED_PRECONDITION; both
    naming the sequence. Nothing stored: FAILED_PRECONDITION, not open nor in the store."""
    chunks = _chunks(_x(3))
    peek.set("seqserve:seq:lstm_aligned:55", b"not a token")
    peek.set("seqserve:seq:sequence_and_static:56", _checkpoint(replica.target, "lstm_aligned"))
    with v2_client(replica.target) as client:
        bad = _failure(lambda: _infer(client, _request("lstm_aligned", chunks, 1, 55)))
        assert bad.status() == "StatusCode.INVALID_ARGUMENT", bad.message()
        assert "sequence 55 in the shared session store" in bad.message()
        other = _failure(lambda: _infer(client, _request("sequence_and_static", chunks, 1, 56)))
        assert other.status() == "StatusCode.FAILED_PRECONDITION", other.message()
        assert "sequence 56 in the shared session store" in other.message()
        assert "lstm_aligned" in other.message()
        missing = _failure(lambda: _infer(client, _request("lstm_aligned", chunks, 1, 57)))
        assert missing.status() == "StatusCode.FAILED_PRECONDITION", missing.message()
        assert "57" in missing.message() and "nor in the shared session store" in missing.message()
    assert peek.exists("seqserve:seq:sequence_and_static:56"), "a refused token stays"


def _checkpoint(target: str, model: str) -> bytes:
    """A genuine token of a v1 session of `model` (two steps fed)."""
    call = Call(target)
    call.send(pb.SessionRequest(open=pb.SessionOpen(model_name=model)))
    call.receive()
    call.send(_steps(np.ones((2, FEATURES), np.float32)))
    call.receive()
    call.send(pb.SessionRequest(checkpoint=pb.SessionCheckpointRequest()))
    token = call.receive().checkpoint.token
    call.close()
    return token


def test_a_stored_sequence_continues_only_for_its_caller(
    root: Path, key_file: Path, store: str, peek: redis.Redis, tmp_path: Path
) -> None:
    """With tokens (auth), a stored sequence is bound to the caller that started it: another
    caller is refused (FAILED_PRECONDITION) and cannot destroy it; its own caller continues."""
    tokens = tmp_path / "tokens.yaml"
    grants = {"alice": "tok-alice", "bob": "tok-bob"}
    entries = [
        {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "models": ["*"],
         "scopes": ["infer", "read"]}
        for name, token in grants.items()
    ]  # fmt: skip
    tokens.write_text(yaml.safe_dump({"tokens": entries}))
    model, chunks = "lstm_aligned", _chunks(_x(21))
    args = [*_args(key_file, store), "--auth-tokens-file", str(tokens)]
    as_alice = {"headers": {"authorization": "Bearer tok-alice"}}
    as_bob = {"headers": {"authorization": "Bearer tok-bob"}}
    with served(root, *args) as b:
        with v2_client(b.target) as client:
            want = [
                client.infer(**_request(model, chunks, i, 809), **as_alice).as_numpy("output")[0]
                for i in range(len(chunks))
            ]
        a = start_server(root, *args)
        try:
            with v2_client(a.target) as client:
                got = [
                    client.infer(**_request(model, chunks, i, 808), **as_alice).as_numpy("output")[
                        0
                    ]
                    for i in range(2)
                ]
        finally:
            assert a.stop() == 0
        with v2_client(b.target) as client:
            refused = _failure(lambda: client.infer(**_request(model, chunks, 2, 808), **as_bob))
            assert refused.status() == "StatusCode.FAILED_PRECONDITION", refused.message()
            assert "another caller" in refused.message() and "alice" not in refused.message()
            assert peek.exists("seqserve:seq:lstm_aligned:808"), "another caller cannot take it"
            for i in range(2, len(chunks)):
                result = client.infer(**_request(model, chunks, i, 808), **as_alice)
                got.append(result.as_numpy("output")[0])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# -- written every step --------------------------------------------------------------------------


def test_every_step_writes_survive_a_crash_and_a_stale_copy_steps_aside(
    root: Path, key_file: Path, store: str, peek: redis.Redis, eager: Any
) -> None:
    """--session-store-write every-step: each answered request is in the store. A sequence
    continued on another replica while its first one still runs: the first one's stale copy
    refuses the next request it gets (UNAVAILABLE, "moved"), which sent again continues from the
    store; SIGKILL loses nothing answered."""
    model, sequence, key = "lstm_aligned", 4242, "seqserve:seq:lstm_aligned:4242"
    x = _x(11)
    chunks = _chunks(x)
    args = _args(key_file, store, "every-step")
    with served(root, *args) as b:
        want = _uninterrupted(b.target, model, chunks, 77)
        a = start_server(root, *args)
        try:
            got, tokens = [], []
            with v2_client(a.target) as on_a, v2_client(b.target) as on_b:
                for i in range(3):
                    got.append(_infer(on_a, _request(model, chunks, i, sequence)))
                    tokens.append(peek.get(key))
                assert None not in tokens and len(set(tokens)) == 3, "written after each request"
                got.append(_infer(on_b, _request(model, chunks, 3, sequence)))  # b takes it
                stale = _failure(lambda: _infer(on_a, _request(model, chunks, 4, sequence)))
                assert stale.status() == "StatusCode.UNAVAILABLE", stale.message()
                assert "moved" in stale.message()
                got.append(_infer(on_a, _request(model, chunks, 4, sequence)))  # sent again
            _kill(a)
            with v2_client(b.target) as on_b:
                # b's copy is behind a's last write: it steps aside once, then takes a's state
                again = _failure(lambda: _infer(on_b, _request(model, chunks, 5, sequence)))
                assert again.status() == "StatusCode.UNAVAILABLE", again.message()
                for i in range(5, 7):
                    got.append(_infer(on_b, _request(model, chunks, i, sequence)))
        finally:
            a.stop()
        _check(model, got, want, eager, x)
        assert not peek.exists(key), "sequence_end removes it"


def test_a_retried_request_is_answered_again_not_applied_twice(
    root: Path, key_file: Path, store: str, peek: redis.Redis, eager: Any
) -> None:
    """Every-step writes, requests with ids: a request a replica applied and wrote, whose answer
    the caller never got (the replica died, or the answer was lost), is sent again to another
    replica: answered again from the stored state (bit-equal), not applied twice, nothing
    written. One id with other content is a new request. The sequence's last request stays
    answerable for a while after sequence_end; anything else of that id is not open."""
    model, sequence, key = "lstm_aligned", 5151, "seqserve:seq:lstm_aligned:5151"
    x = _x(12)
    chunks = _chunks(x)
    args = _args(key_file, store, "every-step")

    def request(i: int, request_id: str = "") -> dict[str, Any]:
        return _request(model, chunks, i, sequence) | {"request_id": request_id or f"step-{i}"}

    with served(root, *args) as b:
        want = _uninterrupted(b.target, model, chunks, 79)
        a = start_server(root, *args)
        try:
            with v2_client(a.target) as on_a, v2_client(b.target) as on_b:
                got = [_infer(on_a, request(i)) for i in range(3)]
                written = peek.get(key)
                for target in (on_b, on_b, on_a):  # b takes it from the store; a still holds it
                    np.testing.assert_array_equal(_infer(target, request(2)), got[2])
                assert peek.get(key) == written, "a retry writes nothing"
                got.append(_infer(on_b, request(3, request_id="step-2")))  # reused id, new content
                got += [_infer(on_b, request(i)) for i in range(4, 7)]  # 6 ends it
                assert 0 < peek.ttl(key) <= 300, "the last answer stays a while, not a token's life"
            _kill(a)
            with v2_client(b.target) as on_b:
                np.testing.assert_array_equal(_infer(on_b, request(6)), got[6])
                other = _failure(lambda: _infer(on_b, request(5)))
                assert other.status() == "StatusCode.FAILED_PRECONDITION", other.message()
                assert "ended with sequence_end" in other.message()
        finally:
            a.stop()
        _check(model, got, want, eager, x)


# -- without a store -----------------------------------------------------------------------------


def test_without_a_store_another_replica_refuses(root: Path, key_file: Path) -> None:
    """No --session-store: nothing outlives the replica (FAILED_PRECONDITION naming the
    sequence), resume_session_id is refused, and everything else works as before."""
    model = "lstm_aligned"
    chunks = _chunks(_x(5))
    with served(root, *_args(key_file, None)) as other:
        first = start_server(root, *_args(key_file, None))
        try:
            with v2_client(first.target) as client:
                _infer(client, _request(model, chunks, 0, 31))
        finally:
            assert first.stop() == 0
        with v2_client(other.target) as client:
            refused = _failure(lambda: _infer(client, _request(model, chunks, 1, 31)))
        assert refused.status() == "StatusCode.FAILED_PRECONDITION"
        assert "31" in refused.message() and "store" not in refused.message()
        call = Call(other.target)
        call.send(pb.SessionRequest(open=pb.SessionOpen(model_name=model, resume_session_id="ab")))
        with pytest.raises(grpc.RpcError) as caught:
            call.receive()
        call.close()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--session-store" in (caught.value.details() or "")


def test_a_store_needs_a_session_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "seqserve_server.cli", "serve", "--session-store", "redis://x:6379/0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--session-store needs --session-key-file" in result.stdout + result.stderr
