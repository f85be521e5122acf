"""`python -m bench.layer_costs`: what each layer of the Predict path costs, side by side.

The production server (`full`) next to copies of it with layers taken out
(bench/layer_variant.py), the echo server and the plain server, on the reference model, one
sequence per request, at 1 and 32 callers, in rotating order for `--rounds` rounds. Reported per
server, as the median over the rounds (this machine is shared: single rounds swing by 30%):
1-caller p50, 32-caller req/s, and the server's CPU per request at both. A layer's cost is the
difference to the server without it.

    .venv/bin/python -m bench.layer_costs [--rounds 7] [--duration 1.5] [--baseline REF] \
        [--seqs 1] [--variant 'label=LAYERS[ FLAG ...]' ...]

LAYERS: `none` or a comma list of `interceptors`, `checks`, `decorators`, `batcher` (see
bench/layer_variant.py). `--baseline REF`: also the server as of git REF (its server/src from
`git archive`, run by this checkout's bench), e.g. the commit before a change: before and after
in one run, also as per-round paired ratios (after / before measured back to back).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.models import REFERENCE
from bench.run import ServerSpec, measure, output_shapes, request_bytes

DEFAULT_VARIANTS = [
    "no interceptors=interceptors",
    "no interceptors, decorators=interceptors,decorators",
    "no interceptors, decorators, batcher=interceptors,decorators,batcher",
]


def specs(variants: list[str], peers: bool, baseline: Path | None, ref: str) -> list[ServerSpec]:
    out = [ServerSpec("echo", "echo"), ServerSpec("plain", "plain")] if peers else []
    if baseline is not None:
        out.append(ServerSpec(f"full at {ref}", "variant", ["none"], source=baseline))
    out.append(ServerSpec("full", "new"))
    for text in variants:
        label, _, rest = text.partition("=")
        layers, *flags = shlex.split(rest)
        out.append(ServerSpec(label, "variant", [layers, *flags]))
    return out


def _checkout(ref: str, tmp: Path) -> Path:
    """The server package of git `ref`, extracted under `tmp`: its `server/src`."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "server/src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "server" / "src"


def medians(rows: list[dict], label: str, callers: int) -> dict[str, float]:
    """The server's median over rounds of p50, req/s and server CPU ms per request."""
    mine = [r for r in rows if r["server"] == label and r["callers"] == callers and r["rps"]]
    return {
        "p50_ms": statistics.median(r["p50_ms"] for r in mine),
        "rps": statistics.median(r["rps"] for r in mine),
        "cpu_ms": statistics.median(1e3 * r["server_cores"] / r["rps"] for r in mine),
    }


def paired(rows: list[dict], label: str, base: str) -> list[str]:
    """`label` / `base` per round (measured back to back), median and range: steadier than a
    ratio of medians on a shared machine."""
    out = []
    for callers, key in ((1, "p50_ms"), (32, "rps")):
        ratios = []
        for r in rows:
            if r["server"] != label or r["callers"] != callers:
                continue
            b = next(
                x
                for x in rows
                if (x["server"], x["callers"], x["round"]) == (base, callers, r["round"])
            )
            if r[key] and b[key]:
                ratios.append(r[key] / b[key])
        if ratios:
            out.append(
                f"{label} / {base}, {callers} caller(s) {key}, per round: median "
                f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})"
            )
    return out


def table(rows: list[dict], labels: list[str]) -> list[str]:
    out = [
        "| server | 1 caller p50 ms | CPU ms/req at 1 | 32 callers req/s | CPU ms/req at 32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        one, many = medians(rows, label, 1), medians(rows, label, 32)
        out.append(
            f"| {label} | {one['p50_ms']:.2f} | {one['cpu_ms']:.2f}"
            f" | {many['rps']:,.0f} | {many['cpu_ms']:.2f} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.layer_costs", description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--variant", action="append", help="label=LAYERS[ FLAG ...]")
    ap.add_argument("--no-peers", action="store_true", help="without echo and plain")
    ap.add_argument("--baseline", help="git ref: its server side by side (before/after)")
    ap.add_argument("--seqs", type=int, default=1, help="sequences per request")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="seqserve-layers-") as tmpdir:
        tmp = Path(tmpdir)
        baseline = _checkout(args.baseline, tmp) if args.baseline else None
        variants = DEFAULT_VARIANTS if args.variant is None else args.variant
        servers = specs([v for v in variants if v], not args.no_peers, baseline, args.baseline)
        repo = tmp / "repo"
        subprocess.run(
            [sys.executable, "-m", "bench.models", str(repo), "-", REFERENCE.name],
            check=True, timeout=180, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        shapes = tmp / "shapes.json"
        shapes.write_text(json.dumps(output_shapes([REFERENCE])))
        payloads = {(REFERENCE.name, args.seqs): request_bytes(REFERENCE, args.seqs).hex()}
        grid = [(REFERENCE, args.seqs, 1, args.rounds), (REFERENCE, args.seqs, 32, args.rounds)]
        repos = {"new": repo, "old": repo}
        rows = measure(
            servers, grid, payloads, repos, shapes, tmp, args.duration, args.warmup, False
        )
    labels = [s.label for s in servers if any(r["server"] == s.label for r in rows)]
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')}, {REFERENCE.name}, {args.seqs} sequence(s) per "
        "request, "
        f"{args.duration:g} s per point, median of {args.rounds} rotating rounds, "
        f"{time.time() - started:.0f} s in all\n"
    )
    print("\n".join(table(rows, labels)))
    if args.baseline:
        print("\n".join(["", *paired(rows, "full", f"full at {args.baseline}")]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
