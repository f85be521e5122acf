"""Per-RPC metrics for servicer methods: count, latency, in-flight, time to first output."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from ..metrics import UNKNOWN_MODEL, ServerMetrics


class Instrumented(Protocol):
    metrics: ServerMetrics

    def known_model(self, name: str) -> bool: ...


F = TypeVar("F", bound=Callable[..., Any])


def observed(method: F) -> F:
    """Wrap a servicer method (outside the error mapping, so the final status code is seen)."""
    rpc = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Instrumented, request: Any, context: Any) -> Any:
            call = _Call(self, rpc, request, streaming=True)
            try:
                async for item in method(self, request, context):
                    call.output(item)
                    yield item
            finally:
                call.finish(context)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Instrumented, request: Any, context: Any) -> Any:
        call = _Call(self, rpc, request, streaming=False)
        try:
            response = await method(self, request, context)
            call.output(response)
            return response
        finally:
            call.finish(context)

    return unary_wrapper  # type: ignore[return-value]


class _Call:
    def __init__(self, servicer: Instrumented, rpc: str, request: Any, streaming: bool) -> None:
        self.metrics = servicer.metrics
        self.rpc = rpc
        self.streaming = streaming
        name = getattr(request, "model_name", "")
        self.model = name if servicer.known_model(name) else UNKNOWN_MODEL
        self.version = getattr(request, "model_version", 0)
        self.start = time.perf_counter()
        self.outputs = 0
        self.metrics.rpc_started(self.model)

    def output(self, message: Any) -> None:
        if self.outputs == 0:
            self.version = getattr(message, "model_version", 0) or self.version
            if self.streaming:
                seconds = time.perf_counter() - self.start
                self.metrics.rpc_first_output(self.model, self.rpc, seconds)
        self.outputs += 1

    def finish(self, context: grpc.aio.ServicerContext) -> None:
        name = _code_name(context)
        version = str(self.version) if self.version else ""
        seconds = time.perf_counter() - self.start
        self.metrics.rpc_finished(self.model, version, self.rpc, name, seconds)


_BY_VALUE = {code.value[0]: code.name for code in grpc.StatusCode}


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status the call ends with (set by an abort), else CANCELLED or OK."""
    code = context.code()
    if code is None:
        return "CANCELLED" if context.cancelled() else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _BY_VALUE.get(int(code), str(code))
