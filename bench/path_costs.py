"""Where a request's time goes inside the server, without gRPC: `python -m bench.path_costs`.

On the reference model (LSTM(64), 8x8), one request of `--seqs` sequences (default 1) at a time,
in one process:
- the compiled model called inline (the floor);
- the same call handed to a compute thread (`run_in_executor`) with 1 and with 2 threads (the
  server gives each model its own thread: `core/compute_threads.py`);
- through the dynamic batcher;
- the whole predict path: protobuf parse, decode, validate, batcher, encode, serialize.
Wall and CPU time per call (CPU counts every thread of the process). Ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.models import REFERENCE, loaded_repository


def measure(label: str, call: Callable[[], Awaitable[object]], n: int) -> dict:
    async def run() -> dict:
        for _ in range(min(200, n)):
            await call()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            await call()
        wall_ms = (time.perf_counter() - wall) / n * 1e3
        return {"path": label, "wall_ms": wall_ms, "cpu_ms": (time.process_time() - cpu) / n * 1e3}

    return asyncio.run(run())


def main(n: int, seqs: int = 1) -> list[dict]:
    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve_api.tensors import to_batch
    from seqserve_server.core.batching import DynamicBatcher
    from seqserve_server.core.compute_threads import ModelThreads
    from seqserve_server.core.inference import InferenceService
    from seqserve_server.transport import v1_messages as msg

    repository = loaded_repository([REFERENCE.name], "seqserve-path-costs-")
    runtime = repository.resolve(REFERENCE.name).runtime
    x = REFERENCE.inputs(np.random.default_rng(0), seqs)
    one, two = ThreadPoolExecutor(1), ThreadPoolExecutor(2)
    batchers: dict[str, DynamicBatcher] = {}
    service = InferenceService(repository, ModelThreads(1))
    wire = pb.PredictRequest(model_name=REFERENCE.name, inputs=to_batch(x)).SerializeToString()

    async def inline() -> object:
        return runtime.compute(x)

    def hop(executor: ThreadPoolExecutor) -> Callable[[], Awaitable[object]]:
        async def call() -> object:
            return await asyncio.get_running_loop().run_in_executor(executor, runtime.compute, x)

        return call

    async def batched() -> object:
        if "b" not in batchers:  # created inside the running loop
            batchers["b"] = DynamicBatcher(runtime.compute, one, 64, 0.002, 4096)
        return await batchers["b"].submit([x], None)

    async def predict_path() -> object:
        request = pb.PredictRequest.FromString(wire)
        target = repository.resolve(request.model_name)
        inputs = msg.decode_inputs(request.inputs, target.limits)
        result = await service.predict(target, inputs)
        return msg.result_to_proto(result).SerializeToString()

    return [
        measure("compute inline", inline, n),
        measure("compute on 1 thread (run_in_executor)", hop(one), n),
        measure("compute alternating over 2 threads", hop(two), n),
        measure("through the dynamic batcher (1 thread)", batched, n),
        measure("whole predict path, no gRPC", predict_path, n),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seqs", type=int, default=1, help="sequences per request")
    args = parser.parse_args()
    rows = main(args.calls, args.seqs)
    print("| path | wall ms per call | CPU ms per call |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['path']} | {row['wall_ms']:.3f} | {row['cpu_ms']:.3f} |")
