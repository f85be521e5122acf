"""Per-RPC metrics for servicer methods: count, latency, in-flight, time to first output."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import grpc

from seqserve.v1 import seqserve_pb2 as pb

from ..metrics import UNKNOWN_MODEL, ServerMetrics

NO_MODEL = ""  # the RPC names no model (ListModels), or a session not opened yet


class Instrumented(Protocol):
    metrics: ServerMetrics

    def known_model(self, name: str) -> bool: ...

    def known_version(self, name: str, version: int) -> bool: ...


F = TypeVar("F", bound=Callable[..., Any])


def observed(method: F) -> F:
    """Wrap a servicer method (outside the error mapping, so the final status code is seen)."""
    rpc = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Instrumented, request: Any, context: Any) -> Any:
            call = _Call(self, rpc, request, streaming=True)
            if not hasattr(request, "DESCRIPTOR"):  # a request stream: its opening names the model
                request = _watched(request, call)
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


async def _watched(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for message in requests:
        if isinstance(message, pb.SessionRequest) and message.HasField("open"):
            call.identify(message.open.model_name, message.open.model_version)
        elif call.model == NO_MODEL and isinstance(getattr(message, "model_name", None), str):
            call.identify(message.model_name, message.model_version)  # v2's ModelStreamInfer
        yield message


class _Call:
    """Labels come only from models and versions the repository holds: a caller cannot create
    series without bound."""

    def __init__(self, servicer: Instrumented, rpc: str, request: Any, streaming: bool) -> None:
        self.servicer = servicer
        self.metrics = servicer.metrics
        self.rpc = rpc
        self.streaming = streaming
        self.model = NO_MODEL
        self.version = ""
        self.start = time.perf_counter()
        self.outputs = 0
        if hasattr(request, "model_name"):
            version = getattr(request, "model_version", 0)  # v2's RepositoryModelLoad has none
            self.model, self.version = self._labels(request.model_name, version)
        self.metrics.rpc_started(self.model)

    def _labels(self, name: str, version: int) -> tuple[str, str]:
        if not self.servicer.known_model(name):
            return UNKNOWN_MODEL, ""
        if not version:
            return name, ""
        return name, str(version) if self.servicer.known_version(name, version) else UNKNOWN_MODEL

    def identify(self, name: str, version: int) -> None:
        """The model the call turned out to be about (a session's opening message or answer)."""
        model, label = self._labels(name, version)
        if model != self.model:
            self.metrics.rpc_moved(self.model, model)
            self.model = model
        self.version = label or self.version

    def output(self, message: Any) -> None:
        if self.outputs == 0:
            answered = message.opened if isinstance(message, pb.SessionResponse) else message
            if getattr(answered, "model_version", 0):
                self.identify(answered.model_name, answered.model_version)
            if self.streaming:
                seconds = time.perf_counter() - self.start
                self.metrics.rpc_first_output(self.model, self.rpc, seconds)
        self.outputs += 1

    def finish(self, context: grpc.aio.ServicerContext) -> None:
        name = _code_name(context)
        seconds = time.perf_counter() - self.start
        self.metrics.rpc_finished(self.model, self.version, self.rpc, name, seconds)


_BY_VALUE = {code.value[0]: code.name for code in grpc.StatusCode}


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status the call ends with (set by an abort), else CANCELLED or OK."""
    code = context.code()
    if code is None:
        return "CANCELLED" if context.cancelled() else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _BY_VALUE.get(int(code), str(code))
