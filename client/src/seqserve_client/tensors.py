"""numpy <-> seqserve.v1 tensors, shared by the client SDK and the server.

Arrays travel as raw little-endian bytes with shape and dtype (the fast path); packed floats are
accepted for callers without numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqserve.v1 import seqserve_pb2 as pb

_TO_NUMPY: dict[pb.DataType.ValueType, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
}
_TO_PROTO = {dt.newbyteorder("="): code for code, dt in _TO_NUMPY.items()}


class TensorError(ValueError):
    """A tensor message that cannot be decoded: names the field, what was expected and got."""

    def __init__(self, field: str, expected: str, got: str) -> None:
        super().__init__(f"{field}: expected {expected}, got {got}")
        self.field = field
        self.expected = expected
        self.got = got


def to_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.asarray(array)
    code = _TO_PROTO.get(array.dtype.newbyteorder("="))
    if code is None:
        supported = ", ".join(str(d) for d in _TO_NUMPY.values())
        raise TensorError("values", f"one of {supported}", str(array.dtype))
    little = array.astype(_TO_NUMPY[code], copy=False)
    return pb.Tensor(dtype=code, shape=array.shape, raw=np.ascontiguousarray(little).tobytes())


def from_tensor(tensor: pb.Tensor, field: str = "values") -> np.ndarray:
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{field}.shape", "non-negative sizes", str(list(shape)))
    kind = tensor.WhichOneof("data")
    if kind == "float_values":
        flat = np.asarray(tensor.float_values.values, dtype=np.float32)
        return _reshape(flat, shape, f"{field}.float_values")
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        names = ", ".join(pb.DataType.Name(c) for c in _TO_NUMPY)
        raise TensorError(f"{field}.dtype", f"one of {names}", pb.DataType.Name(tensor.dtype))
    raw = tensor.raw
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            f"{field}.raw",
            f"{count * dtype.itemsize} bytes for shape {list(shape)} of {dtype}",
            f"{len(raw)} bytes",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _reshape(flat: np.ndarray, shape: tuple[int, ...], field: str) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if flat.size != count:
        raise TensorError(field, f"{count} values for shape {list(shape)}", f"{flat.size} values")
    return flat.reshape(shape)


def to_batch(values: np.ndarray, lengths: Sequence[int] | None = None) -> pb.Batch:
    return pb.Batch(values=to_tensor(values), lengths=list(lengths) if lengths is not None else [])


def encode_inputs(inputs: np.ndarray | Sequence[np.ndarray] | Sequence[Sequence[int]]) -> pb.Batch:
    """A dense array as it is; a list of sequences of different lengths without padding."""
    if isinstance(inputs, np.ndarray):
        return to_batch(inputs)
    arrays = [np.asarray(a) for a in inputs]
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return to_batch(np.stack(arrays))
    if not arrays:
        return to_batch(np.zeros((0, 0), dtype=np.float32))
    return to_batch(np.concatenate(arrays), [len(a) for a in arrays])


def from_batch(batch: pb.Batch, field: str = "inputs") -> tuple[np.ndarray, np.ndarray | None]:
    """The values and, for ragged sequences, each sequence's length (checked against values)."""
    values = from_tensor(batch.values, f"{field}.values")
    if not batch.lengths:
        return values, None
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    if values.ndim < 1:
        raise TensorError(
            f"{field}.values.shape",
            "[total_steps, features] (or [total_steps] token ids) with lengths",
            str(list(values.shape)),
        )
    if (lengths < 0).any() or int(lengths.sum()) != values.shape[0]:
        raise TensorError(
            f"{field}.lengths",
            f"non-negative lengths summing to {values.shape[0]} (the rows of values)",
            f"{batch.lengths[:8]}{'...' if len(lengths) > 8 else ''} summing to {lengths.sum()}",
        )
    return values, lengths


def split_sequences(values: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []
