"""numpy <-> seqserve.v1 tensors, shared by the client SDK and the server.

Arrays travel as raw little-endian bytes with shape and dtype (the fast path); packed floats are
accepted for callers without numpy. Text travels as STRING tensors: one UTF-8 element per value in
`string_values`, decoded to an object array of `bytes` (the server checks the UTF-8; `as_text`
gives `str`), each element and their total bounded before the array is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from seqserve.v1 import seqserve_pb2 as pb

from . import MAX_MESSAGE_BYTES

_TO_NUMPY: dict[pb.DataType.ValueType, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
}
_TO_PROTO = {dt.newbyteorder("="): code for code, dt in _TO_NUMPY.items()}
_KNOWN_CODES = frozenset(pb.DataType.values())
MAX_RANK = 64  # numpy's own limit: a deeper shape cannot even be built
INT64_MAX = 2**63 - 1
STRING_DTYPE = np.dtype(object)  # what a STRING tensor decodes to: elements are `bytes`
STRING_KINDS = "OUS"  # numpy kinds encoded as STRING: objects (str/bytes), str_, bytes_
# The server's defaults (--max-string-bytes, --max-request-string-bytes): one text or token of
# at most 64 KiB, and at most a message's worth of text in one request.
DEFAULT_MAX_STRING_BYTES = 64 * 1024
DEFAULT_MAX_REQUEST_STRING_BYTES = MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class DecodeLimits:
    """Size bounds checked before anything is allocated (None: unbounded, as for responses)."""

    max_elements: int | None = None  # values in the tensor; also bounds every single axis
    max_items: int | None = None  # inputs (sequences or vectors) in a batch
    max_string_bytes: int | None = None  # UTF-8 bytes of one STRING element
    max_string_total_bytes: int | None = None  # UTF-8 bytes of a STRING tensor's elements


class TensorError(ValueError):
    """A tensor message that cannot be decoded: names the field, what was expected and got."""

    def __init__(self, field: str, expected: str, got: str) -> None:
        super().__init__(f"{field}: expected {expected}, got {got}")
        self.field = field
        self.expected = expected
        self.got = got


class TensorTooLarge(TensorError):
    """A well-formed tensor beyond a size limit (a quota, not a malformed request)."""


def to_tensor(array: np.ndarray) -> pb.Tensor:
    tensor = pb.Tensor()
    write_tensor(tensor, array)
    return tensor


_LITTLE_FLOAT32 = _TO_NUMPY[pb.FLOAT32]


def write_tensor(tensor: pb.Tensor, array: np.ndarray) -> None:
    """`array` into an empty `tensor` field of a message being built: cheaper than
    `CopyFrom(to_tensor(array))`, which builds the message twice. Little-endian float32 (what
    models give) skips the dtype lookups."""
    array = np.asarray(array)
    if array.dtype == _LITTLE_FLOAT32:
        code = pb.FLOAT32
    elif array.dtype.kind in STRING_KINDS:
        write_strings(tensor, array)
        return
    else:
        found = _TO_PROTO.get(array.dtype.newbyteorder("="))
        if found is None:
            supported = ", ".join(str(d) for d in _TO_NUMPY.values())
            raise TensorError("values", f"one of {supported}, or text", str(array.dtype))
        code = found
        array = array.astype(_TO_NUMPY[code], copy=False)
    tensor.dtype = code
    tensor.shape.extend(array.shape)
    tensor.raw = array.tobytes()  # C order, whatever the array's strides


def write_strings(tensor: pb.Tensor, array: np.ndarray, field: str = "values") -> None:
    """A text array (str_, bytes_, or objects that are str or bytes) as a STRING tensor."""
    tensor.dtype = pb.STRING
    tensor.shape.extend(array.shape)
    tensor.string_values.values.extend(string_elements(array, field))


def string_elements(array: np.ndarray, field: str = "values") -> list[bytes]:
    """Each element of a text array as UTF-8 bytes, in C order (`bytes` kept as they are).
    numpy's bytes_ and str_ drop trailing NULs: an object array keeps them."""
    items = np.asarray(array).ravel(order="C").tolist()
    out: list[bytes] = []
    for index, item in enumerate(items):
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, str):
            out.append(_utf8(item, field, index))
        else:
            got = f"{type(item).__name__} at element {index}"
            raise TensorError(field, "text: str or bytes elements", got)
    return out


def _utf8(text: str, field: str, index: int) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8
        raise TensorError(
            field, "text that UTF-8 encodes", f"{exc.reason} at element {index}"
        ) from None


def from_tensor(
    tensor: pb.Tensor, field: str = "values", limits: DecodeLimits | None = None
) -> np.ndarray:
    """The array a message carries; shape, dtype and size are checked (in Python integers, which
    cannot wrap around) before any buffer is allocated."""
    limits = limits or DecodeLimits()
    shape = _checked_shape(tensor, field, limits)
    count = math.prod(shape)
    data = tensor.WhichOneof("data")
    if tensor.dtype == pb.STRING:
        return _strings_from(tensor, data, shape, field, limits)
    if data == "string_values":
        raise TensorError(
            f"{field}.string_values", "no text unless dtype is STRING",
            f"text for dtype {_dtype_name(tensor.dtype)}",
        )  # fmt: skip
    if data == "float_values":
        values = tensor.float_values.values
        if len(values) != count:
            raise TensorError(
                f"{field}.float_values", f"{count} values for shape {list(shape)}",
                f"{len(values)} values",
            )  # fmt: skip
        return np.asarray(values, dtype=np.float32).reshape(shape)
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        names = ", ".join(pb.DataType.Name(c) for c in _TO_NUMPY)
        raise TensorError(f"{field}.dtype", f"one of {names}", _dtype_name(tensor.dtype))
    return from_raw(tensor.raw, dtype, shape, f"{field}.raw")


def _strings_from(
    tensor: pb.Tensor, data: str | None, shape: tuple[int, ...], field: str, limits: DecodeLimits
) -> np.ndarray:
    """A STRING tensor's elements as an object array of `bytes`, counted and bounded first."""
    if data in ("raw", "float_values"):
        raise TensorError(f"{field}.{data}", "string_values for dtype STRING", data)
    return strings_array(tensor.string_values.values, shape, f"{field}.string_values", limits)


def strings_array(
    values: Sequence[bytes], shape: tuple[int, ...], field: str, limits: DecodeLimits
) -> np.ndarray:
    """`values` (one per element, C order) as an object array of `shape`: the count (read
    without touching the elements) must match, and every element and their total lie within
    `limits` (shared with the v2 adapter)."""
    count = math.prod(shape)
    if len(values) != count:
        raise TensorError(
            field, f"{count} values for shape {_shape_text(shape)}", f"{len(values)} values"
        )
    items = list(values)
    check_string_sizes(items, field, limits)
    array = np.empty(count, dtype=STRING_DTYPE)
    array[:] = items
    return array.reshape(shape)


def check_string_sizes(items: Sequence[bytes], field: str, limits: DecodeLimits) -> None:
    """Each element within max_string_bytes (a malformed input: TensorError) and all of them
    within max_string_total_bytes (a quota: TensorTooLarge)."""
    sizes = [len(item) for item in items]
    bound = limits.max_string_bytes
    if bound is not None and sizes and max(sizes) > bound:
        index = next(i for i, n in enumerate(sizes) if n > bound)
        got = f"{sizes[index]} bytes at element {index}"
        raise TensorError(field, f"at most {bound} bytes per element (max_string_bytes)", got)
    check_string_total(sum(sizes), field, limits)


def check_string_total(total: int, field: str, limits: DecodeLimits) -> None:
    bound = limits.max_string_total_bytes
    if bound is not None and total > bound:
        raise TensorTooLarge(
            field, f"at most {bound} bytes of text (max_request_string_bytes)", f"{total} bytes"
        )


def as_text(array: np.ndarray, field: str = "values") -> np.ndarray:
    """A decoded STRING array (object array of `bytes`) as an object array of `str`; an
    element that is not UTF-8 is refused naming it."""
    flat = array.ravel().tolist()
    out = np.empty(len(flat), dtype=STRING_DTYPE)
    for index, item in enumerate(flat):
        try:
            out[index] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            got = f"{exc.reason} at byte {exc.start} of element {index}"
            raise TensorError(field, "UTF-8 text", got) from None
    return out.reshape(array.shape)


def from_raw(
    raw: bytes, dtype: np.dtype, shape: tuple[int, ...], field: str, type_name: str = ""
) -> np.ndarray:
    """Little-endian bytes of exactly `shape` as a native-order array (shared with the v2
    adapter, whose `raw_input_contents` are the same layout). `type_name` (default: the
    dtype's) is only formatted into an error: not built per call on the hot path."""
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            field,
            f"{count * dtype.itemsize} bytes for shape {list(shape)} of {type_name or dtype}",
            f"{len(raw)} bytes",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _checked_shape(tensor: pb.Tensor, field: str, limits: DecodeLimits) -> tuple[int, ...]:
    """A shape of bounded rank and size; a dtype number the enum defines."""
    if tensor.dtype not in _KNOWN_CODES:
        known = ", ".join(pb.DataType.keys())
        raise TensorError(f"{field}.dtype", f"one of {known}", _dtype_name(tensor.dtype))
    return check_shape(tensor.shape, f"{field}.shape", limits.max_elements)


def check_shape(shape: Sequence[int], field: str, max_elements: int | None) -> tuple[int, ...]:
    """A shape of bounded rank and size, checked in Python integers before any allocation."""
    if len(shape) > MAX_RANK:
        raise TensorError(field, f"at most {MAX_RANK} axes", f"{len(shape)} axes")
    shape = tuple(shape)
    if any(d < 0 for d in shape):
        raise TensorError(field, "non-negative sizes", _shape_text(shape))
    # The longest axis counts too: (0, 2**62) holds no values but no array of that shape exists.
    size = max(math.prod(shape), max(shape, default=0))
    bound = INT64_MAX if max_elements is None else max_elements
    if size > bound:
        raise TensorTooLarge(
            field,
            f"at most {bound} elements and no longer axis (max_request_elements)",
            _shape_text(shape),
        )
    return shape


def _dtype_name(code: int) -> str:
    known = code in _KNOWN_CODES
    return pb.DataType.Name(pb.DataType.ValueType(code)) if known else f"{code} (no such DataType)"


def _shape_text(shape: Sequence[int]) -> str:
    text = str(list(shape[:8]))
    return text[:-1] + ", ...]" if len(shape) > 8 else text


def to_batch(values: np.ndarray, lengths: Sequence[int] | None = None) -> pb.Batch:
    return pb.Batch(values=to_tensor(values), lengths=list(lengths) if lengths is not None else [])


# Lists: ragged sequences (of numbers, or of token strings); texts: one string per item.
Array: TypeAlias = (
    np.ndarray | Sequence[np.ndarray] | Sequence[Sequence[int]] | Sequence[str]
    | Sequence[Sequence[str]]
)  # fmt: skip
# One input's batch, or (models with several inputs) each input's batch by name.
Inputs: TypeAlias = Array | Mapping[str, Array]


def request_inputs(inputs: Inputs) -> dict[str, Any]:
    """The PredictRequest fields that carry `inputs`: `inputs` for one array (or list of
    sequences), `named_inputs` for a mapping of input name to array (or list)."""
    if isinstance(inputs, Mapping):
        return {"named_inputs": {name: encode_inputs(a) for name, a in inputs.items()}}
    return {"inputs": encode_inputs(inputs)}


def encode_inputs(inputs: Array) -> pb.Batch:
    """A dense array as it is; a list of sequences of different lengths without padding; a list
    of texts as STRING [batch]."""
    if isinstance(inputs, np.ndarray):
        return to_batch(inputs)
    if isinstance(inputs, str | bytes):  # iterating it would send one text per character
        raise TensorError("inputs", "a list of texts, one per item (e.g. [text])", "one str")
    arrays = [as_array(a) for a in inputs]
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return to_batch(np.stack(arrays))
    if not arrays:
        return to_batch(np.zeros((0, 0), dtype=np.float32))
    return to_batch(np.concatenate(arrays), [len(a) for a in arrays])


def as_array(values: Any) -> np.ndarray:
    """`np.asarray`, but text (a str, or a list of them) as an object array: numpy's str_ is
    fixed-width, 4 bytes per character of the longest text for every element (one long text
    among many short ones would take gigabytes), and drops trailing NULs."""
    if isinstance(values, str | bytes):
        array = np.empty((), dtype=STRING_DTYPE)
        array[()] = values
        return array
    if (
        isinstance(values, list | tuple)
        and values
        and all(isinstance(v, str | bytes) for v in values)
    ):
        array = np.empty(len(values), dtype=STRING_DTYPE)
        array[:] = values
        return array
    return np.asarray(values)


def from_batch(
    batch: pb.Batch, field: str = "inputs", limits: DecodeLimits | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The values and, for ragged sequences, each sequence's length (checked against values)."""
    limits = limits or DecodeLimits()
    dense_items = batch.values.shape[0] if batch.values.shape else 0
    items = len(batch.lengths) if batch.lengths else dense_items
    if limits.max_items is not None and items > limits.max_items:
        where = f"{field}.lengths" if batch.lengths else f"{field}.values.shape"
        raise TensorTooLarge(
            where, f"at most {limits.max_items} inputs (max_inputs_per_request)", f"{items} inputs"
        )
    values = from_tensor(batch.values, f"{field}.values", limits)
    if values.ndim == 0:
        raise TensorError(f"{field}.values.shape", "[batch, ...]: at least 1 axis", "[] (a scalar)")
    if not batch.lengths:
        return values, None
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    if (lengths < 0).any():
        raise TensorError(f"{field}.lengths", "non-negative lengths", str(int(lengths.min())))
    rows, total = values.shape[0], _exact_sum(lengths)
    if total != rows:
        raise TensorError(
            f"{field}.lengths",
            f"lengths summing to {rows} (the rows of values)",
            f"{_shape_text(lengths[:9].tolist())} summing to {total}",
        )
    return values, lengths


def _exact_sum(lengths: np.ndarray) -> int:
    """numpy's int64 sum wraps around silently; Python's does not (needed only when it could)."""
    if len(lengths) * int(lengths.max()) <= INT64_MAX:
        return int(lengths.sum())
    return sum(lengths.tolist())


def split_sequences(values: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []
