"""The tensor codec both ends use: arrays come back bit for bit, and a message that cannot be
decoded fails naming the field, what was expected and what came, before anything is allocated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import (
    MAX_RANK,
    DecodeLimits,
    TensorError,
    TensorTooLarge,
    encode_inputs,
    from_batch,
    from_tensor,
    split_sequences,
    to_tensor,
)

DTYPES = ["float32", "float64", "float16", "int32", "int64"]


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from(DTYPES).map(np.dtype),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_every_dtype_round_trips_bit_for_bit(array: np.ndarray) -> None:
    back = from_tensor(to_tensor(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_big_endian_arrays_arrive_as_native_values() -> None:
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    back = from_tensor(to_tensor(array))
    assert back.dtype == np.dtype("float32") and np.array_equal(back, array)


def test_packed_floats_are_accepted() -> None:
    tensor = pb.Tensor(shape=[2, 2], float_values=pb.FloatValues(values=[1, 2, 3, 4]))
    assert np.array_equal(from_tensor(tensor), np.array([[1, 2], [3, 4]], np.float32))


def test_ragged_sequences_travel_unpadded_and_split_back() -> None:
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 1, 7)]
    batch = encode_inputs(sequences)
    assert list(batch.lengths) == [4, 1, 7] and list(batch.values.shape) == [12, 3]
    values, lengths = from_batch(batch)
    assert lengths is not None
    for got, sent in zip(split_sequences(values, lengths.tolist()), sequences, strict=True):
        assert np.array_equal(got, sent)


def test_equal_lengths_travel_dense() -> None:
    batch = encode_inputs([np.ones((5, 3), np.float32)] * 2)
    values, lengths = from_batch(batch)
    assert lengths is None and values.shape == (2, 5, 3)


def test_unsupported_numpy_dtype_names_the_supported_ones() -> None:
    with pytest.raises(TensorError, match="float32") as caught:
        to_tensor(np.zeros(3, dtype=bool))
    assert caught.value.field == "values" and caught.value.got == "bool"


@pytest.mark.parametrize(
    ("tensor", "field", "got"),
    [
        (pb.Tensor(dtype=99, shape=[1]), "values.dtype", "99 (no such DataType)"),
        (pb.Tensor(dtype=pb.FLOAT32, shape=[1] * (MAX_RANK + 1)), "values.shape", "65 axes"),
        (pb.Tensor(dtype=pb.FLOAT32, shape=[-1, 3]), "values.shape", "[-1, 3]"),
        (pb.Tensor(dtype=pb.FLOAT32, shape=[2], raw=b"\0" * 4), "values.raw", "4 bytes"),
        (
            pb.Tensor(shape=[3], float_values=pb.FloatValues(values=[1.0])),
            "values.float_values",
            "1 values",
        ),
    ],
)
def test_undecodable_tensors_name_field_and_got(tensor: pb.Tensor, field: str, got: str) -> None:
    with pytest.raises(TensorError) as caught:
        from_tensor(tensor)
    assert (caught.value.field, caught.value.got) == (field, got)


def test_sizes_are_bounded_before_allocating() -> None:
    huge = pb.Tensor(dtype=pb.FLOAT32, shape=[2**40, 2**40])  # no bytes: the shape alone
    with pytest.raises(TensorTooLarge, match="max_request_elements"):
        from_tensor(huge, limits=DecodeLimits(max_elements=1000))
    with pytest.raises(TensorTooLarge):
        from_tensor(huge)  # beyond int64 even without a limit
    many = encode_inputs([np.ones((1, 2), np.float32)] * 5)
    with pytest.raises(TensorTooLarge, match="max_inputs_per_request"):
        from_batch(many, limits=DecodeLimits(max_items=4))


def test_lengths_must_cover_the_rows() -> None:
    batch = encode_inputs([np.ones((2, 3), np.float32), np.ones((3, 3), np.float32)])
    batch.lengths[:] = [2, 2]
    with pytest.raises(TensorError) as caught:
        from_batch(batch)
    assert caught.value.field == "inputs.lengths" and "summing to 4" in caught.value.got
    batch.lengths[:] = [-1, 6]
    with pytest.raises(TensorError, match="non-negative"):
        from_batch(batch)


def test_a_scalar_is_not_a_batch() -> None:
    with pytest.raises(TensorError, match="at least 1 axis"):
        from_batch(pb.Batch(values=to_tensor(np.float32(1.0))))
