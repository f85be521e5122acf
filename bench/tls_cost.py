"""What mutual TLS and a token cost the server: CPU per request, plaintext vs secured, one run.

Two production servers side by side on 127.0.0.1 serving digit_classifier (one plaintext; one
with --tls-cert/--tls-key/--tls-client-ca and --auth-tokens-file), measured in alternating
rounds by the asyncio SDK (closed loop, one channel, --callers callers, one sequence per call).
Server CPU comes from /proc/<pid>/stat around each point.

    .venv/bin/python -m bench.tls_cost [--rounds 2] [--seconds 8] [--callers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploy.make_certs import Authority, Grant, write_tokens
from seqserve_client import AsyncSeqServeClient
from tests.support.server_process import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[1]
MODEL = "digit_classifier"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(target: str, client: dict[str, Any], seconds: float, callers: int) -> int:
    x = np.random.default_rng(0).integers(0, 17, size=(1, 8, 8)).astype(np.float32)
    done = 0
    async with AsyncSeqServeClient(target, **client) as c:
        await c.predict(MODEL, x)  # connect (and handshake) outside the window
        end = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < end:
                await c.predict(MODEL, x)
                done += 1

        await asyncio.gather(*(caller() for _ in range(callers)))
    return done


def secured_server(repo: Path, d: Path) -> tuple[ServerProcess, dict[str, Any]]:
    ca = Authority("bench CA")
    (d / "ca.crt").write_bytes(ca.pem)
    ca.server("localhost", dns_names=("localhost",)).write(d, "server")
    ca.client("bench").write(d, "client")
    grant = Grant("bench")
    write_tokens(d / "tokens.yaml", [grant])
    server = start_server(
        repo, "--compute-threads", "1", "--tls-cert", str(d / "server.crt"),
        "--tls-key", str(d / "server.key"), "--tls-client-ca", str(d / "ca.crt"),
        "--auth-tokens-file", str(d / "tokens.yaml"),
    )  # fmt: skip
    client = {
        "tls": True,
        "root_certificates": (d / "ca.crt").read_bytes(),
        "client_certificate": (d / "client.crt").read_bytes(),
        "client_key": (d / "client.key").read_bytes(),
        "token": grant.token,
    }
    return server, client


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--callers", type=int, default=16)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="seqserve-tls-cost-"))
    repo = d / "repository"
    shutil.copytree(ROOT / "models" / MODEL, repo / MODEL)
    plain = start_server(repo, "--compute-threads", "1")
    secured, client = secured_server(repo, d)
    servers = {
        "plaintext": (plain, plain.target, {}),
        "mTLS + token": (secured, f"localhost:{secured.port}", client),
    }
    print(f"{MODEL}, {args.callers} callers, {args.seconds:.0f} s per point")
    print("| server | round | req/s | server CPU ms/req |\n|---|---:|---:|---:|")
    try:
        for r in range(args.rounds):
            for name, (server, target, kw) in servers.items():
                before = cpu_s(server.process.pid)
                calls = asyncio.run(closed_loop(target, kw, args.seconds, args.callers))
                used = cpu_s(server.process.pid) - before
                rate = calls / args.seconds
                print(f"| {name} | {r} | {rate:,.0f} | {1e3 * used / max(calls, 1):.2f} |")
    finally:
        plain.stop()
        secured.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
