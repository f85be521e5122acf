"""seqserve.v1 text, in-process: STRING inputs decode to object arrays of bytes within the
model's string bounds (per element, per request across named inputs), text outputs go out as
STRING tensors, and metadata says STRING for text inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import (
    DEFAULT_MAX_REQUEST_STRING_BYTES,
    DEFAULT_MAX_STRING_BYTES,
    TensorError,
    TensorTooLarge,
    as_text,
    encode_inputs,
    from_tensor,
    to_tensor,
)
from seqserve_server.core.batch import Batch
from seqserve_server.core.errors import LimitExceeded
from seqserve_server.core.inference import InferenceResult
from seqserve_server.core.limits import RequestLimits
from seqserve_server.core.modes import Mode
from seqserve_server.core.sessions import StepOutput
from seqserve_server.transport import v1_messages as msg

TEXT_LIMITS = RequestLimits(max_string_bytes=4, max_request_string_bytes=10)


def test_decode_limits_carry_the_models_string_bounds() -> None:
    bounds = msg.decode_limits(RequestLimits())
    assert (bounds.max_string_bytes, bounds.max_string_total_bytes) == (
        DEFAULT_MAX_STRING_BYTES, DEFAULT_MAX_REQUEST_STRING_BYTES,
    )  # fmt: skip
    bounds = msg.decode_limits(TEXT_LIMITS)
    assert (bounds.max_string_bytes, bounds.max_string_total_bytes) == (4, 10)


def test_texts_decode_to_bytes_one_per_item() -> None:
    batch = msg.decode_inputs(encode_inputs(["the cat", "héllo"]), RequestLimits())
    assert batch.lengths is None and batch.values.dtype == object
    assert batch.values.tolist() == [b"the cat", "héllo".encode()]


def test_token_lists_decode_ragged() -> None:
    batch = msg.decode_inputs(encode_inputs([["the", "cat"], ["a"]]), RequestLimits())
    assert batch.values.tolist() == [b"the", b"cat", b"a"]
    assert batch.lengths is not None and batch.lengths.tolist() == [2, 1]


def test_an_oversize_text_names_its_element() -> None:
    with pytest.raises(TensorError) as caught:
        msg.decode_inputs(encode_inputs(["abcd", "abcde"]), TEXT_LIMITS)
    assert not isinstance(caught.value, TensorTooLarge)
    assert caught.value.field == "inputs.values.string_values"
    assert caught.value.got == "5 bytes at element 1"


def test_named_inputs_share_the_request_text_bound() -> None:
    """Each named input alone is within 10 bytes; together they are not."""
    request = pb.PredictRequest(model_name="m")
    request.named_inputs["a"].CopyFrom(encode_inputs(["abcd", "abc"]))
    request.named_inputs["b"].CopyFrom(encode_inputs(["abcd"]))
    with pytest.raises(TensorTooLarge, match="max_request_string_bytes") as caught:
        msg.decode_request_inputs(request, TEXT_LIMITS)
    assert caught.value.field == "named_inputs" and caught.value.got == "11 bytes"
    del request.named_inputs["b"]
    inputs = msg.decode_request_inputs(request, TEXT_LIMITS)
    assert isinstance(inputs, dict) and inputs["a"].values.tolist() == [b"abcd", b"abc"]


def test_named_session_inputs_share_the_bound_too() -> None:
    tensors = {"a": to_tensor(np.array(["abcd", "abcd"])), "b": to_tensor(np.array(["abc"]))}
    bounds = msg.decode_limits(TEXT_LIMITS)
    with pytest.raises(TensorTooLarge):
        msg.decode_named(tensors, "open.named_inputs", bounds)
    assert msg.decode_named({"a": tensors["a"]}, "open.named_inputs", bounds)["a"].shape == (2,)


def test_session_steps_of_token_strings_go_through_the_codec() -> None:
    steps = pb.SessionSteps(values=to_tensor(np.array(["the", "cat"])))
    values = msg.decode_session_steps(steps, msg.decode_limits(RequestLimits()))
    assert isinstance(values, np.ndarray) and values.tolist() == [b"the", b"cat"]
    steps.values.shape[:] = [3]
    with pytest.raises(TensorError, match="3 values for shape"):
        msg.decode_session_steps(steps, msg.decode_limits(RequestLimits()))


def test_a_request_of_too_many_texts_is_bounded_by_elements() -> None:
    request = pb.PredictRequest(model_name="m")
    request.named_inputs["a"].CopyFrom(encode_inputs(["x"] * 20))
    with pytest.raises(LimitExceeded, match="max_request_elements"):
        msg.decode_request_inputs(request, RequestLimits(max_request_elements=10))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([b"cat", b"dog"], dtype=object),  # bytes, as TensorFlow gives them
        np.array(["cat", "dög"], dtype=object),  # str
    ],
)
def test_text_outputs_go_out_as_string_tensors(labels: np.ndarray) -> None:
    response = msg.result_to_proto(InferenceResult("m", 1, Mode.ONE_TO_ONE, Batch(labels)))
    assert response.vectors.values.dtype == pb.STRING
    got = as_text(from_tensor(response.vectors.values)).tolist()
    assert got == [s.decode() if isinstance(s, bytes) else s for s in labels.tolist()]


def test_ragged_tag_sequences_keep_their_lengths() -> None:
    tags = Batch.from_items([np.array([b"DET", b"NOUN"], dtype=object), np.array([b"X"], object)])
    response = msg.result_to_proto(InferenceResult("m", 1, Mode.MANY_TO_MANY_ALIGNED, tags))
    assert list(response.sequences.lengths) == [2, 1]
    assert from_tensor(response.sequences.values).tolist() == [b"DET", b"NOUN", b"X"]


def test_session_outputs_of_text() -> None:
    output = msg.session_output(StepOutput(3, np.array([[b"NOUN"]], dtype=object), {})).output
    assert output.values.dtype == pb.STRING and list(output.values.string_values.values) == [
        b"NOUN"
    ]


@pytest.mark.parametrize("dtype", [np.dtype(object), np.dtype("<U4"), np.dtype("S4")])
def test_text_signatures_are_string_in_metadata(dtype: np.dtype) -> None:
    assert msg.dtype_to_proto(dtype) == pb.STRING
    assert msg.dtype_to_proto(np.dtype("float32")) == pb.FLOAT32
    assert msg.dtype_to_proto(np.dtype("bool")) == pb.DATA_TYPE_UNSPECIFIED
