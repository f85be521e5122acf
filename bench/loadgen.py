"""Closed-loop gRPC load generator, run as its own process (it must not share the server's GIL).

`python -m bench.loadgen SPEC.json` where SPEC is `{"jobs": [{"target": "127.0.0.1:PORT",
"channels": 1, "server_pids": [...], "point": {"id", "request" (hex of a serialized
PredictRequest), "concurrency", "duration", "warmup"}}]}`; prints one JSON line per job, in order.
Jobs for different servers interleave (the orchestrator's choice), so that servers compared are
measured minutes, not tens of minutes, apart on a noisy machine; channels stay open between jobs.

Kept cheap: requests are serialized once and sent as bytes through a raw stub without
(de)serializers, so the client costs only the transport. Only 127.0.0.1 is a target.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter

import grpc

METHOD = "/seqserve.v1.SeqServe/Predict"
MAX_REQUESTS_PER_POINT = 200_000
CALL_TIMEOUT_S = 10.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes (all their threads) from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def run_point(channels: list[grpc.aio.Channel], point: dict, pids: list[int]) -> dict:
    payload = bytes.fromhex(point["request"])
    calls = [ch.unary_unary(METHOD) for ch in channels]  # bytes in, bytes out
    concurrency, warmup, duration = point["concurrency"], point["warmup"], point["duration"]
    start = time.perf_counter()
    begin, end = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent = 0
    response_size = 0

    async def caller(i: int) -> None:
        nonlocal sent, response_size
        call = calls[i % len(calls)]
        while sent < MAX_REQUESTS_PER_POINT:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            sent += 1
            try:
                response = await call(payload, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if begin <= time.perf_counter() <= end:
                    errors[exc.code().name] += 1
                continue
            t1 = time.perf_counter()
            # Completions inside the window count (latency >= window would count none if only
            # requests started and finished inside it counted).
            if begin <= t1 <= end:
                latencies.append(t1 - t0)
                response_size = len(response)

    server_cpu: list[float] = []
    client_cpu: list[float] = []

    async def sample() -> None:
        for at in (begin, end):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            server_cpu.append(cpu_seconds(pids) if pids else 0.0)
            client_cpu.append(time.process_time())

    await asyncio.gather(sample(), *(caller(i) for i in range(concurrency)))
    latencies.sort()

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3

    return {
        "id": point["id"],
        "requests": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "server_cores": (server_cpu[1] - server_cpu[0]) / duration,
        "client_cores": (client_cpu[1] - client_cpu[0]) / duration,
        "response_bytes": response_size,
    }


async def open_channels(target: str, n: int) -> list[grpc.aio.Channel]:
    if not target.startswith("127.0.0.1:"):
        raise SystemExit("the load generator only targets 127.0.0.1")
    # Separate subchannel pools: each channel gets its own TCP connection (SO_REUSEPORT spreads
    # connections, not requests, over worker processes).
    options = [("grpc.use_local_subchannel_pool", 1)] if n > 1 else []
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(n)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    return channels


async def main(spec: dict) -> None:
    pools: dict[tuple[str, int], list[grpc.aio.Channel]] = {}
    for job in spec["jobs"]:
        key = (job["target"], max(1, job.get("channels", 1)))
        if key not in pools:
            pools[key] = await open_channels(*key)
        result = await run_point(pools[key], job["point"], job.get("server_pids", []))
        print(json.dumps(result), flush=True)
    for channels in pools.values():
        for ch in channels:
            await ch.close()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
