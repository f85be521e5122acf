"""A ModelInferRequest read into what the core takes: a version, a batch, top-k, sequence controls.

Ragged batches: v2 tensors have no lengths, so a sequence model also takes an INT64 (or INT32)
input `<input>_lengths` of shape [batch]: with the input padded ([batch, steps, ...]) each row is
cut to its length; with the input concatenated ([total_steps, ...], one axis fewer) the lengths
split it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb
from seqserve_api.tensors import TensorTooLarge

from .core_facade import Batch, InvalidInput, ModelView
from .tensors import decode

LENGTHS_SUFFIX = "_lengths"
TOP_K = "top_k"
STREAM_STEPS = "stream_steps"
SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
Param = bool | int | float | str


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


def read_inputs(request: pb.ModelInferRequest, model: ModelView) -> Inputs:
    """The model's input (and its lengths input), by name, from contents or raw contents."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise InvalidInput(
            "raw_input_contents", f"one entry per input ({len(request.inputs)})", str(len(raws))
        )
    name = model.input.name
    lengths_name = name + LENGTHS_SUFFIX
    found: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        if tensor.name not in (name, lengths_name):
            known = repr(name) + (f" and {lengths_name!r}" if model.mode.takes_sequence else "")
            raise InvalidInput(
                f"{field}.name", f"one of the model's inputs: {known}", repr(tensor.name)
            )
        if tensor.name in found:
            raise InvalidInput(f"{field}.name", "each input once", f"{tensor.name!r} again")
        found[tensor.name] = decode(tensor, raws[index] if raws else None, field, model.limits)
    if name not in found:
        raise InvalidInput("inputs", f"an input named {name!r}", f"{sorted(found) or 'none'}")
    lengths = found.get(lengths_name)
    if lengths is not None and not model.mode.takes_sequence:
        raise InvalidInput(
            lengths_name, "no lengths: this model's input is not a sequence", "lengths"
        )
    return Inputs(found[name], lengths)


def to_batch(inputs: Inputs, model: ModelView) -> Batch:
    """The core's batch: dense as sent, or ragged from `<input>_lengths`."""
    values, lengths = inputs.values, inputs.lengths
    if values.ndim == 0:
        raise InvalidInput(model.input.name, "[batch, ...]: at least 1 axis", "a scalar")
    if len(values) > model.limits.max_inputs_per_request and lengths is None:
        raise TensorTooLarge(
            f"{model.input.name}.shape",
            f"at most {model.limits.max_inputs_per_request} inputs (max_inputs_per_request)",
            f"{len(values)} inputs",
        )
    if lengths is None:
        return Batch(values)
    return _ragged(values, lengths, model)


def _ragged(values: np.ndarray, lengths: np.ndarray, model: ModelView) -> Batch:
    field = model.input.name + LENGTHS_SUFFIX
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
    model_rank = len(model.input.shape) + 1
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
        model.input.name,
        f"[batch, steps, ...] padded with {len(lengths)} rows, or [total_steps, ...] concatenated",
        f"shape {list(values.shape)}",
    )
