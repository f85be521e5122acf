"""What an HTTP/2 gRPC balancer costs per call: the input of the README's scale figure.

`python -m bench.balancer_cost [--seconds 3] [--rounds 3]` runs the echo server (gRPC + protobuf,
no model: the cheapest backend, so the proxy's share shows best) on 127.0.0.1, then sends the same
closed-loop load (bench/loadgen.py) straight to it and through nginx's grpc_pass (Debian's nginx:
a C HTTP/2 proxy balancing per call, like the compose stack's `lb` and like Envoy in
deploy/kubernetes), interleaved in rounds. The proxy's CPU per call is its processes' CPU time
(/proc) over the calls answered in the same window. Writes bench/results/balancer.md. Envoy is
not installable here; the README says which numbers are measured and which assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import servers

RESULTS = Path(__file__).resolve().parent / "results"
NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    upstream backend {{ server {backend}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} http2;
        http2_max_concurrent_streams 256;
        location / {{ grpc_pass grpc://backend; }}
    }}
}}
"""


def request_bytes() -> bytes:
    import numpy as np

    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve_api.tensors import to_batch

    x = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    return pb.PredictRequest(model_name="m", inputs=to_batch(x)).SerializeToString()


def start_nginx(nginx: str, tmp: Path, backend: str) -> tuple[subprocess.Popen, int, list[int]]:
    """nginx in the foreground on a free 127.0.0.1 port; its master and worker pids."""
    port = servers._free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, backend=backend, port=port))
    process = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
        if found.stdout.split():
            return process, port, [process.pid, *map(int, found.stdout.split())]
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("nginx did not start: " + (tmp / "error.log").read_text())


def measure(jobs: list[dict], tmp: Path) -> list[dict]:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(spec)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description="balancer CPU per gRPC call")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    nginx = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if nginx is None:
        raise SystemExit("nginx is not installed (apt-get install nginx)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "shapes.json").write_text(json.dumps({"m": [10]}))
        echo = servers.echo(tmp / "shapes.json")
        proxy, port, proxy_pids = start_nginx(nginx, tmp, echo.target)
        try:
            point = {"request": request_bytes().hex(), "concurrency": options.concurrency,
                     "duration": options.seconds, "warmup": 0.5}  # fmt: skip
            jobs = []
            for i in range(options.rounds):
                jobs.append({"target": echo.target, "server_pids": proxy_pids,
                             "point": {**point, "id": f"direct {i}"}})  # fmt: skip
                jobs.append({"target": f"127.0.0.1:{port}", "server_pids": proxy_pids,
                             "point": {**point, "id": f"nginx {i}"}})  # fmt: skip
            rows = measure(jobs, tmp)
        finally:
            proxy.terminate()
            proxy.wait(10)
            echo.stop()
    report(rows, options)


def report(rows: list[dict], options: argparse.Namespace) -> None:
    proxied = [r for r in rows if r["id"].startswith("nginx") and r["rps"]]
    per_call_us = [r["server_cores"] / r["rps"] * 1e6 for r in proxied]
    lines = [
        "# Balancer cost per gRPC call",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · "
        f"{len(os.sched_getaffinity(0))} cores · load average before the run "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} · `python -m bench.balancer_cost` · "
        f"{options.rounds} rounds of {options.seconds:g} s, {options.concurrency} callers, one "
        "Predict of 1x8x8 float32 per call, echo backend (no model).",
        "",
        "| path | round | calls/s | p50 ms | p99 ms | errors | nginx CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        path, i = r["id"].split()
        lines.append(
            f"| {path} | {i} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | {r['server_cores']:.3f} |"
        )
    lines += [
        "",
        f"nginx CPU per proxied call: **{statistics.median(per_call_us):.0f} µs** (median of the "
        f"rounds: {', '.join(f'{u:.0f}' for u in per_call_us)}). `direct` rows: nginx idle while "
        "the load goes straight to the echo server. Load generator, nginx and echo server share "
        "the same cores, so calls/s through nginx is lower than direct; the CPU per call is the "
        "figure to use.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "balancer.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
