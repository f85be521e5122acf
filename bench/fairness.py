"""Two callers, one flooding (issue 25): the light caller's goodput and p99 alone and while the
other floods, in-process and over gRPC. Part of `python -m bench.overload --fair`.

In-process: the server's front door (core/call_admission.py, defaults) before a
`DynamicBatcher` whose compute sleeps 20 ms per batch of 32 (1,600 rows/s), as
`bench.overload --in-process`. The light caller sends Poisson arrivals at 0.2x that capacity,
the heavy caller runs 1,024 closed-loop callers that wait out each refusal's pushback; every call
has a 250 ms deadline. Run twice: with the front door's fair queue (callers by name) and with
everyone under one name (first in, first out: what a flood does without fair shares).

Over gRPC: `seqserve serve` with a tokens file of two tokens, `light` and `heavy`; the light
caller at 0.2x the capacity measured at 32 callers, the heavy one with 1,024 closed-loop callers
in another process (so that the two load generators do not share an event loop).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

FAKE_BATCH = 32
FAKE_BATCH_S = 0.020
LIGHT_SHARE = 0.2  # of capacity
HEAVY_CALLERS = 1024
MAX_OUTSTANDING = 4096  # an open-loop generator's calls open at once
WARMUP_S = 2.0
METHOD = "/seqserve.v1.SeqServe/Predict"
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def summary(ok: list[float], codes: Counter[str], duration: float) -> dict[str, Any]:
    ordered = sorted(ok)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3 if ordered else None
    return {"ok_per_s": len(ok) / duration, "ok_p99_ms": p99, "codes": dict(codes)}


async def poisson(rate: float, end: float, call: Callable[[], Awaitable[Any]]) -> int:
    """Start `call()` at Poisson arrivals of `rate` per second until `end` (perf_counter), on
    schedule: arrivals whose time has come while the loop was busy start at once (an open
    loop does not slow down with the server), then every call is awaited. At most
    MAX_OUTSTANDING calls are open at once (a bound on the generator): the number of arrivals
    not sent for it is returned."""
    rng = random.Random(0)
    calls: set[asyncio.Task] = set()
    not_sent = 0
    next_at = time.perf_counter()
    while next_at < end:
        while next_at <= time.perf_counter():
            if len(calls) < MAX_OUTSTANDING:
                task = asyncio.create_task(call())
                calls.add(task)
                task.add_done_callback(calls.discard)
            else:
                not_sent += 1
            next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.gather(*calls)
    return not_sent


# -- in-process ---------------------------------------------------------------------------------


async def _in_process(duration: float, deadline_s: float, flood: bool, fair: bool) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from seqserve_server.config import Settings
    from seqserve_server.core.admission import AdmissionSettings
    from seqserve_server.core.batching import DynamicBatcher
    from seqserve_server.core.call_admission import CallAdmission, CallAdmissionSettings
    from seqserve_server.core.errors import DeadlineExpired, LoadShed

    def compute(values: np.ndarray) -> np.ndarray:
        time.sleep(FAKE_BATCH_S)
        return values

    item = np.zeros((1, 52, 1), np.float32)
    begin = time.perf_counter() + WARMUP_S
    end = begin + duration
    results: dict[str, tuple[list[float], Counter[str]]] = {
        name: ([], Counter()) for name in ("light", "heavy")
    }

    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(
            compute, pool, FAKE_BATCH, 0.0, 1 << 20, admission=AdmissionSettings()
        )
        defaults = Settings()
        door = CallAdmission(
            CallAdmissionSettings(
                defaults.min_call_limit, defaults.max_concurrent_rpcs,
                defaults.loop_lag_target_ms / 1000,
            ),
            backlogged=lambda: batcher.take_peak_depth() > batcher.max_batch_size,
        )  # fmt: skip
        watch = asyncio.create_task(door.watch())

        async def call(name: str) -> float:
            """One call; the pushback to wait (0: none)."""
            t0 = time.perf_counter()
            pause = 0.0
            try:
                async with asyncio.timeout(deadline_s):
                    ticket = await door.enter(name if fair else "everyone", deadline_s)
                    try:
                        await batcher.submit([item], time.monotonic() + deadline_s)
                    finally:
                        door.leave(ticket)
                outcome = "OK"
            except LoadShed as exc:
                outcome, pause = "RESOURCE_EXHAUSTED", exc.retry_after_s
            except (DeadlineExpired, TimeoutError):
                outcome = "DEADLINE_EXCEEDED"
            latency = time.perf_counter() - t0
            if begin <= t0 + latency <= end:
                ok, codes = results[name]
                codes[outcome] += 1
                if outcome == "OK":
                    ok.append(latency)
            return pause

        async def heavy() -> None:
            while time.perf_counter() < end:
                pause = await call("heavy")
                if pause:
                    await asyncio.sleep(pause)

        async def light() -> None:
            rate = LIGHT_SHARE * FAKE_BATCH / FAKE_BATCH_S
            await poisson(rate, end, lambda: call("light"))

        workers = [light()] + ([heavy() for _ in range(HEAVY_CALLERS)] if flood else [])
        await asyncio.gather(*workers)
        watch.cancel()
    return {name: summary(ok, codes, duration) for name, (ok, codes) in results.items()}


def in_process(duration: float, deadline_s: float) -> list[dict]:
    """Light alone, then light beside the flood: with fair shares, then without."""
    rows = []
    for label, flood, fair in (
        ("light alone", False, True),
        ("light + flood, fair shares", True, True),
        ("light + flood, one queue", True, False),
    ):
        measured = asyncio.run(_in_process(duration, deadline_s, flood, fair))
        rows.append({"run": f"in-process, {label}", **measured})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# -- over gRPC ----------------------------------------------------------------------------------


def tokens_file(directory: Path) -> Path:
    """Two tokens, `light` and `heavy` (token = name), weight 1 each, no caps."""
    import hashlib

    import yaml

    entries = [
        {
            "name": name,
            "sha256": hashlib.sha256(name.encode()).hexdigest(),
            "models": ["*"],
            "scopes": ["infer", "read"],
        }
        for name in ("light", "heavy")
    ]
    path = directory / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


def pushback_s(exc: grpc.aio.AioRpcError) -> float:
    """The server's `grpc-retry-pushback-ms` in seconds (0: none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == PUSHBACK_KEY:
            try:
                return max(0.0, int(value) / 1000)
            except ValueError:
                return 0.0
    return 0.0


async def grpc_caller(
    target: str, payload: bytes, token: str | None, duration: float, deadline_s: float,
    callers: int = 0, rate: float = 0.0,
) -> dict:  # fmt: skip
    """`callers` closed-loop callers (honouring pushback), or Poisson arrivals at `rate`/s."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    channels = [grpc.aio.insecure_channel(target) for _ in range(8 if callers else 1)]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    stubs = [channel.unary_unary(METHOD) for channel in channels]
    begin = time.perf_counter() + WARMUP_S
    end = begin + duration
    ok: list[float] = []
    codes: Counter[str] = Counter()

    async def call(i: int) -> float:
        t0 = time.perf_counter()
        pause = 0.0
        try:
            await stubs[i % len(stubs)](payload, timeout=deadline_s, metadata=metadata)
            outcome = "OK"
        except grpc.aio.AioRpcError as exc:
            outcome, pause = exc.code().name, pushback_s(exc)
        latency = time.perf_counter() - t0
        if begin <= t0 + latency <= end:
            codes[outcome] += 1
            if outcome == "OK":
                ok.append(latency)
        return pause

    async def closed(i: int) -> None:
        while time.perf_counter() < end:
            pause = await call(i)
            if pause:
                await asyncio.sleep(pause)

    if callers:
        await asyncio.gather(*(closed(i) for i in range(callers)))
    elif not_sent := await poisson(rate, end, lambda: call(0)):
        codes["NOT_SENT"] += not_sent
    for channel in channels:
        await channel.close()
    return summary(ok, codes, duration)


def flood_process(target: str, duration: float, deadline_s: float) -> subprocess.Popen:
    """The heavy caller in its own process (`python -m bench.fairness --flood ...`)."""
    args = [sys.executable, "-m", "bench.fairness", "--flood", target, str(duration)]
    return subprocess.Popen([*args, str(deadline_s)], stdout=subprocess.PIPE, text=True)


def over_grpc(target: str, capacity: float, duration: float, deadline_s: float) -> list[dict]:
    from bench.models import CO2
    from bench.run import request_bytes

    payload = request_bytes(CO2, 1)
    rate = LIGHT_SHARE * capacity
    alone = asyncio.run(grpc_caller(target, payload, "light", duration, deadline_s, rate=rate))
    rows = [{"run": "gRPC, light alone", "light": alone}]
    print(json.dumps(rows[-1]), flush=True)
    flood = flood_process(target, duration, deadline_s)
    try:
        light = asyncio.run(grpc_caller(target, payload, "light", duration, deadline_s, rate=rate))
        out, _ = flood.communicate(timeout=duration + 120)
    finally:
        if flood.poll() is None:
            flood.kill()
    heavy = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    rows.append({"run": "gRPC, light + flood, fair shares", "light": light, "heavy": heavy})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: the light caller's goodput and p99 against running alone, the heavy's goodput."""
    lines = [
        "| run | light OK/s | light p99 ms | vs alone: OK/s, p99 | heavy OK/s |",
        "|---|---:|---:|---|---:|",
    ]
    alone: dict[str, dict] = {}
    for row in rows:
        kind = row["run"].split(",")[0]
        light = row["light"]
        if "alone" in row["run"]:
            alone[kind] = light
        base = alone.get(kind)
        p99 = light["ok_p99_ms"]
        versus = "-"
        if base and base["ok_per_s"] and p99 and base["ok_p99_ms"] and "alone" not in row["run"]:
            versus = f"{light['ok_per_s'] / base['ok_per_s']:.2f}x, {p99 / base['ok_p99_ms']:.2f}x"
        heavy = row.get("heavy", {}).get("ok_per_s")
        lines.append(
            f"| {row['run']} | {light['ok_per_s']:,.0f} | {'-' if p99 is None else f'{p99:.0f}'} "
            f"| {versus} | {'-' if heavy is None else f'{heavy:,.0f}'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--flood":
    from bench.models import CO2
    from bench.run import request_bytes

    target, seconds, deadline = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    result = asyncio.run(
        grpc_caller(
            target, request_bytes(CO2, 1), "heavy", seconds, deadline, callers=HEAVY_CALLERS
        )
    )
    print(json.dumps(result), flush=True)
