"""The standard `grpc.health.v1.Health` service, counted in the RPC metrics like every other."""

from __future__ import annotations

from grpc_health.v1 import health

from ..metrics import ServerMetrics
from .instrumentation import observed


class ObservedHealth(health.aio.HealthServicer):
    """Health checks name a service, not a model: they count under `model=""`."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def known_model(self, name: str) -> bool:
        return False

    def known_version(self, name: str, version: int) -> bool:
        return False

    Check = observed(health.aio.HealthServicer.Check)
    Watch = observed(health.aio.HealthServicer.Watch)
