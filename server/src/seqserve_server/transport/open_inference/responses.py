"""Core outputs -> ModelInferResponse: outputs by name, sequence lengths, top-k, requested subset.

Sequence outputs go out dense ([batch, steps, ...]) when every sequence has as many steps, else
concatenated ([total_steps, ...]); `output_lengths` (INT64 [batch]) gives each one's steps.
With top-k, `top_k_labels` (BYTES), `top_k_scores` (FP32) and `top_k_indices` (INT64), each
[rows, k], rank one row per output vector (or per output step).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb

from .core_facade import Batch, InvalidInput, ModelView, Outputs, TopK
from .tensors import encode, encode_strings

OUTPUT_LENGTHS = "output_lengths"
TOP_K_OUTPUTS = ("top_k_labels", "top_k_scores", "top_k_indices")


def output_names(model: ModelView, k: int) -> list[str]:
    """Every output a response may carry, in the order it carries them."""
    names = [o.name for o in model.outputs]
    if model.mode.gives_sequence:
        names.append(OUTPUT_LENGTHS)
    return names + (list(TOP_K_OUTPUTS) if k else [])


def requested(request: pb.ModelInferRequest, model: ModelView, k: int) -> list[str]:
    """The outputs asked for by name (all when none are named)."""
    available = output_names(model, k)
    if not request.outputs:
        return available
    names = []
    for index, output in enumerate(request.outputs):
        if output.name not in available:
            raise InvalidInput(
                f"outputs[{index}].name", f"one of {', '.join(available)}", repr(output.name)
            )
        names.append(output.name)
    return names


def header(request: pb.ModelInferRequest, model: ModelView, version: int) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_name=model.name, model_version=str(version), id=request.id)


def prediction(
    response: pb.ModelInferResponse, outputs: Outputs, model: ModelView, names: list[str]
) -> pb.ModelInferResponse:
    tensors: dict[str, np.ndarray] = {}
    for name, batch in outputs.named.items():
        tensors[name] = _layout(batch) if model.mode.gives_sequence else batch.values
        if model.mode.gives_sequence:
            tensors[OUTPUT_LENGTHS] = batch.item_lengths().astype(np.int64)
    _add(response, tensors, outputs.top_k, names)
    return response


def step(
    response: pb.ModelInferResponse,
    values: dict[str, np.ndarray],
    ranked: Sequence[TopK] | None,
    names: list[str],
) -> pb.ModelInferResponse:
    """One streamed part or session output: each output with a batch axis of 1."""
    tensors = {name: array[np.newaxis] for name, array in values.items()}
    if OUTPUT_LENGTHS in names:
        first = next(iter(values.values()))
        tensors[OUTPUT_LENGTHS] = np.array([len(first)], dtype=np.int64)
    _add(response, tensors, ranked, names)
    return response


def _layout(batch: Batch) -> np.ndarray:
    return batch.values  # dense [batch, steps, ...] or ragged [total_steps, ...]


def _add(
    response: pb.ModelInferResponse,
    tensors: dict[str, np.ndarray],
    ranked: Sequence[TopK] | None,
    names: list[str],
) -> None:
    for name in names:
        if name in tensors:
            encode(name, tensors[name], response)
        elif name in TOP_K_OUTPUTS and ranked:
            _add_top_k(response, name, ranked)


def _add_top_k(response: pb.ModelInferResponse, name: str, ranked: Sequence[TopK]) -> None:
    if name == "top_k_labels":
        encode_strings(name, [t.labels for t in ranked], response)
    elif name == "top_k_scores":
        encode(name, np.array([t.scores for t in ranked], dtype=np.float32), response)
    else:
        encode(name, np.array([t.indices for t in ranked], dtype=np.int64), response)


def set_parameter(response: pb.ModelInferResponse, name: str, value: bool | int) -> None:
    if isinstance(value, bool):
        response.parameters[name].bool_param = value
    else:
        response.parameters[name].int64_param = value
