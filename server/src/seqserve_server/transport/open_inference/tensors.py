"""Open Inference tensors <-> numpy: typed `contents` or `raw_input_contents` in, raw out.

Sizes are checked (in Python integers) against the model's limits before anything is allocated.
BYTES (text) is Triton's serialization: in `raw_input_contents`/`raw_output_contents` each element
a 4-byte little-endian length then its bytes, in C order (tritonclient's `serialize_byte_tensor`
and `deserialize_bytes_tensor`); or `contents.bytes_contents`. It decodes to an object array of
`bytes` (the core checks UTF-8).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb
from seqserve_api.tensors import (
    MAX_RANK,
    STRING_DTYPE,
    STRING_KINDS,
    DecodeLimits,
    TensorError,
    check_shape,
    check_string_total,
    from_raw,
    string_elements,
    strings_array,
)

from .core_facade import RequestLimits

# The datatypes a served model takes or gives, and where typed `contents` holds each.
DATATYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "BYTES": STRING_DTYPE,
}
BYTES = "BYTES"
_PREFIX = struct.Struct("<I")  # each BYTES element's length
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
             "INT64": "int64_contents", BYTES: "bytes_contents"}  # fmt: skip
_NAMES = {dtype.newbyteorder("="): name for name, dtype in DATATYPES.items()}


def datatype(dtype: np.dtype) -> str:
    """The v2 name of a numpy dtype the server sends (text, whatever numpy holds it as: BYTES)."""
    dtype = np.dtype(dtype)
    return BYTES if dtype.kind in STRING_KINDS else _NAMES[dtype.newbyteorder("=")]


def decode(
    tensor: pb.ModelInferRequest.InferInputTensor,
    raw: bytes | None,
    field: str,
    limits: RequestLimits,
) -> np.ndarray:
    """The array an input carries, from `raw` (its raw_input_contents entry) or its contents."""
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise TensorError(f"{field}.datatype", f"one of {', '.join(DATATYPES)}", tensor.datatype)
    shape = check_shape(tensor.shape, f"{field}.shape", limits.max_request_elements)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise TensorError(f"{field}.contents", "empty when raw_input_contents is used", "both")
        field = f"raw_input_contents for {tensor.name!r}"
        if tensor.datatype == BYTES:
            bounds = _text_limits(limits)
            return strings_array(split_bytes(raw, count, field, bounds), shape, field, bounds)
        return from_raw(raw, dtype, shape, field, tensor.datatype)
    where = _CONTENTS.get(tensor.datatype)
    if where is None:
        raise TensorError(
            f"{field}.contents", f"{tensor.datatype} in raw_input_contents", "contents"
        )
    values = getattr(tensor.contents, where)
    if tensor.datatype == BYTES:
        return strings_array(values, shape, f"{field}.contents.{where}", _text_limits(limits))
    if len(values) != count:
        raise TensorError(
            f"{field}.contents.{where}", f"{count} values for shape {list(shape)}",
            f"{len(values)} values",
        )  # fmt: skip
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(shape)


def check_request_text(
    tensors: Sequence[pb.ModelInferRequest.InferInputTensor],
    raws: Sequence[bytes],
    limits: RequestLimits,
) -> None:
    """Every BYTES input's text together within max_request_string_bytes (each is bounded
    alone when decoded; this bounds the request). A raw buffer counts its bytes less a length
    per element of its shape: exact for a buffer that decodes, and one that does not is
    refused when decoded."""
    total = 0
    for index, tensor in enumerate(tensors):
        if tensor.datatype != BYTES or len(tensor.shape) > MAX_RANK:  # refused when decoded
            continue
        if raws:
            count = math.prod(max(d, 0) for d in tensor.shape)  # Python integers: no wrap
            total += max(0, len(raws[index]) - _PREFIX.size * count) if index < len(raws) else 0
        else:
            total += sum(len(v) for v in tensor.contents.bytes_contents)
    check_string_total(total, "inputs", _text_limits(limits))


def _text_limits(limits: RequestLimits) -> DecodeLimits:
    """The model's string bounds (the shape is bounded by check_shape)."""
    return DecodeLimits(
        max_string_bytes=limits.max_string_bytes,
        max_string_total_bytes=limits.max_request_string_bytes,
    )


def split_bytes(raw: bytes, count: int, field: str, bounds: DecodeLimits) -> list[bytes]:
    """The `count` elements of a length-prefixed BYTES buffer. Its size is checked against the
    count and the text quota first, each length against the per-element bound and what is
    left of the buffer before its bytes are copied, and nothing may follow the last one."""
    prefixes = _PREFIX.size * count
    if len(raw) < prefixes:
        expected = f"{count} elements, each a 4-byte length then its bytes"
        raise TensorError(field, expected, f"{len(raw)} bytes")
    check_string_total(len(raw) - prefixes, field, bounds)
    per_string = bounds.max_string_bytes
    items, offset = [], 0
    for index in range(count):
        if offset + _PREFIX.size > len(raw):
            got = f"the buffer ends at byte {len(raw)}, before element {index}'s length"
            raise TensorError(field, f"{count} length-prefixed elements", got)
        (size,) = _PREFIX.unpack_from(raw, offset)
        offset += _PREFIX.size
        if per_string is not None and size > per_string:
            got = f"{size} bytes at element {index}"
            raise TensorError(
                field, f"at most {per_string} bytes per element (max_string_bytes)", got
            )
        if offset + size > len(raw):
            got = f"element {index} of {size} bytes runs past the end ({len(raw)} bytes)"
            raise TensorError(field, f"{count} length-prefixed elements", got)
        items.append(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        after = f"after element {count - 1}" if count else "for a tensor of no elements"
        got = f"{len(raw) - offset} bytes {after}"
        raise TensorError(field, f"exactly {count} length-prefixed elements", got)
    return items


def join_bytes(items: list[bytes]) -> bytes:
    """Elements in Triton's BYTES layout: each a 4-byte little-endian length, then its bytes."""
    return b"".join(part for item in items for part in (_PREFIX.pack(len(item)), item))


def encode(name: str, array: np.ndarray, response: pb.ModelInferResponse) -> None:
    """Append an output as raw little-endian bytes (text: length-prefixed UTF-8): stock clients
    read outputs only there."""
    array = np.asarray(array)
    kind = datatype(array.dtype)
    response.outputs.add(name=name, datatype=kind, shape=array.shape)
    if kind == BYTES:
        response.raw_output_contents.append(join_bytes(string_elements(array, name)))
        return
    little = np.ascontiguousarray(array.astype(DATATYPES[kind], copy=False))
    response.raw_output_contents.append(little.tobytes())


def encode_strings(name: str, rows: list[list[str]], response: pb.ModelInferResponse) -> None:
    """Append a BYTES output [len(rows), k]: each element a 4-byte little-endian length, then
    its UTF-8 bytes (the layout stock clients decode)."""
    k = len(rows[0]) if rows else 0
    response.outputs.add(name=name, datatype=BYTES, shape=[len(rows), k])
    response.raw_output_contents.append(join_bytes([t.encode() for row in rows for t in row]))
