"""Predict's two compute paths side by side: `python -m bench.numpy_cost`.

The reference model (LSTM(64) -> Dense(10)) loaded as the server loads it; at each batch x
steps, the traced TensorFlow path and the numpy path (both proven equal to Keras at load) called
back to back, p50 wall ms of each, best of 3 rounds; the ratio numpy / TensorFlow is what
`runtime.NUMPY_MAX_CELLS` (the largest batch x steps computed in numpy) follows. Wall time
only: also mind that a numpy loop holds the GIL for its Python part, TensorFlow releases it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bench.models import REFERENCE, loaded_repository

SHAPES = [(1, 8), (2, 8), (4, 8), (8, 8), (16, 8), (32, 8), (1, 64), (1, 128), (4, 64), (16, 16),
          (1, 256), (1, 1000)]  # fmt: skip


def p50_ms(fn: Callable[[np.ndarray], object], x: np.ndarray, n: int) -> float:
    fn(x)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.numpy_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=100, help="calls per shape and round")
    args = parser.parse_args()
    runtime = (
        loaded_repository([REFERENCE.name], "seqserve-numpy-cost-").resolve(REFERENCE.name).runtime
    )
    traced, numpy_path = runtime._fn, runtime._small
    assert numpy_path is not None, "the reference model has a proven numpy path"
    rng = np.random.default_rng(0)
    print("| batch x steps | TensorFlow ms | numpy ms | numpy / TensorFlow |")
    print("|---|---:|---:|---:|")
    for batch, steps in SHAPES:
        x = REFERENCE.inputs(rng, batch, steps)
        n = args.calls if batch * steps < 1000 else max(10, args.calls // 5)
        rounds = [(p50_ms(traced, x, n), p50_ms(numpy_path, x, n)) for _ in range(3)]
        tf_ms, np_ms = min(r[0] for r in rounds), min(r[1] for r in rounds)
        print(f"| {batch} x {steps} | {tf_ms:.3f} | {np_ms:.3f} | {np_ms / tf_ms:.2f} |")


if __name__ == "__main__":
    main()
