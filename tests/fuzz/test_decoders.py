"""The two protocols' tensor decoders in-process, on arbitrary messages (the STRING / BYTES dtype
among the others): each either gives an array of the declared shape or raises TensorError naming
a field, never anything else, and what decodes re-encodes to the same bytes. The server-level
fuzzer (test_fuzz.py) sends the same kinds of tensors over the wire."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import serialize_byte_tensor

from seqserve.inference import grpc_service_pb2 as v2
from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import DecodeLimits, TensorError, from_batch, from_tensor
from seqserve_server.core.limits import RequestLimits
from seqserve_server.transport.open_inference.tensors import decode, join_bytes

from .cases import BAD_UTF8, HUGE_DIMS, NEGATIVE

LIMITS = DecodeLimits(
    max_elements=4096, max_items=64, max_string_bytes=32, max_string_total_bytes=512
)
DIMS = st.one_of(st.integers(0, 6), st.sampled_from(HUGE_DIMS + NEGATIVE))
SHAPES = st.lists(DIMS, max_size=4)
ELEMENTS = st.one_of(
    st.binary(max_size=40), st.sampled_from(BAD_UTF8), st.text(max_size=8).map(str.encode)
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


SERVER_LIMITS = RequestLimits(
    max_request_elements=4096, max_string_bytes=32, max_request_string_bytes=512
)


@st.composite
def v1_tensors(draw: st.DrawFn) -> pb.Tensor:
    tensor = pb.Tensor(
        dtype=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 99])), shape=draw(SHAPES)
    )
    data = draw(st.sampled_from(["raw", "floats", "strings", "none"]))
    if data == "raw":
        tensor.raw = draw(st.binary(max_size=200))
    elif data == "floats":
        tensor.float_values.values.extend(draw(st.lists(st.floats(width=32), max_size=20)))
    elif data == "strings":
        tensor.string_values.values.extend(draw(st.lists(ELEMENTS, max_size=40)))
    return tensor


@FAST
@given(v1_tensors())
def test_v1_tensors_decode_or_name_a_field(tensor: pb.Tensor) -> None:
    try:
        array = from_tensor(tensor, "values", LIMITS)
    except TensorError as exc:
        assert exc.field.startswith("values")
        return
    assert array.shape == tuple(tensor.shape)
    if tensor.dtype == pb.STRING:
        assert array.dtype == object
        assert array.ravel().tolist() == list(tensor.string_values.values)


@FAST
@given(v1_tensors(), st.lists(st.sampled_from([0, 1, 2, 3, -1, 2**62, 2**63 - 1]), max_size=5))
def test_v1_batches_decode_or_name_a_field(tensor: pb.Tensor, lengths: list[int]) -> None:
    try:
        from_batch(pb.Batch(values=tensor, lengths=lengths), "inputs", LIMITS)
    except TensorError as exc:
        assert exc.field.startswith("inputs")


@st.composite
def bytes_buffers(draw: st.DrawFn) -> bytes:
    """Length-prefixed buffers, well-formed or cut, extended, or with a lying length."""
    raw = join_bytes(draw(st.lists(ELEMENTS, max_size=10)))
    cut = draw(st.sampled_from(["as is", "cut", "extend", "lie", "random"]))
    if cut == "cut" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if cut == "extend":
        return raw + draw(st.binary(min_size=1, max_size=8))
    if cut == "lie":
        return raw + struct.pack("<I", draw(st.sampled_from([5, 2**31, 2**32 - 1]))) + b"abc"
    if cut == "random":
        return draw(st.binary(max_size=64))
    return raw


@st.composite
def v2_inputs(draw: st.DrawFn) -> tuple[v2.ModelInferRequest.InferInputTensor, bytes | None]:
    datatype = draw(st.sampled_from(["BYTES", "BYTES", "FP32", "INT64", "BOOL", "bytes", ""]))
    tensor = v2.ModelInferRequest.InferInputTensor(name="t", datatype=datatype, shape=draw(SHAPES))
    if draw(st.booleans()):
        return tensor, draw(bytes_buffers())
    if draw(st.booleans()):
        tensor.contents.bytes_contents.extend(draw(st.lists(ELEMENTS, max_size=40)))
    else:
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=10)))
    return tensor, None


@FAST
@given(v2_inputs())
def test_v2_inputs_decode_or_name_a_field(given_input: tuple[object, bytes | None]) -> None:
    tensor, raw = given_input
    assert isinstance(tensor, v2.ModelInferRequest.InferInputTensor)
    try:
        array = decode(tensor, raw, "inputs[0]", SERVER_LIMITS)
    except TensorError as exc:
        assert exc.field.startswith(("inputs[0]", "raw_input_contents for 't'"))
        return
    assert array.shape == tuple(tensor.shape)
    if tensor.datatype == "BYTES" and raw is not None:
        assert join_bytes(array.ravel().tolist()) == raw  # nothing read past, nothing left over


@FAST
@given(st.lists(st.binary(max_size=32), min_size=1, max_size=12))
def test_tritonclients_serialization_always_decodes(elements: list[bytes]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    raw = serialize_byte_tensor(array).item()
    tensor = v2.ModelInferRequest.InferInputTensor(
        name="t", datatype="BYTES", shape=[len(elements)]
    )
    assert decode(tensor, raw, "inputs[0]", SERVER_LIMITS).tolist() == elements
