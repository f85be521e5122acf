"""Server settings: one definition, read from flags and `SEQSERVE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from seqserve_api import MAX_MESSAGE_BYTES
from seqserve_api.tensors import DEFAULT_MAX_REQUEST_STRING_BYTES, DEFAULT_MAX_STRING_BYTES

from .core.limits import RequestLimits
from .core.reference_cache import default_dir
from .core.session_store import WriteMode

STORE_SCHEMES = ("redis", "rediss", "unix")  # what redis_store.py connects to

_LIMITS = RequestLimits()


class Settings(BaseSettings):
    """`seqserve serve` flags; every flag `--some-name` is also `SEQSERVE_SOME_NAME`."""

    model_config = SettingsConfigDict(
        env_prefix="SEQSERVE_",
        protected_namespaces=(),
        cli_kebab_case=True,
        cli_prog_name="seqserve serve",
    )

    model_repository: Path = Field(Path("models"), description="model repository directory")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all)")
    port: int = Field(8500, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    metrics_port: int = Field(8502, ge=-1, le=65535, description="Prometheus port (-1: off)")
    workers: int = Field(1, ge=1, description="server processes sharing --port (SO_REUSEPORT)")
    reuse_port: bool = Field(False, description="open --port with SO_REUSEPORT (set by --workers)")
    compute_threads: int = Field(
        1, ge=1, description="threads per model: merged batches of a model computed at once"
    )
    inline_compute_ms: float = Field(
        5.0,
        ge=0,
        description="compute on the event loop while callers come one at a time, "
        "batches that took under this many ms (0: always on the model's thread)",
    )
    default_deadline_s: float = Field(
        0.0,
        ge=0,
        description="Predict calls without a deadline get this many seconds (0: no deadline); "
        "a model's config.yaml default_deadline_s overrides it",
    )
    queue_target_ms: float = Field(
        5.0,
        ge=0,
        description="past capacity (a queue standing for 100 ms), queued calls that waited "
        "longer than this or two batch times are refused and the newest served first "
        "(0: first in, first out, nothing shed)",
    )
    min_call_limit: int = Field(
        16,
        ge=1,
        description="Predict/ModelInfer calls always let in at once; past them the limit "
        "follows the event loop's lag and further calls wait in a fair queue by caller",
    )
    loop_lag_target_ms: float = Field(
        10.0,
        gt=0,
        description="the event loop's mean lag the call limit keeps under (past it, fewer "
        "calls run at once and the rest wait their turn or are refused with pushback)",
    )
    load_threads: int = Field(
        1, ge=1, description="models loaded and proven at once on startup (2 measured slower)"
    )
    proof_cache_dir: str = Field(
        default_dir(),
        description="where the proof keeps eager Keras outputs between starts "
        "(keyed by model file SHA-256 and versions; '': off; unwritable: not written)",
    )
    tf_intra_op_threads: int = Field(0, ge=0, description="TensorFlow intra-op threads (0: TF)")
    tf_inter_op_threads: int = Field(0, ge=0, description="TensorFlow inter-op threads (0: TF)")
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024, description="largest message")
    # Limits per request (README "Limits"); a model's config.yaml may state its own.
    max_sequence_length: int = Field(
        _LIMITS.max_sequence_length, ge=1, description="steps per input sequence"
    )
    max_request_elements: int = Field(
        _LIMITS.max_request_elements, ge=1, description="numbers in one request's tensor"
    )
    max_inputs_per_request: int = Field(
        _LIMITS.max_inputs_per_request, ge=1, description="sequences or vectors per request"
    )
    max_stream_messages: int = Field(
        _LIMITS.max_stream_messages, ge=1, description="messages one PredictStream call may send"
    )
    # Text (STRING / BYTES tensors): checked before the decoded array is built.
    max_string_bytes: int = Field(
        DEFAULT_MAX_STRING_BYTES,
        ge=1,
        description="UTF-8 bytes of one text or token string (default 64 KiB; longer: "
        "INVALID_ARGUMENT naming the element)",
    )
    max_request_string_bytes: int = Field(
        DEFAULT_MAX_REQUEST_STRING_BYTES,
        ge=1,
        description="UTF-8 bytes of text in one request (default 64 MiB, the message bound; "
        "more: RESOURCE_EXHAUSTED)",
    )
    max_concurrent_rpcs: int = Field(
        1024, ge=1, description="calls in progress server-wide, sessions included"
    )
    max_open_streams: int = Field(
        64,
        ge=1,
        description="health Watch and reflection streams open at once server-wide (open "
        "without a token: a budget of their own)",
    )
    open_stream_lifetime_s: float = Field(
        300.0, gt=0, description="a health Watch or reflection stream ends UNAVAILABLE after this"
    )
    accept_loops: int = Field(
        4,
        ge=1,
        le=16,
        description="gRPC servers on the port, each taking calls from gRPC core on its own "
        "(grpc.aio takes one call per turn of the event loop per server); more than 1 opens "
        "the port with SO_REUSEPORT",
    )
    max_streams_per_connection: int = Field(
        256, ge=1, description="concurrent calls on one HTTP/2 connection (more wait)"
    )
    # Keepalive (README "Limits", "Server settings"): the SDK pings every 30 s while a call is open.
    min_ping_interval_s: float = Field(
        10.0,
        ge=0,
        description="callers may ping a quiet connection every N s; a third faster ping "
        "closes it (GOAWAY too_many_pings)",
    )
    keepalive_time_s: float = Field(
        60.0, gt=0, description="ping a caller after N s of quiet, with or without calls open"
    )
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="close a connection whose ping goes unanswered for N s"
    )
    grace_period_s: float = Field(10.0, ge=0, description="time to finish in-flight work on stop")
    model_control: Literal["none", "explicit"] = Field(
        "none",
        description="who may load and unload models: none (callers may not: LoadModel, "
        "UnloadModel and v2 repository load/unload are refused FAILED_PRECONDITION) or "
        "explicit (callers with the admin scope when tokens are on); the repository is polled "
        "either way when --repository-poll-s is set",
    )
    repository_poll_s: float = Field(
        0.0, ge=0, description="re-read the model repository every N s for changes (0: off)"
    )
    log_level: str = Field("INFO", description="logging level")
    # Security (README "Security"): TLS, mutual TLS, tokens; certificate and token files are
    # re-read when they change.
    tls_cert: Path | None = Field(None, description="server certificate chain (PEM): serve TLS")
    tls_key: Path | None = Field(None, description="private key of --tls-cert (PEM)")
    tls_client_ca: Path | None = Field(
        None, description="CA of the callers' certificates (PEM): mutual TLS, certificate required"
    )
    auth_tokens_file: Path | None = Field(
        None, description="tokens file (YAML): every call but health needs a token it lists"
    )
    reflection: bool = Field(True, description="serve gRPC reflection (open without a token)")
    # Resumable sessions (README "Resumable sessions"): a key every replica shares.
    session_key_file: Path | None = Field(
        None,
        description="session keys (one per line, 64 hex characters; the first seals, all "
        "open): sessions checkpoint and hand off to other replicas (off without)",
    )
    session_token_ttl_s: float = Field(
        3600.0, gt=0, description="a session checkpoint (resume token) opens for N s"
    )
    # Sessions that outlive their replica (README "Shared session store"): needs the key above.
    session_store: str | None = Field(
        None,
        description="shared session store, redis://[:password@]host:6379/0 (rediss:// for TLS): "
        "a stopping replica writes its open Triton sequences and v1 sessions there, any replica "
        "continues them (off without)",
    )
    session_store_write: WriteMode = Field(
        WriteMode.ON_DRAIN,
        description="when Triton sequences are written to the store: on-drain (when the replica "
        "stops) or every-step (after each request too: they survive a crash, one write per step)",
    )
    metrics_host: str | None = Field(None, description="address of /metrics (default: --host)")
    metrics_tls_cert: Path | None = Field(None, description="serve /metrics over TLS (PEM)")
    metrics_tls_key: Path | None = Field(None, description="private key of --metrics-tls-cert")
    metrics_tls_client_ca: Path | None = Field(
        None, description="CA of the scrapers' certificates (PEM): /metrics over mutual TLS"
    )

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        """A certificate without its key (or the reverse) is a mistake, not plaintext."""
        for cert, key in (("tls_cert", "tls_key"), ("metrics_tls_cert", "metrics_tls_key")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(
                    f"--{cert.replace('_', '-')} and --{key.replace('_', '-')} go together"
                )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.metrics_tls_client_ca is not None and self.metrics_tls_cert is None:
            raise ValueError("--metrics-tls-client-ca needs --metrics-tls-cert and -key")
        if self.session_store is not None:
            if self.session_key_file is None:
                raise ValueError(
                    "--session-store needs --session-key-file: the store holds sessions sealed "
                    "under the key every replica shares"
                )
            scheme, separator, _ = self.session_store.partition("://")
            if not separator or scheme not in STORE_SCHEMES:
                raise ValueError(  # the value is not echoed: it may hold a password
                    "--session-store: expected a redis://, rediss:// or unix:// URL"
                )
        return self
