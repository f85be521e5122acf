"""A budget for the streams anyone may open without a token: health `Watch` and reflection
(issue 26). They are open by design (probes, tooling), so without a bound a caller with no
token could hold them by the thousand and take the call capacity every real caller needs.
A transport/calls.py wrap: past `max_open` such streams server-wide a new one is refused
`RESOURCE_EXHAUSTED`; each ends `UNAVAILABLE` after `lifetime_s` (clients open a new one: gRPC's
health watchers and reflection clients do), so none is held forever.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from .calls import handler_kind

BOUNDED = (
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)


class OpenStreams:
    """Counts the open streams of `BOUNDED` methods and bounds their number and lifetime."""

    def __init__(self, max_open: int, lifetime_s: float) -> None:
        self.max_open = max_open
        self.lifetime_s = lifetime_s
        self.open = 0

    def wrap(self, method: str, handler: Any) -> Any:
        if method not in BOUNDED or not handler.response_streaming:
            return handler
        kind = handler_kind(handler)
        return handler._replace(**{kind: self._bounded(getattr(handler, kind), method)})

    def _bounded(self, inner: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self.open >= self.max_open:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.open} streams of {method} are open, the server's limit "
                    "(--max-open-streams): close one or retry later",
                )
            self.open += 1
            try:
                async for response in self._until_lifetime(inner(request, context)):
                    yield response
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the stream's lifetime ({self.lifetime_s:g} s, --open-stream-lifetime-s) "
                    "is over: open a new one",
                )
            finally:
                self.open -= 1

        return bounded

    async def _until_lifetime(self, responses: Any) -> AsyncIterator[Any]:
        """The handler's responses (yielded, or written through `context.write`), raising
        TimeoutError once the lifetime is over; the wait for each is what times out."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.lifetime_s
        if not inspect.isasyncgen(responses):
            await asyncio.wait_for(responses, self.lifetime_s)
            return
        while True:
            try:
                response = await asyncio.wait_for(anext(responses), end - loop.time())
            except StopAsyncIteration:
                return
            yield response
