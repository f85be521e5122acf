"""Core values <-> seqserve.v1 messages, in-process: what goes on the wire decodes back to the
numbers the core computed, and every state and status has its message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import (
    TensorError,
    TensorTooLarge,
    encode_inputs,
    from_tensor,
    to_tensor,
)
from seqserve_server.core.batch import Batch
from seqserve_server.core.classification import TopK
from seqserve_server.core.inference import InferencePart, InferenceResult
from seqserve_server.core.limits import RequestLimits
from seqserve_server.core.modes import Mode
from seqserve_server.core.repository import ModelRepository
from seqserve_server.core.sessions import SessionSupport, StepOutput
from seqserve_server.transport import v1_messages as msg
from tests.support.model_zoo import FEATURES, aligned, one_to_one
from tests.support.on_disk import loaded, save_corrupt, save_model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root: Path = tmp_path_factory.mktemp("messages")
    save_model(root / "vectors" / "1", one_to_one, 9)
    save_model(root / "steps" / "1", aligned, 9)
    save_corrupt(root / "corrupt" / "1")
    (root / "empty").mkdir()
    (root / "empty" / "config.yaml").write_text("description: nothing yet\n")
    return loaded(root)


def test_inputs_decode_dense_and_ragged_within_limits() -> None:
    dense = np.arange(12, dtype=np.float32).reshape(3, 4)
    batch = msg.decode_inputs(encode_inputs(dense), RequestLimits())
    assert batch.lengths is None
    np.testing.assert_array_equal(batch.values, dense)
    items = [np.ones((n, FEATURES), np.float32) * n for n in (2, 5)]
    ragged = msg.decode_inputs(encode_inputs(items), RequestLimits())
    assert ragged.lengths is not None and ragged.lengths.tolist() == [2, 5]
    for got, want in zip(ragged.items(), items, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TensorTooLarge, match="max_inputs_per_request"):
        msg.decode_inputs(encode_inputs(dense), RequestLimits(max_inputs_per_request=2))


def test_vector_results_with_top_k() -> None:
    values = np.array([[0.1, 0.7, 0.2]], np.float32)
    ranked = {"output": [TopK(["b", "c"], [0.7, 0.2], [1, 2])]}
    response = msg.result_to_proto(InferenceResult("m", 3, Mode.ONE_TO_ONE, Batch(values), ranked))
    assert (response.model_name, response.model_version, response.mode) == ("m", 3, pb.ONE_TO_ONE)
    np.testing.assert_array_equal(from_tensor(response.vectors.values), values)
    assert list(response.top_k[0].labels) == ["b", "c"] and list(response.top_k[0].indices) == [
        1,
        2,
    ]


def test_ragged_sequence_results_keep_their_lengths() -> None:
    items = [np.full((n, 2), n, np.float32) for n in (1, 3)]
    response = msg.result_to_proto(
        InferenceResult("m", 1, Mode.MANY_TO_MANY_ALIGNED, Batch.from_items(items))
    )
    assert list(response.sequences.lengths) == [1, 3]
    np.testing.assert_array_equal(from_tensor(response.sequences.values), np.concatenate(items))


def test_named_outputs_go_by_name() -> None:
    named = {"a": Batch(np.zeros((2, 1), np.float32)), "b": Batch(np.ones((2, 2), np.float32))}
    response = msg.result_to_proto(
        InferenceResult("m", 1, Mode.ONE_TO_ONE, named["b"], named=named)
    )
    assert sorted(response.named_outputs) == ["a", "b"]
    np.testing.assert_array_equal(from_tensor(response.named_outputs["b"].vectors.values), 1.0)


def test_stream_messages_one_per_step_with_the_last_marked(repo: ModelRepository) -> None:
    target = repo.resolve("steps")
    outputs = [np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros((3, 2), np.float32)]
    part = InferencePart([4, 5], outputs, first_step=2, lengths=[5, 5])
    messages = list(msg.stream_messages(target, part))
    assert [(m.input_index, m.step, m.last) for m in messages] == [
        (4, 2, False), (4, 3, False), (4, 4, True), (5, 2, False), (5, 3, False), (5, 4, True),
    ]  # fmt: skip
    assert {(m.model_name, m.model_version, m.mode) for m in messages} == {
        ("steps", 1, pb.MANY_TO_MANY_ALIGNED)
    }
    np.testing.assert_array_equal(from_tensor(messages[1].values), outputs[0][1])


def test_stream_messages_of_vectors(repo: ModelRepository) -> None:
    target = repo.resolve("vectors")
    part = InferencePart([0, 1], [np.ones(3, np.float32), np.zeros(3, np.float32)])
    messages = list(msg.stream_messages(target, part))
    assert [(m.input_index, m.step, m.last) for m in messages] == [(0, 0, True), (1, 0, True)]


def test_listing_has_every_version_and_the_models_without_any(repo: ModelRepository) -> None:
    listed = {(s.name, s.version): s for s in msg.listing_to_proto(repo.entries()).models}
    assert listed[("vectors", 1)].state == pb.READY
    assert listed[("vectors", 1)].compute_path == "traced"
    assert (
        listed[("corrupt", 1)].state == pb.FAILED and "cannot load" in listed[("corrupt", 1)].error
    )
    assert listed[("empty", 0)].state == pb.FAILED
    assert "no version directories" in listed[("empty", 0)].error


def test_metadata_of_a_ready_and_of_a_failed_version(repo: ModelRepository) -> None:
    ready = msg.metadata_to_proto(
        repo.entry("steps"), repo.status("steps"), pb.SESSION_INCREMENTAL, "exact", 2, 1024
    )
    assert ready.state == pb.READY and ready.mode == pb.MANY_TO_MANY_ALIGNED
    assert list(ready.input.shape) == [-1, -1, FEATURES] and ready.input.sequence
    assert list(ready.output.shape) == [-1, -1, 2] and ready.streams_steps
    assert (ready.open_sessions, ready.max_message_bytes) == (2, 1024)
    assert (ready.max_string_bytes, ready.max_request_string_bytes) == (2**16, 2**26)
    assert "equals Keras" in ready.proof
    failed = msg.metadata_to_proto(
        repo.entry("corrupt"), repo.status("corrupt"), pb.SESSION_UNSUPPORTED, "not ready", 0, 1024
    )
    assert failed.state == pb.FAILED and "cannot load" in failed.error
    assert not failed.HasField("input") and not failed.compute_path


def test_session_messages() -> None:
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    ranked = {"output": [TopK(["x"], [float(i)], [0]) for i in range(3)]}
    one = msg.session_output(StepOutput(7, values, ranked)).output
    assert one.step == 7 and not one.last and len(one.top_k) == 3
    np.testing.assert_array_equal(from_tensor(one.values), values)
    undefined = msg.undefined_output(4).output
    assert undefined.step == 4 and not undefined.HasField("values")
    decoded = [r.output for r in msg.decoded_steps(StepOutput(0, values, ranked, last=True))]
    assert [(o.step, o.last, len(o.top_k)) for o in decoded] == [
        (0, False, 1),
        (1, False, 1),
        (2, True, 1),
    ]
    np.testing.assert_array_equal(from_tensor(decoded[2].values), values[2:])


@pytest.mark.parametrize(
    "values",
    [
        np.arange(3, dtype=np.float32).reshape(3, 1),
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        np.ones(10, np.float32),
        np.ones((2, 3), ">f4"),  # big-endian: through the codec
        np.ones((2, 3), np.float64),
        np.ones(4, np.float16),
    ],
)
def test_session_output_equals_the_codec(values: np.ndarray) -> None:
    """Built in place, the output is byte for byte the message the codec's tensor gives."""
    ranked = [TopK(["x"], [1.0], [0])] if values.ndim == 2 else []
    output = StepOutput(5, values, {"output": ranked} if ranked else {}, last=True)
    want = pb.SessionResponse(
        output=pb.SessionOutput(
            step=5, values=to_tensor(values), top_k=[msg.top_k_to_proto(t) for t in ranked],
            last=True,
        )
    )  # fmt: skip
    assert msg.session_output(output).SerializeToString() == want.SerializeToString()


def _steps_tensor(shape: tuple[int, ...], dtype: pb.DataType.ValueType, size: str) -> pb.Tensor:
    tensor = pb.Tensor(dtype=dtype, shape=shape)
    count = min(int(np.prod([max(d, 0) for d in shape])), 64)  # (1, 2**40): bytes never fit
    if size == "float_values":
        tensor.float_values.values.extend([0.5] * count)
    else:
        extra = {"exact": 0, "short": -1, "long": 1}[size]
        tensor.raw = np.arange(count + 2, dtype="<f4").tobytes()[: 4 * count + extra]
    return tensor


@pytest.mark.parametrize(
    "shape", [(1, 8), (8,), (3, 8), (0, 8), (2, 0), (2, 2, 2), (), (-1, -8), (1, 2**40)]
)
@pytest.mark.parametrize("dtype", [pb.FLOAT32, pb.FLOAT64, pb.INT32, pb.DataType.ValueType(99)])
@pytest.mark.parametrize("size", ["exact", "short", "long", "float_values"])
def test_decode_steps_equals_the_codec(
    shape: tuple[int, ...], dtype: pb.DataType.ValueType, size: str
) -> None:
    """The steps fast path gives what the codec gives, array or error, for every message."""
    message = pb.SessionSteps(values=_steps_tensor(shape, dtype, size))
    for limits in (RequestLimits(max_request_elements=16), RequestLimits()):
        bounds = msg.decode_limits(limits)
        try:
            want: object = from_tensor(message.values, "steps.values", bounds)
        except TensorError as exc:
            with pytest.raises(type(exc)) as caught:
                msg.decode_steps(message, bounds)
            assert str(caught.value) == str(exc)
            continue
        got = msg.decode_steps(message, bounds)
        assert isinstance(want, np.ndarray)
        assert (got.dtype, got.shape, got.tobytes()) == (want.dtype, want.shape, want.tobytes())
        assert got.flags.writeable


def test_every_session_support_has_its_enum() -> None:
    protos = {msg.support_to_proto(s) for s in SessionSupport}
    assert protos == {pb.SESSION_UNSUPPORTED, pb.SESSION_INCREMENTAL, pb.SESSION_RECOMPUTE}
