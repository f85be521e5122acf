"""The channel and its RPCs, the same for the sync and asyncio clients: retries, keepalive,
message sizes. Opening a channel does no I/O: gRPC connects on the first call."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api import MAX_MESSAGE_BYTES

from .errors import StreamLimitError

SERVICE = "seqserve.v1.SeqServe"
# Calls that change nothing on the server: safe to send again. A session holds state: never.
IDEMPOTENT = ("Predict", "PredictStream", "ListModels", "GetModelMetadata")

# gRPC retries a call that ended UNAVAILABLE (a replica restarting, a full queue) or
# RESOURCE_EXHAUSTED (a server shedding load) before any response arrived, with exponential
# backoff and jitter, or after the server's `grpc-retry-pushback-ms` when it sends one (a
# negative one: no retry); never past the call's deadline. Throttling (gRPC's token bucket:
# each failure costs a token, each success gives back `tokenRatio`; below half of `maxTokens`
# no call is retried) stops retries while most calls fail, so that retries cannot pile onto
# an overloaded server.
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": SERVICE, "method": m} for m in IDEMPOTENT]
            + [{"service": "grpc.health.v1.Health", "method": "Check"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}

DEFAULT_OPTIONS: dict[str, Any] = {
    "grpc.service_config": json.dumps(SERVICE_CONFIG),
    "grpc.enable_retries": 1,
    # After a reset connection (a replica that died or restarts) gRPC waits its reconnect
    # backoff, 1 s by default, before it dials again, and every retry made meanwhile fails at
    # once: the retries above (about 0.7 s in all) would be spent before it. 100 ms lets them
    # reach a fresh connection.
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    # Long, quiet sessions: ping every 30 s while a call is open, so that proxies keep the
    # connection and a dead peer is noticed (the server accepts pings from every 10 s on).
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.http2.max_pings_without_data": 0,  # gRPC's default (2) stops pinging a quiet session
}


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The defaults above, each overridden by the caller's option of the same name."""
    return list({**DEFAULT_OPTIONS, **dict(extra)}.items())


def open_channel(
    kind: ModuleType,
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
) -> Any:
    """A channel from `kind`, `grpc` or `grpc.aio` (same functions, blocking or asyncio)."""
    if credentials is None:
        return kind.insecure_channel(target, options=channel_options(options))
    return kind.secure_channel(target, credentials, options=channel_options(options))


# A server takes at most `--max-streams-per-connection` calls (default 256) on one HTTP/2
# connection; gRPC queues the next one until a call ends, silently: a session may never end.
# So the client counts its calls per channel and opens another channel (its own connection)
# when one is full, up to `max_channels`; past that it raises StreamLimitError at once.
DEFAULT_STREAMS_PER_CHANNEL = 256  # the server's default --max-streams-per-connection
DEFAULT_MAX_CHANNELS = 8
# A channel of its own connection: gRPC shares connections between channels of equal options.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


@dataclass
class _Lane:
    """One channel, its RPCs and how many calls it carries now."""

    channel: Any
    rpcs: dict[str, Any]
    open_calls: int = 0


@dataclass
class _Release:
    """Gives a call's slot back once, however often gRPC reports the call done."""

    pool: ChannelPool
    lane: _Lane
    done: bool = field(default=False)

    def __call__(self, *unused: Any) -> None:
        if not self.done:
            self.done = True
            self.pool.release(self.lane)


class ChannelPool:
    """Channels to one target, opened on demand: a call goes on the first channel carrying
    fewer than `streams_per_channel` calls; when all are full another is opened, up to
    `max_channels`; past that a call raises StreamLimitError before any I/O. A call holds its
    slot until it ends (unary: until its answer; a stream or session: until its status).
    Thread-safe; a threading lock suffices for asyncio too (held for no I/O)."""

    def __init__(
        self, open_one: Callable[[int], Any], streams_per_channel: int, max_channels: int
    ) -> None:
        if streams_per_channel < 1 or max_channels < 1:
            raise ValueError("streams_per_channel and max_channels must be at least 1")
        self._open_one = open_one  # a new channel, given its index
        self.streams_per_channel = streams_per_channel
        self.max_channels = max_channels
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._lane()  # the first channel: no I/O until a call is made

    @property
    def channels(self) -> list[Any]:
        return [lane.channel for lane in self._lanes]

    @property
    def open_calls(self) -> int:
        return sum(lane.open_calls for lane in self._lanes)

    def _lane(self) -> _Lane:
        channel = self._open_one(len(self._lanes))
        lane = _Lane(channel, rpcs(channel))
        self._lanes.append(lane)
        return lane

    def acquire(self) -> _Lane:
        with self._lock:
            lane = next((x for x in self._lanes if x.open_calls < self.streams_per_channel), None)
            if lane is None and len(self._lanes) < self.max_channels:
                lane = self._lane()
            if lane is None:
                raise StreamLimitError(self.open_calls, self.streams_per_channel, self.max_channels)
            lane.open_calls += 1
            return lane

    def release(self, lane: _Lane) -> None:
        with self._lock:
            lane.open_calls -= 1

    def call(self, rpc: str, *args: Any, **kwargs: Any) -> Any:
        """Start `rpc` on a channel with room. A blocking unary call returns its response and
        has given its slot back; a call object (asyncio, or a stream) gives it back when done."""
        lane = self.acquire()
        release = _Release(self, lane)
        try:
            result = lane.rpcs[rpc](*args, **kwargs)
        except BaseException:
            release()
            raise
        if hasattr(result, "add_done_callback"):
            result.add_done_callback(release)
        else:
            release()  # a blocking call's response: the call has ended
        return result

    def rpcs(self) -> dict[str, Callable[..., Any]]:
        """`rpcs()`'s names, each starting its call through the pool."""
        return {name: _pooled(self, name) for name in self._lanes[0].rpcs}


def _pooled(pool: ChannelPool, rpc: str) -> Callable[..., Any]:
    def start(*args: Any, **kwargs: Any) -> Any:
        return pool.call(rpc, *args, **kwargs)

    return start


LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "ipv4:127.0.0.1", "ipv6:[::1]")


@dataclass(frozen=True)
class Security:
    """How a client proves who it is and checks whom it talks to. TLS is on when `tls` is set
    or any certificate is given; `root_certificates` None trusts the system's CAs."""

    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    token: str | None = None
    plaintext_token_on_localhost: bool = False

    @property
    def uses_tls(self) -> bool:
        certificates = (self.root_certificates, self.client_certificate, self.client_key)
        return self.tls or any(c is not None for c in certificates)


def channel_credentials(target: str, security: Security) -> grpc.ChannelCredentials | None:
    """The channel's credentials: TLS (mutual with a client certificate), the token as
    `authorization: Bearer` call credentials on top, or None for plaintext without a token.

    gRPC sends call credentials only over a secure channel; a token over plaintext would be
    readable by anyone on the path, so it is refused unless the caller opts in and the target
    is this machine (gRPC's local credentials, which check that the peer is local)."""
    if (security.client_certificate is None) != (security.client_key is None):
        raise ValueError("client_certificate and client_key go together")
    if security.uses_tls:
        channel = grpc.ssl_channel_credentials(
            security.root_certificates, security.client_key, security.client_certificate
        )
    elif security.token is None:
        return None
    elif security.plaintext_token_on_localhost and _is_local(target):
        channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        raise ValueError(
            "a token needs TLS (tls=True): over plaintext anyone on the path could read it; "
            "for a server on this machine, pass plaintext_token_on_localhost=True"
        )
    if security.token is None:
        return channel
    token = grpc.access_token_call_credentials(security.token)
    return grpc.composite_channel_credentials(channel, token)


def _is_local(target: str) -> bool:
    host = target.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOCAL_HOSTS


def rpcs(channel: Any) -> dict[str, Any]:
    """Each RPC the SDK calls, by the name a `calls.Call` gives, bound to `channel`."""
    seqserve = pb_grpc.SeqServeStub(channel)
    return {
        "Predict": seqserve.Predict,
        "PredictStream": seqserve.PredictStream,
        "ListModels": seqserve.ListModels,
        "GetModelMetadata": seqserve.GetModelMetadata,
        "LoadModel": seqserve.LoadModel,
        "UnloadModel": seqserve.UnloadModel,
        "Session": seqserve.Session,
        "Check": health_pb2_grpc.HealthStub(channel).Check,
    }
