"""Work after an idle gap: `python -m bench.idle_gap`.

A server at one caller computes after waiting for the network (~1 ms); an in-process benchmark
calls back to back. On this VM the same work is slower after a short sleep (caches, CPU idle
states, thread wake-ups), which is why a served p50 cannot reach echo + in-process p50 even
with no server code at all. Per kind of work, p50 ms back to back and after 0.5, 1.5 and 3 ms
sleeps: a pure Python + numpy loop, and the reference model's two compute paths at batch 1
(traced TensorFlow, numpy).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bench.models import REFERENCE, loaded_repository

GAPS_MS = (0.0, 0.5, 1.5, 3.0)


def p50_after_gap(fn: Callable[[], object], gap_s: float, n: int = 300) -> float:
    for _ in range(50):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if gap_s:
            time.sleep(gap_s)
    return float(np.median(times)) * 1e3


def main() -> None:
    weights = np.random.default_rng(0).random((64, 64), np.float32)

    def python_work() -> None:
        h = np.ones((1, 64), np.float32)
        for _ in range(8):
            h = np.tanh(h @ weights)
        sum(range(3000))

    runtime = (
        loaded_repository([REFERENCE.name], "seqserve-idle-gap-").resolve(REFERENCE.name).runtime
    )
    x = REFERENCE.inputs(np.random.default_rng(0), 1)
    numpy_path = runtime._small
    assert numpy_path is not None
    kinds = {
        "Python + numpy loop": python_work,
        "model, traced TensorFlow, batch 1": lambda: runtime._fn(x),
        "model, numpy path, batch 1": lambda: numpy_path(x),
    }
    print("| work | " + " | ".join(f"after {g:g} ms" for g in GAPS_MS) + " | 3 ms ÷ 0 ms |")
    print("|---|" + "---:|" * (len(GAPS_MS) + 1))
    for name, fn in kinds.items():
        p50s = [p50_after_gap(fn, g / 1e3) for g in GAPS_MS]
        cells = " | ".join(f"{p:.3f}" for p in p50s)
        print(f"| {name} | {cells} | {p50s[-1] / p50s[0]:.2f} |")


if __name__ == "__main__":
    main()
