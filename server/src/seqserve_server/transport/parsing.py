"""Requests whose bytes do not parse get INVALID_ARGUMENT.

gRPC Python answers a request its deserializer cannot parse with UNKNOWN or INTERNAL, which say
"server fault" about what is the caller's. `reject_unparsable` (a transport/calls.py wrap, built
once per method) lets such a message through as an `Unparsable` marker and refuses it where the
handler would have received it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ..core.errors import InvalidInput
from .calls import handler_kind


@dataclass(frozen=True)
class Unparsable:
    error: str


def reject_unparsable(method: str, handler: Any) -> Any:
    """The handler with a deserializer that never fails, and its bad messages refused."""
    if handler.request_deserializer is None:
        return handler
    kind = handler_kind(handler)
    inner = getattr(handler, kind)
    wrapped = _streamed(inner, method) if handler.request_streaming else _single(inner, method)
    return handler._replace(
        request_deserializer=_tolerant(handler.request_deserializer), **{kind: wrapped}
    )


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's
            return Unparsable(f"{type(exc).__name__}: {exc}")

    return tolerant


def _refusal(method: str, bad: Unparsable) -> str:
    return str(InvalidInput("request", f"a message that parses for {method}", bad.error))


def _single(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    """One request message: refused before the handler runs."""
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Unparsable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request))
            async for response in inner(request, context):
                yield response

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Unparsable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request))
        return await inner(request, context)

    return unary


def _streamed(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    """A stream of request messages: refused when the handler reads the bad one (after it
    answered the good ones before it)."""

    def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def messages() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Unparsable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request))
                yield request

        return messages()

    if inspect.isasyncgenfunction(inner):

        async def streaming(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in inner(checked(requests, context), context):
                yield response

        return streaming

    async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await inner(checked(requests, context), context)

    return unary
