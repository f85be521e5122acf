"""What every call goes through before its servicer (drain, token, parse check), composed once
per method when the services are registered: no interceptor runs per call.

grpc.aio interceptors run for every call: each awaits its continuation and builds a new handler
with a new closure, before the call's own wrappers run. The same checks as handler wrappers,
built once per method, cost the call one frame each. `Registrar` stands in for the server while
the services are added (the generated `add_*_to_server` functions take it), and wraps each
method's handler, registered or generic, on its way in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

# (full method name, handler) -> the handler that checks first, then calls it.
Wrap = Callable[[str, Any], Any]


def handler_kind(handler: Any) -> str:
    """The handler's attribute holding its behaviour: `unary_unary`, ..., `stream_stream`."""
    return ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )


class Registrar:
    """The server, as the services see it while they register: `wraps` apply to every method,
    the first outermost (as interceptors do in the order given)."""

    def __init__(self, server: Any, wraps: Sequence[Wrap]) -> None:
        self._server = server
        self._wraps = tuple(reversed(wraps))

    def wrap(self, method: str, handler: Any) -> Any:
        for wrap in self._wraps:
            handler = wrap(method, handler)
        return handler

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Generic(h, self.wrap) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)


class _Generic(grpc.GenericRpcHandler):
    """A generic handler whose methods' handlers are wrapped the first time each is asked for."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped)

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(details)
        if handler is None:
            return None
        method: str = details.method  # type: ignore[attr-defined]
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._wrap(method, handler))
        return known[1]
