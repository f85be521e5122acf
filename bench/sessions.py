"""`python -m bench.sessions [--quick]`: stateful sessions through the real server (issues 4, 14).

One production server (`seqserve serve`) on 127.0.0.1, driven by the asyncio client SDK
(`AsyncSeqServeClient.session()`, the Session bidi RPC) from this process:

1. Step latency at prefix 10, 100, 1,000, 10,000: one session per prefix, the prefix fed in
   500-step messages, then single-step messages timed; the sessions of one model take turns in
   short blocks, so every prefix is measured over the same minutes (noisy shared machine).
2. Recomputing the prefix: (a) sessions on `lstm64_aligned_recompute` (the same weights as
   `lstm64_aligned` behind an identity Permute the stepper cannot step: the server falls back to
   recomputing the whole prefix per message); (b) the caller without sessions: `Predict` on the
   whole prefix for every new step, on `lstm64_aligned` itself.
3. Steps/s with 1, 10 and 100 concurrent sessions, each sending single steps closed-loop, and
   the server's mean executed batch size from its metrics port (`seqserve_batch_size_sum/_count`
   deltas): cross-session batching.
4. The transport's own cost: the same single-step messages, in alternating blocks, to the
   server and to a session echo (`bench/session_echo.py`, its own process: gRPC + protobuf, no
   compute), for `lstm64_aligned` and `lstm64_8x8`.

The goals (issue 14: step round trip vs the echo, the server's step computation, recompute vs
step at prefix 1,000 and 10,000, one computation per several-step message; issue 4: flat cost
over the prefix) are computed from this run and written under "goals" in sessions.json, each
{goal, measured, target, met, reason}, for `make bench`'s goal table.

Writes bench/results/sessions.md and sessions.json, and prints the tables. Every loop is bounded
in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import servers
from bench.models import ALIGNED, CO2, RECOMPUTE, REFERENCE, BenchModel, available
from bench.run import _f, _load

RESULTS = Path(__file__).resolve().parent / "results"
PREFIXES = (10, 100, 1_000, 10_000)
FEED_CHUNK = 500  # steps per message while feeding a prefix
CONCURRENCY = (1, 10, 100)
CHANNELS = 4  # client channels the concurrent sessions spread over
CALL_TIMEOUT_S = 120.0
ECHOED = (ALIGNED, REFERENCE)  # models whose step round trip is compared with the session echo
STEP_VS_ECHO = 1.3  # goal: a step's round trip within this factor of the echo's
STEP_COMPUTE_MS = 0.2  # goal: the server's step computation at batch 1 (lstm64_8x8)
RECOMPUTE_AT_10K = 150  # goal: recomputing a 10,000-step prefix costs this many steps or more


def _pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e3


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(metrics_port: int, model: str) -> dict[str, float]:
    """The server's batch-size and compute-time histograms for `model`: sums and counts (all
    zero for a peer without metrics, the echo)."""
    if metrics_port < 0:
        return dict.fromkeys(("batch_size_sum", "batch_size_count", "compute_seconds_sum"), 0.0)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {}
    for name in ("batch_size_sum", "batch_size_count", "compute_seconds_sum"):
        m = re.search(rf'^seqserve_{name}\{{model="{model}"\}} (\S+)$', text, re.M)
        found[name] = float(m.group(1)) if m else 0.0
    return found


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


async def _feed(session, x: np.ndarray) -> None:
    for start in range(0, len(x), FEED_CHUNK):
        await session.step(x[start : start + FEED_CHUNK])


# -- 1 and 2a: step latency over sessions ----------------------------------------------------


async def step_latency(
    client,
    metrics_port: int,
    model: BenchModel,
    prefixes: tuple[int, ...],
    steps: int,
    seconds: float,
    block: int,
) -> list[dict]:
    """One session per prefix; single-step messages timed in turns of `block` per session."""
    rng = np.random.default_rng(1)
    sessions = {}
    support = "?"
    rows = []
    try:
        for prefix in prefixes:
            s = client.session(model.name, timeout=CALL_TIMEOUT_S * 10)
            await s.__aenter__()
            sessions[prefix] = s
            support = s.info.session_support.removeprefix("session_")
            before = await asyncio.to_thread(_metrics, metrics_port, model.name)
            t0 = time.perf_counter()
            await _feed(s, model.inputs(rng, 1, prefix)[0])
            feed_s = time.perf_counter() - t0
            fed = _delta(before, await asyncio.to_thread(_metrics, metrics_port, model.name))
            rows.append({
                "prefix": prefix, "feed_s": feed_s, "samples": [], "compute_s": 0.0,
                "feed_messages": -(-prefix // FEED_CHUNK),
                "feed_computations": fed["batch_size_count"],
                "feed_compute_s": fed["compute_seconds_sum"],
            })  # fmt: skip
        pending = {p: model.inputs(rng, 1, steps + 1)[0] for p in prefixes}
        end = time.perf_counter() + seconds
        done = dict.fromkeys(prefixes, 0)
        while time.perf_counter() < end and min(done.values()) < steps:
            for row in rows:
                p = row["prefix"]
                before = await asyncio.to_thread(_metrics, metrics_port, model.name)
                for _ in range(block):
                    if done[p] >= steps or time.perf_counter() >= end:
                        break
                    x = pending[p][done[p] : done[p] + 1]
                    t0 = time.perf_counter()
                    await sessions[p].step(x)
                    row["samples"].append(time.perf_counter() - t0)
                    done[p] += 1
                after = await asyncio.to_thread(_metrics, metrics_port, model.name)
                row["compute_s"] += _delta(before, after)["compute_seconds_sum"]
    finally:
        for s in sessions.values():
            s.cancel()
    for row in rows:
        samples = row.pop("samples")
        compute = row.pop("compute_s")
        row.update(
            compute_ms=compute / len(samples) * 1e3 if samples else None,
            model=model.name, how=f"session ({support})", steps=len(samples),
            p50_ms=_pct(samples, 0.5), p90_ms=_pct(samples, 0.9),
            mean_ms=statistics.fmean(samples) * 1e3 if samples else None,
        )  # fmt: skip
    return rows


# -- 4: the transport's own cost: the same session messages to the echo, in turns ------------


@dataclass
class Peer:
    """A server the round trip is measured on: its client, label and metrics port (-1: none)."""

    how: str
    client: Any
    metrics_port: int = -1


ECHO_HOW = "session echo (no compute)"
SERVER_HOW = "session, beside the echo"
BASELINE_HOW = "session, baseline server (--baseline-src)"


async def versus_echo(
    peers: list[Peer], model: BenchModel, steps: int, seconds: float, block: int
) -> list[dict]:
    """One session on each peer (the server, the session echo: bench/session_echo.py, and any
    other), all at prefix 10, single-step messages timed in alternating blocks: round-trip
    ratios within one run."""
    rng = np.random.default_rng(4)
    x = model.inputs(rng, 1, steps + 10)[0]
    opened, samples, compute = [], [[] for _ in peers], [0.0 for _ in peers]
    try:
        for peer in peers:
            opened.append(peer.client.session(model.name, timeout=CALL_TIMEOUT_S))
            await opened[-1].__aenter__()
            await opened[-1].step(x[:10])
        end, i = time.perf_counter() + seconds, 10
        while time.perf_counter() < end and i < len(x):
            for n, (peer, session) in enumerate(zip(peers, opened, strict=True)):
                before = await asyncio.to_thread(_metrics, peer.metrics_port, model.name)
                for j in range(i, min(i + block, len(x))):
                    t0 = time.perf_counter()
                    await session.step(x[j : j + 1])
                    samples[n].append(time.perf_counter() - t0)
                after = await asyncio.to_thread(_metrics, peer.metrics_port, model.name)
                compute[n] += _delta(before, after)["compute_seconds_sum"]
            i += block
    finally:
        for session in opened:
            session.cancel()
    return [
        {
            "model": model.name, "how": peer.how, "prefix": 10, "feed_s": None,
            "steps": len(samples[n]), "p50_ms": _pct(samples[n], 0.5),
            "p90_ms": _pct(samples[n], 0.9),
            "compute_ms": (
                compute[n] / len(samples[n]) * 1e3 if peer.metrics_port >= 0 and samples[n]
                else None
            ),
        }
        for n, peer in enumerate(peers)
    ]  # fmt: skip


# -- 2b: the caller without sessions: Predict on the whole prefix per step --------------------


async def predict_latency(
    client,
    metrics_port: int,
    model: BenchModel,
    prefixes: tuple[int, ...],
    steps: int,
    seconds: float,
) -> list[dict]:
    rng = np.random.default_rng(2)
    rows = []
    for prefix in prefixes:
        x = model.inputs(rng, 1, prefix + steps + 1)
        samples: list[float] = []
        end = time.perf_counter() + seconds
        await client.predict(model.name, x[:, :prefix], timeout=CALL_TIMEOUT_S)  # warm (shape)
        before = await asyncio.to_thread(_metrics, metrics_port, model.name)
        while len(samples) < steps and (time.perf_counter() < end or len(samples) < 3):
            t = prefix + len(samples) + 1
            t0 = time.perf_counter()
            await client.predict(model.name, x[:, :t], timeout=CALL_TIMEOUT_S)
            samples.append(time.perf_counter() - t0)
        after = await asyncio.to_thread(_metrics, metrics_port, model.name)
        compute = _delta(before, after)["compute_seconds_sum"]
        rows.append({
            "compute_ms": compute / len(samples) * 1e3,
            "model": model.name, "how": "Predict on the whole prefix", "prefix": prefix,
            "feed_s": None, "steps": len(samples), "p50_ms": _pct(samples, 0.5),
            "p90_ms": _pct(samples, 0.9), "mean_ms": statistics.fmean(samples) * 1e3,
        })  # fmt: skip
    return rows


# -- 3: concurrent sessions ------------------------------------------------------------------


async def concurrent(
    clients, model: BenchModel, n: int, seconds: float, warmup: float, server
) -> dict:
    rng = np.random.default_rng(3)
    x = model.inputs(rng, 1, 64)[0]
    sessions = []
    latencies: list[float] = []
    max_steps_each = 200_000 // n
    try:
        for i in range(n):
            s = clients[i % len(clients)].session(model.name, timeout=CALL_TIMEOUT_S)
            await s.__aenter__()
            await s.step(x[:10])
            sessions.append(s)
        start = time.perf_counter()
        begin, end = start + warmup, start + warmup + seconds
        marks: dict[str, tuple] = {}

        async def drive(s, i: int) -> None:
            for k in range(max_steps_each):
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                await s.step(x[(i + k) % 64 : (i + k) % 64 + 1])
                t1 = time.perf_counter()
                if begin <= t1 <= end:
                    latencies.append(t1 - t0)

        async def sample() -> None:
            for label, at in (("begin", begin), ("end", end)):
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                cpu = (_cpu(server.process.pid), time.process_time())
                marks[label] = (*cpu, await asyncio.to_thread(
                    _metrics, server.metrics_port, model.name))  # fmt: skip

        await asyncio.gather(sample(), *(drive(s, i) for i, s in enumerate(sessions)))
    finally:
        for s in sessions:
            s.cancel()
    (c0, p0, m0), (c1, p1, m1) = marks["begin"], marks["end"]
    d = _delta(m0, m1)
    n_comp = d["batch_size_count"]
    return {
        "model": model.name, "sessions": n, "steps": len(latencies),
        "steps_per_s": len(latencies) / seconds, "p50_ms": _pct(latencies, 0.5),
        "p90_ms": _pct(latencies, 0.9),
        "mean_batch": d["batch_size_sum"] / n_comp if n_comp else None,
        "computations": n_comp,
        "compute_ms": d["compute_seconds_sum"] / n_comp * 1e3 if n_comp else None,
        "server_cores": (c1 - c0) / seconds, "client_cores": (p1 - p0) / seconds,
    }  # fmt: skip


async def measure(server, echo, args, aligned: list[BenchModel], m2o: BenchModel) -> dict:
    from seqserve_client.aio import AsyncSeqServeClient

    quick = args.quick
    steps, seconds, block = (60, 4.0, 10) if quick else (200, 12.0, 20)
    target = server.target
    assert target.startswith("127.0.0.1:") and echo.target.startswith("127.0.0.1:")
    clients = [AsyncSeqServeClient(target, timeout=CALL_TIMEOUT_S) for _ in range(CHANNELS)]
    echo_client = AsyncSeqServeClient(echo.target, timeout=CALL_TIMEOUT_S)
    out: dict = {"latency": [], "concurrency": [], "versus_echo": []}
    try:
        client = clients[0]
        for model in ECHOED:
            print(f"  round trip beside the session echo: {model.name} ...", flush=True)
            peers = [Peer(SERVER_HOW, client, server.metrics_port), Peer(ECHO_HOW, echo_client)]
            out["versus_echo"] += await versus_echo(peers, model, 2 * steps, seconds, block)
        for model in [*aligned, m2o]:
            print(f"  step latency: {model.name} ...", flush=True)
            out["latency"] += await step_latency(
                client, server.metrics_port, model, PREFIXES, steps, seconds, block
            )
        print(f"  recompute: {RECOMPUTE.name} sessions ...", flush=True)
        n, t = (20, 6.0) if quick else (50, 15.0)
        out["latency"] += await step_latency(
            client, server.metrics_port, RECOMPUTE, PREFIXES, n, t, 2
        )
        print(f"  recompute: Predict on the whole prefix, {ALIGNED.name} ...", flush=True)
        out["latency"] += await predict_latency(
            client, server.metrics_port, ALIGNED, PREFIXES, *((20, 1.5) if quick else (50, 4.0))
        )
        duration, warmup = (2.0, 0.5) if quick else (4.0, 1.0)
        for model in [*aligned[: 1 if quick else 2], m2o]:
            for n in CONCURRENCY:
                print(f"  concurrency: {model.name}, {n} sessions ...", flush=True)
                out["concurrency"].append(
                    await concurrent(clients, model, n, duration, warmup, server)
                )
    finally:
        for c in [*clients, echo_client]:
            await c.close()
    return out


# -- report ----------------------------------------------------------------------------------


def _row(rows: list[dict], model: str, how: str, prefix: int) -> dict | None:
    for r in rows:
        if r["model"] == model and r["how"].startswith(how) and r["prefix"] == prefix:
            return r
    return None


def _goal(goal: str, measured: float | None, target: str, met: bool, reason: str = "") -> dict:
    return {"goal": goal, "measured": measured, "target": target, "met": met, "reason": reason}


def _ratio(a: dict | None, b: dict | None, key: str = "p50_ms") -> float | None:
    return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None


def goals(data: dict, incremental: list[str]) -> list[dict]:
    """Issue 14's session goals (and issue 4's prefix flatness), each from this run."""
    rows, pairs = data["latency"], data["versus_echo"]
    out = []
    for model in ECHOED:
        server = _row(pairs, model.name, "session, beside", 10)
        echo = _row(pairs, model.name, "session echo", 10)
        x = _ratio(server, echo)
        out.append(_goal(
            f"{model.name}: session step round trip ≤ {STEP_VS_ECHO}x the session echo's "
            "(1 session, p50)", x, f"≤ {STEP_VS_ECHO}x", x is not None and x <= STEP_VS_ECHO,
            "" if x is None or x <= STEP_VS_ECHO else
            f"server {_f(server and server['p50_ms'])} ms vs echo {_f(echo and echo['p50_ms'])} ms "
            f"p50; server step computation {_f(server and server['compute_ms'], 3)} ms (numpy "
            "calls, slower after each idle gap than in a loop); the rest is Python per message: "
            "the value check (core/inputs.py), the wrapper layers around each message "
            "(instrumentation, parsing) and gRPC. Next: fewer numpy calls per step "
            "(core/stepping), a cheaper finite check, fewer layers",
        ))  # fmt: skip
    ref = _row(pairs, REFERENCE.name, "session, beside", 10)
    ms = ref["compute_ms"] if ref else None
    out.append(_goal(
        f"{REFERENCE.name}: the server's step computation at batch 1 ≤ {STEP_COMPUTE_MS} ms",
        ms, f"≤ {STEP_COMPUTE_MS} ms", ms is not None and ms <= STEP_COMPUTE_MS,
        "" if ms is None or ms <= STEP_COMPUTE_MS else "see python -m bench.step_cost",
    ))  # fmt: skip
    for model in incremental:
        x = _ratio(_row(rows, model, "session", 10_000), _row(rows, model, "session", 10))
        out.append(_goal(
            f"{model}: step p50 at prefix 10,000 ≤ 1.2x at prefix 10", x, "≤ 1.2x",
            x is not None and x <= 1.2,
        ))  # fmt: skip
    step = {p: _row(rows, ALIGNED.name, "session", p) for p in (1_000, 10_000)}
    echo = _row(pairs, ALIGNED.name, "session echo", 10)
    cases = (
        (f"{RECOMPUTE.name} session (server recomputes)", RECOMPUTE.name, "session"),
        (f"{ALIGNED.name} Predict on the whole prefix", ALIGNED.name, "Predict"),
    )
    for label, name, how in cases:
        r = _row(rows, name, how, 1_000)
        x = _ratio(r, step[1_000])
        # A step can be no cheaper than the transport allows: the bound is recompute ÷ (1.3 echo)
        bound = _ratio(r, echo) / STEP_VS_ECHO if _ratio(r, echo) else None
        met = x is not None and bound is not None and x >= bound
        out.append(_goal(
            f"prefix 1,000: {label} ÷ {ALIGNED.name} session step (the transport caps it)", x,
            f"≥ {_f(bound, 1)}x (recompute ÷ {STEP_VS_ECHO} echo)", met,
            "" if met else "follows the round-trip goal above: the step's round trip is more "
            f"than {STEP_VS_ECHO}x the echo's",
        ))  # fmt: skip
        x = _ratio(_row(rows, name, how, 10_000), step[10_000])
        out.append(_goal(
            f"prefix 10,000: {label} ≥ {RECOMPUTE_AT_10K}x {ALIGNED.name} session step", x,
            f"≥ {RECOMPUTE_AT_10K}x", x is not None and x >= RECOMPUTE_AT_10K,
        ))  # fmt: skip
    fed = _row(rows, ALIGNED.name, "session", 10_000)
    per = fed["feed_computations"] / fed["feed_messages"] if fed else None
    out.append(_goal(
        f"several steps in one message: computations per {FEED_CHUNK}-step message "
        f"({ALIGNED.name}, 10,000 steps fed)", per, "1 (one computation per message)",
        per == 1,
        f"server compute {_f(fed and fed['feed_compute_s'] / 10_000 * 1e3, 4)} ms per step fed",
    ))  # fmt: skip
    return out


def goal_table(rows: list[dict]) -> str:
    out = ["| goal | measured | target | met | reason |", "|---|---:|---|---|---|"]
    for g in rows:
        out.append(
            f"| {g['goal']} | {_f(g['measured'], 3)} | {g['target']} | "
            f"{'✅' if g['met'] else '❌'} | {g['reason']} |"
        )
    return "\n".join(out)


def render(data: dict, elapsed: float, quick: bool) -> str:
    rows, conc = data["latency"], data["concurrency"]
    out = [
        "# seqserve sessions benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores · "
        f"load average before the run {data['load']} · Python {platform.python_version()} · "
        f"{'--quick · ' if quick else ''}whole run {elapsed:.0f} s. One production server "
        "(`seqserve serve`) on 127.0.0.1; the client is the asyncio SDK "
        "(`AsyncSeqServeClient.session()` / `.predict()`) in another process on the same 2 "
        "cores. Compare ratios within this run, not absolute numbers across runs (shared, noisy "
        "machine).",
        "",
        "## Step latency by prefix length (1 session, 1 step per message)",
        "",
        "The prefix is fed in 500-step messages (`feed s`), then single-step messages are timed "
        "(round trip: client encode, gRPC, step, response). Sessions of one model take turns in "
        "short blocks. `x prefix 10` = p50 ÷ the same model's p50 at prefix 10. `server "
        "compute ms` = Δ`seqserve_compute_seconds_sum` (server metrics) per timed message: the "
        "step (or whole-prefix) computation alone; the rest of the round trip is transport and "
        "Python on both sides.",
        "",
        "| model | how | prefix | feed s | steps timed | p50 ms | p90 ms | server compute ms "
        "| x prefix 10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = _row(rows, r["model"], r["how"].split(" ")[0], 10)
        x = r["p50_ms"] / base["p50_ms"] if base and base["p50_ms"] and r["p50_ms"] else None
        out.append(
            f"| {r['model']} | {r['how']} | {r['prefix']:,} | {_f(r['feed_s'])} | {r['steps']}"
            f" | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['compute_ms'], 3)} | {_f(x)} |"
        )
    out += [
        "",
        "## Step round trip beside the session echo (1 session, 1 step per message)",
        "",
        "The same single-step messages, in alternating blocks, to the server and to "
        "`bench/session_echo.py` (a grpc.aio Session that parses each message and answers a "
        "prebuilt output of the model's shape: gRPC + protobuf only).",
        "",
        "| model | peer | steps timed | p50 ms | p90 ms | server compute ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in data["versus_echo"]:
        out.append(
            f"| {r['model']} | {r['how']} | {r['steps']} | {_f(r['p50_ms'])} | "
            f"{_f(r['p90_ms'])} | {_f(r['compute_ms'], 3)} |"
        )
    out += ["", "## Goals", "", goal_table(data["goals"])]
    out += [
        "",
        "## Concurrent sessions (closed loop, 1 step per message)",
        "",
        f"Sessions spread over {CHANNELS} client channels. `mean batch` = Δ"
        "`seqserve_batch_size_sum` ÷ Δ`seqserve_batch_size_count` over the measured window "
        "(server metrics port): session steps per executed computation; `compute ms` = server "
        "time per computation (Δ`seqserve_compute_seconds_sum` ÷ Δcount).",
        "",
        "| model | sessions | steps/s | p50 ms | p90 ms | computations | mean batch | compute ms "
        "| server cores | client cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in conc:
        out.append(
            f"| {c['model']} | {c['sessions']} | {_f(c['steps_per_s'], 0)} | {_f(c['p50_ms'])}"
            f" | {_f(c['p90_ms'])} | {c['computations']:.0f} | {_f(c['mean_batch'], 1)}"
            f" | {_f(c['compute_ms'], 3)}"
            f" | {_f(c['server_cores'])} | {_f(c['client_cores'])} |"
        )
    return "\n".join(out) + "\n"


async def round_trips(running: dict[str, servers.Running], steps: int, seconds: float) -> list:
    """`--round-trip`: part 4 alone, longer, with every peer in `running` (by its `how`)."""
    from seqserve_client.aio import AsyncSeqServeClient

    clients = {
        how: AsyncSeqServeClient(r.target, timeout=CALL_TIMEOUT_S) for how, r in running.items()
    }
    peers = [Peer(how, clients[how], r.metrics_port) for how, r in running.items()]
    rows: list[dict] = []
    try:
        for model in ECHOED:
            print(f"  round trips: {model.name} ...", flush=True)
            rows += await versus_echo(peers, model, steps, seconds, 20)
    finally:
        for c in clients.values():
            await c.close()
    return rows


def render_round_trips(rows: list[dict], command: str) -> str:
    out = [
        "# seqserve session step round trip",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores · "
        f"`{command}`. Single-step messages on one session per peer, timed in alternating "
        "blocks of 20 (one run, side by side); `x echo` = p50 ÷ the session echo's p50.",
        "",
        "| model | peer | steps timed | p50 ms | p90 ms | server compute ms | x echo |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        x = _ratio(r, _row(rows, r["model"], ECHO_HOW, 10))
        out.append(
            f"| {r['model']} | {r['how']} | {r['steps']} | {_f(r['p50_ms'], 3)} | "
            f"{_f(r['p90_ms'], 3)} | {_f(r['compute_ms'], 3)} | {_f(x)} |"
        )
    return "\n".join(out) + "\n"


def _write_models(tmpdir: str, names: list[str]) -> tuple[Path, Path]:
    """The models' repository and the session echo's shapes file, under `tmpdir`."""
    repo = Path(tmpdir) / "repo"
    print(f"writing models to {repo} ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "bench.models", str(repo), "-", *names],
        check=True, timeout=180, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    shapes = Path(tmpdir) / "shapes.json"
    shapes.write_text(json.dumps({m.name: list(m.output_shape) for m in ECHOED}))
    return repo, shapes


def round_trip_main(args: argparse.Namespace) -> int:
    """Only the step round trip beside the echo (and a baseline server's, given its sources)."""
    command = "python -m bench.sessions --round-trip" + (
        f" --baseline-src {args.baseline_src}" if args.baseline_src else ""
    )
    with tempfile.TemporaryDirectory(prefix="seqserve-round-trip-") as tmpdir:
        repo, shapes = _write_models(tmpdir, [m.name for m in ECHOED])
        print("starting the servers and the session echo ...", flush=True)
        running = {SERVER_HOW: servers.serve(repo, [])}
        try:
            if args.baseline_src:
                path = str(args.baseline_src.resolve())
                running[BASELINE_HOW] = servers.serve(repo, [], {"PYTHONPATH": path})
            running[ECHO_HOW] = servers.echo(shapes, module="bench.session_echo")
            rows = asyncio.run(
                asyncio.wait_for(round_trips(running, args.steps, args.seconds), 900)
            )
        finally:
            for r in running.values():
                r.stop()
    report = render_round_trips(rows, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "session_round_trip.md").write_text(report)
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and shorter points")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--round-trip", action="store_true",
        help="only the step round trip beside the echo (results/session_round_trip.md)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-src", type=Path,
        help="with --round-trip: also a server run from this copy of server/src (e.g. "
        "`git archive REV server/src | tar -x -C DIR`, then DIR/server/src)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=2000, help="--round-trip: steps per peer")
    parser.add_argument("--seconds", type=float, default=40.0, help="--round-trip: per model")
    args = parser.parse_args(argv)
    if args.round_trip:
        return round_trip_main(args)
    started = time.time()
    load = _load()
    aligned = available([ALIGNED, CO2])
    m2o = REFERENCE
    names = [m.name for m in (*aligned, RECOMPUTE, m2o)]
    with tempfile.TemporaryDirectory(prefix="seqserve-sessions-") as tmpdir:
        repo, shapes = _write_models(tmpdir, names)
        print("starting the server and the session echo ...", flush=True)
        server = servers.serve(repo, [])
        echo = servers.echo(shapes, module="bench.session_echo")
        try:
            data = asyncio.run(asyncio.wait_for(measure(server, echo, args, aligned, m2o), 900))
        finally:
            echo.stop()
            server.stop()
    data["load"] = load
    data["goals"] = goals(data, [m.name for m in (*aligned, m2o)])
    elapsed = time.time() - started
    report = render(data, elapsed, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sessions.md").write_text(report)
    (args.out / "sessions.json").write_text(json.dumps(data, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
