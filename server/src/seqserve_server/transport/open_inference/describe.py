"""What the v2 metadata, config and repository RPCs say about the models.

Dims follow Triton: without the batch axis (max_batch_size > 0 says there is one), -1 for an
axis of any size. The mode, labels and session support travel as config parameters.
"""

from __future__ import annotations

import json

import numpy as np

from seqserve.inference import grpc_service_pb2 as pb
from seqserve.inference import model_config_pb2 as mc

from .core_facade import ModelView, TensorView, VersionState
from .requests import LENGTHS_SUFFIX
from .responses import OUTPUT_LENGTHS
from .tensors import BYTES, datatype

PLATFORM = "keras"
_STATES = {"ready": "READY", "loading": "LOADING", "failed": "UNAVAILABLE"}


def _dims(shape: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in shape]


def _lengths(name: str) -> TensorView:
    return TensorView(name, np.dtype("int64"), ())


def inputs(model: ModelView) -> list[TensorView]:
    """The model's inputs, then the optional lengths input of each sequence input (for ragged
    batches)."""
    lengths = [_lengths(v.name + LENGTHS_SUFFIX) for v in model.inputs if v.sequence]
    return [*model.inputs, *lengths]


def outputs(model: ModelView) -> list[TensorView]:
    views = list(model.outputs)
    if model.mode.gives_sequence:
        views.append(_lengths(OUTPUT_LENGTHS))
    return views


def metadata(model: ModelView, versions: list[VersionState]) -> pb.ModelMetadataResponse:
    def tensor(view: TensorView) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=view.name, datatype=datatype(view.dtype), shape=[-1, *_dims(view.shape)]
        )

    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(v.version) for v in versions if v.version],
        platform=PLATFORM,
        inputs=[tensor(v) for v in inputs(model)],
        outputs=[tensor(v) for v in outputs(model)],
    )


def _data_type(view: TensorView) -> int:
    """The config's data type: TYPE_ and the v2 name, but text (BYTES) is TYPE_STRING, as in
    Triton's own configs."""
    name = datatype(view.dtype)
    return mc.TYPE_STRING if name == BYTES else mc.DataType.Value("TYPE_" + name)


def config(model: ModelView) -> mc.ModelConfig:
    result = mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="seqserve",
        max_batch_size=model.limits.max_inputs_per_request,
    )
    result.version_policy.specific.versions.append(model.version)
    for view in inputs(model):
        main = view in model.inputs
        # Sequences of any length batch together unpadded (Triton's "ragged batch").
        ragged = main and view.sequence and view.shape[0] is None
        result.input.add(
            name=view.name, data_type=_data_type(view), dims=_dims(view.shape),
            optional=not main, allow_ragged_batch=ragged,
        )  # fmt: skip
    for view in outputs(model):
        result.output.add(name=view.name, data_type=_data_type(view), dims=_dims(view.shape))
    idle_us = int(model.session_idle_timeout_s * 1_000_000)
    if model.session_support != "unsupported":
        result.sequence_batching.max_sequence_idle_microseconds = idle_us
        result.sequence_batching.oldest.max_candidate_sequences = model.max_sessions
    else:
        batching = result.dynamic_batching
        batching.max_queue_delay_microseconds = int(model.max_queue_delay_ms * 1000)
        batching.preferred_batch_size.append(model.max_batch_size)
    params = {
        "mode": model.mode.value,
        "labels": json.dumps(_labels(model)),
        "session_support": model.session_support,
        "compute_path": model.compute_path,
        "max_sequence_length": str(model.limits.max_sequence_length),
        "description": model.description,
    }
    for key, value in params.items():
        result.parameters[key].string_value = value
    return result


def repository_index(versions: list[VersionState], ready_only: bool) -> pb.RepositoryIndexResponse:
    index = pb.RepositoryIndexResponse()
    for v in versions:
        if ready_only and v.state != "ready":
            continue
        index.models.add(
            name=v.name,
            version=str(v.version) if v.version else "",
            state=_STATES.get(v.state, "UNAVAILABLE"),
            reason=v.reason,
        )
    return index


def _labels(model: ModelView) -> list[str] | dict[str, list[str]]:
    """A single output's labels as a list (as before several outputs had labels), else by
    output name."""
    if len(model.outputs) == 1:
        return list(model.labels.get(model.outputs[0].name, []))
    return model.labels
