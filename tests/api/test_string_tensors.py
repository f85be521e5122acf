"""STRING tensors: text of every numpy form round-trips as UTF-8 bytes, and a tensor that cannot be
decoded (wrong count, oversize element or total, text in the wrong field) fails naming the field
before the array is built."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import (
    DEFAULT_MAX_REQUEST_STRING_BYTES,
    DEFAULT_MAX_STRING_BYTES,
    DecodeLimits,
    TensorError,
    TensorTooLarge,
    as_text,
    encode_inputs,
    from_batch,
    from_tensor,
    split_sequences,
    to_tensor,
)

TEXTS = ["hello", "", "héllo wörld", "日本語", "🙂 emoji", "a\x00b", "tab\tnew\nline"]


def texts(shape: tuple[int, ...]) -> np.ndarray:
    flat = [TEXTS[i % len(TEXTS)] for i in range(int(np.prod(shape)))]
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        object,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements=st.text(max_size=20),
    )
)
def test_text_round_trips_as_utf8_bytes(array: np.ndarray) -> None:
    tensor = to_tensor(array)
    assert tensor.dtype == pb.STRING and list(tensor.shape) == list(array.shape)
    back = from_tensor(tensor)
    assert back.dtype == object and back.shape == array.shape
    assert all(isinstance(b, bytes) for b in back.flat)
    assert as_text(back).tolist() == array.tolist()


@pytest.mark.parametrize(
    "array",
    [
        np.array(["the", "cat", "héllo"]),  # numpy str_ (<U)
        np.array([b"the", b"cat"]),  # numpy bytes_ (S)
        texts((2, 3)),  # object array of str
        np.array([b"\xff\xfe", b"ok"], dtype=object),  # bytes kept as they are, even not UTF-8
    ],
)
def test_every_numpy_form_of_text_is_sent(array: np.ndarray) -> None:
    back = from_tensor(to_tensor(array))
    expected = [x if isinstance(x, bytes) else x.encode() for x in array.ravel().tolist()]
    assert back.shape == array.shape and back.ravel().tolist() == expected


def test_elements_travel_in_c_order() -> None:
    array = texts((2, 3)).T  # not C-contiguous
    tensor = to_tensor(array)
    assert list(tensor.shape) == [3, 2]
    assert list(tensor.string_values.values) == [s.encode() for s in array.ravel(order="C")]


def test_object_arrays_keep_trailing_nuls() -> None:
    array = np.array(["a\x00"], dtype=object)
    assert from_tensor(to_tensor(array)).tolist() == [b"a\x00"]


@pytest.mark.parametrize(
    ("array", "got"),
    [
        (np.array(["ok", 3], dtype=object), "int at element 1"),
        (np.array([None], dtype=object), "NoneType at element 0"),
        (np.array(["ok", "\ud800"], dtype=object), "surrogates not allowed at element 1"),
    ],
)
def test_objects_that_are_not_text_are_refused(array: np.ndarray, got: str) -> None:
    with pytest.raises(TensorError) as caught:
        to_tensor(array)
    assert caught.value.field == "values" and caught.value.got == got


def test_a_list_of_texts_is_one_text_per_item() -> None:
    batch = encode_inputs(["some text", "more"])
    assert batch.values.dtype == pb.STRING and list(batch.values.shape) == [2]
    values, lengths = from_batch(batch)
    assert lengths is None and values.tolist() == [b"some text", b"more"]


def test_one_str_is_not_a_batch_of_characters() -> None:
    with pytest.raises(TensorError, match="a list of texts") as caught:
        encode_inputs("hello")
    assert caught.value.field == "inputs"


def test_token_lists_travel_ragged_like_token_ids() -> None:
    batch = encode_inputs([["the", "cat", "sat"], ["a"]])
    assert list(batch.values.shape) == [4] and list(batch.lengths) == [3, 1]
    values, lengths = from_batch(batch)
    assert lengths is not None
    sequences = split_sequences(values, lengths.tolist())
    assert [s.tolist() for s in sequences] == [[b"the", b"cat", b"sat"], [b"a"]]


def test_token_lists_of_one_length_travel_dense() -> None:
    batch = encode_inputs([["the", "cat"], ["a", "dog"]])
    values, lengths = from_batch(batch)
    assert lengths is None and values.shape == (2, 2)


def strings(shape: list[int], values: list[bytes]) -> pb.Tensor:
    return pb.Tensor(dtype=pb.STRING, shape=shape, string_values=pb.StringValues(values=values))


@pytest.mark.parametrize(
    ("tensor", "field", "got"),
    [
        (strings([3], [b"a", b"b"]), "values.string_values", "2 values"),
        (strings([1, 2], [b"a", b"b", b"c"]), "values.string_values", "3 values"),
        (strings([], []), "values.string_values", "0 values"),  # a scalar holds one
        (pb.Tensor(dtype=pb.STRING, shape=[2]), "values.string_values", "0 values"),
        (pb.Tensor(dtype=pb.STRING, shape=[1], raw=b"abcd"), "values.raw", "raw"),
        (
            pb.Tensor(dtype=pb.STRING, shape=[1], float_values=pb.FloatValues(values=[1.0])),
            "values.float_values",
            "float_values",
        ),
        (
            pb.Tensor(dtype=pb.FLOAT32, shape=[1], string_values=pb.StringValues(values=[b"a"])),
            "values.string_values",
            "text for dtype FLOAT32",
        ),
    ],
)
def test_undecodable_string_tensors_name_field_and_got(
    tensor: pb.Tensor, field: str, got: str
) -> None:
    with pytest.raises(TensorError) as caught:
        from_tensor(tensor)
    assert (caught.value.field, caught.value.got) == (field, got)
    assert not isinstance(caught.value, TensorTooLarge)


def test_a_count_mismatch_names_shape_and_count() -> None:
    with pytest.raises(TensorError) as caught:
        from_tensor(strings([2, 2], [b"a"]), "inputs.values")
    assert str(caught.value) == (
        "inputs.values.string_values: expected 4 values for shape [2, 2], got 1 values"
    )


def test_an_oversize_element_is_invalid_and_named() -> None:
    limits = DecodeLimits(max_string_bytes=4)
    tensor = strings([3], [b"abcd", b"", b"abcde"])
    with pytest.raises(TensorError) as caught:
        from_tensor(tensor, "inputs.values", limits)
    error = caught.value
    assert not isinstance(error, TensorTooLarge)
    assert error.field == "inputs.values.string_values"
    assert error.got == "5 bytes at element 2" and "max_string_bytes" in error.expected
    assert from_tensor(strings([1], [b"abcd"]), limits=limits).tolist() == [b"abcd"]


def test_the_text_total_is_a_quota() -> None:
    limits = DecodeLimits(max_string_total_bytes=5)
    with pytest.raises(TensorTooLarge) as caught:
        from_tensor(strings([2], [b"abc", b"def"]), limits=limits)
    assert caught.value.got == "6 bytes" and "max_request_string_bytes" in caught.value.expected
    assert from_tensor(strings([2], [b"ab", b"def"]), limits=limits).shape == (2,)


def test_the_shape_is_bounded_before_the_count_is_read() -> None:
    with pytest.raises(TensorTooLarge, match="max_request_elements"):
        from_tensor(strings([2**40, 2**40], []), limits=DecodeLimits(max_elements=1000))


def test_as_text_names_an_element_that_is_not_utf8() -> None:
    with pytest.raises(TensorError) as caught:
        as_text(np.array([b"ok", b"\xc3("], dtype=object), "outputs")
    assert caught.value.field == "outputs" and "element 1" in caught.value.got


def test_the_default_string_bounds() -> None:
    assert (DEFAULT_MAX_STRING_BYTES, DEFAULT_MAX_REQUEST_STRING_BYTES) == (2**16, 2**26)


def test_unsupported_dtypes_still_name_the_supported_ones() -> None:
    with pytest.raises(TensorError, match=r"float32.*or text") as caught:
        to_tensor(np.zeros(3, dtype=np.complex64))
    assert caught.value.got == "complex64"


def test_lists_of_text_are_not_padded_to_the_longest() -> None:
    """numpy's str_ would hold 10,000 x 1 MB here (4 bytes a character of the longest)."""
    batch = encode_inputs(["x" * 250_000, *(["a\x00"] * 10_000)])
    assert batch.ByteSize() < 400_000
    values, _ = from_batch(batch)
    assert values[1] == b"a\x00"  # trailing NULs kept, as str_ would not
    tokens = encode_inputs([["x" * 250_000, "b"], ["c\x00"] * 5000])
    assert list(tokens.lengths) == [2, 5000] and tokens.ByteSize() < 300_000
