"""Core values <-> seqserve.v1 messages."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from google.protobuf.internal.containers import MessageMap, RepeatedCompositeFieldContainer

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import (
    STRING_KINDS,
    DecodeLimits,
    check_string_total,
    from_batch,
    from_tensor,
    to_tensor,
    write_tensor,
)

from ..core.batch import Batch
from ..core.classification import Ranked, TopK
from ..core.errors import InvalidInput, LimitExceeded
from ..core.inference import InferencePart, InferenceResult, Inputs
from ..core.limits import RequestLimits
from ..core.modes import Mode
from ..core.repository import ModelEntry, ModelState, ReadyModel, VersionStatus
from ..core.resumption import Checkpoint
from ..core.sessions import OpenSession, StepOutput
from ..core.signature import SINGLE_OUTPUT_NAME
from ..core.stepping.programs import SessionSupport

_DTYPES = {
    np.dtype("float32"): pb.FLOAT32,
    np.dtype("float64"): pb.FLOAT64,
    np.dtype("float16"): pb.FLOAT16,
    np.dtype("int32"): pb.INT32,
    np.dtype("int64"): pb.INT64,
}
_LITTLE_FLOAT32 = np.dtype("<f4")  # FLOAT32 on the wire
_STATES = {
    ModelState.LOADING: pb.LOADING,
    ModelState.READY: pb.READY,
    ModelState.FAILED: pb.FAILED,
    ModelState.UNLOADED: pb.UNLOADED,
}


def decode_inputs(message: pb.Batch, limits: RequestLimits, field: str = "inputs") -> Batch:
    """One input's batch; text arrives as an object array of `bytes` (the core checks UTF-8)."""
    values, lengths = from_batch(message, field, decode_limits(limits))
    return Batch(values, lengths)


def decode_request_inputs(request: pb.PredictRequest, limits: RequestLimits) -> Inputs:
    """`inputs`, or `named_inputs` by name (each decoded within the limits; together they
    may hold at most max_request_elements numbers)."""
    if not request.named_inputs:
        return decode_inputs(request.inputs, limits)
    if request.HasField("inputs"):
        raise InvalidInput("inputs", "unset when named_inputs is set (one or the other)", "both")
    total = sum(_count(b.values) for b in request.named_inputs.values())
    if total > limits.max_request_elements:
        raise LimitExceeded(
            f"named_inputs: expected at most {limits.max_request_elements} numbers in all "
            f"(max_request_elements), got {total}"
        )
    _check_text_total([b.values for b in request.named_inputs.values()], "named_inputs", limits)
    return {
        name: decode_inputs(batch, limits, f'named_inputs["{name}"]')
        for name, batch in sorted(request.named_inputs.items())
    }


def _check_text_total(
    tensors: list[pb.Tensor], field: str, limits: RequestLimits | DecodeLimits
) -> None:
    """Every named tensor's text together within max_request_string_bytes (each is bounded
    alone when decoded; this bounds the request)."""
    bounds = limits if isinstance(limits, DecodeLimits) else decode_limits(limits)
    total = sum(
        sum(len(v) for v in t.string_values.values)
        for t in tensors
        if t.WhichOneof("data") == "string_values"
    )
    check_string_total(total, field, bounds)


def _count(tensor: pb.Tensor) -> int:
    """Numbers a tensor declares (checked per tensor by the decoder; a bad shape counts 0)."""
    count = 1
    for d in tensor.shape:
        count *= max(d, 0)
    return count


def decode_steps(message: pb.SessionSteps, limits: DecodeLimits) -> np.ndarray:
    """A steps message's values within `limits` (a session's `decode_limits`, made once).

    The common message, a few steps of raw float32 (`[steps, features]` or `[features]`), is
    read straight from its bytes: the codec would accept it as it is and return the same
    array, and this is ~half its cost, per step of every session. Any other message goes
    through the codec, which checks everything and names what is wrong."""
    tensor = message.values
    shape = tuple(tensor.shape)
    if tensor.dtype == pb.FLOAT32 and 0 < len(shape) <= 2 and min(shape) > 0:
        count = math.prod(shape)
        raw = tensor.raw
        bound = limits.max_elements
        if bound is not None and count <= bound and len(raw) == 4 * count:
            return np.frombuffer(raw, _LITTLE_FLOAT32).reshape(shape).astype(np.float32)
    return from_tensor(tensor, "steps.values", limits)


def decode_named(
    tensors: Mapping[str, pb.Tensor], field: str, limits: DecodeLimits
) -> dict[str, np.ndarray]:
    """A map of tensors (a session's static inputs, or several inputs' steps) by name, each
    decoded within `limits`; together at most `limits.max_elements` numbers."""
    total = sum(_count(t) for t in tensors.values())
    if limits.max_elements is not None and total > limits.max_elements:
        raise LimitExceeded(
            f"{field}: expected at most {limits.max_elements} numbers in all "
            f"(max_request_elements), got {total}"
        )
    _check_text_total(list(tensors.values()), field, limits)
    return {
        name: from_tensor(tensor, f'{field}["{name}"].values', limits)
        for name, tensor in sorted(tensors.items())
    }


def decode_session_steps(
    message: pb.SessionSteps, limits: DecodeLimits
) -> np.ndarray | dict[str, np.ndarray]:
    """A steps message's `values`, or its `named_values` by input name (one or the other)."""
    if not message.named_values:
        return decode_steps(message, limits)
    if message.HasField("values"):
        raise InvalidInput(
            "steps.values", "unset when named_values is set (one or the other)", "both"
        )
    return decode_named(message.named_values, "steps.named_values", limits)


def decode_limits(limits: RequestLimits) -> DecodeLimits:
    """The codec's bounds from a model's limits."""
    return DecodeLimits(
        limits.max_request_elements,
        limits.max_inputs_per_request,
        limits.max_string_bytes,
        limits.max_request_string_bytes,
    )


_MODES = {mode: pb.Mode.Value(mode.name) for mode in Mode}  # looked up per response


def mode_to_proto(mode: Mode | None) -> pb.Mode.ValueType:
    return _MODES[mode] if mode is not None else pb.MODE_UNSPECIFIED


def top_k_to_proto(ranked: TopK) -> pb.TopK:
    return pb.TopK(labels=ranked.labels, scores=ranked.scores, indices=ranked.indices)


def _write_top_k(
    ranked: Ranked,
    single: RepeatedCompositeFieldContainer[pb.TopK],
    named: MessageMap[str, pb.TopKList],
    several: bool,
) -> None:
    """A single output's rankings into `single`; several outputs' into `named` by name."""
    for name, rows in ranked.items():
        (named[name].top_k if several else single).extend(top_k_to_proto(t) for t in rows)


def result_to_proto(result: InferenceResult) -> pb.PredictResponse:
    response = pb.PredictResponse(
        model_name=result.model, model_version=result.version, mode=mode_to_proto(result.mode)
    )
    if result.top_k:
        several = result.named is not None
        _write_top_k(result.top_k, response.top_k, response.named_top_k, several)
    if result.named is None:
        _output_to_proto(result.outputs, result.mode, response)
        return response
    for name, outputs in result.named.items():
        _output_to_proto(outputs, result.mode, response.named_outputs[name])
    return response


def _output_to_proto(outputs: Batch, mode: Mode, message: pb.PredictResponse | pb.Output) -> None:
    """Set a response's (or a named output's) `vectors` or `sequences`."""
    if not mode.gives_sequence:
        write_tensor(message.vectors.values, outputs.values)
        return
    lengths = outputs.item_lengths()
    flat = (
        outputs.values
        if outputs.is_ragged
        else outputs.values.reshape(-1, *outputs.values.shape[2:])
    )
    write_tensor(message.sequences.values, flat)
    message.sequences.lengths.extend(lengths.tolist())


Split = Callable[[np.ndarray], dict[str, np.ndarray]]


def stream_messages(target: ReadyModel, part: InferencePart) -> Iterator[pb.PredictStreamResponse]:
    """One message per output vector, or per step of an output sequence; with several outputs,
    one such message per output."""
    header = pb.PredictStreamResponse(
        model_name=target.name, model_version=target.version, mode=mode_to_proto(target.mode)
    )
    sequence = target.mode.gives_sequence
    signature = target.runtime.signature
    split: Split | None = signature.split if signature.several_outputs else None
    for offset, (index, output) in enumerate(zip(part.indices, part.outputs, strict=True)):
        rows = output if sequence else output[np.newaxis]
        total = part.lengths[offset] if part.lengths else part.first_step + len(rows)
        ranked = part.top_k[offset] if part.top_k else None
        for row_number, row in enumerate(rows):
            step = part.first_step + row_number
            named = split(row) if split is not None else {"": row}
            for name, values in named.items():
                message = pb.PredictStreamResponse(
                    input_index=index, step=step, last=step == total - 1,
                    values=to_tensor(values), output_name=name,
                )  # fmt: skip
                message.MergeFrom(header)
                best = ranked.get(name or SINGLE_OUTPUT_NAME) if ranked else None
                if best:
                    message.top_k.CopyFrom(top_k_to_proto(best[row_number]))
                yield message


def dtype_to_proto(dtype: np.dtype) -> pb.DataType.ValueType:
    """A signature's numpy dtype as the metadata's DataType: text (object, str_ or bytes_
    dtypes) is STRING; a dtype the wire cannot carry is unspecified."""
    if dtype.kind in STRING_KINDS:
        return pb.STRING
    return _DTYPES.get(dtype, pb.DATA_TYPE_UNSPECIFIED)


def _spec(
    name: str,
    shape: tuple[int | None, ...],
    dtype: np.dtype,
    sequence: bool = False,
    vocabulary: int | None = None,
) -> pb.TensorSpec:
    return pb.TensorSpec(
        name=name,
        dtype=dtype_to_proto(dtype),
        shape=[-1, *(-1 if d is None else d for d in shape)],
        sequence=sequence,
        vocabulary=vocabulary or 0,
    )


def _output_specs(ready: ReadyModel) -> list[pb.TensorSpec]:
    """Every output by name (the one output is "output"), with its labels where it has some."""
    sequence = ready.mode.gives_sequence
    specs = []
    for o in ready.runtime.signature.outputs:
        spec = _spec(o.name, o.shape, o.dtype, sequence)
        spec.labels.extend(ready.labels.get(o.name, []))
        specs.append(spec)
    return specs


def listing_to_proto(entries: list[ModelEntry]) -> pb.ListModelsResponse:
    """Every version of every model, and the models that have none (with their reason)."""
    statuses = [
        status_to_proto(version)
        for entry in entries
        for version in sorted(entry.versions.values(), key=lambda v: v.version)
    ]
    failed = [e for e in entries if not e.versions]
    statuses += [pb.ModelStatus(name=e.name, state=pb.FAILED, error=e.error) for e in failed]
    return pb.ListModelsResponse(models=statuses)


def status_to_proto(version: VersionStatus) -> pb.ModelStatus:
    runtime = version.ready.runtime if version.ready else None
    return pb.ModelStatus(
        name=version.name,
        version=version.version,
        state=_STATES[version.state],
        error=version.error,
        mode=mode_to_proto(runtime.mode if runtime else version.config.mode),
        compute_path=runtime.compute_path if runtime else "",
        state_changed_unix_ms=_unix_ms(version.changed_at),
    )


def versions_to_proto(entry: ModelEntry) -> list[pb.ModelStatus]:
    """Every version of one model, by number (LoadModel and UnloadModel answer with them)."""
    return [status_to_proto(entry.versions[n]) for n in sorted(entry.versions)]


def _unix_ms(seconds: float) -> int:
    return round(seconds * 1000)


def metadata_to_proto(
    entry: ModelEntry,
    version: VersionStatus,
    session_support: pb.SessionSupport.ValueType,
    session_reason: str,
    open_sessions: int,
    max_message_bytes: int,
    resumable: bool = False,
) -> pb.GetModelMetadataResponse:
    config, ready = version.config, version.ready
    runtime = ready.runtime if ready else None
    fixed = runtime.signature.fixed_steps if runtime else None
    response = pb.GetModelMetadataResponse(
        name=entry.name,
        version=version.version,
        versions=sorted(entry.versions),
        labels=config.labels if isinstance(config.labels, list) else [],
        description=config.description,
        max_sequence_length=fixed or version.limits.max_sequence_length,
        max_batch_size=config.max_batch_size,
        max_sessions=config.max_sessions,
        open_sessions=open_sessions,
        session_support=session_support,
        session_reason=session_reason,
        state=_STATES[version.state],
        error=version.error or entry.error,
        state_changed_unix_ms=_unix_ms(version.changed_at),
        max_request_elements=version.limits.max_request_elements,
        max_inputs_per_request=version.limits.max_inputs_per_request,
        max_message_bytes=max_message_bytes,
        max_stream_messages=version.limits.max_stream_messages,
        max_string_bytes=version.limits.max_string_bytes,
        max_request_string_bytes=version.limits.max_request_string_bytes,
        resumable_sessions=resumable and session_support != pb.SESSION_UNSUPPORTED,
    )
    if ready is None:
        response.mode = mode_to_proto(config.mode)
        return response
    runtime = ready.runtime
    sig = runtime.signature
    response.mode = mode_to_proto(runtime.mode)
    response.inputs.extend(
        _spec(s.name, s.shape, s.dtype, s.sequence, s.vocabulary) for s in sig.inputs
    )
    if not sig.several_inputs:
        response.input.CopyFrom(response.inputs[0])
    outputs = _output_specs(ready)
    response.outputs.extend(outputs)
    if not sig.several_outputs:
        response.output.CopyFrom(outputs[0])
    response.streams_steps = runtime.mode.gives_sequence
    response.compute_path = runtime.compute_path
    response.proof = runtime.proof
    return response


_SUPPORT = {
    SessionSupport.UNSUPPORTED: pb.SESSION_UNSUPPORTED,
    SessionSupport.INCREMENTAL: pb.SESSION_INCREMENTAL,
    SessionSupport.RECOMPUTE: pb.SESSION_RECOMPUTE,
}


def support_to_proto(support: SessionSupport) -> pb.SessionSupport.ValueType:
    return _SUPPORT[support]


def session_opened(session: OpenSession, resumable: bool, resumed: bool) -> pb.SessionResponse:
    opened = pb.SessionOpened(
        session_id=session.id,
        model_name=session.target.name,
        model_version=session.target.version,
        mode=mode_to_proto(session.mode),
        session_support=support_to_proto(session.support),
        resumable=resumable,
    )
    if resumed:
        opened.resumed_at_step = session.steps
        opened.resumed_at_message = session.messages
    return pb.SessionResponse(opened=opened)


def checkpoint_to_proto(checkpoint: Checkpoint) -> pb.SessionCheckpoint:
    return pb.SessionCheckpoint(
        token=checkpoint.token,
        steps=checkpoint.steps,
        messages=checkpoint.messages,
        expires_unix_ms=_unix_ms(checkpoint.expires),
    )


def session_output(output: StepOutput, split: Split | None = None) -> pb.SessionResponse:
    """Built in place, field by field: a message passed to a constructor is copied (~5x the
    cost, per step of every session). `split`: a several-output model's, naming its outputs."""
    response = pb.SessionResponse()
    message = response.output
    message.step = output.step
    if split is None:
        write_tensor(message.values, output.values)
    else:
        for name, values in split(output.values).items():
            write_tensor(message.named_outputs[name], values)
    if output.top_k:
        _write_top_k(output.top_k, message.top_k, message.named_top_k, split is not None)
    message.last = output.last
    return response


def undefined_output(step: int) -> pb.SessionResponse:
    """The answer to a steps message when the model defines no output there yet: no values."""
    return pb.SessionResponse(output=pb.SessionOutput(step=step))


def decoded_steps(output: StepOutput, split: Split | None = None) -> list[pb.SessionResponse]:
    """A decoded sequence streamed back one step per message, the last one marked."""
    count = len(output.values)
    return [
        session_output(
            StepOutput(
                step=i,
                values=output.values[i : i + 1],
                top_k={name: rows[i : i + 1] for name, rows in output.top_k.items()},
                last=i == count - 1,
            ),
            split,
        )
        for i in range(count)
    ]


def output_split(session: OpenSession) -> Split | None:
    """How a session's outputs are named: None for a single output (`values`)."""
    signature = session.target.runtime.signature
    return signature.split if signature.several_outputs else None
