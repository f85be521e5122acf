"""Core outputs -> ModelInferResponse: outputs by name, sequence lengths, top-k, requested subset.

Sequence outputs go out dense ([batch, steps, ...]) when every sequence has as many steps, else
concatenated ([total_steps, ...]); `output_lengths` (INT64 [batch]) gives each one's steps.
With top-k, `top_k_labels` (BYTES), `top_k_scores` (FP32) and `top_k_indices` (INT64), each
[rows, k], rank one row per output vector (or per output step). Triton's classification (a
requested output with `class_count`, sent as its parameter `classification`) turns that output
into BYTES [rows, count] of "score:index:label".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb

from .core_facade import InvalidInput, ModelView, Outputs, Ranked, TopK
from .requests import parameter
from .tensors import encode, encode_strings

OUTPUT_LENGTHS = "output_lengths"
TOP_K_OUTPUTS = ("top_k_labels", "top_k_scores", "top_k_indices")
CLASSIFICATION = "classification"


@dataclass(frozen=True)
class Wanted:
    """The outputs a response carries, in order; `top_k` labels for the top-k outputs and, by
    output name, the classes of Triton's classification."""

    names: list[str]
    top_k: int = 0
    classes: dict[str, int] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """How many labels the core ranks: enough for every top-k and classification."""
        return max(self.top_k, *self.classes.values(), 0)

    def without(self, name: str) -> Wanted:
        return Wanted([n for n in self.names if n != name], self.top_k, self.classes)


def output_names(model: ModelView, k: int) -> list[str]:
    """Every output a response may carry, in the order it carries them."""
    names = [o.name for o in model.outputs]
    if model.mode.gives_sequence:
        names.append(OUTPUT_LENGTHS)
    return names + (list(TOP_K_OUTPUTS) if k else [])


def requested(request: pb.ModelInferRequest, model: ModelView, k: int) -> Wanted:
    """The outputs asked for by name (all when none are named), with their classification."""
    available = output_names(model, k)
    if not request.outputs:
        return Wanted(available, k)
    names, classes = [], {}
    for index, output in enumerate(request.outputs):
        if output.name not in available:
            raise InvalidInput(
                f"outputs[{index}].name", f"one of {', '.join(available)}", repr(output.name)
            )
        names.append(output.name)
        count = parameter(output.parameters.get(CLASSIFICATION))
        if count is not None:
            classes[output.name] = _class_count(count, index, output.name, model)
    return Wanted(names, k, classes)


def _class_count(count: object, index: int, name: str, model: ModelView) -> int:
    field_name = f"outputs[{index}].parameters['{CLASSIFICATION}']"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput(field_name, "a class count of 1 or more", repr(count))
    labels = model.labels.get(name)
    if not labels:
        raise InvalidInput(
            field_name, "none: this output has no labels in the model's config", str(count)
        )
    if count > len(labels):
        raise InvalidInput(field_name, f"at most {len(labels)} (the output's labels)", str(count))
    return count


def header(request: pb.ModelInferRequest, model: ModelView, version: int) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_name=model.name, model_version=str(version), id=request.id)


def prediction(
    response: pb.ModelInferResponse, outputs: Outputs, model: ModelView, wanted: Wanted
) -> pb.ModelInferResponse:
    tensors: dict[str, np.ndarray] = {}
    for name, batch in outputs.named.items():
        tensors[name] = batch.values  # dense, or ragged sequences [total_steps, ...]
        if model.mode.gives_sequence:
            tensors[OUTPUT_LENGTHS] = batch.item_lengths().astype(np.int64)
    _add(response, tensors, outputs.top_k, wanted)
    return response


def step(
    response: pb.ModelInferResponse,
    values: dict[str, np.ndarray],
    ranked: Ranked | None,
    wanted: Wanted,
) -> pb.ModelInferResponse:
    """One streamed part or session output: each output with a batch axis of 1."""
    tensors = {name: array[np.newaxis] for name, array in values.items()}
    if OUTPUT_LENGTHS in wanted.names:
        first = next(iter(values.values()))
        tensors[OUTPUT_LENGTHS] = np.array([len(first)], dtype=np.int64)
    _add(response, tensors, ranked, wanted)
    return response


def _add(
    response: pb.ModelInferResponse,
    tensors: dict[str, np.ndarray],
    ranked: Ranked | None,
    wanted: Wanted,
) -> None:
    """The wanted outputs; Triton's classification of an output from its own ranking; the
    `top_k_*` outputs from the first labelled output's."""
    for name in wanted.names:
        if name in wanted.classes and ranked and name in ranked:
            rows = [_classes(t, wanted.classes[name]) for t in ranked[name]]
            encode_strings(name, rows, response)
        elif name in tensors:
            encode(name, tensors[name], response)
        elif name in TOP_K_OUTPUTS and ranked:
            first = next(iter(ranked.values()))
            _add_top_k(response, name, [_first(t, wanted.top_k) for t in first])


def _first(ranked: TopK, k: int) -> TopK:
    return TopK(ranked.labels[:k], ranked.scores[:k], ranked.indices[:k])


def _classes(ranked: TopK, count: int) -> list[str]:
    """Triton's classification entries: "score:index:label", best first."""
    return [
        f"{score}:{index}:{label}"
        for score, index, label in zip(ranked.scores, ranked.indices, ranked.labels, strict=True)
    ][:count]


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
