"""A ModelInferRequest read into what the core takes: a version, a batch, top-k, sequence controls.

A model with several inputs takes each one by its name. Ragged batches: v2 tensors have no
lengths, so each sequence input also takes an INT64 (or INT32) input `<input>_lengths` of shape
[batch]: with the input padded ([batch, steps, ...]) each row is cut to its length; with the
input concatenated ([total_steps, ...], one axis fewer) the lengths split it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb
from seqserve_api.tensors import TensorTooLarge

from .core_facade import Batch, InvalidInput, ModelView, TensorView
from .tensors import check_request_text, decode

LENGTHS_SUFFIX = "_lengths"
TOP_K = "top_k"
STREAM_STEPS = "stream_steps"
SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
Param = bool | int | float | str


def retry_key(request: pb.ModelInferRequest) -> str:
    """What tells a sequence request's retry from a new request: a digest of the whole request
    (its `id` and content), or "" for a request without an id (no retry can be told from it).
    An id alone is not enough: a caller may send one id with every request."""
    if not request.id:
        return ""
    content = request.SerializeToString(deterministic=True)
    return hashlib.sha256(b"seqserve sequence request\0" + content).hexdigest()


@dataclass(frozen=True)
class Unparsed:
    """A stream message that is no ModelInferRequest: it gets its own error response."""

    error: str

    def refusal(self) -> InvalidInput:
        return InvalidInput("request", "a ModelInferRequest that parses", self.error)


async def parsed(messages: AsyncIterator[bytes]) -> AsyncIterator[pb.ModelInferRequest | Unparsed]:
    """ModelStreamInfer's messages, parsed one at a time so that one bad message does not end
    the stream (gRPC's own deserializer would end the call)."""
    async for data in messages:
        try:
            yield pb.ModelInferRequest.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's
            yield Unparsed(f"{type(exc).__name__}: {str(exc)[:200]}")


def version_number(text: str, field: str = "model_version") -> int:
    """A v2 version string: "" for the newest ready version, else a positive number."""
    if not text:
        return 0
    if not text.isdigit() or int(text) == 0 or int(text) > 2**62:
        raise InvalidInput(field, "empty or a positive version number", repr(text[:40]))
    return int(text)


def parameter(params: pb.InferParameter | None) -> Param | None:
    if params is None:
        return None
    kind = params.WhichOneof("parameter_choice")
    return None if kind is None else getattr(params, kind)  # type: ignore[no-any-return]


def int_parameter(request: pb.ModelInferRequest, name: str, low: int = 0) -> int:
    value = parameter(request.parameters.get(name))
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInput(f"parameters[{name!r}]", f"an integer >= {low}", repr(value))
    return value


def bool_parameter(request: pb.ModelInferRequest, name: str) -> bool:
    value = parameter(request.parameters.get(name))
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"parameters[{name!r}]", "a bool", repr(value))
    return value


def sequence_id(request: pb.ModelInferRequest) -> int | str:
    """Triton's sequence id (int64/uint64 or string); 0 or "" when the request is in none."""
    value = parameter(request.parameters.get(SEQUENCE_ID))
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"parameters[{SEQUENCE_ID!r}]", "an integer or a string", repr(value))
    return value


@dataclass(frozen=True)
class Inputs:
    values: np.ndarray
    lengths: np.ndarray | None  # from `<input>_lengths`


def read_inputs(
    request: pb.ModelInferRequest, model: ModelView, needed: Sequence[str] | None = None
) -> dict[str, Inputs]:
    """Every input of the model (and its lengths input), by name, from contents or raw
    contents (`needed`: only these inputs, where a request carries some); a missing or unknown
    input is refused naming it."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise InvalidInput(
            "raw_input_contents", f"one entry per input ({len(request.inputs)})", str(len(raws))
        )
    check_request_text(request.inputs, raws, model.limits)
    accepted = _accepted(model)
    found: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        if tensor.name not in accepted:
            shown = repr(tensor.name[:64])  # a caller's name, unbounded
            raise InvalidInput(
                f"{field}.name",
                f"one of the model's inputs: {', '.join(map(repr, accepted))}",
                shown,
            )
        if tensor.name in found:
            raise InvalidInput(f"{field}.name", "each input once", f"{tensor.name!r} again")
        found[tensor.name] = decode(tensor, raws[index] if raws else None, field, model.limits)
    names = [view.name for view in model.inputs] if needed is None else list(needed)
    missing = [name for name in names if name not in found]
    if missing:
        expected = "every input: " + ", ".join(names)
        got = f"no {', '.join(map(repr, missing))} (got {', '.join(found) or 'none'})"
        raise InvalidInput("inputs", expected, got)
    return {name: Inputs(found[name], found.get(name + LENGTHS_SUFFIX)) for name in names}


def _accepted(model: ModelView) -> list[str]:
    """Input names a request may carry: each input, and `<input>_lengths` of sequence ones."""
    names = [view.name for view in model.inputs]
    lengths = [v.name + LENGTHS_SUFFIX for v in model.inputs if v.sequence]
    return names + [n for n in lengths if n not in names]


def to_batches(inputs: dict[str, Inputs], model: ModelView) -> dict[str, Batch]:
    """The core's batches by input name: each dense as sent, or ragged from its lengths."""
    return {view.name: to_batch(inputs[view.name], view, model) for view in model.inputs}


def to_batch(inputs: Inputs, view: TensorView, model: ModelView) -> Batch:
    """One input's batch: dense as sent, or ragged from `<input>_lengths`."""
    values, lengths = inputs.values, inputs.lengths
    if values.ndim == 0:
        raise InvalidInput(view.name, "[batch, ...]: at least 1 axis", "a scalar")
    if len(values) > model.limits.max_inputs_per_request and lengths is None:
        raise TensorTooLarge(
            f"{view.name}.shape",
            f"at most {model.limits.max_inputs_per_request} inputs (max_inputs_per_request)",
            f"{len(values)} inputs",
        )
    if lengths is None:
        return Batch(values)
    return _ragged(values, lengths, view, model)


def _ragged(values: np.ndarray, lengths: np.ndarray, view: TensorView, model: ModelView) -> Batch:
    field = view.name + LENGTHS_SUFFIX
    if lengths.ndim != 1 or lengths.dtype.kind != "i":
        got = f"{lengths.dtype} of shape {list(lengths.shape)}"
        raise InvalidInput(field, "INT64 or INT32 of shape [batch]", got)
    if len(lengths) > model.limits.max_inputs_per_request:
        raise TensorTooLarge(
            f"{field}.shape",
            f"at most {model.limits.max_inputs_per_request} inputs (max_inputs_per_request)",
            f"{len(lengths)} inputs",
        )
    if (lengths < 0).any():
        raise InvalidInput(field, "non-negative lengths", str(int(lengths.min())))
    lengths = lengths.astype(np.int64)
    model_rank = len(view.shape) + 1
    total = sum(lengths.tolist())
    if values.ndim == model_rank - 1:  # concatenated steps
        if total != len(values):
            raise InvalidInput(
                field, f"lengths summing to {len(values)} (the input's steps)", str(total)
            )
        return Batch(values, lengths)
    if values.ndim == model_rank and values.shape[0] == len(lengths):  # padded
        longest = values.shape[1] if values.ndim > 1 else 0
        if lengths.max(initial=0) > longest:
            got = str(int(lengths.max()))
            raise InvalidInput(field, f"lengths of at most {longest} (the padded steps)", got)
        items = [row[:n] for row, n in zip(values, lengths.tolist(), strict=True)]
        return Batch(np.concatenate(items), lengths) if items else Batch(values)
    raise InvalidInput(
        view.name,
        f"[batch, steps, ...] padded with {len(lengths)} rows, or [total_steps, ...] concatenated",
        f"shape {list(values.shape)}",
    )
