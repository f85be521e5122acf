"""What each sync class shares with its asyncio twin: construction, state, and the members that
do no I/O. Written once here so the twins differ only in how they wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

import grpc

from .calls import DEFAULT_TIMEOUT_S, SessionProtocol, deadline
from .channel import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_STREAMS_PER_CHANNEL,
    OWN_CONNECTION,
    ChannelPool,
    Security,
    channel_credentials,
    open_channel,
)
from .results import SessionInfo

F = TypeVar("F", bound=Callable[..., Any])


class ClientBase:
    """Channels to one server and its RPCs. Opening it does no I/O: gRPC connects on the
    first call. Every unary call's deadline is `timeout` seconds (default 30 s), the client's
    own unless the call gives one (`timeout=None` on the client: no deadline); sessions and
    streams have none unless given.

    Connections: one HTTP/2 connection carries at most `streams_per_channel` calls at once
    (sessions, streams, unary calls in flight; it must not exceed the server's
    `--max-streams-per-connection`, default 256, or the extra calls wait); the client opens
    another connection when one is full, up to `max_channels`, and past that raises
    StreamLimitError at once rather than wait.

    Security (README "Security"): `tls=True` (implied by any certificate) encrypts and checks
    the server's certificate against `root_certificates` (PEM; None: the system's CAs);
    `client_certificate` and `client_key` (PEM) answer a server that asks for one (mutual
    TLS); `token` is sent as `authorization: Bearer` with every call, and only over TLS, or
    over plaintext to this machine with `plaintext_token_on_localhost=True`. `credentials`
    (a ready `grpc.ChannelCredentials`) replaces all of these."""

    _grpc: ModuleType  # `grpc` or `grpc.aio`: the same channel functions, blocking or asyncio

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
        token: str | None = None,
        plaintext_token_on_localhost: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        streams_per_channel: int = DEFAULT_STREAMS_PER_CHANNEL,
        max_channels: int = DEFAULT_MAX_CHANNELS,
    ) -> None:
        self.target = target
        self.timeout = timeout
        security = Security(
            tls,
            root_certificates,
            client_certificate,
            client_key,
            token,
            plaintext_token_on_localhost,
        )
        if credentials is not None and security != Security():
            raise ValueError(
                "credentials replaces tls, certificates and token: pass one or the other"
            )
        if credentials is None:
            credentials = channel_credentials(target, security)
        chosen = credentials

        def open_one(index: int) -> Any:
            extra = [*options, OWN_CONNECTION] if index else options
            return open_channel(self._grpc, target, chosen, extra)

        self._pool = ChannelPool(open_one, streams_per_channel, max_channels)
        self._rpcs = self._pool.rpcs()

    def _deadline(self, timeout: float | None) -> float | None:
        return deadline(timeout, self.timeout)


class SessionBase:
    """One session over a bidirectional stream; one caller (or task) drives it.

    The constructor does no I/O; `open()` starts the call and waits until the server has opened
    the session. Its deadline, if any, covers the whole session, resumptions included.
    """

    def __init__(self, rpc: Callable[..., Any], protocol: SessionProtocol, timeout: float | None):
        self._rpc = rpc
        self._protocol = protocol
        self._timeout = timeout
        self._expires: float | None = None  # the session's deadline (time.monotonic())
        self._call: Any = None  # the gRPC call, from `open()` on (a new one per resumption)

    @property
    def info(self) -> SessionInfo:
        return self._protocol.info

    @property
    def mode(self) -> str:
        return self._protocol.info.mode

    @property
    def resumes(self) -> int:
        """Times a resumable session was resumed on a new call (a handoff, a lost connection)."""
        return self._protocol.replay.resumes

    @property
    def steps_replayed(self) -> int:
        """Steps sent again to the server after those resumptions (each output still reached
        the caller once)."""
        return self._protocol.replay.steps_replayed

    @property
    def emit_on_request(self) -> bool:
        return self._protocol.emit_on_request

    def cancel(self) -> None:
        """End the session at once, without waiting for the server."""
        if self._call is not None:
            self._call.cancel()

    def _call_timeout(self) -> float | None:
        """A new call's timeout: what is left of the session's (none: no deadline)."""
        if self._timeout is None:
            return None
        now = time.monotonic()
        if self._expires is None:
            self._expires = now + self._timeout
        return self._expires - now


def mirrors(sync: Callable[..., Any]) -> Callable[[F], F]:
    """An asyncio method does what its sync twin does, awaited: it takes the twin's docstring."""

    def document(method: F) -> F:
        method.__doc__ = sync.__doc__
        return method

    return document
