"""A model's inputs and the checks a request's arrays pass before they reach the model.

Numpy only: every refusal is an `InvalidInput` naming the field (`inputs.values.shape`, or
`named_inputs["decoder"].lengths[0]` for a model with several inputs), expected and got.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .batch import Batch, NamedBatch
from .errors import InvalidInput
from .signature import STRING, TEXT_SHAPE, InputSpec

ACCEPTED_FLOATS = (np.float16, np.float32, np.float64)
ACCEPTED_IDS = (np.int32, np.int64)
Where = Callable[[tuple[np.intp, ...]], str]  # an index into the values -> a position for humans


def check_inputs(
    inputs: Batch | dict[str, Batch],
    specs: tuple[InputSpec, ...],
    several: bool,
    equal_lengths: bool,
    max_sequence_length: int,
) -> Batch | NamedBatch:
    """Decoded inputs (one batch, or batches by input name) checked against the model's input
    `specs` and as its dtypes: a `Batch` for a single-input model, a `NamedBatch` in the model's
    input order for `several` (whose sequence inputs share one length per item when
    `equal_lengths`)."""
    names = [spec.name for spec in specs]
    if not several:
        if isinstance(inputs, Batch):
            return check_batch(specs[0], inputs, "inputs", max_sequence_length)
        _check_names(inputs, names)
        return check_batch(specs[0], inputs[names[0]], _field(names[0]), max_sequence_length)
    if isinstance(inputs, Batch):
        raise InvalidInput(
            "named_inputs", f"every input by name ({', '.join(names)})", "unnamed `inputs`"
        )
    _check_names(inputs, names)
    checked = {
        spec.name: check_batch(spec, inputs[spec.name], _field(spec.name), max_sequence_length)
        for spec in specs
    }
    _check_sizes(checked)
    if equal_lengths:
        _check_equal_lengths(checked, [s.name for s in specs if s.sequence])
    return NamedBatch(checked)


def check_batch(spec: InputSpec, batch: Batch, field: str, max_sequence_length: int) -> Batch:
    """One input's batch: layout, dtype, values and lengths; as the input's dtype."""
    _check_layout(spec, batch, field)
    values = check_values(spec, batch.values, field, lambda at: _where(batch, at, field))
    if spec.sequence:  # a dense batch's sequences share one length: checked once
        lengths = batch.lengths if batch.lengths is not None else batch.item_lengths()[:1]
        _check_lengths(spec, lengths, field, max_sequence_length)
    if spec.text:  # [batch] texts, held as [batch, 1]
        values = values.reshape(-1, *TEXT_SHAPE)
    return Batch(values, batch.lengths)


def check_values(spec: InputSpec, values: np.ndarray, field: str, where: Where) -> np.ndarray:
    """The values of the message field `field` (its `.values`) as the input's dtype: token ids
    inside the vocabulary, or finite floats. The one value check of request inputs (Predict's
    batches and session steps); `where` names the position of a bad value."""
    if spec.string:
        return _as_text(values, field, where)
    if _is_text(values):
        raise InvalidInput(f"{field}.values.dtype", _numbers(spec), "text (STRING)")
    if np.issubdtype(spec.dtype, np.integer):
        ids = _as_ids(values, spec.dtype, field)
        _check_vocabulary(ids, spec.vocabulary, field, where)
        return ids
    floats = _as_model_dtype(values, spec.dtype, field)
    _check_finite(floats, field, where)
    return floats


def _numbers(spec: InputSpec) -> str:
    if np.issubdtype(spec.dtype, np.integer):
        return "integers (int32 or int64)"
    return "a floating type (float16/32/64)"


def _is_text(values: np.ndarray) -> bool:
    return values.dtype == STRING or values.dtype.kind in "SU"


def _as_text(values: np.ndarray, field: str, where: Where) -> np.ndarray:
    """Strings as UTF-8 `bytes` in an object array; invalid UTF-8 is named by position."""
    if not _is_text(values):
        raise InvalidInput(f"{field}.values.dtype", "text (STRING)", str(values.dtype))
    out = np.empty(values.shape, STRING)
    flat, target = values.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat.tolist()):
        if isinstance(item, str):
            try:
                target[i] = item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(
                    f"{field}.values", "UTF-8 text", f"a lone surrogate in {_at(values, i, where)}"
                ) from None
        elif isinstance(item, bytes):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"{field}.values", "UTF-8 text",
                    f"invalid UTF-8 at byte {exc.start} of {_at(values, i, where)}",
                ) from None  # fmt: skip
            target[i] = item
        else:
            raise InvalidInput(
                f"{field}.values", "text (str or UTF-8 bytes)",
                f"{type(item).__name__} in {_at(values, i, where)}",
            )  # fmt: skip
    return out


def _at(values: np.ndarray, flat_index: int, where: Where) -> str:
    return where(tuple(np.intp(i) for i in np.unravel_index(flat_index, values.shape)))


def _check_lengths(spec: InputSpec, lengths: np.ndarray, field: str, limit: int) -> None:
    for i, length in enumerate(lengths.tolist()):
        where = f"{field}.lengths[{i}]"
        if length <= 0:
            raise InvalidInput(where, "a sequence of at least 1 step", f"{length} steps")
        fixed = spec.fixed_steps
        if fixed is not None and length != fixed:
            raise InvalidInput(where, f"exactly {fixed} steps (fixed-length model)", str(length))
        if limit and length > limit:
            raise InvalidInput(
                where, f"at most {limit} steps (max_sequence_length)", f"{length} steps"
            )


def _field(name: str) -> str:
    return f'named_inputs["{name}"]'


def _check_names(inputs: dict[str, Batch], names: list[str]) -> None:
    """Exactly the model's input names: none missing, none unknown."""
    expected = ", ".join(names)
    for name in inputs:
        if name not in names:
            shown = name if len(name) <= 64 else name[:64] + "..."  # a caller's name, unbounded
            raise InvalidInput(
                _field(shown), f"only the inputs {expected}", f"an input named {shown!r}"
            )
    for name in names:
        if name not in inputs:
            got = ", ".join(inputs) or "no named inputs"
            raise InvalidInput(_field(name), f"every input: {expected}", f"missing (got {got})")


def _check_sizes(batches: dict[str, Batch]) -> None:
    """Item i of every input belongs together: each input holds as many items."""
    (first, batch), *rest = batches.items()
    for name, other in rest:
        if other.size != batch.size:
            raise InvalidInput(
                _field(name), f"{batch.size} items (as many as {_field(first)})",
                f"{other.size} items",
            )  # fmt: skip


def _check_equal_lengths(batches: dict[str, Batch], sequences: list[str]) -> None:
    """The model's sequence inputs of one item must share a length (it fails otherwise)."""
    first, *rest = sequences
    want = batches[first].item_lengths()
    for name in rest:
        got = batches[name].item_lengths()
        for i in np.flatnonzero(got != want).tolist()[:1]:
            raise InvalidInput(
                f"{_field(name)}.lengths[{i}]",
                f"{want[i]} steps, as {_field(first)} (this model's sequence inputs share one "
                "length)",
                f"{got[i]} steps",
            )


def _check_layout(spec: InputSpec, batch: Batch, field: str) -> None:
    if batch.size == 0:
        raise InvalidInput(field, "at least one input", "an empty batch")
    if spec.tokens:
        want_rank = 1 if batch.is_ragged else 2
        layout = "[total_steps] token ids" if batch.is_ragged else "[batch, steps] token ids"
    elif spec.sequence:
        want_rank = 2 if batch.is_ragged else 3
        layout = "[total_steps, features]" if batch.is_ragged else "[batch, steps, features]"
    else:
        what = "a whole text per item" if spec.text else "a vector"
        if batch.is_ragged:
            raise InvalidInput(
                f"{field}.lengths", f"none (this input is {what})", f"{batch.size} lengths"
            )
        want_rank, layout = (1, "[batch] texts") if spec.text else (2, "[batch, features]")
    if batch.values.ndim != want_rank:
        raise InvalidInput(
            f"{field}.values.shape", f"rank {want_rank} {layout}", str(list(batch.values.shape))
        )
    if spec.features is not None and batch.values.shape[-1] != spec.features:
        raise InvalidInput(
            f"{field}.values.shape", f"{spec.features} features", f"{batch.values.shape[-1]}"
        )


def _as_ids(values: np.ndarray, dtype: np.dtype, field: str) -> np.ndarray:
    if values.dtype.type not in ACCEPTED_IDS:
        raise InvalidInput(f"{field}.values.dtype", "integers (int32 or int64)", str(values.dtype))
    if dtype == np.int32 and values.dtype == np.int64:
        low, high = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        if values.size and (values.min() < low or values.max() > high):
            raise InvalidInput(f"{field}.values", "token ids that fit int32", "ids beyond int32")
    return values.astype(dtype, copy=False)


def _check_vocabulary(values: np.ndarray, vocabulary: int | None, field: str, where: Where) -> None:
    if vocabulary is None or not values.size:
        return
    bad = (values < 0) | (values >= vocabulary)
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    raise InvalidInput(
        f"{field}.values", f"token ids in [0, {vocabulary}) (the Embedding's input_dim)",
        f"{values[first]} in {where(first)}",
    )  # fmt: skip


def _where(batch: Batch, at: tuple[np.intp, ...], field: str) -> str:
    """`inputs sequence i step j` for ragged batches, `inputs[i, j...]` for dense ones."""
    row = int(at[0])
    if batch.lengths is None:
        return f"{field}[" + ", ".join(str(int(i)) for i in at) + "]"
    ends = np.cumsum(batch.lengths)
    seq = int(np.searchsorted(ends, row, side="right"))
    start = int(ends[seq - 1]) if seq else 0
    return f"{field} sequence {seq} step {row - start}"


def _as_model_dtype(values: np.ndarray, dtype: np.dtype, field: str) -> np.ndarray:
    if values.dtype.type not in ACCEPTED_FLOATS:
        raise InvalidInput(
            f"{field}.values.dtype", "a floating type (float16/32/64)", str(values.dtype)
        )
    return values.astype(dtype, copy=False)


def _check_finite(values: np.ndarray, field: str, where: Where) -> None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    raise InvalidInput(f"{field}.values", "finite numbers", f"{values[first]} in {where(first)}")
