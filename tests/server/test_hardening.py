"""Hostile and careless callers (issue 10's findings), each against the real server: requests
that used to reach INTERNAL, loop, or hold memory without bound now fail fast with the right code
naming the field or limit, and the server keeps serving everything else."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import yaml
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from keras import layers

from seqserve.inference import grpc_service_pb2 as v2
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_batch, to_tensor
from seqserve_client import SeqServeClient, SeqServeError
from seqserve_client.channel import DEFAULT_OPTIONS
from seqserve_server.core.errors import LimitExceeded
from seqserve_server.core.limits import check_stream_messages
from seqserve_server.core.modes import Mode
from tests.support.metrics import samples, scrape, value
from tests.support.model_zoo import FEATURES, aligned, lstm_many_to_one
from tests.support.server_process import ServerProcess, served

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_STEPS, MAX_INPUTS, MAX_ELEMENTS = 64, 512, 100_000
MAX_RPCS, MAX_STREAMS = 6, 3
MAX_OPEN_STREAMS, STREAM_LIFETIME_S = 2, 2.0  # health Watch / reflection streams
MAX_STREAM_MESSAGES, CLASSIFIER_STREAM_MESSAGES = 1000, 10
FAST_S = 5.0  # every refusal here is answered well within this


def wide() -> keras.Model:
    """4 numbers in, 4096 out: a few hundred inputs make a response larger than gRPC's 4 MiB."""
    inp = keras.Input((4,))
    return keras.Model(inp, layers.Dense(4096)(inp))


def embedding() -> keras.Model:
    """Its input values are indices: one out of range makes TensorFlow raise while computing."""
    inp = keras.Input((4,))
    x = layers.Flatten()(layers.Embedding(10, 2)(inp))
    return keras.Model(inp, layers.Dense(3)(x))


def fails_warm_up() -> keras.Model:
    """Loads fine; computing any number of steps but 4 raises (its warm-up uses 2)."""
    inp = keras.Input((None, FEATURES))
    return keras.Model(inp, layers.Reshape((4, FEATURES))(inp))


MODELS = {
    "aligned": (aligned, {}),
    "classifier": (
        lstm_many_to_one,
        {"labels": ["w", "x", "y", "z"], "max_stream_messages": CLASSIFIER_STREAM_MESSAGES},
    ),
    "wide": (wide, {}),
    "embed": (embedding, {}),
    "bad_warmup": (fails_warm_up, {"mode": "many_to_many_unaligned"}),
}


@pytest.fixture(scope="module")
def hardened_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardened")
    for i, (name, (build, config)) in enumerate(MODELS.items()):
        keras.utils.set_random_seed(2000 + i)
        (root / name / "1").mkdir(parents=True)
        build().save(root / name / "1" / "model.keras")
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "no_file" / "1").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def hardened(hardened_root: Path) -> Iterator[ServerProcess]:
    """Small limits, so that crossing each is cheap; a model without a file; models that fail."""
    limits = {
        "--max-sequence-length": MAX_STEPS, "--max-inputs-per-request": MAX_INPUTS,
        "--max-request-elements": MAX_ELEMENTS, "--max-concurrent-rpcs": MAX_RPCS,
        "--max-streams-per-connection": MAX_STREAMS, "--grace-period-s": 1,
        "--max-stream-messages": MAX_STREAM_MESSAGES,
        "--max-open-streams": MAX_OPEN_STREAMS, "--open-stream-lifetime-s": STREAM_LIFETIME_S,
    }  # fmt: skip
    with served(hardened_root, *(str(a) for kv in limits.items() for a in kv)) as process:
        yield process


@pytest.fixture(scope="module")
def stub(hardened: ServerProcess) -> Iterator[pb_grpc.SeqServeStub]:
    with grpc.insecure_channel(hardened.target) as channel:
        yield pb_grpc.SeqServeStub(channel)


def refused(call: Callable[..., Any], request: object) -> grpc.RpcError:
    """The error a raw call ends with, checked to come fast and never be INTERNAL/UNKNOWN."""
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=30)
        if hasattr(result, "__iter__"):  # a response stream: read it to its end
            list(result)
    assert time.monotonic() - start < FAST_S
    error = caught.value
    assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error
    return error


def predict(
    model: str, values: pb.Tensor, lengths: list[int] | None = None, k: int = 0
) -> pb.PredictRequest:
    batch = pb.Batch(values=values, lengths=lengths or [])
    return pb.PredictRequest(model_name=model, inputs=batch, top_k=k)


def seqs(*lengths: int) -> list[np.ndarray]:
    return [np.ones((n, FEATURES), np.float32) for n in lengths]


# --- the tensor codec: enum values, rank, checked arithmetic ---------------------------------


@pytest.mark.parametrize("code", [-1, 7, 2**31 - 1, -(2**31)])
def test_unknown_data_type_number(stub: pb_grpc.SeqServeStub, code: int) -> None:
    tensor = pb.Tensor(dtype=code, shape=[1, 2, FEATURES], raw=b"\0" * 24)
    for call in (stub.Predict, stub.PredictStream):
        error = refused(call, predict("aligned", tensor))
        assert error.code() == INVALID
        assert error.details().startswith("inputs.values.dtype") and str(code) in error.details()


def test_rank_over_64_and_over_the_models(stub: pb_grpc.SeqServeStub) -> None:
    deep = pb.Tensor(dtype=pb.FLOAT32, shape=[1] * 65, raw=b"\0" * 4)
    error = refused(stub.Predict, predict("aligned", deep))
    assert error.code() == INVALID and "at most 64 axes" in error.details()
    five = to_tensor(np.ones((1, 1, 2, 2, FEATURES), np.float32))
    error = refused(stub.Predict, predict("aligned", five))
    assert error.code() == INVALID and "rank 3" in error.details()
    scalar = pb.Tensor(dtype=pb.FLOAT32, shape=[], raw=b"\0" * 4)
    for model in ("aligned", "wide"):
        error = refused(stub.Predict, predict(model, scalar))
        assert error.code() == INVALID and error.details().startswith("inputs.values.shape")


@pytest.mark.parametrize(
    "tensor",
    [
        # 3 x 6148914691236517206 wraps to 2 in int64: 2 float32 values, 8 bytes
        pb.Tensor(dtype=pb.FLOAT32, shape=[3, 6148914691236517206], raw=b"\0" * 8),
        # 150 x (2**63 - 1)**2 wraps to 150: 600 bytes
        pb.Tensor(dtype=pb.FLOAT32, shape=[150, 2**63 - 1, 2**63 - 1], raw=b"\0" * 600),
        pb.Tensor(shape=[150, 2**63 - 1, 2**63 - 1], float_values=pb.FloatValues(values=[1.0])),
        pb.Tensor(dtype=pb.FLOAT32, shape=[0, 2**62], raw=b""),
    ],
    ids=["wraps-to-8-bytes", "wraps-to-150", "float-values", "zero-sized"],
)
def test_shape_products_cannot_overflow(stub: pb_grpc.SeqServeStub, tensor: pb.Tensor) -> None:
    error = refused(stub.Predict, predict("aligned", tensor))
    assert error.code() == EXHAUSTED
    assert error.details().startswith("inputs.values.shape") and "max_request_elements" in (
        error.details()
    )


def test_lengths_whose_sum_wraps_around(stub: pb_grpc.SeqServeStub) -> None:
    """4 x 2**62 wraps to 0, the step count of an empty tensor: it used to pass, and
    PredictStream then looped over zero-step windows until the caller gave up."""
    empty = to_tensor(np.zeros((0, FEATURES), np.float32))
    request = predict("aligned", empty, [2**62] * 4)
    for call in (stub.Predict, stub.PredictStream):
        error = refused(call, request)  # in well under the 30 s deadline
        assert error.code() == INVALID and error.details().startswith("inputs.lengths")
        assert str(2**64) in error.details()


def test_a_length_of_2_pow_31_fails_fast(stub: pb_grpc.SeqServeStub) -> None:
    no_features = pb.Tensor(dtype=pb.FLOAT32, shape=[2**31, 0], raw=b"")
    for request in (
        predict("aligned", no_features, [2**31]),
        predict("aligned", pb.Tensor(dtype=pb.FLOAT32, shape=[1, 2**31, 0], raw=b"")),
        predict("aligned", to_tensor(np.ones((2, FEATURES), np.float32)), [2**31, -(2**31) + 2]),
    ):
        for call in (stub.Predict, stub.PredictStream):
            assert refused(call, request).code() in (INVALID, EXHAUSTED)


def test_top_k_is_bounded_by_the_labels(stub: pb_grpc.SeqServeStub) -> None:
    x = to_tensor(np.ones((1, 3, FEATURES), np.float32))
    for call in (stub.Predict, stub.PredictStream):
        error = refused(call, predict("classifier", x, k=2**31 - 1))
        assert error.code() == INVALID
        assert error.details() == f"top_k: expected at most 4 (the model's labels), got {2**31 - 1}"


def session_error(stub: pb_grpc.SeqServeStub, *messages: pb.SessionRequest) -> grpc.RpcError:
    opening = pb.SessionRequest(open=pb.SessionOpen(model_name="aligned"))
    return refused(stub.Session, iter([opening, *messages]))


def test_session_steps_with_unknown_dtype_or_overflowing_shape(
    stub: pb_grpc.SeqServeStub,
) -> None:
    bad_dtype = pb.Tensor(dtype=7, shape=[1, FEATURES], raw=b"\0" * 12)
    error = session_error(stub, pb.SessionRequest(steps=pb.SessionSteps(values=bad_dtype)))
    assert error.code() == INVALID and error.details().startswith("steps.values.dtype")
    wraps = pb.Tensor(dtype=pb.FLOAT32, shape=[3, 6148914691236517206], raw=b"\0" * 8)
    error = session_error(stub, pb.SessionRequest(steps=pb.SessionSteps(values=wraps)))
    assert error.code() == EXHAUSTED and error.details().startswith("steps.values.shape")
    too_many = to_tensor(np.ones((MAX_STEPS + 1, FEATURES), np.float32))
    error = session_error(stub, pb.SessionRequest(steps=pb.SessionSteps(values=too_many)))
    assert error.code() == INVALID and f"at most {MAX_STEPS} steps per message" in error.details()
    opening = pb.SessionRequest(open=pb.SessionOpen(model_name="classifier", top_k=2**31 - 1))
    assert refused(stub.Session, iter([opening])).code() == INVALID


# --- limits ------------------------------------------------------------------------------------


def test_request_limits_name_the_limit(hardened: ServerProcess) -> None:
    cases = [
        (seqs(MAX_STEPS + 1), INVALID, "inputs.lengths[0]", f"at most {MAX_STEPS} steps"),
        (seqs(2, *[1] * MAX_INPUTS), EXHAUSTED, "inputs.lengths", "max_inputs_per_request"),
        (np.ones((MAX_INPUTS + 1, 1, FEATURES), np.float32), EXHAUSTED, "inputs.values.shape",
         "max_inputs_per_request"),
        (np.ones((10, 40, 300), np.float32), EXHAUSTED, "inputs.values.shape",
         "max_request_elements"),
    ]  # fmt: skip
    with SeqServeClient(hardened.target) as client:
        for inputs, code, field, words in cases:
            with pytest.raises(SeqServeError) as caught:
                client.predict("aligned", inputs)
            error = caught.value
            assert (error.code, error.field) == (code, field), error
            assert words in error.message and error.expected and error.got
        assert len(client.predict("aligned", seqs(MAX_STEPS, 1))) == 2  # at the limit: served


def test_named_inputs_share_the_element_limit(hardened: ServerProcess) -> None:
    """Each named input under max_request_elements, together over it: refused before decoding."""
    part = np.ones((1, (MAX_ELEMENTS // 2 + FEATURES) // FEATURES, FEATURES), np.float32)
    with SeqServeClient(hardened.target) as client, pytest.raises(SeqServeError) as caught:
        client.predict("aligned", {"input": part, "extra": part})
    assert caught.value.code == EXHAUSTED
    assert caught.value.message.startswith("named_inputs") and "max_request_elements" in (
        caught.value.message
    )


def test_predict_stream_messages_are_bounded_before_computing(
    stub: pb_grpc.SeqServeStub,
) -> None:
    """One message per output step: a request within the element limit could mean millions of
    messages. Past the limit the call is refused before its first message; within it, served."""
    over = [MAX_STEPS] * (MAX_STREAM_MESSAGES // MAX_STEPS + 1)  # aligned: a message a step
    cases = [
        ("aligned", over, MAX_STREAM_MESSAGES),
        ("classifier", [3] * (CLASSIFIER_STREAM_MESSAGES + 1), CLASSIFIER_STREAM_MESSAGES),
    ]
    for model, lengths, limit in cases:
        x = to_tensor(np.ones((sum(lengths), FEATURES), np.float32))
        messages = stub.PredictStream(predict(model, x, lengths), timeout=30)
        error = refused(lambda stream, timeout: next(stream), messages)  # before any message
        assert error.code() == EXHAUSTED, error
        assert "max_stream_messages" in error.details()
        assert f"{sum(lengths) if model == 'aligned' else len(lengths)} messages" in (
            error.details()
        )
        at_limit = lengths[:-1] if model == "classifier" else [MAX_STEPS] * (limit // MAX_STEPS)
        x = to_tensor(np.ones((sum(at_limit), FEATURES), np.float32))
        assert len(list(stub.PredictStream(predict(model, x, at_limit), timeout=30))) == (
            len(at_limit) if model == "classifier" else sum(at_limit)
        )


@pytest.mark.parametrize(
    ("mode", "output_steps", "lengths", "messages"),
    [
        (Mode.ONE_TO_ONE, None, [1] * 7, 7),
        (Mode.MANY_TO_ONE, None, [50, 60], 2),
        (Mode.MANY_TO_MANY_ALIGNED, None, [50, 60], 110),
        (Mode.MANY_TO_MANY_UNALIGNED, 9, [50, 60], 18),  # the model's fixed output length
        (Mode.ONE_TO_MANY, 12, [1] * 3, 36),
        (Mode.MANY_TO_MANY_UNALIGNED, None, [50, 60], 110),  # dynamic: as long as the input
    ],
)
def test_stream_message_count_per_mode(
    mode: Mode, output_steps: int | None, lengths: list[int], messages: int
) -> None:
    check_stream_messages(messages, mode, output_steps, lengths)  # exactly at the limit
    with pytest.raises(LimitExceeded, match=f"{messages} messages.*max_stream_messages"):
        check_stream_messages(messages - 1, mode, output_steps, lengths)


def test_metadata_shows_the_limits(hardened: ServerProcess, client: SeqServeClient) -> None:
    with SeqServeClient(hardened.target) as c:
        meta = c.metadata("aligned")
        c_classifier = c.metadata("classifier")
    assert (meta.max_sequence_length, meta.max_inputs_per_request) == (MAX_STEPS, MAX_INPUTS)
    assert meta.max_request_elements == MAX_ELEMENTS
    assert meta.max_message_bytes == 64 * 1024 * 1024
    assert meta.max_stream_messages == MAX_STREAM_MESSAGES
    assert c_classifier.max_stream_messages == CLASSIFIER_STREAM_MESSAGES
    # The shared server runs with the defaults (and a 4 MiB message limit).
    default = client.metadata("aligned")
    assert (default.max_sequence_length, default.max_inputs_per_request) == (4096, 4096)
    assert default.max_request_elements == 16 * 1024 * 1024
    assert default.max_message_bytes == 4 * 1024 * 1024
    assert default.max_stream_messages == 1_000_000
    assert client.metadata("classifier").max_sequence_length == 50  # its config's own
    assert client.metadata("fixed").max_sequence_length == 6  # a fixed-length model's length


def test_concurrent_calls_per_connection_and_server_wide(
    hardened: ServerProcess, stub: pb_grpc.SeqServeStub
) -> None:
    """Past the streams of one connection a call waits; past the server's RPCs it is refused."""
    x = to_batch(np.ones((1, 2, FEATURES), np.float32))
    request = pb.PredictRequest(model_name="aligned", inputs=x)
    opening = pb.SessionRequest(open=pb.SessionOpen(model_name="aligned"))
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own (else shared)
    channels = [grpc.insecure_channel(hardened.target, options=own) for _ in range(3)]
    release = threading.Event()

    def held() -> Iterator[pb.SessionRequest]:
        yield opening
        release.wait(30)

    calls = []
    try:
        stubs = [pb_grpc.SeqServeStub(c) for c in channels]
        for _ in range(MAX_STREAMS):
            calls.append(stubs[0].Session(held()))
            next(calls[-1])  # opened
        with pytest.raises(grpc.RpcError) as waited:
            stubs[0].Predict(request, timeout=1.0)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        stubs[1].Predict(request, timeout=10)  # another connection is served
        for _ in range(MAX_RPCS - MAX_STREAMS):
            calls.append(stubs[1].Session(held()))
            next(calls[-1])
        error = refused(stubs[2].Predict, request)
        assert error.code() == EXHAUSTED
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
    for _ in range(100):  # the server notices the cancellations: its slots free up
        try:
            stub.Predict(request, timeout=10)
            break
        except grpc.RpcError as exc:
            assert exc.code() == EXHAUSTED
            time.sleep(0.1)
    else:
        pytest.fail("the cancelled sessions never gave their RPC slots back")


# --- isolation -----------------------------------------------------------------------------


def test_any_load_failure_marks_that_version_failed(hardened: ServerProcess) -> None:
    with SeqServeClient(hardened.target) as client:
        statuses = {m.name: m for m in client.list_models()}
        assert statuses["bad_warmup"].state == "failed"
        assert "reshape" in statuses["bad_warmup"].error.lower()
        assert statuses["no_file"].state == "failed"
        assert statuses["no_file"].error == "no model file at model.keras"
        for status in statuses.values():
            assert str(Path(os.sep)) + "tmp" not in status.error and "site-packages" not in (
                status.error
            )
        with pytest.raises(SeqServeError) as caught:
            client.predict("no_file", np.ones((1, 4), np.float32))
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "/" not in caught.value.message.replace("n/a", "")
        assert statuses["aligned"].state == "ready"
        assert hardened.process.poll() is None


def test_a_compute_error_fails_that_request_only(
    hardened: ServerProcess, hardened_root: Path
) -> None:
    """Out-of-range indices make the Embedding raise: that caller gets INVALID_ARGUMENT, callers
    whose inputs were batched with it and every later caller get their answers."""
    good = np.array([[1, 2, 3, 4]], np.float32)
    bad = np.array([[1, 2, 3, 50]], np.float32)
    model = keras.saving.load_model(hardened_root / "embed" / "1" / "model.keras")
    expected = keras.ops.convert_to_numpy(model(good, training=False))
    with SeqServeClient(hardened.target) as client:
        with futures.ThreadPoolExecutor(MAX_STREAMS) as pool:  # within the server's limits
            calls = [pool.submit(client.predict, "embed", bad if i % 4 == 0 else good)
                     for i in range(40)]  # fmt: skip
            for i, call in enumerate(calls):
                if i % 4 == 0:
                    with pytest.raises(SeqServeError) as caught:
                        call.result()
                    assert caught.value.code == INVALID
                    assert caught.value.field == "inputs.values"
                else:
                    np.testing.assert_allclose(call.result(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(client.predict("embed", good), expected, rtol=1e-5, atol=1e-6)
        assert client.health("embed")


def test_out_of_memory_is_resource_exhausted() -> None:
    """TensorFlow's OOM cannot be provoked safely on a shared machine: its mapping is checked."""
    import tensorflow as tf

    from seqserve_server.core.tf_errors import from_tensorflow
    from seqserve_server.transport.status import to_status

    oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    status = to_status(from_tensorflow(oom))
    assert status.code == EXHAUSTED and "memory" in status.details
    path = tf.errors.InvalidArgumentError(None, None, "bad index in /srv/models/x/1/model.keras")
    status = to_status(from_tensorflow(path))
    assert status.code == INVALID and "/srv" not in status.details


# --- metrics -------------------------------------------------------------------------------


def test_metric_labels_come_from_the_repository_and_every_rpc_counts(
    hardened: ServerProcess,
) -> None:
    with SeqServeClient(hardened.target) as client:
        for version in (987654, 123456789):
            with pytest.raises(SeqServeError):
                client.predict("aligned", seqs(2), version=version)
        before = scrape(hardened)
        with client.session("aligned") as session:
            session.step(np.ones((2, FEATURES), np.float32))
        client.list_models()
        client.metadata("aligned")
        client.health()
        with grpc.insecure_channel(hardened.target) as channel:
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
            assert len(list(info(iter([listing]), timeout=10))) == 1
        after = scrape(hardened)
    labels = {dict(key).get("version") for key in samples(after, "seqserve_requests_total")}
    assert "987654" not in labels and "123456789" not in labels and "_unknown" in labels

    def delta(**wanted: str) -> float:
        return value(after, "seqserve_requests_total", **wanted) - value(
            before, "seqserve_requests_total", **wanted
        )

    assert delta(rpc="Session", model="aligned", version="1", code="OK") == 1
    assert delta(rpc="ListModels", code="OK") == 1
    assert delta(rpc="GetModelMetadata", model="aligned", code="OK") == 1
    assert delta(rpc="Check", model="", code="OK") == 1
    assert delta(rpc="ServerReflectionInfo", model="", code="OK") == 1
    assert value(after, "seqserve_inflight_requests", model="aligned") == 0
    assert value(after, "seqserve_inflight_requests", model="") == 0


# --- client --------------------------------------------------------------------------------


def test_client_receives_messages_up_to_the_servers_limit(hardened: ServerProcess) -> None:
    x = np.ones((300, 4), np.float32)  # 300 x 4096 float32 outputs: 4.9 MB > gRPC's 4 MiB
    with SeqServeClient(hardened.target) as client:
        assert client.predict("wide", x).shape == (300, 4096)


class FlakyHop(pb_grpc.SeqServeServicer):
    """A hop in front of the real server (like a load balancer whose replica is restarting):
    the first attempts of each call end UNAVAILABLE, later ones are passed through."""

    def __init__(self, upstream: pb_grpc.SeqServeStub, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        self.attempts = 0

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> object:
        self.attempts += 1
        if self.attempts <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")
        return self.upstream.Predict(request, timeout=10)


def test_client_retries_unavailable_with_backoff(
    hardened: ServerProcess, stub: pb_grpc.SeqServeStub
) -> None:
    hop = FlakyHop(stub, failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_SeqServeServicer_to_server(hop, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with SeqServeClient(f"127.0.0.1:{port}") as client:
            assert len(client.predict("aligned", seqs(3))) == 1
        assert hop.attempts == 3
        hop.attempts, hop.failures = 0, 10
        with SeqServeClient(f"127.0.0.1:{port}") as client, pytest.raises(SeqServeError) as caught:
            client.predict("aligned", seqs(3))
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and hop.attempts == 4
    finally:
        server.stop(None)
    assert DEFAULT_OPTIONS["grpc.keepalive_time_ms"] <= 60_000


def test_a_failing_session_step_fails_only_that_session() -> None:
    """Sessions' steps computed together: one the model raises on fails its own session only."""
    import asyncio

    from seqserve_server.core.modes import Mode
    from seqserve_server.core.observer import NullModelObserver
    from seqserve_server.core.sessions import _StepQueue
    from seqserve_server.core.stepping.programs import build_step_program

    keras.utils.set_random_seed(3)
    program = build_step_program(aligned(), Mode.MANY_TO_MANY_ALIGNED)
    real_step = program.step
    sizes: list[int] = []

    def step(state: dict, x: np.ndarray) -> tuple[dict, np.ndarray]:
        sizes.append(len(x))
        if (x == 99).any():
            raise ValueError("the model cannot compute 99")
        return real_step(state, x)

    program.step = step  # type: ignore[method-assign]
    chunks = [np.full((1, 2, FEATURES), i, np.float32) for i in (1, 99, 2, 3)]

    async def main() -> list:
        with futures.ThreadPoolExecutor(1) as executor:
            queue = _StepQueue(program, executor, NullModelObserver())
            steps = [queue.step(program.initial_state(1), c) for c in chunks]
            return await asyncio.gather(*steps, return_exceptions=True)

    results = asyncio.run(main())
    assert sizes == [4, 1, 1, 1, 1]  # merged, failed, then one by one
    assert isinstance(results[1], ValueError)
    for chunk, result in zip(chunks, results, strict=True):
        if chunk[0, 0, 0] != 99:
            _, y = result
            _, alone = real_step(program.initial_state(1), chunk)
            np.testing.assert_allclose(y, alone, rtol=1e-5, atol=1e-6)


def test_model_control_is_closed_by_default(hardened: ServerProcess) -> None:
    """Without --model-control explicit, no caller loads or unloads a model, in either
    protocol: FAILED_PRECONDITION naming the flag, and the model keeps serving."""
    calls = {
        "/seqserve.v1.SeqServe/LoadModel": pb.LoadModelRequest(model_name="aligned"),
        "/seqserve.v1.SeqServe/UnloadModel": pb.UnloadModelRequest(model_name="aligned"),
        "/inference.GRPCInferenceService/RepositoryModelLoad": v2.RepositoryModelLoadRequest(
            model_name="aligned"
        ),
        "/inference.GRPCInferenceService/RepositoryModelUnload": v2.RepositoryModelUnloadRequest(
            model_name="aligned"
        ),
    }
    with grpc.insecure_channel(hardened.target) as channel:
        for method, request in calls.items():
            call = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION, method
            assert "--model-control explicit" in (refused.value.details() or ""), method
    with SeqServeClient(hardened.target) as client:
        assert client.predict("aligned", [np.ones((2, FEATURES), np.float32)]).shape[0] == 1


def test_streams_open_without_a_token_are_bounded_in_number_and_lifetime(
    hardened: ServerProcess,
) -> None:
    """Health Watch streams past --max-open-streams are refused at once and do not take the
    capacity of real calls; an open one ends UNAVAILABLE after --open-stream-lifetime-s."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    own = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(hardened.target, options=own) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch
        streams = [
            watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(MAX_OPEN_STREAMS)
        ]
        for stream in streams:
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        extra = watch(health_pb2.HealthCheckRequest(), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            next(extra)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-open-streams" in (refused.value.details() or "")
        with SeqServeClient(hardened.target) as client:  # real calls are not held behind them
            assert client.predict("aligned", [np.ones((2, FEATURES), np.float32)]).shape[0] == 1
        begin = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            next(streams[0])  # nothing changes: the stream waits until its lifetime ends
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - begin < STREAM_LIFETIME_S + 5
        for stream in streams:
            stream.cancel()
