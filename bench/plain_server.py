"""The plain peer: a grpc.aio seqserve.v1 Predict that calls the same compiled function, inline.

What anyone would write first: parse, decode the tensor, call the model's compiled function
(`ModelRuntime.compute`, the path the production server proves and runs) on the event loop,
encode the result. No batching, no thread hand-off, no validation, metrics or interceptors.
`python -m bench.plain_server REPO PORT MODEL...`; listens on 127.0.0.1:PORT only.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench.echo_server import serve_peer
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import from_tensor, to_tensor


class Plain(pb_grpc.SeqServeServicer):
    def __init__(self, runtimes: dict) -> None:
        self.runtimes = runtimes

    async def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        runtime = self.runtimes[request.model_name]
        y = runtime.compute(from_tensor(request.inputs.values))
        response = pb.PredictResponse(model_name=request.model_name, model_version=1)
        if y.ndim == 2:
            response.mode = pb.MANY_TO_ONE
            response.vectors.values.CopyFrom(to_tensor(y))
        else:
            response.mode = pb.MANY_TO_MANY_ALIGNED
            response.sequences.values.CopyFrom(to_tensor(y.reshape(-1, *y.shape[2:])))
            response.sequences.lengths.extend([y.shape[1]] * len(y))
        return response


async def serve(repo: Path, port: int, names: list[str]) -> None:
    from seqserve_server.core.runtime import ModelRuntime

    runtimes = {n: ModelRuntime.load(repo / n / "1" / "model.keras") for n in names}
    await serve_peer(Plain(runtimes), port)


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
