"""What the SDK returns: plain dataclasses and numpy, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import from_tensor

Outputs = np.ndarray | list[np.ndarray]
# What predict returns: the outputs, or for a model with several outputs a dict of them by name.
Predicted = Outputs | dict[str, Outputs]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1: any size
    sequence: bool = False  # [batch, time, ...] rather than [batch, ...]
    vocabulary: int = 0  # token ids: each in [0, vocabulary); 0 for other inputs


@dataclass(frozen=True)
class Prediction:
    model: str
    version: int
    mode: str
    # [batch, ...] when every output has the same shape, else a list; by name (a dict) for a
    # model with several outputs
    outputs: Predicted
    top_k: list[list[tuple[str, float]]] = field(default_factory=list)


@dataclass(frozen=True)
class StreamPart:
    """A vector output whole, or one step of a sequence output, as soon as it is computed."""

    input_index: int
    step: int
    last: bool
    values: np.ndarray
    top_k: list[tuple[str, float]] = field(default_factory=list)
    output_name: str = ""  # models with several outputs: which output `values` is


@dataclass(frozen=True)
class ModelStatus:
    name: str
    version: int
    state: str
    mode: str
    error: str
    compute_path: str = ""  # the compiled path proven equal to Keras at load


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    versions: tuple[int, ...]
    mode: str
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...]
    description: str
    max_sequence_length: int
    max_batch_size: int
    streams_steps: bool
    session_support: str
    open_sessions: int
    max_sessions: int
    state: str
    error: str
    compute_path: str = ""
    proof: str = ""
    session_reason: str = ""
    max_request_elements: int = 0
    max_inputs_per_request: int = 0
    max_message_bytes: int = 0
    max_stream_messages: int = 0
    inputs: tuple[TensorSpec, ...] = ()  # every input and output by name
    outputs: tuple[TensorSpec, ...] = ()


def mode_name(value: pb.Mode.ValueType) -> str:
    return pb.Mode.Name(value).lower()


def spec_from_proto(spec: pb.TensorSpec) -> TensorSpec:
    dtype = pb.DataType.Name(spec.dtype).lower()
    return TensorSpec(spec.name, dtype, tuple(spec.shape), spec.sequence, spec.vocabulary)


def top_k_pairs(ranked: pb.TopK) -> list[tuple[str, float]]:
    return list(zip(ranked.labels, ranked.scores, strict=True))


def metadata_from_proto(m: pb.GetModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=m.name,
        version=m.version,
        versions=tuple(m.versions),
        mode=mode_name(m.mode),
        input=spec_from_proto(m.input),
        output=spec_from_proto(m.output),
        labels=tuple(m.labels),
        description=m.description,
        max_sequence_length=m.max_sequence_length,
        max_batch_size=m.max_batch_size,
        streams_steps=m.streams_steps,
        session_support=pb.SessionSupport.Name(m.session_support).lower(),
        open_sessions=m.open_sessions,
        max_sessions=m.max_sessions,
        state=pb.ModelState.Name(m.state).lower(),
        error=m.error,
        compute_path=m.compute_path,
        proof=m.proof,
        session_reason=m.session_reason,
        max_request_elements=m.max_request_elements,
        max_inputs_per_request=m.max_inputs_per_request,
        max_message_bytes=m.max_message_bytes,
        max_stream_messages=m.max_stream_messages,
        inputs=tuple(spec_from_proto(s) for s in m.inputs),
        outputs=tuple(spec_from_proto(s) for s in m.outputs),
    )


def status_from_proto(s: pb.ModelStatus) -> ModelStatus:
    return ModelStatus(
        s.name,
        s.version,
        pb.ModelState.Name(s.state).lower(),
        mode_name(s.mode),
        s.error,
        s.compute_path,
    )


def stream_part_from(part: pb.PredictStreamResponse) -> StreamPart:
    return StreamPart(
        part.input_index,
        part.step,
        part.last,
        from_tensor(part.values),
        top_k_pairs(part.top_k),
        part.output_name,
    )
