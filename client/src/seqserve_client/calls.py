"""Every SDK call without its I/O: the request it sends and what its reply means.

The sync client (client.py, session.py) and the asyncio one (aio.py) only send what this module
builds and hand back what it reads: a unary or streaming call is a `Call` (the RPC's name, the
request, the reader of its reply), a session is driven through a `SessionProtocol`. So the two
clients cannot drift apart, and all of this is tested without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.session_protocol import steps_get_output
from seqserve_api.tensors import (
    STRING_KINDS,
    Inputs,
    as_array,
    as_text,
    from_tensor,
    request_inputs,
    split_sequences,
    to_tensor,
    write_tensor,
)

from .errors import (
    ResumptionUnavailable,
    SeqServeError,
    SessionLost,
    SessionMoved,
    UnavailableError,
    from_rpc_error,
)
from .results import (
    ModelMetadata,
    ModelStatus,
    Outputs,
    Predicted,
    Prediction,
    Rankings,
    SessionInfo,
    SessionOutput,
    SessionValues,
    StreamPart,
    TensorSpec,
)
from .resumption import (
    DEFAULT_CHECKPOINT_EVERY,
    REFUSALS,
    Ended,
    Next,
    Reconnect,
    Replay,
    lost_connection,
    step_count,
)

DEFAULT_TIMEOUT_S = 30.0  # a client's deadline per call unless told otherwise
# One input's steps in a session: float steps [steps, features] or one step [features]; token
# ids [steps]; token strings [steps] or one token (a str).
Steps = np.ndarray | Sequence[int] | Sequence[str] | str
# What a session step takes: the steps of the model's one sequence input, or (several sequence
# inputs) every sequence input's steps by name, each with as many steps.
StepValues = Steps | Mapping[str, Steps]
# A session's static inputs (no time axis) by name, one item each (no batch axis): a vector
# [features...], token ids [n], or a text (a str).
StaticInputs = Mapping[str, np.ndarray | Sequence[float] | Sequence[int] | str]
TopK = Rankings  # per output vector, the k best (label, score) pairs; by name for several
R = TypeVar("R")


@dataclass(frozen=True)
class Call(Generic[R]):
    """One RPC without its I/O: what to send, and how to read the reply (each message of a
    server stream)."""

    rpc: str  # a key of channel.rpcs()
    request: Message
    read: Callable[[Any], R]


def deadline(timeout: float | None, default: float | None) -> float | None:
    """A call's own timeout, else its client's."""
    return default if timeout is None else timeout


# -- the calls --------------------------------------------------------------------------------


def predict(model: str, inputs: Inputs, version: int) -> Call[Predicted]:
    return Call("Predict", predict_request(model, inputs, version, 0), _outputs_of)


def classify(model: str, inputs: Inputs, top_k: int, version: int) -> Call[TopK]:
    return Call("Predict", predict_request(model, inputs, version, top_k), _top_k_of)


def predict_full(model: str, inputs: Inputs, version: int, top_k: int) -> Call[Prediction]:
    return Call("Predict", predict_request(model, inputs, version, top_k), prediction_from)


def predict_stream(model: str, inputs: Inputs, version: int, top_k: int) -> Call[StreamPart]:
    return Call("PredictStream", predict_request(model, inputs, version, top_k), stream_part_from)


def list_models() -> Call[list[ModelStatus]]:
    return Call("ListModels", pb.ListModelsRequest(), _statuses_of)


def load_model(model: str) -> Call[list[ModelStatus]]:
    return Call("LoadModel", pb.LoadModelRequest(model_name=model), _versions_of)


def unload_model(model: str) -> Call[list[ModelStatus]]:
    return Call("UnloadModel", pb.UnloadModelRequest(model_name=model), _versions_of)


def metadata(model: str, version: int) -> Call[ModelMetadata]:
    request = pb.GetModelMetadataRequest(model_name=model, model_version=version)
    return Call("GetModelMetadata", request, metadata_from)


def health(service: str) -> Call[bool]:
    return Call("Check", health_pb2.HealthCheckRequest(service=service), _serving)


# -- requests ---------------------------------------------------------------------------------


def predict_request(model: str, inputs: Inputs, version: int, top_k: int) -> pb.PredictRequest:
    """The one place inputs are encoded (seqserve_api.tensors owns the format)."""
    return pb.PredictRequest(
        model_name=model, model_version=version, top_k=top_k, **request_inputs(inputs)
    )


def open_request(
    model: str,
    version: int,
    emit_on_request: bool,
    top_k: int,
    static_inputs: StaticInputs | None = None,
) -> pb.SessionRequest:
    """A session's first message; static inputs, if any, in `named_inputs`."""
    request = pb.SessionRequest(
        open=pb.SessionOpen(
            model_name=model, model_version=version, emit_on_request=emit_on_request, top_k=top_k
        )
    )
    _write_static(request.open.named_inputs, static_inputs)
    return request


def steps_request(values: StepValues, emit: bool) -> pb.SessionRequest:
    """The steps of the one sequence input in `values`; a mapping (input name -> steps) in
    `named_values`. Each input's steps: floats [steps, features] or one step [features];
    token ids [steps] integers."""
    if not isinstance(values, Mapping):
        return pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(_steps(values)), emit=emit))
    request = pb.SessionRequest(steps=pb.SessionSteps(emit=emit))
    for name, steps in values.items():
        write_tensor(request.steps.named_values[name], _steps(steps))
    return request


def reset_request(static_inputs: StaticInputs | None = None) -> pb.SessionRequest:
    """Restart the session: with new static inputs (all of them), else keeping its own."""
    request = pb.SessionRequest(reset=pb.SessionReset())
    _write_static(request.reset.named_inputs, static_inputs)
    return request


def _steps(values: Steps) -> np.ndarray:
    """Floats as float32, one step [features] as [1, features]; token ids as they are; token
    strings as they are, one token as [1]."""
    array = as_array(values)
    if array.dtype.kind in STRING_KINDS:
        return array.reshape(1) if array.ndim == 0 else array
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32)
        if array.ndim == 1:
            array = array[np.newaxis]
    return array


def _write_static(field: MutableMapping[str, pb.Tensor], inputs: StaticInputs | None) -> None:
    """Static inputs into a `named_inputs` map: floats as float32, token ids and text as they
    are; one item each, no axis added."""
    for name, values in (inputs or {}).items():
        array = as_array(values)
        if not np.issubdtype(array.dtype, np.integer) and array.dtype.kind not in STRING_KINDS:
            array = array.astype(np.float32)
        write_tensor(field[name], array)


# -- replies ----------------------------------------------------------------------------------


def prediction_from(response: pb.PredictResponse) -> Prediction:
    """Outputs as numpy; a dict of them by name for a model with several outputs."""
    ranked = rankings(response.top_k, response.named_top_k)
    outputs: Predicted
    if response.named_outputs:
        outputs = {name: _output_from(o) for name, o in sorted(response.named_outputs.items())}
    else:
        outputs = _output_from(response)
    return Prediction(
        response.model_name, response.model_version, mode_name(response.mode), outputs, ranked
    )


def _output_from(message: pb.PredictResponse | pb.Output) -> Outputs:
    """[batch, ...] when every output has the same shape, else a list of arrays."""
    if message.WhichOneof("output") == "vectors":
        return values_from(message.vectors.values)
    values = values_from(message.sequences.values)
    lengths = list(message.sequences.lengths)
    if lengths and all(n == lengths[0] for n in lengths):
        return values.reshape(len(lengths), lengths[0], *values.shape[1:])
    return split_sequences(values, lengths)


def values_from(tensor: pb.Tensor, field: str = "values") -> np.ndarray:
    """An output tensor as numpy: text (STRING) as an object array of `str`."""
    array = from_tensor(tensor, field)
    return as_text(array, field) if tensor.dtype == pb.STRING else array


def _outputs_of(response: pb.PredictResponse) -> Predicted:
    return prediction_from(response).outputs


def _top_k_of(response: pb.PredictResponse) -> TopK:
    return rankings(response.top_k, response.named_top_k)


def rankings(single: Iterable[pb.TopK], named: Mapping[str, pb.TopKList]) -> Rankings:
    """A single output's rankings, or several outputs' by output name (sorted)."""
    if named:
        return {
            name: [top_k_pairs(t) for t in ranked.top_k] for name, ranked in sorted(named.items())
        }
    return [top_k_pairs(t) for t in single]


def stream_part_from(part: pb.PredictStreamResponse) -> StreamPart:
    return StreamPart(
        part.input_index,
        part.step,
        part.last,
        values_from(part.values),
        top_k_pairs(part.top_k),
        part.output_name,
    )


def mode_name(value: pb.Mode.ValueType) -> str:
    return pb.Mode.Name(value).lower()


def top_k_pairs(ranked: pb.TopK) -> list[tuple[str, float]]:
    return list(zip(ranked.labels, ranked.scores, strict=True))


def _spec_from(spec: pb.TensorSpec) -> TensorSpec:
    dtype = pb.DataType.Name(spec.dtype).lower()
    return TensorSpec(
        spec.name, dtype, tuple(spec.shape), spec.sequence, spec.vocabulary, tuple(spec.labels)
    )


def _versions_of(response: pb.LoadModelResponse | pb.UnloadModelResponse) -> list[ModelStatus]:
    return _statuses(response.versions)


def _statuses_of(response: pb.ListModelsResponse) -> list[ModelStatus]:
    return _statuses(response.models)


def _statuses(statuses: Iterable[pb.ModelStatus]) -> list[ModelStatus]:
    return [
        ModelStatus(
            s.name,
            s.version,
            pb.ModelState.Name(s.state).lower(),
            mode_name(s.mode),
            s.error,
            s.compute_path,
        )
        for s in statuses
    ]


def metadata_from(m: pb.GetModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=m.name,
        version=m.version,
        versions=tuple(m.versions),
        mode=mode_name(m.mode),
        input=_spec_from(m.input),
        output=_spec_from(m.output),
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
        inputs=tuple(_spec_from(s) for s in m.inputs),
        outputs=tuple(_spec_from(s) for s in m.outputs),
        max_string_bytes=m.max_string_bytes,
        max_request_string_bytes=m.max_request_string_bytes,
    )


def _serving(response: health_pb2.HealthCheckResponse) -> bool:
    return response.status == health_pb2.HealthCheckResponse.SERVING


# -- sessions ---------------------------------------------------------------------------------


class SessionProtocol:
    """One session's side of the Session stream, without I/O: the message each session method
    sends, whether the server answers it (the rule of seqserve_api.session_protocol), what the
    answers mean, and for a resumable session when and how to resume (resumption.py).
    `Session` and `AsyncSession` only move these messages."""

    END_INPUT = pb.SessionRequest(end_input=pb.SessionEndInput())
    RESET = reset_request()  # keeping the session's static inputs
    CHECKPOINT = pb.SessionRequest(checkpoint=pb.SessionCheckpointRequest())

    def __init__(
        self,
        model: str,
        version: int,
        emit_on_request: bool,
        top_k: int,
        static_inputs: StaticInputs | None = None,
        *,
        resumable: bool = False,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        resume: bytes | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.opening = open_request(model, version, emit_on_request, top_k, static_inputs)
        if resumable:
            if checkpoint_every < 1:
                raise ValueError(
                    "checkpoint_every: at least 1 step (it bounds the messages a resumable "
                    f"session keeps to replay), got {checkpoint_every}"
                )
            self.opening.open.checkpoint_every = checkpoint_every
        if resume is not None:
            self.opening.open.resume = resume
        self.emit_on_request = emit_on_request
        self.resumable = resumable
        self.replay = Replay(checkpoint_every, resumable, reconnect or Reconnect())
        self.opened: pb.SessionOpened | None = None  # the server's answer to the last open
        self.version = 0  # the version the session first opened on
        self.ended = False  # the server ended the call, and the caller has been told why

    def open(self, response: pb.SessionResponse | Ended) -> SessionInfo:
        """Read the answer to `opening` (or how its call ended): a session asked to be
        resumable must be (ResumptionUnavailable); one opened from a token continues at the
        token's message."""
        if isinstance(response, Ended):
            self.ended = True
            raise ended_error(response.error)
        opened = _reply(response, "opened")
        if self.resumable and not opened.resumable:
            self.ended = True
            raise ResumptionUnavailable(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the server cannot resume sessions of {opened.model_name!r}: it has no session "
                "key (--session-key-file); open the session without resumable=True",
            )
        self.opened, self.version = opened, opened.model_version
        if self.opening.open.resume:
            self.replay.start(
                self.opening.open.resume, opened.resumed_at_message, opened.resumed_at_step
            )
        return self.info

    @property
    def info(self) -> SessionInfo:
        o = self._opened()
        support = pb.SessionSupport.Name(o.session_support).lower()
        return SessionInfo(
            o.session_id,
            o.model_name,
            o.model_version,
            mode_name(o.mode),
            support,
            o.resumable,
            o.resumed_at_step,
            o.resumed_at_message,
        )

    def steps(self, values: StepValues, emit: bool) -> tuple[pb.SessionRequest, bool]:
        """The message that sends these steps, and whether the server answers it."""
        answered = steps_get_output(self._opened().mode, self.emit_on_request, emit)
        request = steps_request(values, emit)
        self.replay.sent(request, answered, step_count(request.steps))
        return request, answered

    def reset(self, static_inputs: StaticInputs | None) -> pb.SessionRequest:
        """The message that restarts the session (answered by `reset`, see `reset_done`)."""
        request = self.RESET if not static_inputs else reset_request(static_inputs)
        self.replay.sent(request, True, 0)
        return request

    def end_input(self) -> pb.SessionRequest:
        """The message that ends the input (answered by the decoded parts, the last `last`)."""
        self.replay.begin(self.END_INPUT)
        return self.END_INPUT

    def checkpoint(self) -> pb.SessionRequest:
        """The message that asks for a checkpoint now (answered by one, see
        `checkpoint_token`)."""
        if not self._opened().resumable:
            raise ResumptionUnavailable(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the server seals no checkpoints: it has no session key (--session-key-file)",
            )
        self.replay.begin(self.CHECKPOINT)
        return self.CHECKPOINT

    def over_bound(self) -> bool:
        """A resumable session keeps more messages than a call may leave: the call asks for a
        checkpoint (`checkpoint`) before it returns."""
        return self.replay.over_bound()

    def receive(self, response: pb.SessionResponse | Ended) -> pb.SessionResponse | Next:
        """What a response (or the call's end) means for the call waiting on it: its answer,
        another read (a checkpoint kept, or an answer the caller already has), or, for a
        resumable session, a reconnection. Raises what ends the session."""
        replay = self.replay
        if isinstance(response, Ended):
            if self.resumable and lost_connection(response.error):
                replay.failure = response.error or session_error("the server ended the session")
                return Next.RECONNECT
            self.ended = True
            raise ended_error(response.error)
        kind = response.WhichOneof("kind")
        if kind in ("checkpoint", "handoff"):
            checkpoint = getattr(response, kind)
            try:
                replay.checkpointed(checkpoint)
            except ValueError as exc:
                self.ended = True
                raise session_error(str(exc)) from None
            if kind == "checkpoint":
                return response if replay.answers_checkpoint(checkpoint) else Next.READ
            moved = f"session moved: the server handed it off at message {checkpoint.messages}"
            if self.resumable:
                replay.failure = UnavailableError(grpc.StatusCode.UNAVAILABLE, moved)
                return Next.RECONNECT
            self.ended = True
            raise SessionMoved(moved, checkpoint.token, checkpoint.messages, checkpoint.steps)
        return response if replay.delivers(response) else Next.READ

    # -- resuming -------------------------------------------------------------------------

    def reconnect_delay(self) -> float:
        """Seconds to wait before reconnecting; SessionLost once the attempts are spent."""
        try:
            return self.replay.next_delay()
        except SessionLost:
            self.ended = True
            raise

    def reopening(self) -> pb.SessionRequest:
        """The open that continues the session: from the newest token, else (no checkpoint
        yet) the first open again on the version it opened, to replay from message 0."""
        token = self.replay.token
        if token is None:
            request = pb.SessionRequest()
            request.CopyFrom(self.opening)
            request.open.model_version = self.version
            return request
        return pb.SessionRequest(
            open=pb.SessionOpen(
                model_name=self.opening.open.model_name,
                resume=token,
                checkpoint_every=self.opening.open.checkpoint_every,
            )
        )

    def reopened(self, response: pb.SessionResponse | Ended) -> list[pb.SessionRequest] | None:
        """Read the answer to `reopening`: the messages to send again, or None when this
        attempt failed the way a connection fails (try again). Raises SessionLost when the
        session cannot be continued."""
        replay = self.replay
        try:
            if isinstance(response, Ended):
                if lost_connection(response.error):
                    replay.failure = response.error or session_error("the server ended the call")
                    return None
                error = ended_error(response.error)
                why = "the resume token was refused" if error.code in REFUSALS else "reopening"
                raise replay.lost(why, error)
            kind = response.WhichOneof("kind")
            if kind != "opened":
                raise replay.lost("reopening", session_error(f"`{kind}` answered the open"))
            opened, first = response.opened, self._opened()
            if not opened.resumable:
                why = "the replica that took the session over has no session key"
                raise replay.lost(why, session_error("resumable is false"))
            if (opened.mode, opened.model_version) != (first.mode, self.version):
                got = f"{mode_name(opened.mode)} version {opened.model_version}"
                raise replay.lost("reopening", session_error(f"the replica opened {got}"))
            requests = replay.replay_from(opened.resumed_at_message)
        except SessionLost:
            self.ended = True
            raise
        self.opened = opened
        return requests

    def closing(self, error: SeqServeError | None) -> SeqServeError | None:
        """The error `close()` raises for how the call ended: none when it ended OK or was
        cancelled, nor for a resumable session whose connection was lost (nothing is owed)."""
        if error is None or error.code == grpc.StatusCode.CANCELLED:
            return None
        return None if self.resumable and lost_connection(error) else error

    def _opened(self) -> pb.SessionOpened:
        if self.opened is None:
            raise RuntimeError("the session is not open: use `with`, or `await` it (asyncio)")
        return self.opened


def session_output_from(response: pb.SessionResponse) -> SessionOutput:
    """The output's values as numpy; a dict of them by output name (sorted, as `predict`'s)
    for a model with several outputs."""
    out = _reply(response, "output")
    values: SessionValues | None = None
    if out.named_outputs:
        values = {
            name: values_from(tensor, f'named_outputs["{name}"]')
            for name, tensor in sorted(out.named_outputs.items())
        }
    elif out.HasField("values"):
        values = values_from(out.values)
    return SessionOutput(out.step, values, rankings(out.top_k, out.named_top_k), out.last)


def reset_done(response: pb.SessionResponse) -> None:
    _reply(response, "reset")


def _reply(response: pb.SessionResponse, kind: str) -> Any:
    """The answer the protocol expects now; a server that sends another broke the protocol."""
    got = response.WhichOneof("kind")
    if got != kind:
        raise session_error(f"the server answered with `{got}` where `{kind}` was due")
    return getattr(response, kind)


def decoded(outputs: Iterable[SessionOutput]) -> SessionValues:
    """The whole decoded sequence [steps, out] from the outputs `decode` streams back; for a
    model with several outputs, each output's whole sequence by name."""
    arrays: list[np.ndarray] = []
    named: list[dict[str, np.ndarray]] = []
    for o in outputs:
        if isinstance(o.values, dict):
            named.append(o.values)
        elif o.values is not None:
            arrays.append(o.values)
    if named and arrays:
        raise session_error("the server sent outputs both by name and unnamed in one sequence")
    if not named:
        return np.concatenate(arrays)
    names = sorted({name for values in named for name in values})
    return {n: np.concatenate([values[n] for values in named if n in values]) for n in names}


def ended_error(failure: grpc.RpcError | SeqServeError | None) -> SeqServeError:
    """What a session's caller gets when the call ended while an answer was due: the call's
    error, or for a call that ended OK, a broken protocol."""
    if failure is None:
        return session_error("the server ended the session")
    if isinstance(failure, SeqServeError):
        return failure
    return from_rpc_error(failure)


def checkpoint_token(response: pb.SessionResponse) -> bytes:
    """The token of the checkpoint that answers a checkpoint request."""
    token: bytes = _reply(response, "checkpoint").token
    return token


def session_error(message: str) -> SeqServeError:
    """The server broke the Session protocol (ended early, or answered out of turn)."""
    return SeqServeError(grpc.StatusCode.UNKNOWN, message)
