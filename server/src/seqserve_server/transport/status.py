"""The one place where core errors become gRPC status codes with google.rpc error details."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from seqserve_api.tensors import TensorError, TensorTooLarge

from ..core import errors
from ..core.tf_errors import from_tensorflow
from .auth import VISIBLE

log = logging.getLogger(__name__)

ERROR_DOMAIN = "seqserve"
# gRPC's retry design (A6): how long a client waits before trying again; clients that retry
# honour it, and a negative or unparsable value tells them not to retry at all.
PUSHBACK_KEY = "grpc-retry-pushback-ms"

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.NotOpen, grpc.StatusCode.FAILED_PRECONDITION),  # before its base, InvalidInput
    (errors.ResumeTokenRefused, grpc.StatusCode.FAILED_PRECONDITION),  # likewise
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.LoadShed, grpc.StatusCode.RESOURCE_EXHAUSTED),  # with grpc-retry-pushback-ms
    (errors.Overloaded, grpc.StatusCode.UNAVAILABLE),
    (errors.SessionMoved, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.AlreadyApplied, grpc.StatusCode.ALREADY_EXISTS),
]


def status_code(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, errors.ModelNotReady):
        # Still loading: retry soon. Failed to load: no retry helps until an operator acts.
        return grpc.StatusCode.UNAVAILABLE if exc.loading else grpc.StatusCode.FAILED_PRECONDITION
    return next((code for kind, code in _CODES if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)


MAX_MESSAGE_CHARS = 2000  # a status message past this is cut (the whole status must stay small)
MAX_DETAIL_CHARS = 256  # each request-derived value in the status's details likewise


def to_status(exc: Exception) -> grpc.Status:
    """A rich status: code, message, and details a client can read field by field. A missing
    model's "available" list names only the models the caller may see (auth.VISIBLE)."""
    if isinstance(exc, errors.ModelNotFound):
        exc = exc.visible_to(VISIBLE.get())
    code = status_code(exc)
    internal = code is grpc.StatusCode.INTERNAL
    message = "internal error" if internal else _bounded(errors.without_paths(str(exc)))
    details = [_pack(_error_info(exc))]
    if isinstance(exc, errors.InvalidInput | TensorError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_cut(exc.field), description=message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(exc, errors.ModelNotFound):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type="model", resource_name=_cut(exc.model), description=message
                )
            )
        )
    proto = status_pb2.Status(code=_code_number(code), message=message, details=details)
    status = rpc_status.to_status(proto)
    if isinstance(exc, errors.LoadShed):
        return _Status(code, message, (*status.trailing_metadata, *pushback(exc)))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        # A limit the same call hits again (a message too large, sessions used up): a client
        # that retries RESOURCE_EXHAUSTED after pushback must not send it again.
        return _Status(code, message, (*status.trailing_metadata, (PUSHBACK_KEY, "-1")))
    return status


def _bounded(message: str) -> str:
    return _cut(message, MAX_MESSAGE_CHARS)


def _cut(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` cut to `limit` characters, saying so (request content must not make a status
    too large to deliver: gRPC's limit on a status's headers is 16 KiB)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut at {limit} of {len(text):,} characters)"


class _Status(grpc.Status):
    """A status with trailing metadata beside the rich details (grpc.Status is abstract)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def pushback(exc: errors.LoadShed) -> tuple[tuple[str, str]]:
    """The `grpc-retry-pushback-ms` trailer of a shed call: whole ms, at least 1."""
    return ((PUSHBACK_KEY, str(max(1, round(exc.retry_after_s * 1000)))),)


def _error_info(exc: Exception) -> error_details_pb2.ErrorInfo:
    if isinstance(exc, errors.SeqServeError):
        reason = exc.reason
    else:
        reason = "INTERNAL"
        if isinstance(exc, TensorError):
            reason = "LIMIT_EXCEEDED" if isinstance(exc, TensorTooLarge) else "INVALID_INPUT"
    metadata = {}
    if isinstance(exc, errors.InvalidInput | TensorError):
        parts = {"field": exc.field, "expected": exc.expected, "got": exc.got}
        metadata = {key: _cut(errors.without_paths(text)) for key, text in parts.items()}
    if isinstance(exc, errors.LoadShed):
        seconds = {"estimate": exc.estimate_s, "deadline": exc.deadline_s}
        seconds["retry_after"] = exc.retry_after_s
        metadata = {f"{key}_ms": f"{value * 1000:.0f}" for key, value in seconds.items()}
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _code_number(code: grpc.StatusCode) -> int:
    return code_pb2.Code.Value(code.name)


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Turn core errors raised by a servicer method (unary or streaming) into gRPC statuses."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:  # noqa: BLE001 - every error must become a status
                await _abort(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error must become a status
            await _abort(context, exc)

    return unary_wrapper  # type: ignore[return-value]


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    exc = from_tensorflow(exc)
    if status_code(exc) is grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    await context.abort_with_status(to_status(exc))
