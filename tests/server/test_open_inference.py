"""The Open Inference Protocol (KServe v2 / Triton gRPC) through stock `tritonclient` 2.73,
against the real server serving the bundled models: v2 answers equal seqserve.v1's and Keras'."""

from __future__ import annotations

import asyncio
import json
import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2 as triton_config_pb2
from tritonclient.grpc import service_pb2 as triton_service_pb2
from tritonclient.utils import InferenceServerException

from seqserve.inference import grpc_service_pb2 as pb
from seqserve.inference import model_config_pb2 as config_pb
from seqserve_client import SeqServeClient
from tests.support.bundled import MODELS, NAMES, SESSION_MODELS, TOLERANCE, example_input
from tests.support.server_process import ServerProcess, v2_client

EXACT = 1e-6  # v2 and v1 run the same compiled path: only batching order may differ
KERAS_CHEAP = {"iris_classifier", "digit_generator", "digit_classifier", "word_language"}


@pytest.fixture(scope="module")
def served(bundled_server: ServerProcess) -> ServerProcess:
    return bundled_server


@pytest.fixture(scope="module")
def v2(served: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with v2_client(served.target) as client:
        yield client


@pytest.fixture(scope="module")
def v1(bundled: SeqServeClient) -> SeqServeClient:
    return bundled


DATATYPES = {"float32": "FP32", "int32": "INT32", "object": "BYTES", "string": "BYTES"}


def _input(x: np.ndarray, name: str = "input") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), DATATYPES[x.dtype.name])
    tensor.set_data_from_numpy(x)
    return tensor


def _lengths(lengths: list[int], name: str = "input_lengths") -> triton.InferInput:
    return _input_int64(np.array(lengths, dtype=np.int64), name)


def _input_int64(x: np.ndarray, name: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "INT64")
    tensor.set_data_from_numpy(x)
    return tensor


# -- the vendored protocol ---------------------------------------------------------------------


def _normalised(file: Any) -> descriptor_pb2.FileDescriptorProto:
    """A file's descriptor with the proto package and file names taken out: what goes on the
    wire (field numbers, types, services) is what is left."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    text = str(proto).replace(".seqserve.inference.", ".inference.")
    text = text.replace("seqserve/inference/", "")
    normal = descriptor_pb2.FileDescriptorProto()
    from google.protobuf import text_format

    text_format.Parse(text, normal)
    normal.package = "inference"
    normal.ClearField("options")
    return normal


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (pb.DESCRIPTOR, triton_service_pb2.DESCRIPTOR),
        (config_pb.DESCRIPTOR, triton_config_pb2.DESCRIPTOR),
    ],
)
def test_vendored_protocol_is_tritonclients(ours: Any, theirs: Any) -> None:
    """Both import in one process (distinct packages), and describe the same wire format."""
    assert _normalised(ours) == _normalised(theirs)


# -- health, metadata, config, repository ------------------------------------------------------


def test_server_and_model_health(v2: triton.InferenceServerClient) -> None:
    assert v2.is_server_live() and v2.is_server_ready()
    assert v2.is_model_ready("iris_classifier") and v2.is_model_ready("iris_classifier", "1")
    assert not v2.is_model_ready("no_such_model")
    assert not v2.is_model_ready("iris_classifier", "7")
    metadata = v2.get_server_metadata()
    assert metadata.name == "seqserve" and "sequence" in metadata.extensions


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_config_say_what_v1_says(
    v2: triton.InferenceServerClient, v1: SeqServeClient, name: str
) -> None:
    ours = v1.metadata(name)
    metadata = v2.get_model_metadata(name)
    assert metadata.name == name and list(metadata.versions) == ["1"]
    main = metadata.inputs[0]
    assert main.name == "input" and list(main.shape) == list(ours.input.shape)
    assert main.datatype == DATATYPES[ours.input.dtype]
    shapes = {out.name: list(out.shape) for out in metadata.outputs}
    assert all(shapes[out.name] == list(out.shape) for out in ours.outputs)  # one, or several
    config = v2.get_model_config(name).config
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["mode"] == ours.mode
    if len(ours.outputs) == 1:
        assert json.loads(params["labels"]) == list(ours.labels)
    else:  # labels by output name, for the labelled outputs only
        labelled = {out.name: list(out.labels) for out in ours.outputs if out.labels}
        assert json.loads(params["labels"]) == labelled
    assert list(config.input[0].dims) == list(ours.input.shape[1:])
    sessions = ours.session_support != "session_unsupported"
    assert config.HasField("sequence_batching") == sessions
    assert (config.input[-1].name == "input_lengths") == ours.input.sequence
    ragged = ours.input.sequence and ours.input.shape[1] == -1
    assert config.input[0].allow_ragged_batch == ragged


def test_repository_index_lists_every_version(v2: triton.InferenceServerClient) -> None:
    index = v2.get_model_repository_index()
    assert {(m.name, m.version, m.state) for m in index.models} == {
        (name, "1", "READY") for name in NAMES
    }


# -- inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_infer_equals_v1_and_keras(
    v2: triton.InferenceServerClient, v1: SeqServeClient, name: str
) -> None:
    x = example_input(name, np.random.default_rng(0))
    result = v2.infer(name, [_input(x)])
    served = v1.predict(name, x)
    if isinstance(served, dict):  # several outputs (co2_interval): each by its name
        for key, want in served.items():
            np.testing.assert_allclose(result.as_numpy(key), want, rtol=EXACT, atol=EXACT)
        return  # test_bundled_models checks them against Keras
    got = result.as_numpy("output")
    np.testing.assert_allclose(got, served, rtol=EXACT, atol=EXACT)
    if name in KERAS_CHEAP:  # the others: test_bundled_models checks v1 against Keras
        model = keras.saving.load_model(MODELS / name / "1" / "model.keras", safe_mode=True)
        expected = model(x, training=False).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=TOLERANCE)
    response = result.get_response()
    assert response.model_name == name and response.model_version == "1"
    if v1.metadata(name).output.sequence:
        assert result.as_numpy("output_lengths").tolist() == [got.shape[1]] * len(x)


def test_ragged_batches_through_lengths(
    v2: triton.InferenceServerClient, v1: SeqServeClient
) -> None:
    rng = np.random.default_rng(3)
    words = [rng.integers(1, 60, size=n).astype(np.int32) for n in (7, 3, 11)]
    lengths = [len(w) for w in words]
    expected = v1.predict("word_language", words)
    padded = np.zeros((3, 11), np.int32)
    for row, word in zip(padded, words, strict=True):
        row[: len(word)] = word
    concatenated = np.concatenate(words)
    for x in (padded, concatenated):
        got = v2.infer("word_language", [_input(x), _lengths(lengths)]).as_numpy("output")
        np.testing.assert_allclose(got, expected, rtol=EXACT, atol=EXACT)
    weeks = [example_input("co2_next_week", rng)[0][:n] for n in (20, 35)]
    result = v2.infer("co2_next_week", [_input(np.concatenate(weeks)), _lengths([20, 35])])
    assert result.as_numpy("output_lengths").tolist() == [20, 35]
    want = np.concatenate(v1.predict("co2_next_week", weeks))
    np.testing.assert_allclose(result.as_numpy("output"), want, rtol=EXACT, atol=EXACT)


def test_top_k_parameter_gives_ranked_outputs(
    v2: triton.InferenceServerClient, v1: SeqServeClient
) -> None:
    x = example_input("iris_classifier", np.random.default_rng(4))
    result = v2.infer("iris_classifier", [_input(x)], parameters={"top_k": 2})
    ranked = v1.classify("iris_classifier", x, top_k=2)
    labels = [[b.decode() for b in row] for row in result.as_numpy("top_k_labels")]
    assert labels == [[label for label, _ in r] for r in ranked]
    scores = [[score for _, score in r] for r in ranked]
    np.testing.assert_allclose(result.as_numpy("top_k_scores"), scores, atol=EXACT)
    probabilities = result.as_numpy("output")
    assert result.as_numpy("top_k_indices")[:, 0].tolist() == probabilities.argmax(-1).tolist()
    classified = v2.infer(
        "iris_classifier", [_input(x)],
        outputs=[triton.InferRequestedOutput("output", class_count=2)], priority=1,
    )  # fmt: skip
    entries = [[e.decode().split(":") for e in row] for row in classified.as_numpy("output")]
    assert [[label for _, _, label in row] for row in entries] == labels
    assert [[int(i) for _, i, _ in row] for row in entries] == result.as_numpy(
        "top_k_indices"
    ).tolist()
    only = v2.infer(
        "iris_classifier", [_input(x)], outputs=[triton.InferRequestedOutput("top_k_labels")],
        parameters={"top_k": 1},
    )  # fmt: skip
    assert [o.name for o in only.get_response().outputs] == ["top_k_labels"]


# -- streams and sequences -----------------------------------------------------------------------


def _stream(
    v2: triton.InferenceServerClient, requests: list[dict[str, Any]]
) -> list[tuple[Any, Any]]:
    """Send the requests on one stream; every response (or error) until each request's final."""
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    v2.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        for request in requests:
            v2.async_stream_infer(**request)
        answers: list[tuple[Any, Any]] = []
        finals = 0
        while finals < len(requests):
            result, error = received.get(timeout=60)
            answers.append((result, error))
            final = error is not None or _param(result, "triton_final_response")
            finals += bool(final)
        return answers
    finally:
        v2.stop_stream()


def _param(result: Any, name: str) -> Any:
    value = result.get_response().parameters[name]
    return getattr(value, value.WhichOneof("parameter_choice"))


@pytest.mark.parametrize("name", ["co2_next_week", "co2_forecast_13w", "digit_generator"])
def test_stream_steps_sends_each_step(
    v2: triton.InferenceServerClient, v1: SeqServeClient, name: str
) -> None:
    x = example_input(name, np.random.default_rng(5))[:2]
    answers = _stream(
        v2, [{"model_name": name, "inputs": [_input(x)], "parameters": {"stream_steps": True}}]
    )
    assert all(error is None for _, error in answers)
    expected = v1.predict(name, x)
    assert len(answers) == expected.shape[0] * expected.shape[1]
    for result, _ in answers:
        index, step = _param(result, "input_index"), _param(result, "step")
        assert _param(result, "last") == (step == expected.shape[1] - 1)
        np.testing.assert_allclose(
            result.as_numpy("output")[0], expected[index, step], rtol=EXACT, atol=EXACT
        )
    finals = [_param(r, "triton_final_response") for r, _ in answers]
    assert finals == [False] * (len(answers) - 1) + [True]


def _sequence_requests(name: str, chunks: list[np.ndarray], sequence: int) -> list[dict[str, Any]]:
    return [
        {
            "model_name": name,
            "inputs": [_input(chunk[np.newaxis])],
            "sequence_id": sequence,
            "sequence_start": i == 0,
            "sequence_end": i == len(chunks) - 1,
        }
        for i, chunk in enumerate(chunks)
    ]


def _check_sequence(name: str, v1: SeqServeClient, x: np.ndarray, outputs: list[Any]) -> None:
    """Each output (a dict by output name for several outputs) against v1 Predict."""
    expected = v1.predict(name, x[None])
    if isinstance(expected, dict):
        for key, want in expected.items():
            _check_sequence_output(name, v1, [o[key] for o in outputs], want)
        return
    _check_sequence_output(name, v1, outputs, expected)


def _check_sequence_output(name: str, v1: SeqServeClient, got: list[Any], want: Any) -> None:
    if v1.metadata(name).mode == "many_to_one":
        np.testing.assert_allclose(got[-1][0], want[0], rtol=1e-5, atol=TOLERANCE)
        return
    steps = np.concatenate([o[0] for o in got if o is not None])
    np.testing.assert_allclose(steps, want[0], rtol=1e-5, atol=TOLERANCE)


def _outputs(result: Any, names: list[str]) -> Any:
    """A result's one output, or a dict of its several outputs by name."""
    if names == ["output"]:
        return result.as_numpy("output")
    return {key: result.as_numpy(key) for key in names}


@pytest.mark.parametrize("name", SESSION_MODELS)
def test_sequence_through_infer_equals_predict(
    v2: triton.InferenceServerClient, v1: SeqServeClient, name: str
) -> None:
    x = example_input(name, np.random.default_rng(6))[0]
    chunks = np.array_split(x, [1, 4, 6, len(x) - 1])
    names = [out.name for out in v1.metadata(name).outputs]
    outputs = [
        _outputs(v2.infer(**request), names)
        for request in _sequence_requests(name, chunks, 1000 + NAMES.index(name))
    ]
    _check_sequence(name, v1, x, outputs)


def test_sequence_through_a_stream_equals_predict(
    v2: triton.InferenceServerClient, v1: SeqServeClient
) -> None:
    x = example_input("co2_next_week", np.random.default_rng(7))[0]
    chunks = np.array_split(x, [3, 10, 40])
    answers = _stream(v2, _sequence_requests("co2_next_week", chunks, "weekly-7"))
    assert [e for _, e in answers] == [None] * len(chunks)
    _check_sequence("co2_next_week", v1, x, [r.as_numpy("output") for r, _ in answers])


def test_a_sequence_request_sent_again_with_its_id_is_answered_again(
    v2: triton.InferenceServerClient, v1: SeqServeClient
) -> None:
    """A retry (the same request, the same id) after a lost answer is not applied twice; the
    same id with other content, or no id, is a new request. (Without a session store an ended
    sequence is gone: its last request's retry is tested in test_session_store.py.)"""
    x = example_input("co2_next_week", np.random.default_rng(17))[0]
    chunks = np.array_split(x, [3, 10, 20, 30])
    requests = _sequence_requests("co2_next_week", chunks, "retried-17")
    ids = ["a", "b", "b", "", "c"]  # chunk 2 reuses chunk 1's id; chunk 3 has none
    outputs = []
    for request, request_id in zip(requests, ids, strict=True):
        first = v2.infer(**request, request_id=request_id).as_numpy("output")
        if request_id and not request["sequence_end"]:
            again = v2.infer(**request, request_id=request_id).as_numpy("output")
            np.testing.assert_array_equal(again, first)
        outputs.append(first)
    _check_sequence("co2_next_week", v1, x, outputs)


def test_sequence_must_be_started(v2: triton.InferenceServerClient) -> None:
    x = example_input("co2_next_week", np.random.default_rng(8))[0]
    with pytest.raises(InferenceServerException) as caught:
        v2.infer("co2_next_week", [_input(x[None])], sequence_id=424242)
    assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "sequence_start" in caught.value.message() and "424242" in caught.value.message()


# -- the asyncio client --------------------------------------------------------------------------


def test_asyncio_client_works_the_same(
    served: ServerProcess, v2: triton.InferenceServerClient
) -> None:
    x = example_input("digit_classifier", np.random.default_rng(9))
    expected = v2.infer("digit_classifier", [_input(x)]).as_numpy("output")
    y = example_input("co2_forecast_13w", np.random.default_rng(9))[:1]

    async def calls() -> tuple[np.ndarray, list[Any], bool]:
        async with triton_aio.InferenceServerClient(served.target) as client:
            ready = await client.is_model_ready("digit_classifier")
            result = await client.infer("digit_classifier", [_input(x)])

            async def requests() -> Any:
                yield {"model_name": "co2_forecast_13w", "inputs": [_input(y)],
                       "parameters": {"stream_steps": True}}  # fmt: skip

            steps = []
            async for answer, error in client.stream_infer(requests()):
                assert error is None, error
                steps.append(answer)
                if _param(answer, "triton_final_response"):
                    break
            return result.as_numpy("output"), steps, ready

    got, steps, ready = asyncio.run(calls())
    assert ready
    np.testing.assert_allclose(got, expected, rtol=EXACT, atol=EXACT)
    assert len(steps) == 13
    streamed = np.stack([s.as_numpy("output")[0] for s in steps])
    whole = v2.infer("co2_forecast_13w", [_input(y)]).as_numpy("output")[0]
    np.testing.assert_allclose(streamed, whole, rtol=EXACT, atol=EXACT)


# -- errors --------------------------------------------------------------------------------------


def _code(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_errors_carry_seqserve_codes(v2: triton.InferenceServerClient) -> None:
    x = example_input("iris_classifier", np.random.default_rng(10))
    code, message = _code(lambda: v2.infer("iris_classifier", [_input(x[:, :3])]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "input" in message
    code, _ = _code(lambda: v2.infer("no_such_model", [_input(x)]))
    assert code == "StatusCode.NOT_FOUND"
    code, message = _code(lambda: v2.infer("iris_classifier", [_input(x, "features")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "'input'" in message
    code, message = _code(
        lambda: v2.infer(
            "co2_next_week",
            [_input(example_input("co2_next_week", np.random.default_rng(1)))],
            parameters={"top_k": 1},
        )
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and "top_k" in message
    code, _ = _code(lambda: v2.get_model_metadata("no_such_model"))
    assert code == "StatusCode.NOT_FOUND"


def test_oversized_tensor_is_refused_before_allocation(served: ServerProcess) -> None:
    """A shape of 2**40 elements with 4 bytes of data: RESOURCE_EXHAUSTED, nothing allocated."""
    request = pb.ModelInferRequest(model_name="co2_next_week")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2**40, 1])
    request.raw_input_contents.append(b"\0\0\0\0")
    with grpc.insecure_channel(served.target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            infer(request, timeout=30)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_request_elements" in caught.value.details()
    # The same call would hit the same limit again: clients that retry on pushback must not.
    assert ("grpc-retry-pushback-ms", "-1") in (caught.value.trailing_metadata() or ())


def test_stream_errors_keep_the_stream_open(v2: triton.InferenceServerClient) -> None:
    x = example_input("iris_classifier", np.random.default_rng(11))
    answers = _stream(
        v2,
        [
            {"model_name": "iris_classifier", "inputs": [_input(x[:, :2])], "request_id": "bad"},
            {"model_name": "iris_classifier", "inputs": [_input(x)], "request_id": "good"},
        ],
    )
    errors = [error for result, error in answers if result is None]
    assert len(errors) == 1 and "INVALID_ARGUMENT" in str(errors[0])
    (good,) = [result for result, error in answers if error is None]
    assert good.get_response().id == "good" and good.as_numpy("output").shape == (len(x), 3)


def test_stream_requests_run_together_and_match_by_id(
    v2: triton.InferenceServerClient, v1: SeqServeClient
) -> None:
    rng = np.random.default_rng(13)
    inputs = {f"r{i}": example_input("digit_classifier", rng)[:1] for i in range(24)}
    requests = [
        {"model_name": "digit_classifier", "inputs": [_input(x)], "request_id": key}
        for key, x in inputs.items()
    ]
    answers = _stream(v2, requests)
    assert all(error is None for _, error in answers)
    got = {r.get_response().id: r.as_numpy("output") for r, _ in answers}
    assert got.keys() == inputs.keys()
    expected = v1.predict("digit_classifier", np.concatenate(list(inputs.values())))
    for row, key in enumerate(inputs):
        np.testing.assert_allclose(got[key][0], expected[row], rtol=EXACT, atol=EXACT)


def test_statistics_and_metrics_count_v2_calls(
    served: ServerProcess, v2: triton.InferenceServerClient
) -> None:
    x = example_input("iris_classifier", np.random.default_rng(12))
    v2.infer("iris_classifier", [_input(x)])
    stats = v2.get_inference_statistics("iris_classifier").model_stats[0]
    assert stats.version == "1" and stats.inference_stats.success.count >= 1
    assert stats.inference_count >= len(x)
    url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'rpc="ModelInfer"' in text and 'model="iris_classifier"' in text


def test_the_same_port_serves_both_protocols(served: ServerProcess, v1: SeqServeClient) -> None:
    """seqserve.v1 answers beside v2, and health reports the v2 service."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert v1.list_models()
    with grpc.insecure_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_v2_by_its_wire_names(served: ServerProcess) -> None:
    """grpcurl and other generic tools can call the v2 service, as Triton names it."""
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(served.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "inference.GRPCInferenceService" in set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        infer = service.methods_by_name["ModelInfer"]
        assert infer.input_type.full_name == "inference.ModelInferRequest"
        assert pool.FindServiceByName("seqserve.v1.SeqServe").methods_by_name["Predict"]


# -- the fixture repository (conftest's session server): failures, versions, idle sequences ------


@pytest.fixture(scope="module")
def fixtures_v2(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.target)
    yield client
    client.close()


def test_index_and_readiness_show_failed_models_and_versions(
    server: ServerProcess, fixtures_v2: triton.InferenceServerClient
) -> None:
    index = {(m.name, m.version): m for m in fixtures_v2.get_model_repository_index().models}
    assert index[("aligned", "1")].state == index[("aligned", "2")].state == "READY"
    assert index[("unsafe", "1")].state == "UNAVAILABLE"
    assert "safe_mode" in index[("unsafe", "1")].reason
    with grpc.insecure_channel(server.target) as channel:  # tritonclient never asks ready=true
        only_ready = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=pb.RepositoryIndexRequest.SerializeToString,
            response_deserializer=pb.RepositoryIndexResponse.FromString,
        )(pb.RepositoryIndexRequest(ready=True), timeout=30)
    ready = {(m.name, m.version) for m in only_ready.models}
    assert ("aligned", "2") in ready and ("unsafe", "1") not in ready
    assert not fixtures_v2.is_model_ready("unsafe")
    code, _ = _code(lambda: fixtures_v2.get_model_metadata("unsafe"))
    assert code == "StatusCode.FAILED_PRECONDITION"
    x = np.ones((1, 5, 3), np.float32)
    first = fixtures_v2.infer("aligned", [_input(x)], model_version="1")
    newest = fixtures_v2.infer("aligned", [_input(x)])
    assert first.get_response().model_version == "1"
    assert newest.get_response().model_version == "2"
    assert not np.allclose(first.as_numpy("output"), newest.as_numpy("output"))


def test_idle_sequences_are_closed_and_free_their_place(
    fixtures_v2: triton.InferenceServerClient,
) -> None:
    """`limited` allows 2 sessions, idle for at most 1 s."""
    step = [_input(np.ones((1, 2, 3), np.float32))]
    for sequence in (1, 2):
        fixtures_v2.infer("limited", step, sequence_id=sequence, sequence_start=True)
    code, message = _code(
        lambda: fixtures_v2.infer("limited", step, sequence_id=3, sequence_start=True)
    )
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "limit is 2" in message
    time.sleep(1.5)
    fixtures_v2.infer("limited", step, sequence_id=3, sequence_start=True, sequence_end=True)
    code, message = _code(lambda: fixtures_v2.infer("limited", step, sequence_id=1))
    assert code == "StatusCode.FAILED_PRECONDITION" and "idle" in message


def test_readme_v2_program_runs_unchanged(served: ServerProcess, v1: SeqServeClient) -> None:
    """The README's stock tritonclient program (one call per mode, a stream, a sequence), run as
    written against the bundled models; its sequence ends where Predict on the whole one does."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- readme-v2-modes", 1)[1].split("```python\n", 1)[1]
    scope: dict = {}
    exec(block.split("```", 1)[0].replace("127.0.0.1:8500", served.target), scope)
    whole = v1.predict("co2_next_week", scope["co2"][:10].reshape(1, 10, 1))
    streamed = scope["next_week"].as_numpy("output")
    np.testing.assert_allclose(streamed.reshape(-1)[-1], whole.reshape(-1)[-1], rtol=1e-5)
    assert scope["language"].as_numpy("output").shape[0] == 2
