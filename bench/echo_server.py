"""The transport ceiling: a grpc.aio seqserve.v1 Predict that computes nothing.

It parses each request (as the real server's generated servicer does) and answers with a
prebuilt response of the same shape the model would give, so only gRPC + protobuf is measured.
`python -m bench.echo_server SHAPES.json PORT` with {model_name: [output shape without batch]};
listens on 127.0.0.1:PORT only.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_tensor


class Echo(pb_grpc.SeqServeServicer):
    def __init__(self, shapes: dict[str, list[int]]) -> None:
        self.shapes = shapes
        self.cache: dict[tuple[str, int], pb.PredictResponse] = {}

    async def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        n = request.inputs.values.shape[0] if request.inputs.values.shape else 0
        key = (request.model_name, n)
        response = self.cache.get(key)
        if response is None:
            response = self.cache[key] = self._response(request.model_name, n)
        return response

    def _response(self, model: str, n: int) -> pb.PredictResponse:
        shape = self.shapes[model]
        response = pb.PredictResponse(model_name=model, model_version=1)
        values = np.zeros((n, *shape), dtype=np.float32)
        if len(shape) == 1:
            response.mode = pb.MANY_TO_ONE
            response.vectors.values.CopyFrom(to_tensor(values))
        else:
            response.mode = pb.MANY_TO_MANY_ALIGNED
            response.sequences.values.CopyFrom(to_tensor(values.reshape(-1, *shape[1:])))
            response.sequences.lengths.extend([shape[0]] * n)
        return response


async def serve_peer(servicer: pb_grpc.SeqServeServicer, port: int) -> None:
    """Serve a bench peer on 127.0.0.1:port with a ready line like seqserve's."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_SeqServeServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"seqserve ready on 127.0.0.1:{port} metrics -1", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(serve_peer(Echo(json.load(f)), int(sys.argv[2])))
