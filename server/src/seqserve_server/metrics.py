"""Prometheus collectors. Transports and the core report through `ServerMetrics` only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# Sub-millisecond resolution: a compiled LSTM answers in well under a millisecond.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "seqserve_requests",
            "Requests handled, by model, version, RPC and status code.",
            ["model", "version", "rpc", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "seqserve_request_duration_seconds",
            "Time from receiving a request to sending its response.",
            ["model", "rpc"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_request(
        self, model: str, version: str, rpc: str, code: str, seconds: float
    ) -> None:
        self.requests.labels(model, version, rpc, code).inc()
        self.request_seconds.labels(model, rpc).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
