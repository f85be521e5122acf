"""The SDK's sans-I/O core (seqserve_client.calls): requests built, replies and errors read,
without a server. The behaviour through a real server is in test_aio_client.py and the others."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import from_batch, from_tensor, to_tensor
from seqserve_client import calls, errors
from seqserve_client.channel import open_channel, rpcs
from seqserve_client.results import ModelStatus, SessionInfo, StreamPart, TensorSpec

X = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
ALL_CALLS = [
    calls.predict("m", X, 2),
    calls.classify("m", X, 3, 2),
    calls.predict_full("m", X, 2, 1),
    calls.predict_stream("m", X, 2, 1),
    calls.list_models(),
    calls.metadata("m", 2),
    calls.health("m"),
]
SERVICES = {**pb.DESCRIPTOR.services_by_name, **health_pb2.DESCRIPTOR.services_by_name}


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ALL_CALLS, ids=lambda c: f"{c.rpc}:{c.read.__name__}")
def test_each_call_names_an_rpc_that_takes_its_request(call: calls.Call) -> None:
    channel = open_channel(grpc, "127.0.0.1:1", None, ())  # no I/O until a call is made
    try:
        assert call.rpc in rpcs(channel)
    finally:
        channel.close()
    methods = [
        s.methods_by_name[call.rpc] for s in SERVICES.values() if call.rpc in s.methods_by_name
    ]
    assert [m.input_type for m in methods] == [call.request.DESCRIPTOR]


def test_predict_requests_carry_model_version_top_k_and_inputs() -> None:
    request = calls.classify("m", X, 3, 2).request
    assert (request.model_name, request.model_version, request.top_k) == ("m", 2, 3)
    values, lengths = from_batch(request.inputs)
    np.testing.assert_array_equal(values, X)
    assert lengths is None
    assert calls.predict("m", X, 0).request.top_k == 0


def test_ragged_inputs_travel_without_padding() -> None:
    seqs = [np.ones((4, 2), np.float32), np.zeros((1, 2), np.float32)]
    values, lengths = from_batch(calls.predict_request("m", seqs, 0, 0).inputs)
    assert values.shape == (5, 2) and list(lengths) == [4, 1]


def test_metadata_and_health_requests() -> None:
    request = calls.metadata("m", 7).request
    assert (request.model_name, request.model_version) == ("m", 7)
    assert calls.health("m").request == health_pb2.HealthCheckRequest(service="m")


def test_a_calls_timeout_else_the_clients() -> None:
    assert calls.deadline(None, 30.0) == 30.0
    assert calls.deadline(0.5, 30.0) == 0.5
    assert calls.deadline(None, None) is None


@pytest.mark.parametrize(
    ("values", "dtype", "shape"),
    [
        (np.ones(3, np.float64), np.float32, (1, 3)),  # one step [features] -> [1, features]
        (np.ones((2, 3), np.float32), np.float32, (2, 3)),
        ([4, 5, 6], np.int64, (3,)),  # token ids stay integers, one per step
    ],
)
def test_steps_request(values: object, dtype: type, shape: tuple[int, ...]) -> None:
    request = calls.steps_request(values, True)  # type: ignore[arg-type]
    assert request.steps.emit
    assert request.steps.values.shape == list(shape)
    assert request.steps.values.dtype == pb.DataType.Value(np.dtype(dtype).name.upper())
    assert not request.steps.named_values  # one array: `values`, as before named_values


def test_steps_by_input_name_travel_in_named_values() -> None:
    """Each input's steps encoded as a single `values` would be; `values` left unset."""
    request = calls.steps_request(
        {"seq": np.ones(3, np.float64), "level": np.ones((2, 1)), "ids": [4, 5]}, False
    )
    steps = request.steps
    assert not steps.HasField("values") and not steps.emit
    assert sorted(steps.named_values) == ["ids", "level", "seq"]
    got = {name: from_tensor(t) for name, t in steps.named_values.items()}
    assert got["seq"].dtype == np.float32 and got["seq"].shape == (1, 3)  # one step promoted
    assert got["level"].dtype == np.float32 and got["level"].shape == (2, 1)
    assert got["ids"].dtype == np.int64
    np.testing.assert_array_equal(got["ids"], [4, 5])
    ids32 = calls.steps_request({"ids": np.array([7], np.int32)}, True).steps
    assert ids32.emit and ids32.named_values["ids"].dtype == pb.INT32  # token ids as they are


# -- replies ----------------------------------------------------------------------------------


def sequences(values: np.ndarray, lengths: list[int]) -> pb.SequenceOutput:
    return pb.SequenceOutput(values=to_tensor(values), lengths=lengths)


def test_vector_outputs_and_top_k() -> None:
    response = pb.PredictResponse(
        model_name="m",
        model_version=3,
        mode=pb.MANY_TO_ONE,
        vectors=pb.VectorOutput(values=to_tensor(np.eye(2, dtype=np.float32))),
        top_k=[pb.TopK(labels=["a", "b"], scores=[1.0, 0.0])] * 2,
    )
    prediction = calls.prediction_from(response)
    assert (prediction.model, prediction.version, prediction.mode) == ("m", 3, "many_to_one")
    np.testing.assert_array_equal(prediction.outputs, np.eye(2))
    assert prediction.top_k == [[("a", 1.0), ("b", 0.0)]] * 2
    assert calls.classify("m", X, 2, 0).read(response) == prediction.top_k
    np.testing.assert_array_equal(calls.predict("m", X, 0).read(response), np.eye(2))


def test_sequence_outputs_of_one_length_stack_and_ragged_ones_split() -> None:
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    even = calls.prediction_from(pb.PredictResponse(sequences=sequences(rows[:4], [2, 2])))
    assert isinstance(even.outputs, np.ndarray) and even.outputs.shape == (2, 2, 2)
    ragged = calls.prediction_from(pb.PredictResponse(sequences=sequences(rows, [3, 2])))
    assert isinstance(ragged.outputs, list)
    assert [a.shape for a in ragged.outputs] == [(3, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate(ragged.outputs), rows)


def test_several_outputs_by_name() -> None:
    vector = pb.Output(vectors=pb.VectorOutput(values=to_tensor(np.ones((1, 3), np.float32))))
    sequence = pb.Output(sequences=sequences(np.zeros((4, 1), np.float32), [4]))
    response = pb.PredictResponse(named_outputs={"value": sequence, "label": vector})
    outputs = calls.prediction_from(response).outputs
    assert isinstance(outputs, dict) and list(outputs) == ["label", "value"]
    assert outputs["label"].shape == (1, 3) and outputs["value"].shape == (1, 4, 1)


def test_stream_parts() -> None:
    part = pb.PredictStreamResponse(
        input_index=1,
        step=4,
        last=True,
        values=to_tensor(np.ones(2, np.float32)),
        top_k=pb.TopK(labels=["x"], scores=[0.5]),
        output_name="y",
    )
    got = calls.predict_stream("m", X, 0, 0).read(part)
    assert isinstance(got, StreamPart)
    assert (got.input_index, got.step, got.last, got.top_k, got.output_name) == (
        1, 4, True, [("x", 0.5)], "y",
    )  # fmt: skip
    np.testing.assert_array_equal(got.values, np.ones(2))


def test_list_models_metadata_and_health() -> None:
    listed = pb.ListModelsResponse(
        models=[
            pb.ModelStatus(name="m", version=2, state=pb.FAILED, error="bad", mode=pb.ONE_TO_ONE)
        ]
    )
    assert calls.list_models().read(listed) == [ModelStatus("m", 2, "failed", "one_to_one", "bad")]
    spec = pb.TensorSpec(name="x", dtype=pb.INT32, shape=[-1, -1], sequence=True, vocabulary=50)
    meta = calls.metadata("m", 0).read(
        pb.GetModelMetadataResponse(
            name="m", versions=[1, 2], input=spec, inputs=[spec], state=pb.READY,
            session_support=pb.SESSION_RECOMPUTE, max_stream_messages=9,
        )
    )  # fmt: skip
    assert meta.input == TensorSpec("x", "int32", (-1, -1), True, 50)
    assert meta.inputs == (meta.input,) and meta.versions == (1, 2) and meta.state == "ready"
    assert meta.session_support == "session_recompute" and meta.max_stream_messages == 9
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    assert calls.health("").read(serving) is True
    assert calls.health("").read(health_pb2.HealthCheckResponse()) is False


# -- sessions ---------------------------------------------------------------------------------


def opened(mode: pb.Mode.ValueType) -> pb.SessionResponse:
    return pb.SessionResponse(
        opened=pb.SessionOpened(
            session_id="s1", model_name="m", model_version=1, mode=mode,
            session_support=pb.SESSION_INCREMENTAL,
        )
    )  # fmt: skip


def test_session_opening_and_info() -> None:
    protocol = calls.SessionProtocol("m", 2, True, 3)
    assert protocol.opening.open == pb.SessionOpen(
        model_name="m", model_version=2, emit_on_request=True, top_k=3
    )
    with pytest.raises(RuntimeError, match="not open"):
        _ = protocol.info
    info = protocol.open(opened(pb.MANY_TO_ONE))
    assert info == SessionInfo("s1", "m", 1, "many_to_one", "session_incremental")
    assert protocol.info == info
    assert calls.SessionProtocol("m", 2, True, 3, {}).opening == protocol.opening


def test_static_inputs_travel_at_open_as_one_item_each() -> None:
    """Floats as float32, integers as they are; no batch or step axis added."""
    static = {"context": [0.5, 1.0, 2.0], "tags": np.array([3, 1], np.int32), "ids": [9]}
    opening = calls.SessionProtocol("m", 0, False, 0, static).opening.open
    assert (opening.model_name, opening.top_k) == ("m", 0)
    got = {name: from_tensor(t) for name, t in opening.named_inputs.items()}
    assert sorted(got) == ["context", "ids", "tags"]
    assert got["context"].dtype == np.float32 and got["context"].shape == (3,)
    np.testing.assert_array_equal(got["context"], [0.5, 1.0, 2.0])
    assert got["tags"].dtype == np.int32 and got["ids"].dtype == np.int64
    assert got["ids"].shape == (1,)
    matrix = calls.open_request("m", 0, False, 0, {"grid": np.ones((2, 2), np.float64)})
    assert from_tensor(matrix.open.named_inputs["grid"]).dtype == np.float32
    assert list(matrix.open.named_inputs["grid"].shape) == [2, 2]


def test_reset_keeps_or_replaces_the_static_inputs() -> None:
    protocol = calls.SessionProtocol("m", 0, False, 0, {"context": np.zeros(3)})
    for keep in (None, {}):
        request = protocol.reset(keep)
        assert request.WhichOneof("kind") == "reset" and not request.reset.named_inputs
    request = protocol.reset({"context": np.ones(3), "ids": [2, 3]})
    assert request.WhichOneof("kind") == "reset"
    got = {name: from_tensor(t) for name, t in request.reset.named_inputs.items()}
    assert got["context"].dtype == np.float32 and got["ids"].dtype == np.int64
    np.testing.assert_array_equal(got["context"], np.ones(3))
    assert calls.reset_request() == pb.SessionRequest(reset=pb.SessionReset())


@pytest.mark.parametrize(
    ("mode", "emit_on_request", "emit", "answered"),
    [
        (pb.MANY_TO_MANY_ALIGNED, False, False, True),
        (pb.MANY_TO_ONE, False, False, True),
        (pb.MANY_TO_ONE, True, False, False),
        (pb.MANY_TO_ONE, True, True, True),
        (pb.MANY_TO_MANY_UNALIGNED, False, True, False),
    ],
)
def test_which_steps_the_server_answers(
    mode: pb.Mode.ValueType, emit_on_request: bool, emit: bool, answered: bool
) -> None:
    protocol = calls.SessionProtocol("m", 0, emit_on_request, 0)
    protocol.open(opened(mode))
    request, got = protocol.steps(np.ones((1, 2)), emit)
    assert got == answered
    assert request.steps.emit == emit and request.steps.values.shape == [1, 2]


def test_session_outputs_and_decoded_sequence() -> None:
    def output(step: int, values: np.ndarray | None, last: bool = False) -> pb.SessionResponse:
        tensor = None if values is None else to_tensor(values)
        return pb.SessionResponse(output=pb.SessionOutput(step=step, values=tensor, last=last))

    parts = [
        calls.session_output_from(output(0, None)),
        calls.session_output_from(output(0, np.ones((2, 1), np.float32))),
        calls.session_output_from(output(2, np.zeros((1, 1), np.float32), last=True)),
    ]
    assert parts[0].values is None and parts[2].last and parts[2].step == 2
    np.testing.assert_array_equal(calls.decoded(parts), [[1], [1], [0]])


def named_output(step: int, last: bool = False, **values: np.ndarray) -> pb.SessionResponse:
    named = {name: to_tensor(v) for name, v in values.items()}
    return pb.SessionResponse(output=pb.SessionOutput(step=step, named_outputs=named, last=last))


def test_session_outputs_by_name_read_into_a_sorted_dict() -> None:
    response = named_output(
        3, value=np.full((2, 1), 7, np.float32), label=np.eye(2, 3, dtype=np.float32)
    )
    response.output.top_k.append(pb.TopK(labels=["a"], scores=[0.5]))
    got = calls.session_output_from(response)
    assert isinstance(got.values, dict) and list(got.values) == ["label", "value"]
    np.testing.assert_array_equal(got.values["label"], np.eye(2, 3))
    np.testing.assert_array_equal(got.values["value"], [[7], [7]])
    assert (got.step, got.top_k, got.last) == (3, [[("a", 0.5)]], False)
    running = calls.session_output_from(named_output(0, b=np.ones(2, np.float32)))
    assert isinstance(running.values, dict) and running.values["b"].shape == (2,)  # many-to-one


def test_decoded_sequence_of_several_outputs_by_name() -> None:
    parts = [
        calls.session_output_from(output)
        for output in [
            named_output(0, y=np.zeros((2, 2), np.float32), z=np.zeros((2, 1), np.float32)),
            named_output(2, True, y=np.ones((1, 2), np.float32), z=np.ones((1, 1), np.float32)),
        ]
    ]
    whole = calls.decoded(parts)
    assert isinstance(whole, dict) and list(whole) == ["y", "z"]
    np.testing.assert_array_equal(whole["y"], [[0, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(whole["z"], [[0], [0], [1]])
    unnamed = calls.session_output_from(
        pb.SessionResponse(output=pb.SessionOutput(values=to_tensor(np.ones((1, 1), np.float32))))
    )
    with pytest.raises(errors.SeqServeError, match="both by name and unnamed"):
        calls.decoded([*parts, unnamed])


def test_an_answer_out_of_turn_is_a_broken_protocol() -> None:
    with pytest.raises(errors.SeqServeError, match="`opened` where `output` was due"):
        calls.session_output_from(opened(pb.MANY_TO_ONE))
    with pytest.raises(errors.SeqServeError, match="`reset` where `opened` was due"):
        calls.SessionProtocol("m", 0, False, 0).open(
            pb.SessionResponse(reset=pb.SessionResetDone())
        )
    calls.reset_done(pb.SessionResponse(reset=pb.SessionResetDone()))


# -- errors -----------------------------------------------------------------------------------


def rpc_error(
    code: grpc.StatusCode, message: str, info: error_details_pb2.ErrorInfo | None = None
) -> grpc.RpcError:
    """The error grpc.aio raises for a status (sync calls raise the same accessors)."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if info is not None:
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    trailing = rpc_status.to_status(status).trailing_metadata
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), message)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInputError),
        (grpc.StatusCode.NOT_FOUND, errors.ModelNotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, errors.CancelledError),
        (grpc.StatusCode.INTERNAL, errors.SeqServeError),
    ],
)
def test_each_status_its_exception(code: grpc.StatusCode, kind: type[errors.SeqServeError]) -> None:
    error = errors.from_rpc_error(rpc_error(code, "why"))
    assert type(error) is kind
    assert (error.code, error.message, error.field) == (code, "why", "")
    assert str(error) == f"{code.name}: why"


def test_error_details_name_the_field() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="BAD_SHAPE", domain="seqserve",
        metadata={"field": "inputs.values.shape", "expected": "[batch, steps, 2]", "got": "[3]"},
    )  # fmt: skip
    error = errors.from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", info))
    assert isinstance(error, errors.InvalidInputError)
    assert (error.reason, error.field, error.expected, error.got) == (
        "BAD_SHAPE", "inputs.values.shape", "[batch, steps, 2]", "[3]",
    )  # fmt: skip


def test_a_session_that_ended_while_an_answer_was_due() -> None:
    assert calls.ended_error(None).code == grpc.StatusCode.UNKNOWN
    late = calls.ended_error(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "late"))
    assert isinstance(late, errors.DeadlineExceededError)
