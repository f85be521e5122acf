"""Overload without collapse (issue 25): goodput, latency and refusals past capacity.

    python -m bench.overload [--callers 32,256,1024] [--duration 10] [--deadline-ms 250]
                             [--source DIR] [--label NAME] [--server-args "..."]
                             [--echo] [--fair] [--open-loop 0.5,1,2,5,10] [--in-process]

Closed loop: N raw grpc.aio callers on 8 connections (no retries, requests serialized once)
call `Predict` on the bundled `co2_next_week` with a 250 ms deadline, for 10 s per point, against
`seqserve serve` on 127.0.0.1 serving the bundled models. A refused call
(`RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`) is followed by a pause of that many ms
before the caller's next call, as gRPC's retry design (A6) asks of any client that retries; a
caller that is not told to wait (every other outcome) calls again at once. A separate process
probes the health service every 100 ms meanwhile.

`--open-loop 0.5,1,2,5,10`: Poisson arrivals (one process, no retries) at those multiples of
the capacity measured at 32 callers. `--echo`: the same points against bench/echo_server.py
(gRPC and protobuf, no model, no admission): what the transport alone does at each load here.
`--fair`: two callers (bench/fairness.py), the light one's goodput and p99 alone and while the
other floods.

`--source DIR`: the server package from DIR/server/src (another checkout, e.g. the commit before
a change, through `git worktree add`), so before and after run on one machine minutes apart.
Bounded: points x (duration + 2 s warmup) plus one server start (~1 min for three points).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench import fairness, servers
from bench.models import BUNDLED, CO2
from bench.run import request_bytes
from bench.servers import serve

METHOD = "/seqserve.v1.SeqServe/Predict"
CHANNELS = 8
WARMUP_S = 2.0
PROBE_EVERY_S = 0.1


def _row(
    callers: int, duration: float, ok: list[float], refused: list[float], codes: Counter[str]
) -> dict[str, Any]:
    """One table row's measured fields (both the gRPC and the in-process runs)."""
    return {
        "callers": callers,
        "ok_per_s": len(ok) / duration,
        "ok_p50_ms": _pct(ok, 0.5),
        "ok_p99_ms": _pct(ok, 0.99),
        "refused": codes["RESOURCE_EXHAUSTED"],
        "refused_p99_ms": _pct(refused, 0.99),
        "deadline_exceeded": codes["DEADLINE_EXCEEDED"],
    }


def _pct(values: list[float], q: float) -> float | None:
    """The q-quantile in ms (None without values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def _point(
    target: str, callers: int, duration: float, deadline_s: float, token: str | None = None
) -> dict:
    """One closed-loop point; counts outcomes that complete inside the measured window."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    payload = request_bytes(CO2, 1)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(CHANNELS)]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    calls = [channel.unary_unary(METHOD) for channel in channels]
    begin = time.perf_counter() + WARMUP_S
    end = begin + duration
    ok: list[float] = []
    refused: list[float] = []
    codes: Counter[str] = Counter()

    async def caller(i: int) -> None:
        call = calls[i % CHANNELS]
        while (t0 := time.perf_counter()) < end:
            pause = 0.0
            try:
                await call(payload, timeout=deadline_s, metadata=metadata)
                outcome, latency = "OK", time.perf_counter() - t0
            except grpc.aio.AioRpcError as exc:
                outcome, latency = exc.code().name, time.perf_counter() - t0
                pause = fairness.pushback_s(exc)
            if begin <= t0 + latency <= end:
                codes[outcome] += 1
                if outcome == "OK":
                    ok.append(latency)
                elif outcome == "RESOURCE_EXHAUSTED":
                    refused.append(latency)
            if pause:
                await asyncio.sleep(pause)

    await asyncio.gather(*(caller(i) for i in range(callers)))
    for channel in channels:
        await channel.close()
    return _row(callers, duration, ok, refused, codes) | {
        "other": {k: v for k, v in codes.items() if k not in _COUNTED},
    }


_COUNTED = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def probe(target: str, seconds: float) -> None:
    """(Own process) health Check every 100 ms for `seconds`; prints its latencies' p50/p99."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    latencies: list[float] = []
    failures = 0
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError:
                failures += 1
            time.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - t0)))
    summary = {"p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99)}
    print(json.dumps({**summary, "failures": failures}), flush=True)


def _measure(
    target: str, callers: int, duration: float, deadline_s: float, token: str | None = None
) -> dict:
    """A point with the health prober beside it (started first, so it spans the window)."""
    prober = subprocess.Popen(
        [sys.executable, "-m", "bench.overload", "--probe", target, str(WARMUP_S + duration)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        result = asyncio.run(_point(target, callers, duration, deadline_s, token))
        out, _ = prober.communicate(timeout=30)
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.wait()
    health = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {**result, "health_p99_ms": health.get("p99_ms")}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def table(rows: list[dict]) -> str:
    """Markdown rows: label, callers, goodput, OK p50/p99, refusals (p99), DEADLINE_EXCEEDED,
    health p99."""
    lines = [
        "| server | callers | OK/s | OK p50 / p99 ms | refused (p99 ms) | DEADLINE_EXCEEDED "
        "| other | health p99 ms | ERROR lines |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        other = ", ".join(f"{k} {v}" for k, v in r["other"].items()) or "-"
        errors = r.get("error_lines")
        lines.append(
            f"| {r['label']} | {r['callers']:,} | {r['ok_per_s']:,.0f} "
            f"| {_ms(r['ok_p50_ms'])} / {_ms(r['ok_p99_ms'])} "
            f"| {r['refused']:,} ({_ms(r['refused_p99_ms'])}) | {r['deadline_exceeded']:,} "
            f"| {other} | {_ms(r['health_p99_ms'])} | {'-' if errors is None else errors} |"
        )
    return "\n".join(lines)


# -- in-process: the batcher's policy alone, over a fake compute --------------------------------

FAKE_BATCH = 32  # co2_next_week's max_batch_size
FAKE_BATCH_S = 0.020  # per batch: 1,600 rows/s, about the served model's measured capacity


async def _fake_point(callers: int, duration: float, deadline_s: float, policy: str) -> dict:
    """`callers` closed-loop callers straight on a `DynamicBatcher` whose compute sleeps
    `FAKE_BATCH_S` per batch: the queueing policy measured without gRPC or a model, so a busy
    machine's transport cost does not hide it. `policy` "before": first in, first out and no
    admission (the batcher before issue 25); "after": the defaults."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from seqserve_server.core.admission import AdmissionSettings
    from seqserve_server.core.batching import DynamicBatcher
    from seqserve_server.core.errors import DeadlineExpired, LoadShed

    def compute(values: np.ndarray) -> np.ndarray:
        time.sleep(FAKE_BATCH_S)
        return values

    settings = AdmissionSettings(queue_target_s=0.0 if policy == "before" else 0.005)
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(compute, pool, FAKE_BATCH, 0.0, 4096, admission=settings)
        if policy == "before":
            batcher.admission.admit = lambda *args: None  # type: ignore[method-assign]
        begin = time.perf_counter() + WARMUP_S
        end = begin + duration
        ok: list[float] = []
        refused: list[float] = []
        codes: Counter[str] = Counter()
        item = np.zeros((1, 52, 1), np.float32)

        async def caller() -> None:
            while (t0 := time.perf_counter()) < end:
                pause = 0.0
                try:
                    task = batcher.submit([item], time.monotonic() + deadline_s)
                    await asyncio.wait_for(task, deadline_s)  # the caller's own deadline
                    outcome = "OK"
                except LoadShed as exc:
                    outcome, pause = "RESOURCE_EXHAUSTED", exc.retry_after_s
                except (DeadlineExpired, TimeoutError):
                    outcome = "DEADLINE_EXCEEDED"
                latency = time.perf_counter() - t0
                if begin <= t0 + latency <= end:
                    codes[outcome] += 1
                    (ok if outcome == "OK" else refused if pause else []).append(latency)
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(caller() for _ in range(callers)))
    return _row(callers, duration, ok, refused, codes) | {"other": {}, "health_p99_ms": None}


def _in_process(callers: list[int], duration: float, deadline_s: float) -> list[dict]:
    rows = []
    for policy in ("before", "after"):
        for n in callers:
            row = asyncio.run(_fake_point(n, duration, deadline_s, policy))
            rows.append({**row, "label": f"in-process, {policy}"})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _only(repository: Path, model: str) -> Path:
    """A repository of one model (a symlink to it), in a temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="overload-"))
    (root / model).symlink_to(repository.resolve() / model, target_is_directory=True)
    return root


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        probe(sys.argv[2], float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", default="32,256,1024")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--deadline-ms", type=float, default=250.0)
    parser.add_argument("--source", type=Path, help="a checkout whose server/src is served")
    parser.add_argument("--repository", type=Path, default=BUNDLED)
    parser.add_argument(
        "--only-co2", action="store_true", help="serve co2_next_week alone (a faster start)"
    )
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--server-args", default="", help="extra `seqserve serve` flags")
    parser.add_argument("--out", type=Path, help="append the JSON rows to this file")
    parser.add_argument("--echo", action="store_true", help="also against the echo server")
    parser.add_argument("--fair", action="store_true", help="two callers, one flooding")
    parser.add_argument(
        "--open-loop", default="", help="Poisson arrivals at these multiples of capacity, e.g. "
        "0.5,1,2,5,10 (capacity: the OK/s of 32 closed-loop callers, measured first)",
    )  # fmt: skip
    parser.add_argument(
        "--in-process",
        action="store_true",
        help=f"the batcher alone over a compute sleeping {FAKE_BATCH_S * 1e3:.0f} ms per batch "
        f"of {FAKE_BATCH}, first-in first-out without admission, then the defaults",
    )
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]
    deadline_s = args.deadline_ms / 1000
    if args.in_process:
        print(table(_in_process(callers, args.duration, deadline_s)))
        if args.fair:
            print(fairness.table(fairness.in_process(args.duration, deadline_s)))
        return
    env = {"PYTHONPATH": str(args.source / "server" / "src")} if args.source else {}
    repository = _only(args.repository, CO2.name) if args.only_co2 else args.repository
    flags = ["--metrics-port", "-1", *args.server_args.split()]
    tokens = fairness.tokens_file(Path(tempfile.mkdtemp(prefix="overload-")))
    rows: list[dict] = []
    server = serve(
        repository, [*flags, "--auth-tokens-file", str(tokens)] if args.fair else flags, env
    )
    try:
        if args.open_loop:
            capacity = _measure(server.target, 32, args.duration, deadline_s)["ok_per_s"]
            loads = [float(x) for x in args.open_loop.split(",")]
            open_rows = _open_loop(server.target, capacity, loads, args.duration, deadline_s)
        elif not args.fair:
            log = server.server.output if server.server is not None else None
            rows += _points(server.target, callers, args.duration, deadline_s, args.label, log)
        else:
            capacity = _measure(server.target, 32, args.duration, deadline_s, "light")["ok_per_s"]
            fair_rows = fairness.over_grpc(server.target, capacity, args.duration, deadline_s)
    finally:
        server.stop()
    if args.echo:
        echo_server = servers.echo(_shapes(Path(tokens.parent)))
        try:
            rows += _points(echo_server.target, callers, args.duration, deadline_s, "echo")
        finally:
            echo_server.stop()
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if rows:
        print(table(rows))
    if args.fair:
        print(fairness.table(fair_rows))
    if args.open_loop:
        print(_open_table(open_rows))


def _open_loop(
    target: str, capacity: float, loads: list[float], duration: float, deadline_s: float
) -> list[dict]:
    """Poisson arrivals at each multiple of `capacity` (the OK/s of 32 closed-loop callers)."""
    payload = request_bytes(CO2, 1)
    rows = []
    for load in loads:
        rate = load * capacity
        measured = asyncio.run(
            fairness.grpc_caller(target, payload, None, duration, deadline_s, rate=rate)
        )
        rows.append({"load": load, "offered_per_s": rate, "capacity": capacity, **measured})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _open_table(rows: list[dict]) -> str:
    lines = [
        "| offered (x capacity) | offered/s | OK/s | goodput / capacity | OK p99 ms | outcomes |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        codes = ", ".join(f"{k} {v:,}" for k, v in sorted(r["codes"].items()))
        p99 = "-" if r["ok_p99_ms"] is None else f"{r['ok_p99_ms']:.0f}"
        lines.append(
            f"| {r['load']:g}x | {r['offered_per_s']:,.0f} | {r['ok_per_s']:,.0f} "
            f"| {r['ok_per_s'] / r['capacity']:.2f} | {p99} | {codes} |"
        )
    return "\n".join(lines)


def _points(
    target: str, callers: list[int], duration: float, deadline_s: float, label: str,
    log: Callable[[], str] | None = None,
) -> list:  # fmt: skip
    """Each closed-loop point; with the server's `log`, the ERROR lines it wrote meanwhile."""
    rows = []
    for n in callers:
        before = _errors(log)
        row = {**_measure(target, n, duration, deadline_s), "label": label}
        after = _errors(log)
        rows.append({**row, "error_lines": None if after is None else after - (before or 0)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _errors(log: Callable[[], str] | None) -> int | None:
    if log is None:
        return None
    return sum(" ERROR " in line for line in log().splitlines())


def _shapes(directory: Path) -> Path:
    """The echo server's answer shapes: co2_next_week's output, one value per step."""
    path = directory / "shapes.json"
    path.write_text(json.dumps({CO2.name: list(CO2.output_shape)}))
    return path


if __name__ == "__main__":
    main()
