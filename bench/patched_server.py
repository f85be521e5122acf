"""Bench-only entry: the real server with `InferenceService._run` going through DynamicBatcher.

`python -m bench.patched_server serve ...` takes the same flags as `seqserve serve`. Production
wiring is not done here; this only lets the benchmark measure the batcher end to end. Knobs come
from the environment (the server's own flag parser rejects unknown flags):

- BENCH_MAX_IN_FLIGHT      computations per model at once (default 1)
- BENCH_MAX_BATCH_SIZE     overrides the model config's max_batch_size
- BENCH_MAX_QUEUE_DELAY_MS overrides the model config's max_queue_delay_ms
- BENCH_REUSEPORT=1        listen with SO_REUSEPORT (several worker processes on one port)
- BENCH_CONCRETE=1         compute through the tf.function's concrete function (less Python per
                           call: a proposed `ModelRuntime.compute` change)
- BENCH_SWITCH_INTERVAL    sys.setswitchinterval seconds (the GIL hand-over interval)
- BENCH_STATS=1            print compute calls and mean batch size at exit
"""

from __future__ import annotations

import atexit
import os
import sys
import time


def install() -> None:
    import grpc

    from seqserve_server.core import inference
    from seqserve_server.core.batch import Batch
    from seqserve_server.core.batching import DynamicBatcher

    in_flight = int(os.environ.get("BENCH_MAX_IN_FLIGHT", "1"))
    batch_size = os.environ.get("BENCH_MAX_BATCH_SIZE")
    delay_ms = os.environ.get("BENCH_MAX_QUEUE_DELAY_MS")

    concrete = os.environ.get("BENCH_CONCRETE") == "1"
    stats = {"calls": 0, "items": 0, "seconds": 0.0}
    if os.environ.get("BENCH_STATS") == "1":
        atexit.register(
            lambda: print(
                f"bench stats: {stats['calls']} compute calls, "
                f"{stats['items'] / max(1, stats['calls']):.1f} items per call, "
                f"{1e3 * stats['seconds'] / max(1, stats['calls']):.3f} ms per call",
                flush=True,
            )
        )
    if os.environ.get("BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))

    def compute_for(runtime):
        if concrete:
            import tensorflow as tf

            function = runtime._fn.get_concrete_function()

            def compute(values):
                return function(tf.constant(values)).numpy()

        else:
            compute = runtime.compute

        def counted(values):
            start = time.perf_counter()
            out = compute(values)
            stats["calls"] += 1
            stats["items"] += len(values)
            stats["seconds"] += time.perf_counter() - start
            return out

        return counted

    def batcher_for(service: inference.InferenceService, target) -> DynamicBatcher:
        batchers = service.__dict__.setdefault("_bench_batchers", {})
        key = (target.name, target.version)
        batcher = batchers.get(key)
        if batcher is None:
            config = target.config
            observer = getattr(service, "observer_for", None)
            batcher = batchers[key] = DynamicBatcher(
                compute_for(target.runtime),
                service._executor,
                int(batch_size) if batch_size else config.max_batch_size,
                (float(delay_ms) if delay_ms else config.max_queue_delay_ms) / 1000,
                config.max_queue_size,
                observer(target.name) if observer else None,
                name=target.name,
                max_in_flight=in_flight,
            )
        return batcher

    async def _run(self, target, batch: Batch) -> Batch:
        outputs = await batcher_for(self, target).submit(batch.items(), None)
        return Batch.from_items(outputs)

    inference.InferenceService._run = _run

    if os.environ.get("BENCH_REUSEPORT") == "1":
        original = grpc.aio.server

        def server(*args, options=None, **kwargs):
            options = [o for o in options or [] if o[0] != "grpc.so_reuseport"]
            return original(*args, options=[*options, ("grpc.so_reuseport", 1)], **kwargs)

        grpc.aio.server = server


if __name__ == "__main__":
    install()
    from seqserve_server.cli import main

    sys.exit(main())
