"""The seqserve.v1 gRPC service: decode the request, call the core, encode the response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..core.errors import ModelNotFound
from ..core.inference import InferenceService
from ..core.repository import ModelEntry, ModelVersion
from ..metrics import ServerMetrics
from . import v1_messages as msg
from .instrumentation import observed
from .status import grpc_errors

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SeqServe"].full_name


class SeqServeServicer(pb_grpc.SeqServeServicer):
    def __init__(self, inference: InferenceService, metrics: ServerMetrics) -> None:
        self.inference = inference
        self.metrics = metrics

    def known_model(self, name: str) -> bool:
        return self.inference.repository.has(name)

    @observed
    @grpc_errors
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        inputs = msg.decode_inputs(request.inputs)
        prediction = await self.inference.predict(
            request.model_name, request.model_version, inputs, request.top_k
        )
        return msg.prediction_to_proto(prediction)

    @observed
    @grpc_errors
    async def PredictStream(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictStreamResponse]:
        target = self.inference.resolve(request.model_name, request.model_version)
        inputs = msg.decode_inputs(request.inputs)
        mode = target.runtime.mode if target.runtime else None
        header = pb.PredictStreamResponse(
            model_name=target.name, model_version=target.version, mode=msg.mode_to_proto(mode)
        )
        sequence = bool(mode and mode.gives_sequence)
        async for part in self.inference.predict_parts(target, inputs, request.top_k):
            for offset, output in enumerate(part.outputs):
                ranked = part.top_k[offset] if part.top_k else None
                for message in msg.stream_parts(
                    header, part.start + offset, output, ranked, sequence
                ):
                    yield message

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

    @grpc_errors
    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        repository = self.inference.repository
        entry = repository.entry(request.model_name)
        version = _describe(entry, request.model_version)
        return msg.metadata_to_proto(entry, version, _session_support(version), 0)


def _session_support(version: ModelVersion) -> pb.SessionSupport.ValueType:
    runtime = version.runtime
    if runtime is not None and not runtime.mode.takes_sequence:
        return pb.SESSION_UNSUPPORTED
    return pb.SESSION_SUPPORT_UNSPECIFIED


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
