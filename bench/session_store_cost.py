"""`python -m bench.session_store_cost [--steps N]`: what `--session-store-write every-step` costs
a Triton sequence (issue 23, part 4).

A throwaway redis-server (tests/support/redis_server.py) and three production servers sharing a
session key serve `lstm64_aligned` (LSTM(64) -> Dense(1), aligned, 8 features) on 127.0.0.1:
without a store, with a store written on drain (nothing per step), and with every-step writes
(the sequence sealed and written to Redis before each answer). One stock tritonclient caller per
server runs one long sequence, one step per ModelInfer, in alternating blocks so that all three
see the same machine; each server gets `--steps` measured requests after a warm-up.

Prints the table (and writes bench/results/session_store_cost.md): per-request round trip p50,
mean, p90, p99, the ratio to no store, and the stored token's size.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import tritonclient.grpc as triton

from bench.models import write_repositories
from seqserve_server.core.session_tokens import SessionKeys, SessionSnapshot
from seqserve_server.redis_store import RedisStore
from tests.support import redis_server
from tests.support.server_process import ServerProcess, served

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "lstm64_aligned"
FEATURES = 8
BLOCK = 40  # requests per block
WARMUP = 20
SEQUENCE = 7


def _request(x: np.ndarray, start: bool) -> dict:
    tensor = triton.InferInput("input", [1, 1, FEATURES], "FP32")
    tensor.set_data_from_numpy(x.reshape(1, 1, FEATURES))
    return {
        "model_name": MODEL,
        "inputs": [tensor],
        "sequence_id": SEQUENCE,
        "sequence_start": start,
    }


def run(steps: int) -> str:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, redis_server.redis_server() as url:
        repository = Path(tmp) / "repo"
        write_repositories(repository, None, [MODEL])
        keys = Path(tmp) / "session.keys"
        keys.write_text(secrets.token_hex(32) + "\n")
        common = ["--session-key-file", str(keys)]
        variants = {
            "no store": common,
            "store, on-drain": [*common, "--session-store", url],
            "store, every-step": [
                *common, "--session-store", url, "--session-store-write", "every-step",
            ],
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in variants}
        with (
            served(repository, *variants["no store"]) as plain,
            served(repository, *variants["store, on-drain"]) as drain,
            served(repository, *variants["store, every-step"]) as every,
        ):
            servers: dict[str, ServerProcess] = {
                "no store": plain, "store, on-drain": drain, "store, every-step": every,
            }  # fmt: skip
            clients = {n: triton.InferenceServerClient(s.target) for n, s in servers.items()}
            try:
                for client in clients.values():  # open, warm up
                    for i in range(WARMUP):
                        x = rng.normal(size=FEATURES).astype(np.float32)
                        client.infer(**_request(x, i == 0))
                deadline = time.monotonic() + 600
                while min(len(t) for t in times.values()) < steps and time.monotonic() < deadline:
                    for name, client in clients.items():
                        for _ in range(min(BLOCK, steps - len(times[name]))):
                            x = rng.normal(size=FEATURES).astype(np.float32)
                            started = time.perf_counter()
                            client.infer(**_request(x, False))
                            times[name].append(time.perf_counter() - started)
                token = redis.Redis.from_url(url).strlen(f"seqserve:seq:{MODEL}:{SEQUENCE}")
            finally:
                for client in clients.values():
                    client.close()
        parts = asyncio.run(_parts(url, steps))
    return _table(times, int(token), steps) + _parts_table(parts)


async def _parts(url: str, count: int) -> dict[str, list[float]]:
    """An every-step write's two parts in-process: sealing an LSTM(64) state (h and c, as the
    server's checkpoint does) and the compare-and-swap write of the token to Redis."""
    keys = SessionKeys([secrets.token_bytes(32)])
    state = {name: np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
             for name in ("h", "c")}  # fmt: skip
    store = RedisStore(url)
    parts: dict[str, list[float]] = {"seal": [], "Redis write (compare-and-swap)": []}
    previous: bytes | None = None
    try:
        for step in range(count):
            snapshot = SessionSnapshot(
                MODEL, 1, "0" * 64, "0" * 64, state, step, 0, False, False, "", time.time()
            )
            started = time.perf_counter()
            token = keys.seal(snapshot)
            sealed = time.perf_counter()
            await store.put("bench:token", token, 60, replacing=previous)
            parts["seal"].append(sealed - started)
            parts["Redis write (compare-and-swap)"].append(time.perf_counter() - sealed)
            previous = token
        await store.delete("bench:token")
    finally:
        await store.close()
    return parts


def _parts_table(parts: dict[str, list[float]]) -> str:
    lines = ["", "Of which, in-process (the server's own code, same machine):", ""]
    lines += ["| part | p50 ms | mean ms |", "|---|---:|---:|"]
    for name, values in parts.items():
        ms = np.array(values) * 1000
        lines.append(f"| {name} | {np.percentile(ms, 50):.3f} | {ms.mean():.3f} |")
    return "\n".join(lines) + "\n"


def _table(times: dict[str, list[float]], token_bytes: int, steps: int) -> str:
    base = statistics.median(times["no store"])
    lines = [
        f"Triton sequence of `{MODEL}`, one step per ModelInfer, {steps} requests per server "
        f"(alternating blocks of {BLOCK}); stored token {token_bytes} bytes.",
        "",
        "| server | p50 ms | mean ms | p90 ms | p99 ms | p50 vs no store |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        ms = np.array(values) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        lines.append(
            f"| {name} | {p50:.3f} | {ms.mean():.3f} | {p90:.3f} | {p99:.3f} | "
            f"{p50 / (base * 1000):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    table = run(args.steps)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "session_store_cost.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
