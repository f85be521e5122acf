"""Graceful stop that loses no accepted call.

`grpc.aio`'s `server.stop()` kills the calls that reached the server but that its Python loop has
not picked up yet, and the calls that arrive after it began: their callers see CANCELLED, which
a client with retries does not retry. So the server drains while it still runs:

1. every call that starts from then on is held before it does anything (health checks pass
   through and answer NOT_SERVING, so a load balancer sees the drain); a held caller sends
   nothing new, so the calls still queued inside gRPC are soon all picked up and held too;
2. the calls already running finish (within the grace period);
3. gRPC's stop begins, which sends GOAWAY: callers open no new call on this connection;
4. the held calls are answered UNAVAILABLE: they never started, and are safe to retry anywhere.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from .calls import handler_kind

EXEMPT = ("/grpc.health.v1.Health/",)
REFUSAL = "the server is shutting down: retry on another replica"
QUIET_S = 0.05  # no call arrived for this long: none is still queued inside gRPC
GOAWAY_HEAD_START_S = 0.1  # let GOAWAY reach callers before their held calls are answered


class Drain:
    """Counts the calls in flight and refuses those past `max_in_flight` (server-wide, across
    every listener: `--max-concurrent-rpcs`); once draining, holds every new one until
    `release()`. `wrap` is a transport/calls.py wrap: each method's handler is wrapped once."""

    def __init__(self, max_in_flight: int = 1 << 30) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.held = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._released = asyncio.Event()
        self._last_arrival = 0.0

    async def settle(self, timeout: float) -> bool:
        """Start draining; True once no call runs and none arrived for a moment, False if
        calls still run after `timeout` seconds."""
        self.draining = True
        self._last_arrival = time.monotonic()
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        while (quiet := time.monotonic() - self._last_arrival) < QUIET_S:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(QUIET_S - quiet)
        return True

    async def release(self) -> None:
        """Answer every held call UNAVAILABLE (once gRPC's stop has sent GOAWAY)."""
        await asyncio.sleep(GOAWAY_HEAD_START_S)
        self._released.set()

    def wrap(self, method: str, handler: Any) -> Any:
        if method.startswith(EXEMPT):
            return handler
        return _wrap(handler, self)

    # The check and the count happen together when the call's handler starts (one event loop:
    # nothing runs between them), so a call is either held and refused, or waited for.
    async def _enter(self, context: grpc.aio.ServicerContext) -> None:
        if self.draining:
            await self._hold(context)
        if self.in_flight >= self.max_in_flight:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server has {self.in_flight} calls in progress, its limit "
                "(--max-concurrent-rpcs): retry later or on another replica",
            )
        self.in_flight += 1
        self._idle.clear()

    async def _hold(self, context: grpc.aio.ServicerContext) -> None:
        """A call arrived while draining: held until released, then refused UNAVAILABLE."""
        self._last_arrival = time.monotonic()
        self.held += 1
        try:
            await self._released.wait()
        finally:
            self.held -= 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, REFUSAL)

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()


def _wrap(handler: Any, drain: Drain) -> grpc.RpcMethodHandler:
    """The same handler with each call admitted (or held and refused) and counted."""
    kind = handler_kind(handler)
    if handler.response_streaming:
        inner_stream = getattr(handler, kind)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await drain._enter(context)
            try:
                responses = inner_stream(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a handler that writes through `context.write` and returns
                    await responses
            finally:
                drain._leave()

        return handler._replace(**{kind: streaming})  # type: ignore[no-any-return]
    inner_unary = getattr(handler, kind)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await drain._enter(context)
        try:
            return await inner_unary(request, context)
        finally:
            drain._leave()

    return handler._replace(**{kind: unary})  # type: ignore[no-any-return]
