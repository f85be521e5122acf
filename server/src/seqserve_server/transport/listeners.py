"""Several grpc.aio servers on one port and one event loop, seen as one server.

grpc.aio takes calls from gRPC core one at a time: its accept loop asks core for the next call,
awaits it through the event loop, starts its task, and only then asks again. Under load each
turn of the loop is long, so calls wait inside core, first in first out and out of reach of the
server's admission, until their deadlines pass there (measured with the bundled co2_next_week,
1,024 callers with 5 s deadlines from 4 processes: calls spent ~1.2 s between the caller and
the handler, while the handlers had ~15 calls in progress; ~0.8 s with 4 servers: a one-off
instrumented run, the caller's send time in metadata against the handler's entry). Each server
here has its own accept loop; the kernel spreads connections over their listening sockets
(SO_REUSEPORT), so `n` servers take up to `n` calls per turn of the loop (README "Under
overload": goodput 2.4x at 256 callers with 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc


class Listeners:
    """`n` grpc.aio servers with the same services on one address."""

    def __init__(self, n: int, options: Sequence[tuple[str, Any]], max_concurrent_rpcs: int):
        """`max_concurrent_rpcs` applies to each server (gRPC's own limit, past which it stops
        taking calls from core); the front door bounds the calls doing work server-wide."""
        shared = [(k, v) for k, v in options if k != "grpc.so_reuseport" or n == 1]
        if n > 1:  # the servers share the port (and so may another process with the option)
            shared.append(("grpc.so_reuseport", 1))
        self.servers = [
            grpc.aio.server(options=shared, maximum_concurrent_rpcs=max_concurrent_rpcs)
            for _ in range(n)
        ]

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for server in self.servers:
            server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for server in self.servers:
            server.add_registered_method_handlers(service, handlers)

    def add_port(
        self, address: str, credentials: Callable[[], grpc.ServerCredentials | None]
    ) -> int:
        """Listen on `address` (port 0: one the system picks, then the same for every server)
        with `credentials()` (None: plaintext; each server its own: gRPC does not share one
        credentials object between listeners); the port, 0 when it cannot be bound."""
        host = address.rsplit(":", 1)[0]
        port = 0
        for server in self.servers:
            where = address if not port else f"{host}:{port}"
            own = credentials()
            if own is None:
                bound = server.add_insecure_port(where)
            else:
                bound = server.add_secure_port(where, own)
            if not bound or (port and bound != port):
                return 0
            port = bound
        return port

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self, grace: float | None) -> None:
        await asyncio.gather(*(server.stop(grace) for server in self.servers))
