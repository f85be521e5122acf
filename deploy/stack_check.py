"""Checks for deploy/stack_test.sh against a running compose stack (localhost only).

1. N Predict calls to iris_classifier through the load balancer, answers well-formed;
2. both replicas served some of them (each replica's own /metrics, read inside its container);
3. Prometheus scrapes both replicas (`up{job="seqserve"}` == 1 twice) and has their
   seqserve_requests_total series.
Usage: python deploy/stack_check.py --lb 127.0.0.1:PORT --prometheus http://127.0.0.1:PORT
       --compose "docker compose -p NAME" [--calls 50]
Exit status 0 when every check passes; the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from seqserve_client import SeqServeClient

REPLICAS = ("seqserve-1", "seqserve-2")
MODEL = "iris_classifier"
READ_METRICS = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:8502/metrics', timeout=5).read().decode())"
)


def fail(message: str) -> None:
    print(f"stack check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def replica_predicts(compose: list[str], replica: str) -> float:
    """Predict calls to MODEL that `replica` counted (its seqserve_requests_total)."""
    out = subprocess.run(
        [*compose, "exec", "-T", replica, "python", "-c", READ_METRICS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    total = 0.0
    for family in text_string_to_metric_families(out):
        for sample in family.samples:
            if (
                sample.name == "seqserve_requests_total"
                and sample.labels.get("model") == MODEL
                and sample.labels.get("rpc") == "Predict"
            ):
                total += sample.value
    return total


def prom_query(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        fail(f"Prometheus query {query!r}: {body}")
    return body["data"]["result"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--compose", required=True)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--prometheus-wait", type=float, default=60.0)
    args = ap.parse_args()
    compose = shlex.split(args.compose)

    before = {r: replica_predicts(compose, r) for r in REPLICAS}
    rng = np.random.default_rng(0)
    started = time.monotonic()
    with SeqServeClient(args.lb, timeout=30) as client:
        if not client.health():
            fail(f"health through the load balancer {args.lb} is not SERVING")
        for i in range(args.calls):
            x = rng.normal(5.0, 1.0, size=(1 + i % 4, 4)).astype(np.float32)
            y = np.asarray(client.predict(MODEL, x))
            if y.shape != (x.shape[0], 3) or not np.allclose(y.sum(axis=1), 1.0, atol=1e-4):
                fail(f"call {i}: expected {x.shape[0]}x3 class probabilities, got {y!r}")
    elapsed = time.monotonic() - started
    print(f"{args.calls} Predict calls through {args.lb} in {elapsed:.2f}s")

    served = {r: replica_predicts(compose, r) - before[r] for r in REPLICAS}
    print("served per replica:", {r: int(n) for r, n in served.items()})
    if sum(served.values()) != args.calls:
        fail(f"replicas counted {sum(served.values()):.0f} calls, sent {args.calls}")
    idle = [r for r, n in served.items() if n == 0]
    if idle:
        fail(f"{', '.join(idle)} served no call: the load balancer does not spread requests")

    deadline = time.monotonic() + args.prometheus_wait
    while True:
        up = prom_query(args.prometheus, 'up{job="seqserve"}')
        up_replicas = {s["metric"].get("replica") for s in up if s["value"][1] == "1"}
        series = prom_query(
            args.prometheus,
            f'sum by (replica) (seqserve_requests_total{{model="{MODEL}",rpc="Predict"}})',
        )
        scraped = {s["metric"].get("replica"): float(s["value"][1]) for s in series}
        ok = (
            len(up) == len(REPLICAS)
            and up_replicas == set(REPLICAS)
            and set(scraped) == set(REPLICAS)
            and sum(scraped.values()) >= sum(before.values()) + args.calls
        )
        if ok:
            break
        if time.monotonic() > deadline:
            fail(f"Prometheus: up={up} seqserve_requests_total by replica={scraped}")
        time.sleep(2)
    print("Prometheus: up{job=seqserve}==1 for", sorted(up_replicas), "requests:", scraped)
    print("stack check passed")


if __name__ == "__main__":
    main()
