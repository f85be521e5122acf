"""The seqserve.v1 gRPC service: decode the request, call the core, encode the response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.session_protocol import steps_get_output
from seqserve_api.tensors import DecodeLimits

from ..core.errors import DeadlineExpired, InvalidInput, SessionMoved
from ..core.inference import InferenceService
from ..core.management import ModelManager
from ..core.session_store import SharedSessions, session_key, store_off
from ..core.sessions import OpenSession, SessionManager
from ..metrics import ServerMetrics
from . import v1_messages as msg
from .auth import CALLER
from .instrumentation import observed
from .status import grpc_errors

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SeqServe"].full_name


class SeqServeServicer(pb_grpc.SeqServeServicer):
    def __init__(
        self,
        inference: InferenceService,
        sessions: SessionManager,
        metrics: ServerMetrics,
        max_message_bytes: int,
        manager: ModelManager,
        shared: SharedSessions | None = None,
    ) -> None:
        self.shared = shared  # the shared session store (core/session_store.py), if any
        self.repository = inference.repository
        self.inference = inference
        self.sessions = sessions
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.manager = manager

    def known_model(self, name: str) -> bool:
        return self.repository.has(name)

    def known_version(self, name: str, version: int) -> bool:
        return self.repository.has(name, version)

    @observed
    @grpc_errors
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        target = self.repository.resolve(request.model_name, request.model_version)
        inputs = msg.decode_request_inputs(request, target.limits)
        result = await self.inference.predict(target, inputs, request.top_k, _deadline(context))
        return msg.result_to_proto(result)

    @observed
    @grpc_errors
    async def PredictStream(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictStreamResponse]:
        target = self.repository.resolve(request.model_name, request.model_version)
        inputs = msg.decode_request_inputs(request, target.limits)
        parts = self.inference.predict_stream(target, inputs, request.top_k, _deadline(context))
        async for part in parts:
            for message in msg.stream_messages(target, part):
                yield message

    @observed
    @grpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return msg.listing_to_proto(self.repository.entries())

    @observed
    @grpc_errors
    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        version = self.repository.status(request.model_name, request.model_version)
        support, reason = self.sessions.support(version)
        return msg.metadata_to_proto(
            self.repository.entry(version.name),
            version,
            msg.support_to_proto(support),
            reason,
            self.sessions.open_count(version.name),
            self.max_message_bytes,
            self.sessions.resumable,
        )

    @observed
    @grpc_errors
    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        entry = await self.manager.load(request.model_name)
        return pb.LoadModelResponse(versions=msg.versions_to_proto(entry))

    @observed
    @grpc_errors
    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        await self.manager.unload(request.model_name)
        entry = self.repository.entry(request.model_name)
        return pb.UnloadModelResponse(versions=msg.versions_to_proto(entry))

    @observed
    @grpc_errors
    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionResponse]:
        """Open, then steps / reset / end_input until the caller closes; state freed at once."""
        stream = aiter(requests)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("kind") != "open":
            got = first.WhichOneof("kind") if first else "no message"
            raise InvalidInput("open", "a SessionOpen as the first message", str(got))
        opening, caller = first.open, CALLER.get()
        session = await self._open(opening, caller)
        try:
            resumed = bool(opening.resume or opening.resume_session_id)
            yield msg.session_opened(session, self.sessions.resumable, resumed)
            rules = _Rules(
                msg.mode_to_proto(session.mode), session.emit_on_request,
                msg.decode_limits(session.target.limits), msg.output_split(session), caller,
                _Checkpoints(opening.checkpoint_every, session.steps),
            )  # fmt: skip
            idle = _IdleTimeout(session.idle_timeout_s)
            session.interrupt = idle.interrupt
            try:
                while (request := await idle.next(stream)) is not None:
                    for response in await self._handle(session, rules, request):
                        yield response
            except _Interrupted:
                yield await self._handoff(session, caller)
                raise SessionMoved(
                    f"session moved: {session.moving}; resume it on another replica from the "
                    "handoff token it was sent (SessionOpen.resume)"
                ) from None
            finally:
                idle.cancel()
        finally:
            self.sessions.close(session)

    async def _open(self, opening: pb.SessionOpen, caller: str) -> OpenSession:
        """A new session, or (`resume`) the one a checkpoint token holds, or
        (`resume_session_id`) the one handed off to the shared session store."""
        if opening.resume_session_id:
            if self.shared is None:
                raise store_off()
            return await self.shared.resume_session(
                opening.resume_session_id, opening.model_name, caller
            )
        if opening.resume:
            return self.sessions.resume(opening.resume, opening.model_name, caller)
        target = self.repository.resolve(opening.model_name, opening.model_version)
        limits = msg.decode_limits(target.limits)
        statics = msg.decode_named(opening.named_inputs, "open.named_inputs", limits)
        return self.sessions.open(
            opening.model_name, opening.model_version, opening.top_k, statics,
            opening.emit_on_request,
        )  # fmt: skip

    async def _handoff(self, session: OpenSession, caller: str) -> pb.SessionResponse:
        """The session's last state, for the caller to resume elsewhere (and, with a shared
        session store, in it under the session's id: SessionOpen.resume_session_id)."""
        checkpoint = self.sessions.checkpoint(session, caller)
        if self.shared is not None:
            await self.shared.keep(session_key(session.id), checkpoint.token)
        return pb.SessionResponse(handoff=msg.checkpoint_to_proto(checkpoint))

    async def _handle(
        self, session: OpenSession, rules: _Rules, request: pb.SessionRequest
    ) -> Sequence[pb.SessionResponse]:
        """The answers to one message: a coroutine, not a generator (one frame fewer per step)."""
        kind = request.WhichOneof("kind")
        if kind == "steps":
            return await self._step(session, rules, request.steps)
        if kind == "reset":
            named = request.reset.named_inputs
            statics = msg.decode_named(named, "reset.named_inputs", rules.limits)
            self.sessions.reset(session, statics)
            rules.checkpoints.last = 0
            return (pb.SessionResponse(reset=pb.SessionResetDone()),)
        if kind == "checkpoint":
            return (self._checkpoint(session, rules),)
        if kind == "end_input":
            return msg.decoded_steps(await self.sessions.finish(session), rules.split)
        raise InvalidInput("kind", "steps, reset, end_input or checkpoint after open", str(kind))

    def _checkpoint(self, session: OpenSession, rules: _Rules) -> pb.SessionResponse:
        rules.checkpoints.last = session.steps
        checkpoint = self.sessions.checkpoint(session, rules.caller)
        return pb.SessionResponse(checkpoint=msg.checkpoint_to_proto(checkpoint))

    async def _step(
        self, session: OpenSession, rules: _Rules, steps: pb.SessionSteps
    ) -> Sequence[pb.SessionResponse]:
        values = msg.decode_session_steps(steps, rules.limits)
        output = await self.sessions.step(session, values)
        answers: tuple[pb.SessionResponse, ...] = ()
        if not steps_get_output(rules.mode, rules.emit_on_request, steps.emit):
            pass
        elif output is None:  # not defined yet (a fixed-length model before its length)
            answers = (msg.undefined_output(session.steps - 1),)
        else:
            answers = (msg.session_output(output, rules.split),)
        if rules.checkpoints.due(session.steps):
            answers += (self._checkpoint(session, rules),)
        return answers


@dataclass(frozen=True)
class _Rules:
    """A session's wire settings, made once at open."""

    mode: pb.Mode.ValueType
    emit_on_request: bool
    limits: DecodeLimits
    split: msg.Split | None  # a several-output model's: names its outputs
    caller: str  # the token's name (auth on), what checkpoints are bound to
    checkpoints: _Checkpoints


@dataclass
class _Checkpoints:
    """`checkpoint_every`: a checkpoint follows the steps message that brings the steps fed
    since the last one (or open, resume, reset) to `every` or more."""

    every: int
    last: int  # session steps at the last checkpoint

    def due(self, steps: int) -> bool:
        return bool(self.every) and steps - self.last >= self.every


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on the core's clock (time.monotonic)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class _Interrupted(Exception):
    """The server asked the session's call to hand it off (see `_IdleTimeout.interrupt`)."""


class _IdleTimeout:
    """A session's idle timeout: one timer for the whole session, re-armed only when it fires
    (asyncio.timeout per message costs a timer, a heap push and a cancel each). The session's
    task is cancelled, as asyncio.timeout does, when the caller sent nothing for `seconds`
    while the session waited for it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._waiting_since: float | None = None
        self._expired = False
        self._interrupted = False
        self._timer = self._loop.call_later(seconds, self._check)

    async def next(self, stream: AsyncIterator[pb.SessionRequest]) -> pb.SessionRequest | None:
        """The next message, None when the caller closed, DeadlineExpired when it went idle,
        `_Interrupted` when the server hands the session off (`interrupt`)."""
        if self._interrupted:
            raise _Interrupted
        self._waiting_since = self._loop.time()
        try:
            return await anext(stream, None)
        except asyncio.CancelledError:
            ours = self._expired or self._interrupted
            if ours and self._task is not None and self._task.uncancel() == 0:
                if self._interrupted:
                    raise _Interrupted from None
                raise DeadlineExpired(
                    f"session closed: no message for {self.seconds:g} s (the model's idle timeout)"
                ) from None
            raise
        finally:
            self._waiting_since = None

    def interrupt(self) -> None:
        """Wake the call to hand its session off: at once while it waits for the caller's next
        message, else when it next would (the message in hand is answered first)."""
        if self._interrupted:
            return
        self._interrupted = True
        if self._waiting_since is not None and self._task is not None:
            self._task.cancel()

    def cancel(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        since = self._waiting_since
        left = self.seconds if since is None else since + self.seconds - self._loop.time()
        if left > 0 or self._task is None:
            self._timer = self._loop.call_later(max(left, 0.001), self._check)
            return
        self._expired = True
        self._task.cancel()
