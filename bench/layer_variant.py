"""`python -m bench.layer_variant LAYERS PORT REPO [FLAGS]`: `seqserve serve` with layers taken
out, for side-by-side costs (bench/layer_costs.py); never a server to run otherwise.

LAYERS is a comma list (or `none`): `interceptors` (the server's grpc.aio interceptors, if
any), `checks` (the drain, token and parse wraps of transport/calls.py, if any), `decorators`
(Predict's metrics and error-mapping wrappers), `batcher` (Predict's work computed inline by
the compiled function, no batcher), `options` (the gRPC server options and concurrent-RPC
limit: grpc.aio's defaults instead), `v2` (the Open Inference Protocol service not added);
`uvloop` takes nothing out but runs the server on uvloop's event loop (needs `pip install
uvloop`: not a dependency), `freeze` calls `gc.freeze()` once the server started, `nogc`
disables the cyclic garbage collector, `plainpredict` replaces Predict by the plain server's
(bench/plain_server.py) inside the production server's process. Listens on 127.0.0.1:PORT
(metrics on an ephemeral port).
"""

from __future__ import annotations

import sys


def strip(layers: set[str]) -> None:
    import grpc

    dropped = {"interceptors"} & layers
    if "options" in layers:
        dropped |= {"options", "maximum_concurrent_rpcs"}
    if dropped:
        real = grpc.aio.server

        def server(*args, **kwargs):
            return real(*args, **{k: v for k, v in kwargs.items() if k not in dropped})

        grpc.aio.server = server
    if "v2" in layers:
        from seqserve_server.transport import open_inference

        open_inference.add_to_server = lambda servicer, server: None
    if "uvloop" in layers:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if "freeze" in layers or "nogc" in layers:
        import gc

        from seqserve_server import app

        started = app.App.start

        async def start(self):
            await started(self)
            gc.disable() if "nogc" in layers else gc.freeze()

        app.App.start = start
    if "plainpredict" in layers:
        from bench.plain_server import Plain
        from seqserve_server.transport.seqserve_v1 import SeqServeServicer

        async def predict(self, request, context):
            runtime = self.repository.resolve(request.model_name).runtime
            return await Plain.Predict(Plain({request.model_name: runtime}), request, context)

        SeqServeServicer.Predict = predict
    if "checks" in layers:
        from seqserve_server.transport import calls

        calls.Registrar.wrap = lambda self, method, handler: handler
    if "decorators" in layers:
        from seqserve_server.transport.seqserve_v1 import SeqServeServicer

        method = SeqServeServicer.Predict
        while hasattr(method, "__wrapped__"):
            method = method.__wrapped__
        SeqServeServicer.Predict = method
    if "batcher" in layers:
        from seqserve_server.core.batch import Batch
        from seqserve_server.core.inference import InferenceService

        async def run(self, target, batch, deadline):
            return Batch(target.runtime.compute(batch.values))

        InferenceService._run = run


def main() -> int:
    layers, port, repo, *flags = sys.argv[1:]
    strip(set(layers.split(",")) - {"none"})
    from seqserve_server.cli import main as serve

    return serve(
        ["serve", "--model-repository", repo, "--host", "127.0.0.1", "--port", port,
         "--metrics-port", "0", *flags]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
