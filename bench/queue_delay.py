"""What `max_queue_delay_ms` and `max_in_flight` do: `python -m bench.queue_delay`.

The dynamic batcher in-process (no gRPC) over the reference model's compiled function, fed one
fixed open-loop schedule of single-sequence requests (exponential gaps, seeded) under each
setting in rotating order: computations, mean batch size and latency per setting, side by side
in one run. Bounded: `--requests` per setting, `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.models import REFERENCE, loaded_repository

SETTINGS = [(0.0, 1), (0.001, 1), (0.002, 1), (0.005, 1), (0.0, 2), (0.002, 2)]


class Sizes:
    """The batcher's observer, keeping only the batch sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch_executed(self, size: int, compute_seconds: float) -> None:
        self.sizes.append(size)

    def queue_wait(self, seconds: float) -> None:
        pass

    def queue_depth(self, n: int) -> None:
        pass


async def _run(compute, executor, delay: float, in_flight: int, gaps: np.ndarray, x) -> dict:
    from seqserve_server.core.batching import DynamicBatcher

    sizes = Sizes()
    batcher = DynamicBatcher(
        compute,
        executor,
        64,
        delay,
        4096,
        sizes,
        max_in_flight=in_flight,  # type: ignore[arg-type]
    )
    latencies: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        await batcher.submit([x], None)
        latencies.append(time.perf_counter() - start)

    tasks = []
    began = time.perf_counter()
    for gap in gaps:
        await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "delay_ms": delay * 1e3, "max_in_flight": in_flight, "computations": len(sizes.sizes),
        "mean_batch": statistics.fmean(sizes.sizes), "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3, "req_per_s": len(gaps) / wall,
    }  # fmt: skip


def main(requests: int, rate: float, rounds: int) -> list[dict]:
    repository = loaded_repository([REFERENCE.name], "seqserve-queue-delay-")
    runtime = repository.resolve(REFERENCE.name).runtime
    rng = np.random.default_rng(0)
    x = REFERENCE.inputs(rng, 1)  # one request: a block of one sequence
    gaps = rng.exponential(1 / rate, size=requests)
    results: dict[tuple[float, int], list[dict]] = {s: [] for s in SETTINGS}
    with ThreadPoolExecutor(2) as executor:
        for r in range(rounds):
            for delay, in_flight in SETTINGS[r % len(SETTINGS) :] + SETTINGS[: r % len(SETTINGS)]:
                run = _run(runtime.compute, executor, delay, in_flight, gaps, x)
                results[(delay, in_flight)].append(asyncio.run(run))
    # the median round of each setting, by p50
    return [sorted(rs, key=lambda d: d["p50_ms"])[len(rs) // 2] for rs in results.values()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rate", type=float, default=1500.0, help="mean arrivals per second")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = main(args.requests, args.rate, args.rounds)
    print("| delay ms | in flight | computations | mean batch | p50 ms | p99 ms | req/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['delay_ms']:g} | {row['max_in_flight']} | {row['computations']} | "
            f"{row['mean_batch']:.2f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['req_per_s']:.0f} |"
        )
