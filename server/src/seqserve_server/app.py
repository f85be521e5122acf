"""Wiring: repository, inference, servicers, health, reflection, metrics; start, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .config import Settings
from .core.admission import AdmissionSettings
from .core.call_admission import CallAdmission, CallAdmissionSettings
from .core.compute_threads import ModelThreads
from .core.inference import InferenceService
from .core.limits import RequestLimits
from .core.management import ModelManager
from .core.observer import ModelObservers
from .core.reference_cache import ReferenceCache
from .core.repository import ModelRepository, ModelState, VersionStatus
from .core.resumption import Resumption
from .core.runtime import configure_tensorflow
from .core.session_store import SharedSessions, StoreUnavailable
from .core.sessions import SessionManager
from .metrics import CallMetrics, ServerMetrics
from .redis_store import RedisStore
from .transport import open_inference
from .transport.auth import Authorize
from .transport.auth_tokens import TokensFile
from .transport.calls import Registrar, Wrap
from .transport.draining import Drain
from .transport.front_door import FrontDoor
from .transport.listeners import Listeners
from .transport.open_streams import OpenStreams
from .transport.parsing import reject_unparsable
from .transport.seqserve_v1 import SERVICE_NAME, SeqServeServicer
from .transport.standard_services import ObservedHealth, ObservedReflection
from .transport.tls import CertificateFiles

log = logging.getLogger(__name__)
MODEL_CONTROL_OFF = (
    "model control is off on this server: models are loaded from its repository at start "
    "(and on change with --repository-poll-s); start it with --model-control explicit to let "
    "callers load and unload them"
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class App:
    """One server process. `start()` returns once the models are loaded and the port is open."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        configure_tensorflow(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self.threads = ModelThreads(settings.compute_threads)
        self.metrics = ServerMetrics()
        limits = RequestLimits(
            settings.max_sequence_length,
            settings.max_request_elements,
            settings.max_inputs_per_request,
            settings.max_stream_messages,
            settings.max_string_bytes,
            settings.max_request_string_bytes,
        )
        self.repository = ModelRepository(
            settings.model_repository, observer=self.metrics, limits=limits,
            references=ReferenceCache(Path(settings.proof_cache_dir))
            if settings.proof_cache_dir else None,
        )  # fmt: skip
        observers = ModelObservers(self.metrics)
        self.sessions = SessionManager(
            self.repository, self.threads, observers, resumption(settings)
        )
        # Sessions that outlive this replica (README "Shared session store"); settings checked
        # that a key file comes with it.
        self.store = RedisStore(settings.session_store) if settings.session_store else None
        self.shared = (
            SharedSessions(self.store, self.sessions, settings.session_store_write)
            if self.store is not None
            else None
        )
        self.inference = InferenceService(
            self.repository, self.threads, observers, self.sessions.incremental_program,
            settings.inline_compute_ms / 1000,
            AdmissionSettings(settings.default_deadline_s, settings.queue_target_ms / 1000),
        )  # fmt: skip
        self.manager = ModelManager(
            self.repository, self.inference, self.sessions, self.threads, self.loader, self.metrics,
            refusal="" if settings.model_control == "explicit" else MODEL_CONTROL_OFF,
        )  # fmt: skip
        self.health = ObservedHealth(self.metrics)
        # Per-model health answers anyone (probes need no token), so with tokens it would tell
        # any caller which model names exist: then models are asked through v2 ModelReady.
        if settings.auth_tokens_file is None:
            self.manager.listeners.append(self._model_health)
        self._poller: asyncio.Task[None] | None = None
        self.drain = Drain(settings.max_concurrent_rpcs)
        tokens = TokensFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
        self.calls = CallAdmission(
            CallAdmissionSettings(
                settings.min_call_limit, settings.max_concurrent_rpcs,
                settings.loop_lag_target_ms / 1000, settings.default_deadline_s,
            ),
            tokens.policy if tokens is not None else CallAdmission.default_policy,
            CallMetrics(self.metrics),
            self.inference.backlogged,
        )  # fmt: skip
        self.sessions.admit_open = self.calls.admit_session
        self._lag_watch: asyncio.Task[None] | None = None
        self.server = Listeners(
            settings.accept_loops, server_options(settings), settings.max_concurrent_rpcs
        )
        # Every service is added through this: drain, token and parse checks wrap each method.
        self.services = Registrar(
            self.server,
            [
                OpenStreams(settings.max_open_streams, settings.open_stream_lifetime_s).wrap,
                self.drain.wrap,
                *authorization(tokens, self.metrics),
                reject_unparsable,
                FrontDoor(self.calls).wrap,
            ],
        )
        self.port = 0
        self.metrics_port = 0
        self.open_inference: open_inference.OpenInferenceServicer | None = None

    async def start(self) -> None:
        """Load every model first: a load balancer must not reach a replica still loading."""
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host or self.settings.host,
                self.settings.metrics_port,
                self.settings.metrics_tls_cert,
                self.settings.metrics_tls_key,
                self.settings.metrics_tls_client_ca,
            )
        await self._load_models()
        await self._check_store()
        await self.start_transport()

    async def start_transport(self) -> None:
        """Register the services and open the port (after `_load_models`)."""
        servicer = SeqServeServicer(
            self.inference, self.sessions, self.metrics, self.settings.max_message_bytes,
            self.manager, self.shared,
        )  # fmt: skip
        pb_grpc.add_SeqServeServicer_to_server(servicer, self.services)
        core = open_inference.Core(self.inference, self.sessions, self.manager, self.shared)
        v2 = self.open_inference = open_inference.OpenInferenceServicer(core, self.metrics)
        open_inference.add_to_server(v2, self.services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.services)
        names = (
            SERVICE_NAME,
            open_inference.SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        if self.settings.reflection:
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                ObservedReflection(names, self.metrics, open_inference.reflection_pool()),
                self.services,
            )
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self.server.add_port(address, lambda: server_credentials(self.settings))
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
        self._lag_watch = asyncio.create_task(self.calls.watch())
        if self.settings.repository_poll_s > 0:
            self._poller = asyncio.create_task(self._poll(self.settings.repository_poll_s))
        log.info(
            "seqserve listening on %s:%d (metrics on %d)",
            self.settings.host,
            self.port,
            self.metrics_port,
        )

    async def _load_models(self) -> None:
        self.repository.scan()
        loop = asyncio.get_running_loop()
        threads = self.settings.load_threads
        await loop.run_in_executor(self.loader, self.repository.load_all, threads, self._sessions)
        for entry in self.repository.entries() if self.settings.auth_tokens_file is None else ():
            ready = entry.newest_ready is not None
            await self.health.set(entry.name, SERVING if ready else NOT_SERVING)
        await self.health.set(SERVICE_NAME, SERVING)
        await self.health.set(open_inference.SERVICE_NAME, SERVING)
        await self.health.set("", SERVING)
        failed = [
            f"{v.name}/{v.version}"
            for e in self.repository.entries()
            for v in e.versions.values()
            if v.state is ModelState.FAILED
        ]
        if failed:
            log.warning("serving without models that failed to load: %s", ", ".join(failed))

    async def _check_store(self) -> None:
        """Say whether the shared session store answers. One that does not is no reason not to
        serve (sessions still work here; moving them waits until it answers)."""
        if self.store is None:
            return
        mode = self.settings.session_store_write
        try:
            await self.store.ping()
        except StoreUnavailable:
            log.warning("session store %s does not answer (yet)", self.store.description)
            return
        log.info("session store %s (sequences written %s)", self.store.description, mode)

    def _sessions(self, version: VersionStatus) -> None:
        """Build, prove and install a loaded version's session program (on a loading thread):
        health says SERVING only once every version has its program or the reason it has none."""
        if version.ready is not None:
            self.sessions.prepare(version.ready)

    async def _model_health(self, name: str, serving: bool) -> None:
        await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def _poll(self, every_s: float) -> None:
        """`--repository-poll-s`: pick up what changed in the repository directory."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.manager.poll()
            except Exception:  # a bad poll must not end polling
                log.exception("polling the model repository failed")

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then stop (see transport/draining.py): health says NOT_SERVING, new calls are
        held and answered UNAVAILABLE, the calls in flight finish within the grace period."""
        grace = self.settings.grace_period_s if grace is None else grace
        began = time.monotonic()
        for task in (self._poller, self._lag_watch):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        moved = self.sessions.hand_off_all("the server is stopping")
        if moved:
            log.info("handing off %d open sessions to other replicas", moved)
        await self._hand_off_sequences(grace)
        if not await self.drain.settle(max(0.0, grace - (time.monotonic() - began))):
            log.warning("grace period over: cancelling %d calls in flight", self.drain.in_flight)
        held = self.drain.held
        # What runs past the grace period is cancelled; held calls get a moment to be refused.
        remaining = max(1.0, grace - (time.monotonic() - began))
        stopping = asyncio.create_task(self.server.stop(remaining))
        await asyncio.sleep(0)  # gRPC's stop starts: GOAWAY, no new call on any connection
        await self.drain.release()
        await stopping
        log.info("stopped in %.2f s, %d held calls refused", time.monotonic() - began, held)
        if self.store is not None:
            await self.store.close()
        self.inference.close()
        self.threads.shutdown()
        self.loader.shutdown(wait=False, cancel_futures=True)

    async def _hand_off_sequences(self, grace: float) -> None:
        """With a shared session store: every open Triton sequence written there (within the
        grace period), for another replica to continue."""
        if self.open_inference is None or self.shared is None:
            return
        sequences = self.open_inference.sequences
        try:
            async with asyncio.timeout(grace):
                written = await sequences.hand_off_all("the server is stopping")
        except TimeoutError:
            log.warning("grace period over before every sequence was written to the store")
            return
        if written:
            log.info("%d open sequences written to the session store", written)


def resumption(settings: Settings) -> Resumption | None:
    """Resumable sessions (core/resumption.py) when a session key file is given. A bad key
    file stops the start: a replica that cannot open its peers' tokens must not serve."""
    if settings.session_key_file is None:
        return None
    return Resumption.from_file(
        settings.session_key_file, settings.session_token_ttl_s, settings.max_message_bytes
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (mutual with --tls-client-ca) when a certificate is given, else plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return CertificateFiles(
        settings.tls_cert, settings.tls_key, settings.tls_client_ca
    ).credentials()


def authorization(tokens: TokensFile | None, metrics: ServerMetrics) -> list[Wrap]:
    """The token check (transport/auth.py) when a tokens file is given. It runs after the
    drain (a held call is refused UNAVAILABLE either way) and before the parse check."""
    return [] if tokens is None else [Authorize(tokens, metrics).wrap]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message sizes, streams per connection, and keepalive (gRPC core's channel argument
    names, `grpc/impl/channel_arg_names.h`: gRPC ignores a name it does not know).

    Callers may ping every `--min-ping-interval-s` (10 s) on a quiet connection, calls open or
    not: the SDK pings every 30 s during long sessions. A ping sooner than that is a strike,
    and the third strike closes the connection with GOAWAY `too_many_pings` (gRPC's own limit
    would be one ping per 5 minutes with a call open, per 2 hours without). The server pings
    quiet callers every `--keepalive-time-s` to find dead ones."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),  # gRPC's default, stated: 0 would allow any rate
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_s)),
        ("grpc.so_reuseport", int(settings.reuse_port)),
    ]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
