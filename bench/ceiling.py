"""In-process ceilings and per-request Python costs, measured in a process of their own.

`python -m bench.ceiling REPO MODEL STEPS FEATURES SECONDS` prints one JSON object:
- the compiled model (`ModelRuntime.compute`, the function the server runs) at batch 1 and 32,
  called back to back on one thread: median latency and sequences/s;
- what the server does per request besides computing, in microseconds: protobuf parse, tensor
  decode, validation, response build + serialize, `Batch.items()`/`from_items` (the batcher's
  split and join), for 1- and 32-sequence requests.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def timed(fn, seconds: float, max_calls: int = 100_000) -> list[float]:
    fn()
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while len(samples) < max_calls:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        if t1 > end:
            break
    return samples


def main(repo: str, model: str, steps: int, features: int, seconds: float) -> dict:
    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve_api.tensors import to_batch
    from seqserve_server.core.batch import Batch
    from seqserve_server.core.inference import InferenceResult
    from seqserve_server.core.limits import RequestLimits
    from seqserve_server.core.runtime import ModelRuntime
    from seqserve_server.transport import v1_messages as msg

    runtime = ModelRuntime.load(Path(repo) / model / "1" / "model.keras")
    rng = np.random.default_rng(0)
    result: dict = {"model": model}
    for b in (1, 32):
        x = rng.normal(size=(b, steps, features)).astype(np.float32)
        samples = timed(lambda x=x: runtime.compute(x), seconds)
        result[f"b{b}_p50_ms"] = statistics.median(samples) * 1e3
        result[f"b{b}_seq_per_s"] = b * len(samples) / sum(samples)

        costs = _costs(
            pb, msg, Batch, InferenceResult, runtime, model, to_batch(x), RequestLimits()
        )
        for name, fn in costs.items():
            result[f"b{b}_{name}_us"] = statistics.median(timed(fn, 0.2, 20_000)) * 1e6
    return result


def _costs(pb, msg, batch_type, prediction_type, runtime, model: str, inputs, limits) -> dict:
    """Callables for each step of a request's Python work besides computing."""
    wire = pb.PredictRequest(model_name=model, inputs=inputs).SerializeToString()
    request = pb.PredictRequest.FromString(wire)
    batch = msg.decode_inputs(request.inputs, limits)
    valid = runtime.validate(batch)
    outputs = batch_type(runtime.compute(valid.values))
    prediction = prediction_type(model, 1, runtime.mode, outputs)
    return {
        "parse": lambda: pb.PredictRequest.FromString(wire),
        "decode": lambda: msg.decode_inputs(request.inputs, limits),
        "validate": lambda: runtime.validate(batch),
        "encode": lambda: msg.result_to_proto(prediction).SerializeToString(),
        "split_join": lambda: batch_type.from_items(list(outputs.items())),
    }


if __name__ == "__main__":
    repo, model, steps, features, seconds = sys.argv[1:6]
    print(json.dumps(main(repo, model, int(steps), int(features), float(seconds))), flush=True)
