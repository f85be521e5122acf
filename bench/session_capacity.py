"""Live sessions one server carries (issue 25): step latency and throughput at 1,000, 5,000 and
10,000 open sessions, each stepping once a second.

    python -m bench.session_capacity [--sessions 1000,5000,10000] [--seconds 20] [--clients 2]

One `seqserve serve` of the bundled `co2_next_week` alone (a copy of its config with
`max_sessions` 20,000; `--max-concurrent-rpcs 20000`) on 127.0.0.1. The asyncio SDK in
`--clients` processes (each its own event loop; sessions spread over up to 64 connections of
256 streams each) opens its share of the sessions, 500 a second; each session sends one step a
second from the moment it opens, so opens arrive while the server carries the sessions already
open (past capacity the server refuses new sessions rather than slow every open one). After
the ramp, `--seconds` are measured. Reported per point: sessions opened and refused (by error),
steps per second and step p50/p99 in the measured window, and the server's resident memory per
open session (RSS with the sessions open minus RSS before, over the sessions open). Bounded:
points x (ramp + seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.models import BUNDLED, CO2
from bench.servers import serve

OPENS_PER_S = 500
PERIOD_S = 1.0
MAX_SESSIONS = 20_000


def repository() -> Path:
    """co2_next_week alone, its weights linked, its config allowing MAX_SESSIONS sessions."""
    root = Path(tempfile.mkdtemp(prefix="session-capacity-"))
    source = BUNDLED / CO2.name
    target = root / CO2.name
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.keras").symlink_to((source / "1" / "model.keras").resolve())
    config = yaml.safe_load((source / "config.yaml").read_text()) or {}
    (target / "config.yaml").write_text(yaml.safe_dump({**config, "max_sessions": MAX_SESSIONS}))
    return root


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def client(target: str, sessions: int, seconds: float, opened_at: float) -> dict[str, Any]:
    """(One client process) open `sessions` sessions at OPENS_PER_S (this process's share), each
    stepping once per period as soon as it is open, until `seconds` after `opened_at` (wall
    clock: every process's opens are done); steps from `opened_at` on are timed."""
    import numpy as np

    from seqserve_client import AsyncSeqServeClient, SeqServeError

    refused: Counter[str] = Counter()
    latencies: list[float] = []
    step = np.ones((1, 1), np.float32)
    start = time.perf_counter() + (opened_at - time.time())  # on this process's clock
    end = start + seconds
    rng = random.Random(sessions)
    async with AsyncSeqServeClient(target, max_channels=64, timeout=None) as sdk:
        live = []

        async def run(session: Any) -> None:
            await asyncio.sleep(rng.random() * PERIOD_S)
            while (t0 := time.perf_counter()) < end:
                try:
                    await session.step(step)
                except SeqServeError as exc:
                    refused[f"step {exc.code.name}"] += 1
                    return
                if t0 >= start:
                    latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(max(0.0, PERIOD_S - (time.perf_counter() - t0)))

        async def open_and_run() -> None:
            session = sdk.session(CO2.name)
            try:
                live.append(await session.open())
            except SeqServeError as exc:
                refused[f"{exc.code.name} {exc.reason}".strip()] += 1
                return
            await run(session)

        tasks = []
        for _ in range(sessions):
            tasks.append(asyncio.create_task(open_and_run()))
            await asyncio.sleep(1 / OPENS_PER_S)
        await asyncio.gather(*tasks)
        await asyncio.gather(*(s.close() for s in live), return_exceptions=True)
    return {"opened": len(live), "refused": dict(refused), "latencies": latencies}


def point(target: str, pid: int, sessions: int, seconds: float, clients: int) -> dict[str, Any]:
    before = rss_bytes(pid)
    ramp = sessions / clients / OPENS_PER_S + 5
    opened_at = time.time() + ramp
    share = [sessions // clients + (i < sessions % clients) for i in range(clients)]
    command = [sys.executable, "-m", "bench.session_capacity", "--client", target]
    procs = [
        subprocess.Popen([*command, str(n), str(seconds), str(opened_at)], stdout=subprocess.PIPE)
        for n in share
    ]
    time.sleep(ramp + seconds / 2)
    during = rss_bytes(pid)
    results = [json.loads(p.communicate(timeout=ramp + seconds + 120)[0]) for p in procs]
    opened = sum(r["opened"] for r in results)
    refused: Counter[str] = Counter()
    latencies = sorted(x for r in results for x in r["latencies"])
    for r in results:
        refused.update(r["refused"])

    def pct(q: float) -> float | None:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else None
        )

    return {
        "sessions": sessions, "opened": opened, "refused": dict(refused),
        "steps_per_s": len(latencies) / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "rss_per_session_kib": (during - before) / max(opened, 1) / 1024,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [
        "| sessions | opened | refused | steps/s | step p50 / p99 ms | server RSS per session |",
        "|---:|---:|---|---:|---|---:|",
    ]
    for r in rows:
        refused = ", ".join(f"{k} {v:,}" for k, v in r["refused"].items()) or "-"
        p50, p99 = (f"{r[k]:.1f}" if r[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
        lines.append(
            f"| {r['sessions']:,} | {r['opened']:,} | {refused} | {r['steps_per_s']:,.0f} "
            f"| {p50} / {p99} | {r['rss_per_session_kib']:.1f} KiB |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--client":
        target, n, seconds, opened_at = sys.argv[2], int(sys.argv[3]), *map(float, sys.argv[4:])
        print(json.dumps(asyncio.run(client(target, n, seconds, opened_at))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1000,5000,10000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--server-args", default="", help="extra `seqserve serve` flags")
    args = parser.parse_args()
    flags = ["--metrics-port", "-1", "--max-concurrent-rpcs", str(MAX_SESSIONS)]
    server = serve(repository(), [*flags, *args.server_args.split()])
    rows = []
    try:
        for n in (int(x) for x in args.sessions.split(",")):
            rows.append(point(server.target, server.process.pid, n, args.seconds, args.clients))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    print(table(rows))


if __name__ == "__main__":
    main()
