"""Per model version counts for ModelStatistics: inferences through this protocol, their time.

Only versions the repository holds get an entry (a caller cannot grow the table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from seqserve.inference import grpc_service_pb2 as pb

from .core_facade import VersionState


@dataclass
class _Counts:
    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    inferences: int = 0  # inputs (sequences or vectors) computed
    executions: int = 0  # requests computed
    last_ms: int = 0


class Statistics:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], _Counts] = {}

    def record(self, model: str, version: int, ok: bool, seconds: float, inputs: int) -> None:
        counts = self._counts.setdefault((model, version), _Counts())
        ns = int(seconds * 1e9)
        if ok:
            counts.success += 1
            counts.success_ns += ns
            counts.inferences += inputs
            counts.executions += 1
        else:
            counts.fail += 1
            counts.fail_ns += ns
        counts.last_ms = int(time.time() * 1000)

    def to_proto(self, versions: list[VersionState]) -> pb.ModelStatisticsResponse:
        response = pb.ModelStatisticsResponse()
        for v in versions:
            if not v.version:
                continue
            counts = self._counts.get((v.name, v.version), _Counts())
            stats = response.model_stats.add(
                name=v.name,
                version=str(v.version),
                last_inference=counts.last_ms,
                inference_count=counts.inferences,
                execution_count=counts.executions,
            )
            stats.inference_stats.success.count = counts.success
            stats.inference_stats.success.ns = counts.success_ns
            stats.inference_stats.fail.count = counts.fail
            stats.inference_stats.fail.ns = counts.fail_ns
        return response
