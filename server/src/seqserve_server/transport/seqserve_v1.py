"""The seqserve.v1 gRPC service: decode the request, call the core, encode the response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..core.errors import DeadlineExpired, InvalidInput, ModelNotFound
from ..core.inference import InferenceService
from ..core.modes import Mode
from ..core.repository import ModelEntry, ModelVersion
from ..core.sessions import Session as OpenSession
from ..core.sessions import SessionManager
from ..metrics import ServerMetrics
from . import v1_messages as msg
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
    ) -> None:
        self.inference = inference
        self.sessions = sessions
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes

    def known_model(self, name: str) -> bool:
        return self.inference.repository.has(name)

    def known_version(self, name: str, version: int) -> bool:
        return self.inference.repository.has(name, version)

    @observed
    @grpc_errors
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        target = self.inference.resolve(request.model_name, request.model_version)
        inputs = msg.decode_request_inputs(request, target.limits)
        prediction = await self.inference.predict(target, inputs, request.top_k, _deadline(context))
        return msg.prediction_to_proto(prediction)

    @observed
    @grpc_errors
    async def PredictStream(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictStreamResponse]:
        target = self.inference.resolve(request.model_name, request.model_version)
        inputs = msg.decode_request_inputs(request, target.limits)
        mode = target.runtime.mode if target.runtime else None
        header = pb.PredictStreamResponse(
            model_name=target.name, model_version=target.version, mode=msg.mode_to_proto(mode)
        )
        sequence = bool(mode and mode.gives_sequence)
        signature = target.runtime.signature if target.runtime else None
        split = signature.split if signature and signature.several_outputs else None
        program = self.sessions.incremental_program(target)
        parts = self.inference.predict_parts(
            target, inputs, request.top_k, _deadline(context), program
        )
        async for part in parts:
            for message in msg.stream_messages(header, part, sequence, split):
                yield message

    @observed
    @grpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        statuses = [
            msg.status_to_proto(version)
            for entry in self.inference.repository.entries()
            for version in sorted(entry.versions.values(), key=lambda v: v.version)
        ]
        statuses += [
            _entry_failure(e) for e in self.inference.repository.entries() if not e.versions
        ]
        return pb.ListModelsResponse(models=statuses)

    @observed
    @grpc_errors
    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        repository = self.inference.repository
        entry = repository.entry(request.model_name)
        version = _describe(entry, request.model_version)
        support, reason = self.sessions.support(version)
        open_sessions = self.sessions.open_count(entry.name)
        return msg.metadata_to_proto(
            entry,
            version,
            msg.support_to_proto(support),
            reason,
            open_sessions,
            self.max_message_bytes,
        )

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
        session = self.sessions.open(
            first.open.model_name, first.open.model_version, first.open.emit_on_request,
            first.open.top_k,
        )  # fmt: skip
        try:
            yield msg.session_opened(session, self.sessions.support(session.target)[0])
            while (request := await _next_or_idle(stream, session.idle_timeout_s)) is not None:
                async for response in self._handle(session, request):
                    yield response
        finally:
            self.sessions.close(session)

    async def _handle(
        self, session: OpenSession, request: pb.SessionRequest
    ) -> AsyncIterator[pb.SessionResponse]:
        kind = request.WhichOneof("kind")
        if kind == "steps":
            values = msg.decode_steps(request.steps, session.target.limits)
            output = await self.sessions.step(session, values, request.steps.emit)
            if output is not None:
                yield msg.session_output(output)
            elif session.mode is Mode.MANY_TO_ONE and session.expects_output(request.steps.emit):
                yield pb.SessionResponse(output=pb.SessionOutput(step=session.steps - 1))
        elif kind == "reset":
            self.sessions.reset(session)
            yield pb.SessionResponse(reset=pb.SessionResetDone())
        elif kind == "end_input":
            for response in msg.decoded_steps(await self.sessions.finish(session)):
                yield response
        else:
            raise InvalidInput("kind", "steps, reset or end_input after open", str(kind))


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on the core's clock (time.monotonic)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _next_or_idle(
    stream: AsyncIterator[pb.SessionRequest], idle_timeout_s: float
) -> pb.SessionRequest | None:
    """The next message, None when the caller closed, DeadlineExpired when it went idle."""
    try:
        async with asyncio.timeout(idle_timeout_s):  # a timer, not a task per message
            return await anext(stream, None)
    except TimeoutError:
        raise DeadlineExpired(
            f"session closed: no message for {idle_timeout_s:g} s (the model's idle timeout)"
        ) from None


def _describe(entry: ModelEntry, number: int) -> ModelVersion:
    """The version to describe: as asked, else the newest ready one, else the newest at all."""
    if number:
        if number not in entry.versions:
            known = ", ".join(f"v{v}" for v in sorted(entry.versions))
            raise ModelNotFound(entry.name, number, known)
        return entry.versions[number]
    if not entry.versions:
        raise ModelNotFound(entry.name, 0, entry.error)
    return entry.newest_ready or entry.versions[max(entry.versions)]


def _entry_failure(entry: ModelEntry) -> pb.ModelStatus:
    return pb.ModelStatus(name=entry.name, state=pb.FAILED, error=entry.error)
