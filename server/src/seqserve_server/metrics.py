"""Prometheus collectors, following its naming conventions (base units, `_total`, `_seconds`).

The core reports through `core.observer` interfaces and the transports through `observe_rpc`;
nothing else touches prometheus_client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    make_wsgi_app,
    start_http_server,
)

from .core.call_admission import PEER_PREFIX
from .core.observer import ModelObserver

# A compiled LSTM answers in well under a millisecond: resolve 50 µs .. 10 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "_unknown"  # callers' misspelt names and versions must not create new series
PEER_CALLER = "_peer"  # callers without a token, together: addresses must not create series


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "seqserve_requests", "RPCs handled, by model, version, RPC and status code.",
            ["model", "version", "rpc", "code"], registry=r,
        )  # fmt: skip
        self.abandoned = Counter(
            "seqserve_requests_abandoned", "RPCs their callers abandoned, by model and reason "
            "(cancelled: the caller cancelled; deadline: the caller's deadline passed first). "
            "The caller's choice, not a server fault: logged at DEBUG only.",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.auth_checks = Counter(
            "seqserve_auth_checks", "Token checks of calls, by caller (a token's name from the "
            "tokens file; empty: no token matched) and outcome (allowed, unauthenticated, denied).",
            ["caller", "outcome"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "seqserve_request_duration_seconds", "Time from receiving an RPC to its end.",
            ["model", "rpc"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_output_seconds = Histogram(
            "seqserve_time_to_first_output_seconds",
            "Time from receiving a streaming RPC to sending its first output.",
            ["model", "rpc"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "seqserve_inflight_requests", "RPCs being handled.", ["model"], registry=r
        )
        self.queue_wait_seconds = Histogram(
            "seqserve_queue_wait_seconds",
            "Time requests' inputs wait in a model's batching queue (one observation per "
            "request and input shape, and per part of a request split across batches).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "seqserve_compute_seconds", "Time of one batched model computation.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "seqserve_batch_size", "Inputs per executed computation.",
            ["model"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "seqserve_queue_depth", "Inputs waiting in a model's batching queue.", ["model"],
            registry=r,
        )  # fmt: skip
        self.open_sessions = Gauge(
            "seqserve_open_sessions", "Open streaming sessions.", ["model"], registry=r
        )
        self.session_steps = Counter(
            "seqserve_session_steps", "Sequence steps processed in sessions.", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_state = Enum(
            "seqserve_model_state", "Load state of each model version.", ["model", "version"],
            states=["loading", "ready", "failed", "unloaded"], registry=r,
        )  # fmt: skip
        self.compute_path = Gauge(
            "seqserve_model_compute_path",
            "1 for the compiled path each model version runs, proven equal to Keras at load "
            "(kind: predict or session).",
            ["model", "version", "kind", "path"], registry=r,
        )  # fmt: skip
        self.model_changes = Counter(
            "seqserve_model_changes",
            "Model versions loaded, failed to load and unloaded while serving (event).",
            ["model", "event"], registry=r,
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "seqserve_model_load_seconds", "Time taken to load, compile and warm up a model.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.load_shed = Counter(
            "seqserve_load_shed", "Calls refused with pushback (RESOURCE_EXHAUSTED and "
            "grpc-retry-pushback-ms), by model (empty: the server-wide front door) and reason "
            "(front door: deadline, expired, rate, session: a new session while congested; a "
            "model's batcher: deadline, queue).",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.front_door_wait_seconds = Histogram(
            "seqserve_front_door_wait_seconds", "Time Predict/ModelInfer calls waited for "
            "their turn at the server-wide front door (only calls that waited).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.front_door = Gauge(
            "seqserve_front_door", "The server-wide front door, once per 100 ms: limit (calls "
            "let in at once), in_flight, queued, loop_lag_seconds (the event loop's mean lag), "
            "estimated_wait_seconds (for a new call).",
            ["quantity"], registry=r,
        )  # fmt: skip
        self.caller_in_flight = Gauge(
            "seqserve_caller_in_flight", "Predict/ModelInfer calls in progress by caller (a "
            "token's name; _peer: callers without a token, together).",
            ["caller"], registry=r,
        )  # fmt: skip
        # Children resolved once per label set: `labels()` takes a lock and validates each call.
        self._inflight_of: dict[str, Any] = {}
        self._finished_of: dict[tuple[str, str, str, str], tuple[Any, Any, Any]] = {}

    # -- core observer -------------------------------------------------------------------

    def model_loaded(self, model: str, version: int, state: str, seconds: float) -> None:
        self.model_state.labels(model, str(version)).state(state)
        self.model_load_seconds.labels(model, str(version)).set(seconds)
        self.model_changes.labels(model, "loaded" if state == "ready" else "failed").inc()

    def model_unloaded(self, model: str, version: int) -> None:
        self.model_state.labels(model, str(version)).state("unloaded")
        self.model_changes.labels(model, "unloaded").inc()

    def for_model(self, model: str) -> ModelObserver:
        return _ModelMetrics(self, model)

    # -- transport -----------------------------------------------------------------------

    def auth_checked(self, caller: str, outcome: str) -> None:
        self.auth_checks.labels(caller, outcome).inc()

    def _inflight(self, model: str) -> Any:
        child = self._inflight_of.get(model)
        if child is None:
            child = self._inflight_of[model] = self.inflight.labels(model)
        return child

    def rpc_started(self, model: str) -> None:
        self._inflight(model).inc()

    def rpc_moved(self, old_model: str, new_model: str) -> None:
        """An RPC in flight turned out to be about another model (a session's opening)."""
        self._inflight(old_model).dec()
        self._inflight(new_model).inc()

    def rpc_first_output(self, model: str, rpc: str, seconds: float) -> None:
        self.first_output_seconds.labels(model, rpc).observe(seconds)

    def rpc_abandoned(self, model: str, reason: str) -> None:
        self.abandoned.labels(model, reason).inc()

    def rpc_finished(self, model: str, version: str, rpc: str, code: str, seconds: float) -> None:
        key = (model, version, rpc, code)
        children = self._finished_of.get(key)
        if children is None:
            children = self._finished_of[key] = (
                self._inflight(model),
                self.requests.labels(model, version, rpc, code),
                self.request_seconds.labels(model, rpc),
            )
        inflight, requests, seconds_of = children
        inflight.dec()
        requests.inc()
        seconds_of.observe(seconds)

    def serve(
        self,
        host: str,
        port: int,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        client_ca: Path | None = None,
    ) -> int:
        """Expose /metrics (and nothing else: any other path is 404) over HTTP, or HTTPS with a
        certificate, requiring the scraper's own certificate from `client_ca` when given;
        returns the bound port."""
        server, _ = start_http_server(
            port,
            addr=host,
            registry=self.registry,
            certfile=str(certfile) if certfile else None,
            keyfile=str(keyfile) if keyfile else None,
            client_cafile=str(client_ca) if client_ca else None,
            client_auth_required=client_ca is not None,
        )
        server.set_app(_only_metrics(make_wsgi_app(self.registry)))
        return server.server_port


def _only_metrics(app: Any) -> Any:
    """`app` on /metrics; 404 elsewhere (prometheus_client answers every path with the metrics,
    which makes any URL a scanner tries look like something)."""

    def only(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        return app(environ, start_response)

    return only


class _ModelMetrics:
    """The collectors' children for one model, resolved once (labels() costs a lock and a dict)."""

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self._batch = metrics.batch_size.labels(model)
        self._compute = metrics.compute_seconds.labels(model)
        self._wait = metrics.queue_wait_seconds.labels(model)
        self._depth = metrics.queue_depth.labels(model)
        self._sessions = metrics.open_sessions.labels(model)
        self._steps = metrics.session_steps.labels(model)
        self._paths = metrics.compute_path
        self._shed = metrics.load_shed
        self._model = model

    def batch_executed(self, size: int, compute_seconds: float) -> None:
        self._batch.observe(size)
        self._compute.observe(compute_seconds)

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def queue_depth(self, n: int) -> None:
        self._depth.set(n)

    def sessions_open(self, n: int) -> None:
        self._sessions.set(n)

    def session_steps(self, n: int) -> None:
        self._steps.inc(n)

    def compute_path(self, version: int, kind: str, path: str) -> None:
        self._paths.labels(self._model, str(version), kind, path).set(1)

    def shed(self, reason: str) -> None:
        self._shed.labels(self._model, reason).inc()


class CallMetrics:
    """The front door's events as collectors (core.observer.CallObserver)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        reasons = ("deadline", "expired", "rate", "session")
        self._shed = {r: metrics.load_shed.labels("", r) for r in reasons}
        self._callers: set[str] = set()

    def shed(self, reason: str) -> None:
        self._shed[reason].inc()

    def waited(self, seconds: float) -> None:
        self._metrics.front_door_wait_seconds.observe(seconds)

    def window(self, state: dict[str, float], callers: dict[str, int]) -> None:
        for quantity, value in state.items():
            self._metrics.front_door.labels(quantity).set(value)
        by_label: dict[str, int] = {}
        for name, n in callers.items():
            label = PEER_CALLER if name.startswith(PEER_PREFIX) else name
            by_label[label] = by_label.get(label, 0) + n
        for gone in self._callers - by_label.keys():
            self._metrics.caller_in_flight.labels(gone).set(0)
        for label, n in by_label.items():
            self._metrics.caller_in_flight.labels(label).set(n)
        self._callers = set(by_label)
