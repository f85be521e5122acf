"""Typed exceptions for failed calls, with the server's field-level details."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class SeqServeError(Exception):
    """A failed call. `field`, `expected` and `got` say what to fix when the input was wrong."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        field: str = "",
        expected: str = "",
        got: str = "",
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.expected = expected
        self.got = got


class InvalidInputError(SeqServeError):
    """INVALID_ARGUMENT: the inputs do not fit the model."""


class ModelNotFoundError(SeqServeError):
    """NOT_FOUND: no such model or version."""


class FailedPreconditionError(SeqServeError):
    """FAILED_PRECONDITION: the model cannot do this (failed to load, no sessions...)."""


class ResourceExhaustedError(SeqServeError):
    """RESOURCE_EXHAUSTED: a limit was reached (message size, sessions)."""


class StreamLimitError(ResourceExhaustedError):
    """RESOURCE_EXHAUSTED, raised by the client before any I/O: every channel the client may
    open (`max_channels`) already carries `streams_per_channel` calls (sessions, streams and
    unary calls in flight). Raised at once rather than waiting: gRPC would queue the call until
    a stream ends, which for sessions may be never. Raise `max_channels`, or end sessions."""

    def __init__(self, open_calls: int, streams_per_channel: int, max_channels: int) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"stream limit reached: {open_calls} calls open, the most this client carries "
            f"(max_channels={max_channels} x streams_per_channel={streams_per_channel}); "
            "raise max_channels or end sessions",
            reason="CLIENT_STREAM_LIMIT",
        )
        self.open_calls = open_calls
        self.streams_per_channel = streams_per_channel
        self.max_channels = max_channels


class UnavailableError(SeqServeError):
    """UNAVAILABLE: overloaded, loading or unreachable; retrying later may succeed."""


class DeadlineExceededError(SeqServeError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


class CancelledError(SeqServeError):
    """CANCELLED: the call was cancelled."""


class UnauthenticatedError(SeqServeError):
    """UNAUTHENTICATED: no token, or one the server does not know (revoked, mistyped)."""


class PermissionDeniedError(SeqServeError):
    """PERMISSION_DENIED: the token may not do this call, or not on this model."""


_BY_CODE: dict[grpc.StatusCode, type[SeqServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def from_rpc_error(error: grpc.RpcError) -> SeqServeError:
    """The typed exception for a failed call, with the details the server attached."""
    call = _as_call(error)
    code = call.code() if call else grpc.StatusCode.UNKNOWN
    message = call.details() if call else str(error)
    kind = _BY_CODE.get(code, SeqServeError)
    info = _error_info(error)
    if info is None:
        return kind(code, message or "")
    meta = info.metadata
    return kind(
        code,
        message or "",
        reason=info.reason,
        field=meta.get("field", ""),
        expected=meta.get("expected", ""),
        got=meta.get("got", ""),
    )


def _as_call(error: grpc.RpcError) -> Any:
    """Sync errors are `grpc.Call`s; asyncio's `AioRpcError` has the same methods but is not."""
    return error if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    call = _as_call(error)
    if call is None:
        return None
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        return None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


class ResumptionUnavailable(FailedPreconditionError):
    """A resumable session (`resumable=True`, or `checkpoint()`) was asked of a server that
    cannot seal checkpoints: it has no session key (`--session-key-file`)."""


class SessionMoved(UnavailableError):
    """UNAVAILABLE: the server stopped (drain, scale-in, its version unloaded) and handed the
    session off. A session opened without `resumable=True` stops here; `token` continues it on
    any replica sharing the session key (`client.session(model, resume=token)`) once the steps
    and reset messages from index `messages` on (counted from the session's first open) are sent
    again. `steps`: the steps since open or reset that the token holds."""

    def __init__(self, message: str, token: bytes, messages: int, steps: int) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)
        self.token = token
        self.messages = messages
        self.steps = steps


class SessionLost(SeqServeError):
    """A resumable session could not be continued: its resume token was refused (expired,
    another caller's, its model version or file gone: `code` FAILED_PRECONDITION or
    INVALID_ARGUMENT, the server's words in the message), reconnecting failed every attempt
    (`code` UNAVAILABLE), or the replica that took it over could not continue it. `cause` is the
    last failure. `messages`: the steps and reset messages whose calls completed (the caller
    holds every answer to them); `last_step`: the index, since open or the last reset, of the
    last step those fed (-1: none). `token` (None before the first checkpoint) and
    `token_messages`: the newest checkpoint held, to try again later with
    `client.session(model, resume=token)` and the messages from index `token_messages` on."""

    def __init__(
        self,
        cause: SeqServeError,
        why: str,
        messages: int,
        last_step: int,
        token: bytes | None,
        token_messages: int,
        attempts: int,
    ) -> None:
        message = (
            f"session lost after {messages} steps/reset messages (last step delivered: "
            f"{last_step}, since open or reset): {why}: {cause.code.name}: {cause.message}"
        )
        super().__init__(cause.code, message, cause.reason, cause.field, cause.expected, cause.got)
        self.cause = cause
        self.why = why
        self.messages = messages
        self.last_step = last_step
        self.token = token
        self.token_messages = token_messages
        self.attempts = attempts
