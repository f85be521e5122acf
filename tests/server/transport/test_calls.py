"""transport/calls.py: the checks wrap each method once, at registration, in interceptor order."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from seqserve_server.transport.calls import Registrar


class _Server:
    """Keeps what is registered, as grpc.aio's server would."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _tracing(name: str, trace: list[str], wrapped: list[str]) -> Any:
    def wrap(method: str, handler: Any) -> Any:
        wrapped.append(f"{name} {method}")
        inner = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            trace.append(name)
            return await inner(request, context)

        return handler._replace(unary_unary=unary)

    return wrap


async def _echo(request: Any, context: Any) -> Any:
    return request


def test_first_wrap_runs_first_and_each_method_is_wrapped_once() -> None:
    server, trace, wrapped = _Server(), [], []
    services = Registrar(server, [_tracing(n, trace, wrapped) for n in ("outer", "inner")])
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    services.add_registered_method_handlers("s.S", {"A": handler})
    generic = grpc.method_handlers_generic_handler("s.G", {"B": handler})
    services.add_generic_rpc_handlers((generic,))

    a = server.registered["/s.S/A"]
    assert asyncio.run(a.unary_unary("x", None)) == "x"
    assert trace == ["outer", "inner"]
    b1 = server.generic[0].service(_Details("/s.G/B"))
    b2 = server.generic[0].service(_Details("/s.G/B"))
    assert b1 is b2  # wrapped the first time only
    assert server.generic[0].service(_Details("/s.G/Unknown")) is None
    assert wrapped == ["inner /s.S/A", "outer /s.S/A", "inner /s.G/B", "outer /s.G/B"]
