"""`python -m bench.layer_variant LAYERS PORT REPO [FLAGS]`: `seqserve serve` with layers taken
out, for side-by-side costs (bench/layer_costs.py); never a server to run otherwise.

LAYERS is a comma list (or `none`): `interceptors` (the server's grpc.aio interceptors, if
any), `checks` (the drain, token and parse wraps of transport/calls.py, if any), `decorators`
(Predict's metrics and error-mapping wrappers), `batcher` (Predict's work computed inline by
the compiled function, no batcher); `uvloop` adds nothing but runs the server on uvloop's event
loop. Listens on 127.0.0.1:PORT, no metrics port.
"""

from __future__ import annotations

import sys


def strip(layers: set[str]) -> None:
    import grpc

    if "interceptors" in layers:
        real = grpc.aio.server

        def server(*args, interceptors=None, **kwargs):
            return real(*args, **kwargs)

        grpc.aio.server = server
    if "uvloop" in layers:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
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
         "--metrics-port", "-1", *flags]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
