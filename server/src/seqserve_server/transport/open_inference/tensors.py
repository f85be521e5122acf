"""Open Inference tensors <-> numpy: typed `contents` or `raw_input_contents` in, raw out.

Sizes are checked (in Python integers) against the model's limits before anything is allocated.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb
from seqserve_api.tensors import TensorError, check_shape, from_raw

from .core_facade import RequestLimits

# The datatypes a served model takes or gives, and where typed `contents` holds each.
DATATYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
             "INT64": "int64_contents"}  # fmt: skip
_NAMES = {dtype.newbyteorder("="): name for name, dtype in DATATYPES.items()}


def datatype(dtype: np.dtype) -> str:
    """The v2 name of a numpy dtype the server sends."""
    return _NAMES[np.dtype(dtype).newbyteorder("=")]


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
        return from_raw(raw, dtype, shape, field, tensor.datatype)
    where = _CONTENTS.get(tensor.datatype)
    if where is None:
        raise TensorError(
            f"{field}.contents", f"{tensor.datatype} in raw_input_contents", "contents"
        )
    values = getattr(tensor.contents, where)
    if len(values) != count:
        raise TensorError(
            f"{field}.contents.{where}", f"{count} values for shape {list(shape)}",
            f"{len(values)} values",
        )  # fmt: skip
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(shape)


def encode(name: str, array: np.ndarray, response: pb.ModelInferResponse) -> None:
    """Append an output as raw little-endian bytes: stock clients read outputs only there."""
    array = np.asarray(array)
    kind = datatype(array.dtype)
    response.outputs.add(name=name, datatype=kind, shape=array.shape)
    little = np.ascontiguousarray(array.astype(DATATYPES[kind], copy=False))
    response.raw_output_contents.append(little.tobytes())


def encode_strings(name: str, rows: list[list[str]], response: pb.ModelInferResponse) -> None:
    """Append a BYTES output [len(rows), k]: each element a 4-byte little-endian length, then
    its UTF-8 bytes (the layout stock clients decode)."""
    k = len(rows[0]) if rows else 0
    response.outputs.add(name=name, datatype="BYTES", shape=[len(rows), k])
    parts = []
    for row in rows:
        for text in row:
            data = text.encode()
            parts.append(struct.pack("<I", len(data)) + data)
    response.raw_output_contents.append(b"".join(parts))
