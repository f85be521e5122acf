"""The transport ceiling for sessions: a grpc.aio seqserve.v1 Session that computes nothing.

It parses each message (as the real server's generated servicer does) and answers every
`steps` message with a prebuilt `SessionOutput` of the shape the model would give (aligned: one
output per step; many-to-one: the running vector), so only gRPC + protobuf on a bidirectional
stream is measured: the session step's counterpart of echo_server.py.
`python -m bench.session_echo SHAPES.json PORT` with {model_name: [output shape without batch]};
listens on 127.0.0.1:PORT only.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import grpc
import numpy as np

from bench.echo_server import serve_peer
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_tensor


class SessionEcho(pb_grpc.SeqServeServicer):
    def __init__(self, shapes: dict[str, list[int]]) -> None:
        self.shapes = shapes
        self.cache: dict[tuple[str, int], pb.SessionResponse] = {}

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionResponse]:
        stream = aiter(requests)
        first = await anext(stream, None)
        if first is None:
            return
        name = first.open.model_name
        aligned = len(self.shapes[name]) > 1
        yield pb.SessionResponse(
            opened=pb.SessionOpened(
                session_id="echo", model_name=name, model_version=1,
                mode=pb.MANY_TO_MANY_ALIGNED if aligned else pb.MANY_TO_ONE,
                session_support=pb.SESSION_INCREMENTAL,
            )
        )  # fmt: skip
        async for request in stream:
            shape = request.steps.values.shape
            steps = shape[0] if len(shape) > 1 else 1
            key = (name, steps if aligned else 1)
            response = self.cache.get(key)
            if response is None:
                response = self.cache[key] = self._output(name, key[1])
            yield response

    def _output(self, model: str, steps: int) -> pb.SessionResponse:
        shape = self.shapes[model]
        values = np.zeros((steps, *shape[1:]) if len(shape) > 1 else shape, np.float32)
        return pb.SessionResponse(output=pb.SessionOutput(step=0, values=to_tensor(values)))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(serve_peer(SessionEcho(json.load(f)), int(sys.argv[2])))
