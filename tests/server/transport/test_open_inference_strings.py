"""Open Inference BYTES, in-process: tritonclient's own serialization decodes to the texts it
carries (raw_input_contents or bytes_contents), outputs are what tritonclient's `as_numpy` reads,
metadata and config say BYTES / TYPE_STRING, and a buffer that cannot be decoded is refused
naming the field before the array is built."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from seqserve.inference import grpc_service_pb2 as pb
from seqserve.inference import model_config_pb2 as mc
from seqserve_api.tensors import DecodeLimits, TensorError, TensorTooLarge
from seqserve_server.core.limits import RequestLimits
from seqserve_server.core.modes import Mode
from seqserve_server.transport.open_inference import describe
from seqserve_server.transport.open_inference.core_facade import ModelView, TensorView
from seqserve_server.transport.open_inference.requests import read_inputs, to_batches
from seqserve_server.transport.open_inference.tensors import (
    datatype,
    decode,
    encode,
    join_bytes,
    split_bytes,
)

TEXTS = np.array(["the cat", "", "héllo wörld", "日本語 🙂", "a\x00b"], dtype=object)
LIMITS = RequestLimits()


TEXT_LIMITS = RequestLimits(
    max_request_elements=1000, max_string_bytes=4, max_request_string_bytes=10
)


def _utf8(array: np.ndarray) -> list[bytes]:
    return [s.encode() if isinstance(s, str) else s for s in array.ravel().tolist()]


def triton_input(array: np.ndarray, name: str = "text") -> tuple[pb.ModelInferRequest, bytes]:
    """What tritonclient sends for a BYTES input: its tensor (as our message) and raw bytes."""
    given = triton.InferInput(name, list(array.shape), "BYTES")
    given.set_data_from_numpy(array)
    request = pb.ModelInferRequest()
    request.inputs.add().ParseFromString(given._get_tensor().SerializeToString())
    return request, given._get_content()


@pytest.mark.parametrize("shape", [(5,), (5, 1), (1, 5), (0,), (0, 3)])
def test_tritonclients_raw_bytes_decode_to_its_texts(shape: tuple[int, ...]) -> None:
    array = (TEXTS if 0 not in shape else TEXTS[:0]).reshape(shape)
    request, raw = triton_input(array)
    got = decode(request.inputs[0], raw, "inputs[0]", LIMITS)
    assert got.dtype == object and got.shape == shape
    assert got.ravel().tolist() == _utf8(array)


def test_serialize_byte_tensor_and_split_bytes_agree() -> None:
    array = np.array([b"\xff not utf-8", "ok", b""], dtype=object)
    raw = serialize_byte_tensor(array).item()
    assert split_bytes(raw, 3, "f", DecodeLimits()) == _utf8(array)
    assert join_bytes(_utf8(array)) == raw
    assert deserialize_bytes_tensor(join_bytes(_utf8(array))).tolist() == _utf8(array)


def test_bytes_contents_decode_too() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend([b"a", "é".encode()])
    got = decode(tensor, None, "inputs[0]", LIMITS)
    assert got.shape == (2, 1) and got.ravel().tolist() == [b"a", "é".encode()]


def _raw(*parts: bytes) -> bytes:
    return b"".join(parts)


def _prefix(n: int) -> bytes:
    return struct.pack("<I", n)


@pytest.mark.parametrize(
    ("raw", "shape", "got"),
    [
        (_raw(_prefix(1), b"a"), [2], "5 bytes"),  # shorter than 2 length prefixes
        (_raw(_prefix(9), b"abc", _prefix(0)), [2], "element 0 of 9 bytes runs past the end"),
        (_raw(_prefix(2**32 - 1), b"abcd"), [2], "4294967295 bytes at element 0"),  # too long
        (_raw(_prefix(60_000), b"abcd"), [2], "element 0 of 60000 bytes runs past the end"),
        (_raw(_prefix(1), b"a", _prefix(1), b"b", _prefix(0)), [2], "4 bytes after element 1"),
        (_raw(_prefix(3), b"abc", b"xy"), [2], "the buffer ends at byte 9, before element 1"),
        (b"", [1], "0 bytes"),
        (_raw(_prefix(0)), [0, 2], "4 bytes for a tensor of no elements"),
    ],
)
def test_undecodable_raw_bytes_name_the_input(raw: bytes, shape: list[int], got: str) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=shape)
    with pytest.raises(TensorError) as caught:
        decode(tensor, raw, "inputs[0]", LIMITS)
    error = caught.value
    assert not isinstance(error, TensorTooLarge)
    assert error.field == "raw_input_contents for 'text'"
    assert error.got.startswith(got), error.got


def test_an_oversize_element_is_invalid_naming_it() -> None:
    array = np.array(["abcd", "abcde"], dtype=object)
    request, raw = triton_input(array)
    with pytest.raises(TensorError) as caught:
        decode(request.inputs[0], raw, "inputs[0]", TEXT_LIMITS)
    assert not isinstance(caught.value, TensorTooLarge)
    assert caught.value.got == "5 bytes at element 1"
    assert "max_string_bytes" in caught.value.expected


def test_the_text_total_is_a_quota_checked_from_the_buffer_size() -> None:
    array = np.array(["abcd", "abcd", "abc"], dtype=object)  # 11 bytes of text
    request, raw = triton_input(array)
    with pytest.raises(TensorTooLarge, match="max_request_string_bytes") as caught:
        decode(request.inputs[0], raw, "inputs[0]", TEXT_LIMITS)
    assert caught.value.got == "11 bytes"
    tensor = pb.ModelInferRequest.InferInputTensor(name="t", datatype="BYTES", shape=[3])
    tensor.contents.bytes_contents.extend(_utf8(array))
    with pytest.raises(TensorTooLarge):
        decode(tensor, None, "inputs[0]", TEXT_LIMITS)


def test_a_count_mismatch_in_bytes_contents_names_the_field() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[3])
    tensor.contents.bytes_contents.extend([b"a"])
    with pytest.raises(TensorError) as caught:
        decode(tensor, None, "inputs[0]", LIMITS)
    assert caught.value.field == "inputs[0].contents.bytes_contents"
    assert (caught.value.expected, caught.value.got) == ("3 values for shape [3]", "1 values")


def test_a_huge_shape_is_refused_before_the_buffer_is_read() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="t", datatype="BYTES", shape=[2**40])
    with pytest.raises(TensorTooLarge, match="max_request_elements"):
        decode(tensor, b"", "inputs[0]", LIMITS)


@pytest.mark.parametrize(
    "values",
    [
        TEXTS.reshape(5, 1),
        np.array([[b"x", b""], [b"\xff", b"z"]], dtype=object),
        np.array(["a", "bb"]),  # numpy str_
        np.empty((0, 2), dtype=object),
    ],
)
def test_text_outputs_are_what_tritonclient_reads(values: np.ndarray) -> None:
    response = pb.ModelInferResponse(model_name="m")
    encode("label", values, response)
    assert response.outputs[0].datatype == "BYTES"
    result = triton.InferResult(
        triton_pb.ModelInferResponse.FromString(response.SerializeToString())
    )
    got = result.as_numpy("label")
    assert got.dtype == object and got.shape == values.shape
    assert got.ravel().tolist() == _utf8(values)


def test_datatype_of_text_is_bytes_whatever_numpy_holds_it_as() -> None:
    assert {datatype(np.dtype(d)) for d in (object, "<U3", "S2")} == {"BYTES"}
    assert datatype(np.dtype("float32")) == "FP32"


def _model(dtype: np.dtype, output_dtype: np.dtype) -> ModelView:
    return ModelView(
        name="tagger", version=1, mode=Mode.MANY_TO_MANY_ALIGNED,
        inputs=(TensorView("tokens", dtype, (None,), sequence=True),),
        outputs=(TensorView("tags", output_dtype, (None,)),), labels={}, limits=LIMITS,
        max_batch_size=8, max_queue_delay_ms=1.0, session_support="incremental",
        session_idle_timeout_s=60.0, max_sessions=4, compute_path="graph", description="",
    )  # fmt: skip


def test_metadata_and_config_say_bytes_and_type_string() -> None:
    model = _model(np.dtype(object), np.dtype(object))
    meta = describe.metadata(model, [])
    assert [(t.name, t.datatype) for t in meta.inputs] == [
        ("tokens", "BYTES"), ("tokens_lengths", "INT64"),
    ]  # fmt: skip
    assert [(t.name, t.datatype) for t in meta.outputs] == [
        ("tags", "BYTES"), ("output_lengths", "INT64"),
    ]  # fmt: skip
    config = describe.config(model)
    assert config.input[0].data_type == mc.TYPE_STRING
    assert config.output[0].data_type == mc.TYPE_STRING
    assert config.input[1].data_type == mc.TYPE_INT64


def test_ragged_token_strings_with_lengths_become_a_ragged_batch() -> None:
    """Per-step token strings [total_steps] + `<input>_lengths`, as token ids travel."""
    model = _model(np.dtype(object), np.dtype(object))
    request, raw = triton_input(np.array(["the", "cat", "sat", "a"], dtype=object), "tokens")
    lengths = triton.InferInput("tokens_lengths", [2], "INT64")
    lengths.set_data_from_numpy(np.array([3, 1], np.int64))
    request.inputs.add().ParseFromString(lengths._get_tensor().SerializeToString())
    request.raw_input_contents.extend([raw, lengths._get_content()])
    batch = to_batches(read_inputs(request, model), model)["tokens"]
    assert batch.values.tolist() == [b"the", b"cat", b"sat", b"a"]
    assert batch.lengths is not None and batch.lengths.tolist() == [3, 1]


def test_padded_token_strings_with_lengths_are_cut_to_their_lengths() -> None:
    model = _model(np.dtype(object), np.dtype(object))
    padded = np.array([["the", "cat"], ["a", ""]], dtype=object)
    request, raw = triton_input(padded, "tokens")
    lengths = triton.InferInput("tokens_lengths", [2], "INT64")
    lengths.set_data_from_numpy(np.array([2, 1], np.int64))
    request.inputs.add().ParseFromString(lengths._get_tensor().SerializeToString())
    request.raw_input_contents.extend([raw, lengths._get_content()])
    batch = to_batches(read_inputs(request, model), model)["tokens"]
    assert batch.values.tolist() == [b"the", b"cat", b"a"]


def _two_texts() -> ModelView:
    text = TensorView("a", np.dtype(object), ())
    return ModelView(
        name="pair", version=1, mode=Mode.ONE_TO_ONE,
        inputs=(text, TensorView("b", np.dtype(object), ())),
        outputs=(TensorView("y", np.dtype("float32"), (1,)),), labels={},
        limits=RequestLimits(max_string_bytes=8, max_request_string_bytes=10), max_batch_size=8, max_queue_delay_ms=1.0,
        session_support="unsupported", session_idle_timeout_s=60.0, max_sessions=0,
        compute_path="graph", description="",
    )  # fmt: skip


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "bytes_contents"])
def test_several_text_inputs_share_the_request_text_bound(raw: bool) -> None:
    """Each input alone is within 10 bytes of text; together they are not."""
    model = _two_texts()
    request = pb.ModelInferRequest(model_name="pair")
    for name, texts in (("a", [b"abcdef"]), ("b", [b"abcde"])):
        array = np.array(texts, dtype=object)
        given, content = triton_input(array, name)
        request.inputs.append(given.inputs[0])
        if raw:
            request.raw_input_contents.append(content)
        else:
            request.inputs[-1].contents.bytes_contents.extend(texts)
    with pytest.raises(TensorTooLarge, match="max_request_string_bytes") as caught:
        read_inputs(request, model)
    assert (caught.value.field, caught.value.got) == ("inputs", "11 bytes")
    request.inputs[1].shape[:] = [1]
    if raw:
        request.raw_input_contents[1] = join_bytes([b"abcd"])
    else:
        request.inputs[1].contents.bytes_contents[:] = [b"abcd"]
    got = read_inputs(request, model)
    assert got["a"].values.tolist() == [b"abcdef"] and got["b"].values.tolist() == [b"abcd"]
