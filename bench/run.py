"""`python -m bench.run [--quick]`: serving throughput and latency, side by side, as ratios.

In one run, on 127.0.0.1 only, one server at a time:
- ceilings: the compiled model in-process (batch 1 and 32) and a grpc.aio echo server that
  computes nothing (same messages);
- "plain": a grpc.aio server calling the same compiled function inline, no batching (the peer
  anyone would write first);
- "new": the production server (`seqserve serve`, dynamic batching as configured);
  "old": the same server on a copy of the repository whose configs set `max_batch_size: 1`
  (every sequence computed alone: no batching); then a few variants through real flags
  (compute threads, TF threads) and client channels;
- `--workers 1` against `--workers 2` (32 callers on 8 connections), and the time from starting
  the server on the bundled models to health SERVING.
A closed-loop load generator runs in its own process (bench/loadgen.py). Results go to
bench/results/latest.md (printed too, ending with the goal table of bench/goals.py) and
bench/results/latest.png; the goal table also goes into the top-level README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import goals, servers
from bench.models import BUNDLED, CO2, DIGIT, REFERENCE, BenchModel, available

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class ServerSpec:
    label: str
    kind: str  # echo | plain | old | new | workers | variant (bench/layer_variant.py)
    args: list[str] = field(default_factory=list)
    channels: int = 1
    source: Path | None = None  # variant: the server package from this directory


def request_bytes(model: BenchModel, seqs: int, seed: int = 0) -> bytes:
    import numpy as np

    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve_api.tensors import to_batch

    x = model.inputs(np.random.default_rng(seed), seqs)
    return pb.PredictRequest(model_name=model.name, inputs=to_batch(x)).SerializeToString()


def output_shapes(models: list[BenchModel]) -> dict[str, list[int]]:
    return {m.name: list(m.output_shape) for m in models}


def run_ceiling(repo: Path, model: BenchModel, seconds: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ceiling", str(repo), model.name, str(model.steps),
         str(model.features), str(seconds)],
        capture_output=True, text=True, check=True, timeout=180,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_jobs(jobs: list[dict], tmp: Path) -> list[dict]:
    path = tmp / "loadgen.json"
    path.write_text(json.dumps({"jobs": jobs}))
    budget = sum(j["point"]["warmup"] + j["point"]["duration"] + 5 for j in jobs) + 60
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(path)],
        capture_output=True, text=True, timeout=budget,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def start(spec: ServerSpec, repos: dict[str, Path], shapes: Path) -> servers.Running:
    if spec.kind == "echo":
        return servers.echo(shapes)
    if spec.kind == "plain":
        return servers.plain(repos["new"], list(json.loads(shapes.read_text())))
    if spec.kind == "variant":
        return servers.variant(repos["new"], spec.args[0], spec.args[1:], spec.source)
    if spec.kind == "workers":
        return servers.workers(repos["new"], int(spec.args[0]))
    return servers.serve(repos[spec.kind], spec.args)


def start_all(
    specs: list[ServerSpec], repos: dict[str, Path], shapes: Path
) -> dict[str, servers.Running]:
    """Start servers side by side (idle ones cost memory, not CPU)."""
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {s.label: pool.submit(start, s, repos, shapes) for s in specs}
        running = {}
        errors = []
        for label, future in futures.items():
            try:
                running[label] = future.result()
            except Exception as exc:  # noqa: BLE001 - keep going without a server that cannot start
                errors.append(f"{label}: {exc}")
        for e in errors:
            print(f"server did not start: {e[:2000]}", flush=True)
        return running


def measure(
    specs: list[ServerSpec],
    grid: list[tuple[BenchModel, int, int, int]],
    payloads: dict,
    repos: dict[str, Path],
    shapes: Path,
    tmp: Path,
    duration: float,
    warmup: float,
    best_only: bool = True,
) -> list[dict]:
    """Every point of `grid` (model, seqs, callers, rounds) on every server, interleaved: for
    each round and point the servers run back to back, in an order that rotates; best round
    (`best_only=False`: every round's row)."""
    running = start_all(specs, repos, shapes)
    try:
        jobs, meta = [], []
        rounds = max(r for *_, r in grid)
        for rnd in range(rounds):
            for i, (m, n, c, want) in enumerate(grid):
                if rnd >= want:
                    continue
                order = [s for s in specs if s.label in running]
                shift = (rnd + i) % len(order)
                for spec in order[shift:] + order[:shift]:
                    srv = running[spec.label]
                    point = {"id": f"{m.name}|{n}|{c}", "request": payloads[(m.name, n)],
                             "concurrency": c, "duration": duration, "warmup": warmup}  # fmt: skip
                    jobs.append({"target": srv.target, "channels": spec.channels,
                                 "server_pids": srv.pids, "point": point})  # fmt: skip
                    meta.append((spec.label, m.name, n, c, rnd))
        print(f"  {len(jobs)} measurements on {len(running)} servers ...", flush=True)
        results = run_jobs(jobs, tmp)
    finally:
        for srv in running.values():
            srv.stop()
    best: dict[tuple, dict] = {}
    every = []
    for (label, model, n, c, rnd), r in zip(meta, results, strict=False):
        row = {"server": label, "model": model, "seqs": n, "callers": c, "round": rnd, **r}
        every.append(row)
        key = (label, model, n, c)
        if key not in best or row["rps"] > best[key]["rps"]:
            best[key] = row
    return list(best.values()) if best_only else every


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reference model, fewer points")
    parser.add_argument("--duration", type=float, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each point")
    parser.add_argument("--rounds", type=int, help="repeats of the reference model's points")
    parser.add_argument("--concurrency", default=None, help="comma list, e.g. 1,8,32,128")
    parser.add_argument("--no-variants", action="store_true", help="skip the tuning variants")
    parser.add_argument("--no-readme", action="store_true", help="leave README's table as is")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)

    duration = args.duration or (1.0 if args.quick else 1.2)
    warmup = args.warmup or 0.3
    rounds = args.rounds or (1 if args.quick else 2)
    default_conc = "1,32" if args.quick else "1,8,32,128"
    conc = [int(c) for c in (args.concurrency or default_conc).split(",")]
    models = [REFERENCE] if args.quick else available([REFERENCE, DIGIT, CO2])
    sizes = [1, 32]
    started = time.time()

    main_specs = [
        ServerSpec("echo", "echo"),
        ServerSpec("plain", "plain"),
        ServerSpec("old", "old"),
        ServerSpec("new", "new"),
    ]
    worker_specs = [
        ServerSpec("workers 1", "workers", ["1"], channels=8),
        ServerSpec("workers 2", "workers", ["2"], channels=8),
    ]
    tf1 = ["--tf-intra-op-threads", "1", "--tf-inter-op-threads", "1"]
    variant_specs = [
        ServerSpec("new", "new"),
        ServerSpec("new tf-threads 1/1", "new", tf1),
        ServerSpec("old tf-threads 1/1", "old", tf1),
        ServerSpec("new compute-threads 1", "new", ["--compute-threads", "1"]),
        ServerSpec("old compute-threads 1", "old", ["--compute-threads", "1"]),
        ServerSpec("new 8 channels", "new", channels=8),
        ServerSpec("new inline-compute 0", "new", ["--inline-compute-ms", "0"]),
    ]

    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmpdir:
        tmp = Path(tmpdir)
        repos = {"new": tmp / "repo_new", "old": tmp / "repo_old"}
        repo = repos["new"]
        print(f"writing models to {repo} and {repos['old']} (max_batch_size 1) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench.models", str(repo), str(repos["old"]),
             *[m.name for m in models]],
            check=True, timeout=180, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        shapes = tmp / "shapes.json"
        shapes.write_text(json.dumps(output_shapes(models)))

        ceilings = {}
        for m in models:
            print(f"ceiling: {m.name} in-process ...", flush=True)
            ceilings[m.name] = run_ceiling(repo, m, 0.5 if args.quick else 1.0)

        payloads = {(m.name, n): request_bytes(m, n).hex() for m in models for n in sizes}
        # The bundled models at 1 and 32 callers only: keeps the run near 10 minutes.
        grid = [
            (m, n, c, rounds if m is REFERENCE else 1)
            for m in models
            for n in sizes
            for c in conc
            if m is REFERENCE or c in (1, 32)
        ]
        print("servers echo, old, new ...", flush=True)
        rows = measure(main_specs, grid, payloads, repos, shapes, tmp, duration, warmup)
        variants: list[dict] = []
        if not (args.quick or args.no_variants):
            print("variants ...", flush=True)
            vgrid = [(REFERENCE, 1, 1, 1), (REFERENCE, 1, 32, 1), (REFERENCE, 32, 32, 1)]
            variants = measure(variant_specs, vgrid, payloads, repos, shapes, tmp, duration, warmup)
        print("--workers 1 and 2 ...", flush=True)
        wgrid = [(REFERENCE, 1, 32, rounds)]
        scaling = measure(worker_specs, wgrid, payloads, repos, shapes, tmp, duration, warmup)
        print("startup on the bundled models ...", flush=True)
        startup = _startup()

    elapsed = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    report = render(rows, variants, ceilings, models, duration, warmup, rounds, elapsed)
    judged = goals.judge(rows, scaling, ceilings, startup, REFERENCE.name)
    report += "\n" + "\n".join(goal_section(judged, scaling)) + "\n"
    (args.out / "latest.md").write_text(report)
    data = {"rows": rows, "variants": variants, "ceilings": ceilings, "workers": scaling,
            "startup": startup, "goals": [g.__dict__ for g in judged]}  # fmt: skip
    (args.out / "latest.json").write_text(json.dumps(data, indent=1))
    plot(rows, ceilings, models, sizes, args.out / "latest.png")
    if not args.no_readme:
        goals.readme(goals.readme_text(judged, args.quick))
    print(report)
    return 0


def _startup() -> dict | None:
    """A first start (empty proof reference cache: what a new machine sees) and a restart (the
    cache it filled), each from launch to health SERVING."""
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-cache-") as cache:
        flags = ["--proof-cache-dir", cache]
        try:
            first = servers.startup_seconds(BUNDLED, extra=flags)
            again = servers.startup_seconds(BUNDLED, extra=flags)
        except (RuntimeError, OSError) as exc:
            print(f"startup not measured: {exc}", flush=True)
            return None
    return {**again, "first": first}


def goal_section(judged: list, scaling: list[dict]) -> list[str]:
    out = ["## Goals (issue 14; reference model, ratios from this run)", ""]
    out += goals.table(judged)
    if scaling:
        out += ["", "### `--workers` (32 callers, 8 connections)", ""]
        out += _table(scaling, {REFERENCE.name: _NO_CEILING}, "workers 1")
    return out


_NO_CEILING = {"b32_seq_per_s": float("inf"), "b1_p50_ms": 0.0, "b32_p50_ms": 0.0}


# -- report ------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _find(rows: list[dict], server: str, model: str, seqs: int, callers: int) -> dict | None:
    for r in rows:
        if (r["server"], r["model"], r["seqs"], r["callers"]) == (server, model, seqs, callers):
            return r
    return None


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _table(rows: list[dict], ceilings: dict, base: str) -> list[str]:
    out = [
        "| server | model | seqs/req | callers | req/s | seq/s | p50 ms | p90 ms | p99 ms | errors "
        f"| x{base} | xmodel | p50/budget | server cores | client cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["seqs"], r["callers"])):
        ref = _find(rows, base, r["model"], r["seqs"], r["callers"])
        echo = _find(rows, "echo", r["model"], r["seqs"], r["callers"])
        c = ceilings[r["model"]]
        seq_s = r["rps"] * r["seqs"]
        x_ref = r["rps"] / ref["rps"] if ref and ref["rps"] else None
        x_model = seq_s / c["b32_seq_per_s"]
        budget = None
        if r["callers"] == 1 and echo and echo["p50_ms"] and r["p50_ms"]:
            inproc = c["b1_p50_ms"] if r["seqs"] == 1 else c["b32_p50_ms"]
            budget = r["p50_ms"] / (echo["p50_ms"] + inproc)
        errors = str(r["errors"]) + (f" {r['error_codes']}" if r["errors"] else "")
        out.append(
            f"| {r['server']} | {r['model']} | {r['seqs']} | {r['callers']} | {_f(r['rps'], 0)}"
            f" | {_f(seq_s, 0)} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['p99_ms'])}"
            f" | {errors} | {_f(x_ref)} | {_f(x_model)} | {_f(budget)}"
            f" | {_f(r['server_cores'])} | {_f(r['client_cores'])} |"
        )
    return out


def render(rows, variants, ceilings, models, duration, warmup, rounds, elapsed) -> str:
    out = [
        "# seqserve benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores · "
        f"load average before the run {_load()} · Python {platform.python_version()} · "
        f"{duration:g} s per point after {warmup:g} s warm-up · reference model: best of "
        f"{rounds} interleaved rounds · whole run {elapsed:.0f} s. Client: closed loop, "
        "grpc.aio, pre-encoded requests, its own process, same cores. Servers run side by side "
        "and are measured point by point in rotating order: compare ratios, not absolute "
        "numbers (this machine is shared and noisy).",
        "",
        "Servers: `new` = the production server (`seqserve serve`; dynamic batching with each "
        "model's config); `old` = the same server on a copy of the repository whose configs set "
        "`max_batch_size: 1`: every sequence is computed alone, one computation at a time. For "
        "1-sequence requests that is the server before batching; for 32-sequence requests it is "
        "a lower bound (the pre-batching server computed a request's 32 sequences as one batch, "
        "`old` computes them as 32 calls). Throughput counts completions inside each point's "
        "window; latency is of those completions.",
        "",
        "## Ceilings",
        "",
        "| model | in-process batch 1 p50 ms | batch 1 seq/s | batch 32 p50 ms | batch 32 seq/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in models:
        c = ceilings[m.name]
        out.append(
            f"| {m.name} ({m.description}) | {_f(c['b1_p50_ms'], 3)} | {_f(c['b1_seq_per_s'], 0)}"
            f" | {_f(c['b32_p50_ms'], 3)} | {_f(c['b32_seq_per_s'], 0)} |"
        )
    out += [
        "",
        "Echo server (grpc.aio, parses the request, answers a prebuilt response, no model): "
        "rows `echo` below.",
        "",
        "## Per-request Python work in the server (µs, median, in-process)",
        "",
        "| model | seqs | protobuf parse | tensor decode | validate | response build+serialize "
        "| batcher split+join |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        c = ceilings[m.name]
        for b in (1, 32):
            out.append(
                f"| {m.name} | {b} | {_f(c[f'b{b}_parse_us'], 1)} | {_f(c[f'b{b}_decode_us'], 1)}"
                f" | {_f(c[f'b{b}_validate_us'], 1)} | {_f(c[f'b{b}_encode_us'], 1)}"
                f" | {_f(c[f'b{b}_split_join_us'], 1)} |"
            )
    out += [
        "",
        "## Results",
        "",
        "`xecho` = req/s ÷ echo req/s at the same point; `xmodel` = seq/s ÷ in-process "
        "seq/s at batch 32; `p50/budget` (1 caller) = p50 ÷ (echo p50 + in-process p50 at the "
        "request's batch size). Cores: CPU used by server / client processes during the point.",
        "",
    ]
    out += _table(rows, ceilings, "echo")
    if variants:
        out += [
            "",
            "## Variants (reference model; ratios to `new` measured in the same rotation)",
            "",
        ]
        out += _table(variants, ceilings, "new")
    return "\n".join(out) + "\n"


def plot(rows, ceilings, models, sizes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, n) for m in models for n in sizes]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    colors = {"echo": "tab:blue", "plain": "tab:purple", "old": "tab:orange", "new": "tab:green"}
    for col, (m, n) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        for label, color in colors.items():
            pts = sorted(
                (r for r in rows if (r["server"], r["model"], r["seqs"]) == (label, m.name, n)),
                key=lambda r: r["callers"],
            )
            if not pts:
                continue
            xs = [r["callers"] for r in pts]
            top.plot(xs, [r["rps"] * n for r in pts], marker="o", color=color, label=label)
            p50 = [r["p50_ms"] or 0 for r in pts]
            bottom.plot(xs, p50, marker="o", color=color, label=f"{label} p50")
            bottom.plot(xs, [r["p99_ms"] or 0 for r in pts], ls=":", color=color, alpha=0.6)
        c = ceilings[m.name]
        top.axhline(c["b32_seq_per_s"], color="grey", ls="--", label="in-process b32")
        top.axhline(c["b1_seq_per_s"], color="grey", ls=":", label="in-process b1")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("callers")
            ax.grid(alpha=0.3)
        top.set_yscale("log")
        bottom.set_yscale("log")
        top.set_title(f"{m.name}, {n} seq/request")
        top.set_ylabel("sequences/s")
        bottom.set_ylabel("latency ms (p50 solid, p99 dotted)")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
