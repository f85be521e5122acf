"""Registration under the wire name `inference.GRPCInferenceService`.

Our generated messages live in the proto package `seqserve.inference` (see
protos/seqserve/inference/vendor.py for why), so the service's handlers are built here from its
descriptor, under the name stock clients call.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory

from seqserve.inference import grpc_service_pb2 as pb

from ..calls import Registrar
from .requests import parsed
from .servicer import OpenInferenceServicer

SERVICE_NAME = "inference.GRPCInferenceService"
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
NOT_OFFERED = (
    "seqserve does not offer {method}: tensors travel in the request and response messages "
    "(no shared memory), and tracing and logging are set by the server's flags"
)
# Methods whose request messages are parsed one by one in the adapter: one bad message of a
# stream is that message's error response (Triton's semantics), not the end of the call.
PARSED_IN_ADAPTER = {"ModelStreamInfer": parsed}


def _handler(method: Any, behaviour: Any) -> grpc.RpcMethodHandler:
    request = message_factory.GetMessageClass(method.input_type)
    parse = PARSED_IN_ADAPTER.get(method.name)
    if parse is not None:
        served = behaviour

        def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return served(parse(requests), context)

    response = message_factory.GetMessageClass(method.output_type)
    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(method.client_streaming, method.server_streaming)]
    return kind(  # type: ignore[no-any-return]
        behaviour,
        request_deserializer=None if parse is not None else request.FromString,
        response_serializer=response.SerializeToString,
    )


def _not_offered(name: str) -> Any:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_OFFERED.format(method=name))

    return refuse


def add_to_server(servicer: OpenInferenceServicer, server: Registrar | grpc.aio.Server) -> None:
    """Every method of the service: served, or refused UNIMPLEMENTED with the reason."""
    handlers = {
        method.name: _handler(
            method, getattr(servicer, method.name, None) or _not_offered(method.name)
        )
        for method in _SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
