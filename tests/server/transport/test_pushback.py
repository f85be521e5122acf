"""A shed call over real gRPC (an in-process grpc.aio server on 127.0.0.1 whose handler goes
through `grpc_errors`, as every servicer method does): RESOURCE_EXHAUSTED, the estimate and the
deadline in the message and details, and `grpc-retry-pushback-ms` in the trailers (gRPC A6)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from seqserve_server.core.errors import LoadShed
from seqserve_server.transport.status import grpc_errors

METHOD = "/test.Shed/Call"


class _Shedding:
    @grpc_errors
    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise LoadShed("model m would answer in about 600 ms, deadline in 250 ms", 0.6, 0.25, 0.35)


async def _refusal() -> grpc.aio.AioRpcError:
    server = grpc.aio.server()
    servicer = _Shedding()
    handler = grpc.method_handlers_generic_handler(
        "test.Shed", {"Call": grpc.unary_unary_rpc_method_handler(servicer.call)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary(METHOD)
            try:
                await call(b"", timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc
            raise AssertionError("the call was not refused")
    finally:
        await server.stop(None)


def test_a_shed_call_is_resource_exhausted_with_pushback_over_grpc() -> None:
    refusal = asyncio.run(_refusal())
    assert refusal.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "600 ms" in (refusal.details() or "") and "250 ms" in (refusal.details() or "")
    trailers = dict(refusal.trailing_metadata() or ())
    assert trailers["grpc-retry-pushback-ms"] == "350"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "LOAD_SHED" and info.metadata["estimate_ms"] == "600"
