"""Scale-out through the compose load balancer: throughput with 2 replicas, then with 1.

Run by deploy/stack_test.sh when STACK_TEST_SCALE=1, after the checks, against the running stack
(127.0.0.1 only, bounded by --duration per point). Closed loop: --callers asyncio callers share
one TLS channel with a token and send one digit_classifier sequence per Predict (the served
answers are checked against Keras before the load). CPU per request comes from each container's
cgroup on the host (replicas, the LB) and from this process (the client) around the point, so
the figures hold on a shared machine as ratios: 2 replicas vs 1, measured in one run.
The second point stops seqserve-2 (the LB skips a replica it cannot reach). Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np

from deploy.stack_check import REPLICAS, fail
from seqserve_client import AsyncSeqServeClient
from tests.support.bundled import TOLERANCE, example_input
from tests.support.reference import loader

MODEL = "digit_classifier"


def container_ids(compose: list[str]) -> dict[str, str]:
    """Running service -> container id."""
    out = subprocess.run(
        [*compose, "ps", "--format", "{{.Service}} {{.ID}}", "--no-trunc"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return dict(line.split() for line in out.splitlines() if line.strip())


def container_cpu_s(container: str) -> float:
    """CPU seconds the container's processes used, from its cgroup on the host (v1 or v2)."""
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{container}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/system.slice/docker-{container}.scope/cpu.stat", 1e-6),
        (f"/sys/fs/cgroup/docker/{container}/cpu.stat", 1e-6),
    ):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            text = next(
                v for k, v in (line.split() for line in text.splitlines()) if k == "usage_usec"
            )
        return float(text) * scale
    fail(f"no cgroup CPU accounting found for container {container}")


def cpu_by_service(compose: list[str]) -> dict[str, float]:
    return {service: container_cpu_s(cid) for service, cid in container_ids(compose).items()}


def connect(args: argparse.Namespace) -> AsyncSeqServeClient:
    """A client of the LB over TLS with the stack's token (made inside the running loop)."""
    ca = (args.certs / "ca.crt").read_bytes()
    token = json.loads(args.secrets.read_text())["stack"]
    return AsyncSeqServeClient(args.lb, tls=True, root_certificates=ca, token=token)


async def closed_loop(
    args: argparse.Namespace, x: np.ndarray, callers: int, duration_s: float
) -> list[float]:
    """Latencies (s) of the calls completed inside the window."""
    latencies: list[float] = []
    deadline = time.monotonic() + duration_s
    async with connect(args) as client:
        await client.predict(MODEL, x[:1], timeout=30)  # connect outside the window

        async def caller(i: int) -> None:
            item = x[i % len(x)][None]
            while (start := time.monotonic()) < deadline:
                await client.predict(MODEL, item, timeout=30)
                if time.monotonic() <= deadline:
                    latencies.append(time.monotonic() - start)

        await asyncio.gather(*(caller(i) for i in range(callers)))
    return latencies


def point(args: argparse.Namespace, compose: list[str], replicas: int, x: np.ndarray) -> dict:
    before, client_before = cpu_by_service(compose), time.process_time()
    latencies = asyncio.run(closed_loop(args, x, args.callers, args.duration))
    after, client_cpu = cpu_by_service(compose), time.process_time() - client_before
    used = {service: after[service] - before[service] for service in after if service in before}
    calls = max(len(latencies), 1)
    return {
        "replicas": replicas,
        "req_s": len(latencies) / args.duration,
        "p50_ms": 1e3 * float(np.median(latencies)),
        "replica_ms": 1e3 * sum(used.get(r, 0.0) for r in REPLICAS) / calls,
        "lb_ms": 1e3 * used.get("lb", 0.0) / calls,
        "client_ms": 1e3 * client_cpu / calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--compose", required=True)
    ap.add_argument("--certs", type=Path, required=True)
    ap.add_argument("--secrets", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    compose = shlex.split(args.compose)
    x = example_input(MODEL, np.random.default_rng(0))
    want = np.asarray(loader(args.models)(MODEL)(x, training=False))
    check = asyncio.run(_predict_all(args, x))
    if not np.allclose(check, want, rtol=1e-5, atol=TOLERANCE):
        fail(f"{MODEL} through the LB differs from Keras")
    rows = [point(args, compose, 2, x)]
    subprocess.run([*compose, "stop", "seqserve-2"], check=True, capture_output=True, timeout=60)
    rows.append(point(args, compose, 1, x))
    print(f"{args.callers} callers, {args.duration:.0f} s per point")
    print("| replicas | req/s | p50 ms | CPU ms/req: replicas | LB | client | x 1 replica |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ratio = row["req_s"] / rows[-1]["req_s"]
        print(
            f"| {row['replicas']} | {row['req_s']:,.0f} | {row['p50_ms']:.2f} "
            f"| {row['replica_ms']:.2f} | {row['lb_ms']:.2f} | {row['client_ms']:.2f} "
            f"| {ratio:.2f} |"
        )


async def _predict_all(args: argparse.Namespace, x: np.ndarray) -> np.ndarray:
    async with connect(args) as c:
        return np.asarray(await c.predict(MODEL, x, timeout=30))


if __name__ == "__main__":
    main()
