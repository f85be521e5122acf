"""Where startup goes: `python -m bench.startup [--rounds N] [--breakdown-only]`.

1. A per-phase breakdown of one start, in a fresh process (`--inner`, what `seqserve serve` does
   up to health SERVING, timed from inside): imports, then per model the Keras load, the eager
   Keras reference outputs of the proof, tracing the candidate paths, running the probes on
   them, warm-up and the session step program (its own eager reference calls counted as
   reference). Times are exclusive (a phase's time excludes the phases inside it), wall and
   this thread's CPU; with several load threads the per-model wall times overlap.
2. End to end, side by side in one run: seconds from starting `seqserve serve --model-repository
   models` to health SERVING (`servers.startup_seconds`), for each configuration of `configs`
   in rotating order, `--rounds` times; the median of each and its ratio to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import servers
from bench.models import BUNDLED

BEFORE = "b13117c"  # the server before this work (`--before REV` to compare with another)

# name -> (flags, environment): what each end-to-end configuration adds to `seqserve serve`.
Config = tuple[list[str], dict[str, str]]


def configs(before_src: Path, cache: Path) -> dict[str, Config]:
    """The old code (its `server/src` first on PYTHONPATH), then today's, cache off and warm."""
    warm = ["--proof-cache-dir", str(cache)]
    return {
        "before": ([], {"PYTHONPATH": str(before_src)}),
        "after, proof cache off": (["--proof-cache-dir", ""], {}),
        "after, cache warm, 2 load threads": ([*warm, "--load-threads", "2"], {}),
        "after, cache warm (1 load thread)": (warm, {}),
    }


def export_before(rev: str, into: Path) -> Path:
    """`server/src` at `rev`, extracted from git into `into`."""
    archive = subprocess.run(
        ["git", "archive", rev, "server/src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "server" / "src"


# -- the breakdown (in its own process) -----------------------------------------------------


class Phases:
    """Exclusive wall and CPU seconds per (model, phase); nested phases are subtracted."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def _stack(self) -> list[list]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
            self._local.model = "-"
        return self._local.stack

    def set_model(self, name: str) -> None:
        _ = self._stack
        self._local.model = name

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        stack = self._stack
        frame = [0.0, 0.0]  # time of the phases nested inside
        stack.append(frame)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            stack.pop()
            if stack:
                stack[-1][0] += wall
                stack[-1][1] += cpu
            with self._lock:
                total = self.totals[(self._local.model, name)]
                total[0] += wall - frame[0]
                total[1] += cpu - frame[1]

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: object, **kwargs: object) -> object:
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed


def _instrument(phases: Phases) -> None:
    """Time the server's own functions where they are looked up (bench only)."""
    from seqserve_server.core import proof, repository, runtime, sessions

    load = repository.ModelRepository.load

    def load_version(self: object, version: repository.VersionStatus) -> None:
        phases.set_model(version.name)
        with phases.phase("other"):
            load(self, version)  # type: ignore[arg-type]

    repository.ModelRepository.load = load_version  # type: ignore[method-assign]
    init = proof.Reference.__init__

    def reference_init(self: proof.Reference, eager: Callable, *args: object) -> None:
        init(self, phases.wrap("reference (eager Keras)", eager), *args)  # type: ignore[arg-type]

    proof.Reference.__init__ = reference_init  # type: ignore[method-assign]
    runtime._load_keras = phases.wrap("keras load", runtime._load_keras)
    runtime.PATHS = tuple((n, phases.wrap("trace paths", b)) for n, b in runtime.PATHS)
    runtime.prove = phases.wrap("probe compiled path", runtime.prove)
    runtime.ModelRuntime.warm_up = phases.wrap("warm-up", runtime.ModelRuntime.warm_up)
    build = sessions.SessionManager.build

    def build_program(self: object, version: repository.ReadyModel) -> object:
        phases.set_model(version.name)
        with phases.phase("session program"):
            return build(self, version)  # type: ignore[arg-type]

    sessions.SessionManager.build = build_program  # type: ignore[method-assign]


def inner(args: list[str]) -> dict:
    """One start in this process, timed by phase; returns the breakdown."""
    began = time.perf_counter()
    from seqserve_server import cli

    lean = getattr(cli, "lean_imports", contextlib.nullcontext)  # the old code has none
    with lean():
        from seqserve_server.app import App
    imported = time.perf_counter() - began
    from pydantic_settings import CliApp

    from seqserve_server.config import Settings

    phases = Phases()
    _instrument(phases)
    settings = CliApp.run(
        Settings, cli_args=["--model-repository", str(BUNDLED), "--port", "0",
                            "--metrics-port", "-1", *args],
    )  # fmt: skip

    async def start() -> tuple[float, float]:
        app = App(settings)
        loading = time.perf_counter()
        await app._load_models()
        loaded = time.perf_counter() - loading
        serving = time.perf_counter()
        if hasattr(app, "start_transport"):  # the old code opened the port inside start()
            await app.start_transport()
        await app.stop(0)
        return loaded, time.perf_counter() - serving

    loaded, transport = asyncio.run(start())
    per_model: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for (model, name), (wall, cpu) in phases.totals.items():
        per_model[model][name] = [round(wall, 3), round(cpu, 3)]
    return {
        "imports_s": round(imported, 2),
        "load_models_s": round(loaded, 2),
        "transport_s": round(transport, 2),
        "cpu_s": round(time.process_time(), 2),
        "models": per_model,
    }


def breakdown(flags: list[str], env: dict[str, str]) -> dict:
    command = [sys.executable, "-m", "bench.startup", "--inner", "--", *flags]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def show_breakdown(label: str, result: dict) -> None:
    print(f"\n{label}: imports {result['imports_s']} s, models loaded {result['load_models_s']} s, "
          f"transport {result['transport_s']} s, process CPU {result['cpu_s']} s")  # fmt: skip
    names = sorted({p for phases in result["models"].values() for p in phases})
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    sums = defaultdict(float)
    for model, phases in sorted(result["models"].items()):
        cells = []
        for name in names:
            wall = phases.get(name, [0.0, 0.0])[0]
            sums[name] += wall
            cells.append(f"{wall:.2f}")
        print(f"| {model} | " + " | ".join(cells) + " |")
    print("| all (wall s, summed) | " + " | ".join(f"{sums[n]:.2f}" for n in names) + " |")
    cpu = [sum(p.get(n, [0.0, 0.0])[1] for p in result["models"].values()) for n in names]
    print("| all (CPU s, summed) | " + " | ".join(f"{c:.2f}" for c in cpu) + " |")


# -- end to end ------------------------------------------------------------------------------


def end_to_end(rounds: int, chosen: dict[str, Config]) -> dict[str, list[dict]]:
    """Every configuration `rounds` times, in rotating order (noise spreads over all)."""
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    names = list(chosen)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            flags, env = chosen[name]
            result = servers.startup_seconds(BUNDLED, extra=flags, env=env)
            runs[name].append(result)
            print(f"  round {r + 1}: {name}: {result['seconds']:.2f} s, "
                  f"CPU {result['cpu_seconds']:.1f} s", flush=True)  # fmt: skip
    return runs


def show_end_to_end(runs: dict[str, list[dict]]) -> None:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    first = next(iter(runs))
    print("\n| configuration | s to SERVING (median) | runs | ratio to before | server CPU s |")
    print("|---|---:|---|---:|---:|")
    for name, results in runs.items():
        seconds = median(name, "seconds")
        shown = ", ".join(f"{r['seconds']:.1f}" for r in results)
        ratio = seconds / median(first, "seconds")
        print(f"| {name} | {seconds:.2f} | {shown} | {ratio:.2f} | "
              f"{median(name, 'cpu_seconds'):.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown-only", action="store_true")
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' server")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("flags", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args.flags)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="seqserve-startup-") as tmp:
        chosen = configs(export_before(args.before, Path(tmp)), Path(tmp) / "references")
        first, last = next(iter(chosen)), list(chosen)[-1]
        show_breakdown(first, breakdown(*chosen[first]))
        breakdown(*chosen[last])  # fills the cache
        show_breakdown(last, breakdown(*chosen[last]))
        if not args.breakdown_only:
            show_end_to_end(end_to_end(args.rounds, chosen))


if __name__ == "__main__":
    main()
