"""What the load-time proof costs: `python -m bench.proof_cost [--repeat N]`.

For each bundled model (models/<name>/<newest>/model.keras), side by side in one process:
- `load`: `keras.saving.load_model` alone;
- `runtime`: `ModelRuntime.load` (load, mode, every candidate path traced and proven, warm-up);
- `proof`: proving the chosen path once more from scratch (eager Keras on the probes included);
- `sessions`: building and proving the session step program (sequence models only).
Seconds, the median of `--repeat` runs; the ratio runtime/load is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import keras

from seqserve_server.core.errors import Unsupported
from seqserve_server.core.proof import Reference, prove
from seqserve_server.core.runtime import ModelRuntime, _load_keras
from seqserve_server.core.sessions import proven_program

MODELS = Path(__file__).resolve().parent.parent / "models"


def _newest(model_dir: Path) -> Path:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) / "model.keras"


def _seconds(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def measure(path: Path) -> dict[str, float | str]:
    load = _seconds(lambda: _load_keras(path))
    start = time.perf_counter()
    runtime = ModelRuntime.load(path)
    total = time.perf_counter() - start
    model = runtime.model
    fresh = Reference(lambda x: keras.ops.convert_to_numpy(model(x, training=False)))
    proof = _seconds(lambda: prove(runtime.compute, runtime.probes(), fresh))
    try:
        sessions = _seconds(lambda: proven_program(runtime))
    except Unsupported:
        sessions = 0.0
    return {
        "load_s": load,
        "runtime_s": total,
        "proof_s": proof,
        "sessions_s": sessions,
        "path": runtime.compute_path,
    }


def main(repeat: int) -> list[dict]:
    rows = []
    dirs = [p for p in MODELS.iterdir() if p.is_dir() and any(p.glob("*/model.keras"))]
    for model_dir in sorted(dirs):
        runs = [measure(_newest(model_dir)) for _ in range(repeat)]
        row: dict = {"model": model_dir.name, "path": runs[0]["path"]}
        for key in ("load_s", "runtime_s", "proof_s", "sessions_s"):
            row[key] = round(statistics.median(float(r[key]) for r in runs), 3)
        row["runtime_over_load"] = round(row["runtime_s"] / row["load_s"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    main(parser.parse_args().repeat)
