"""The standard gRPC services (health, reflection), counted in the RPC metrics like every other.

They name a service, not a model: their calls count under `model=""`.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha.reflection import aio as reflection_aio

from ..metrics import ServerMetrics
from .instrumentation import observed


class _NoModel:
    metrics: ServerMetrics

    def known_model(self, name: str) -> bool:
        return False

    def known_version(self, name: str, version: int) -> bool:
        return False


class ObservedHealth(_NoModel, health.aio.HealthServicer):
    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    Check = observed(health.aio.HealthServicer.Check)
    Watch = observed(health.aio.HealthServicer.Watch)


class ObservedReflection(_NoModel, reflection_aio.ReflectionServicer):
    def __init__(
        self,
        service_names: Sequence[str],
        metrics: ServerMetrics,
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        super().__init__(service_names, pool)
        self.metrics = metrics

    ServerReflectionInfo = observed(reflection_aio.ReflectionServicer.ServerReflectionInfo)
