"""Per-RPC metrics for servicer methods: count, latency, in-flight, time to first output, and
calls their callers abandoned (cancelled, or let their deadline pass).

An abandoned call is the caller's choice, not a server fault: it is counted
(`seqserve_requests_abandoned_total{model,reason}`) and logged at DEBUG at most. grpc.aio logs
an ERROR with a traceback when it sends an answer to a call that is already gone
(`ExecuteBatchError`); `quiet_abandoned_calls` installs the filter that demotes exactly those.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import grpc

from seqserve.v1 import seqserve_pb2 as pb

from ..metrics import UNKNOWN_MODEL, ServerMetrics

NO_MODEL = ""  # the RPC names no model (ListModels), or a session not opened yet
CANCELLED, DEADLINE = "cancelled", "deadline"  # why a caller abandoned a call
# A caller's deadline reaches the server as its cancel, slightly before the server's copy of
# the deadline (which starts on arrival): a call abandoned this close to it expired.
DEADLINE_SLACK_S = 0.05
SETTLE_S = 0.002  # for grpc.aio to report a caller gone at the end of its request stream
GRPC_LOGGER = "grpc._cython.cygrpc"  # where grpc.aio's server logs a servicer's failures
# The call the current RPC task serves: grpc.aio logs a failed send from that same task, after
# the servicer returned, so the log filter can tell whose answer could not be sent.
CURRENT_CALL: contextvars.ContextVar[_Call] = contextvars.ContextVar("seqserve_call")


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
            call = _Call(self, rpc, request, streaming=True, context=context)
            if not hasattr(request, "DESCRIPTOR"):  # a request stream: its opening names the model
                request = _watched(request, call)
            try:
                async for item in method(self, request, context):
                    call.output(item)
                    call.skip_if_expired()
                    yield item
                call.skip_if_expired()
            except asyncio.CancelledError:
                call.abandoned()
                raise
            finally:
                call.finish(context)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Instrumented, request: Any, context: Any) -> Any:
        call = _Call(self, rpc, request, streaming=False, context=context)
        try:
            response = await method(self, request, context)
            call.output(response)
            call.skip_if_expired()
            return response
        except asyncio.CancelledError:
            call.abandoned()
            raise
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
    # The request stream ends alike when the caller closes it and when the caller goes away
    # (cancel, deadline): in the second case grpc.aio reports the close a moment later
    # (cancelling the servicer, or the done callback); let it, so the call counts as abandoned.
    await asyncio.sleep(SETTLE_S)


class _Call:
    """Labels come only from models and versions the repository holds: a caller cannot create
    series without bound."""

    def __init__(
        self,
        servicer: Instrumented,
        rpc: str,
        request: Any,
        streaming: bool,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.servicer = servicer
        self.context = context
        self.abandon_reason: str | None = None  # set once: why the caller went away
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
        CURRENT_CALL.set(self)  # kept in the task's context after the servicer returns
        context.add_done_callback(self._closed)

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

    def _closed(self, context: grpc.aio.ServicerContext) -> None:
        """grpc.aio's done callback, when the call ends: not `done()` means the server never
        sent its status, so the caller went away first (cancelled, deadline, lost
        connection), even when the servicer itself ended normally (a request stream that
        stopped)."""
        if not context.done():
            self.abandoned()

    def expired(self, slack: float = 0.0) -> bool:
        """The caller's deadline has passed (or is within `slack` s, as the caller's own copy
        of it passes first): an answer sent now would reach no one."""
        remaining = self.context.time_remaining()
        return remaining is not None and remaining <= slack

    def abandoned(self) -> str:
        """Count the call as abandoned by its caller (once): grpc.aio cancelled the servicer
        because the caller cancelled or its deadline passed, or an answer found the call gone.
        Returns the reason."""
        if self.abandon_reason is None:
            self.abandon_reason = DEADLINE if self.expired(DEADLINE_SLACK_S) else CANCELLED
            self.metrics.rpc_abandoned(self.model, self.abandon_reason)
        return self.abandon_reason

    def skip_if_expired(self) -> None:
        """Before an answer is written: when the caller's deadline has passed, end the call as
        grpc.aio ends a cancelled one (logged at DEBUG) rather than write to a call that is
        gone, which grpc.aio logs as an ERROR."""
        if self.expired():
            self.abandoned()
            raise asyncio.CancelledError

    def finish(self, context: grpc.aio.ServicerContext) -> None:
        if self.abandon_reason is None and context.code() is not None and self.expired():
            self.abandoned()  # the core noticed the deadline first (DEADLINE_EXCEEDED)
        name = _ABANDONED_CODE.get(self.abandon_reason or "") or _code_name(context)
        seconds = time.perf_counter() - self.start
        self.metrics.rpc_finished(self.model, self.version, self.rpc, name, seconds)


_BY_VALUE = {code.value[0]: code.name for code in grpc.StatusCode}
_ABANDONED_CODE = {CANCELLED: "CANCELLED", DEADLINE: "DEADLINE_EXCEEDED"}


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status the call ends with (set by an abort), else CANCELLED or OK."""
    code = context.code()
    if code is None:
        return "CANCELLED" if context.cancelled() else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _BY_VALUE.get(int(code), str(code))


class AbandonedCallFilter(logging.Filter):
    """Demotes grpc.aio's `ExecuteBatchError` ERROR (an answer or status sent to a call that is
    gone) to DEBUG when the call is one its caller abandoned (counted as such, or its deadline
    is within `DEADLINE_SLACK_S`: the caller's copy of it passes first, and its cancel fails
    the send); such a record is emitted only where DEBUG is enabled. Whether a cancel caused
    it may be known only a moment later (grpc reports the failed send and the caller's cancel
    in either order), so an undecided record waits `DECIDE_AFTER_S` on the event loop. Any
    other failure, an `ExecuteBatchError` of a call the caller still waits for included (a
    response over the message size limit fails the same way), stays an ERROR: those are
    server faults."""

    DECIDE_AFTER_S = 0.5

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "seqserve_decided", False):
            return True
        if record.levelno < logging.ERROR or not _failed_send(record):
            return True
        call = CURRENT_CALL.get(None)
        if call is None:
            return True
        if call.abandon_reason is None and not call.expired(DEADLINE_SLACK_S):
            asyncio.get_running_loop().call_later(self.DECIDE_AFTER_S, _decide, record, call)
            return False
        call.abandoned()
        return _demote(record)


def _decide(record: logging.LogRecord, call: _Call) -> None:
    """Emit a deferred record: at DEBUG if the call turned out abandoned, else as it was."""
    record.seqserve_decided = True
    logger = logging.getLogger(record.name)
    if call.abandon_reason is not None or call.expired(DEADLINE_SLACK_S):
        call.abandoned()
        if not _demote(record):
            return
    logger.handle(record)


def _demote(record: logging.LogRecord) -> bool:
    """Make the record DEBUG; whether its logger emits DEBUG."""
    record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _failed_send(record: logging.LogRecord) -> bool:
    """grpc.aio's record of a batch operation (send message, send status) core refused."""
    exc = record.exc_info[1] if record.exc_info else None
    return type(exc).__name__ == "ExecuteBatchError"


def quiet_abandoned_calls() -> None:
    """Install `AbandonedCallFilter` on grpc.aio's server logger (once; at startup)."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, AbandonedCallFilter) for f in logger.filters):
        logger.addFilter(AbandonedCallFilter())
