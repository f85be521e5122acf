"""Soak: ~64 callers of mixed valid Predict, PredictStream and Session traffic for a bounded time
against a real server on 127.0.0.1; every answer must be OK and equal to in-process Keras, the
server's RSS must not grow more than 5% after the warm-up, and its open sessions and file
descriptors must come back to their baseline once the callers are gone.

`python -m bench.soak [--duration-s 600] [--callers 64] [--repository models]` (`make soak`);
tests/server/test_soak.py runs 60 s of it in the slow suite. The traffic is tests/fuzz/valid.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from tests.fuzz import valid
from tests.fuzz.targets import Target, discover
from tests.support.server_process import open_fds, rss_bytes, start_server

CHANNELS = 8  # callers share these connections, as a few client processes would
SETTLE_S = 20.0  # how long sessions and descriptors may take to come back after the load


@dataclass
class SoakConfig:
    duration_s: float = 600.0
    callers: int = 64
    warmup_s: float = 0.0  # 0: a tenth of the duration
    seed: int = 1
    rss_growth_limit: float = 0.05

    @property
    def warmup(self) -> float:
        return self.warmup_s or self.duration_s / 10


@dataclass
class SoakReport:
    config: SoakConfig
    traffic: valid.ValidStats = field(default_factory=valid.ValidStats)
    rss_start: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    fds_baseline: int = 0
    fds_end: int = 0
    sessions_baseline: int = 0
    sessions_end: int = 0
    seconds: float = 0.0

    @property
    def rss_growth(self) -> float:
        return (self.rss_end - self.rss_warm) / self.rss_warm if self.rss_warm else 0.0

    def problems(self) -> list[str]:
        out = [f"error: {f}" for f in self.traffic.failures[:20]]
        if len(self.traffic.failures) > 20:
            out.append(f"... {len(self.traffic.failures) - 20} more errors")
        if not self.traffic.total:
            out.append("no traffic ran")
        if self.rss_growth > self.config.rss_growth_limit:
            out.append(
                f"RSS grew {self.rss_growth:.1%} after warm-up "
                f"({self.rss_warm >> 20} -> {self.rss_end >> 20} MiB)"
            )
        if self.fds_end > self.fds_baseline:
            out.append(f"file descriptors: {self.fds_baseline} before, {self.fds_end} after")
        if self.sessions_end != self.sessions_baseline:
            out.append(f"open sessions: {self.sessions_baseline} before, {self.sessions_end} after")
        return out

    def summary(self) -> str:
        t = self.traffic
        per_kind = ", ".join(f"{k} {t.ok[k]}/{t.calls[k]}" for k in sorted(t.calls))
        latencies = sorted(t.latencies) or [0.0]
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        return "\n".join([
            f"soak: {self.config.callers} callers for {self.seconds:.0f} s "
            f"(warm-up {self.config.warmup:.0f} s)",
            f"calls: {t.total} ({t.total / max(self.seconds, 1e-9):.0f}/s), "
            f"{len(t.failures)} errors, {t.ok_percent:.2f}% OK and equal to Keras ({per_kind})",
            f"latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
            f"server RSS: {self.rss_start >> 20} MiB at start, {self.rss_warm >> 20} MiB after "
            f"warm-up, {self.rss_end >> 20} MiB at end (growth {self.rss_growth:+.1%}), "
            f"peak {self.rss_peak >> 20} MiB",
            f"file descriptors: {self.fds_baseline} before, {self.fds_end} after",
            f"open sessions: {self.sessions_baseline} before, {self.sessions_end} after",
        ])  # fmt: skip


async def open_sessions(stub: pb_grpc.SeqServeStub, targets: list[Target]) -> int:
    total = 0
    for name in sorted({t.name for t in targets}):
        request = pb.GetModelMetadataRequest(model_name=name)
        total += (await stub.GetModelMetadata(request, timeout=30)).open_sessions
    return total


async def soak(target: str, pid: int, repository: Path, config: SoakConfig) -> SoakReport:
    report = SoakReport(config)
    async with grpc.aio.insecure_channel(target) as control:
        stub = pb_grpc.SeqServeStub(control)
        targets = await discover(control)
        probes = valid.make_probes(valid.steady_targets(targets), repository, config.seed)
        report.sessions_baseline = await open_sessions(stub, targets)
        report.fds_baseline = open_fds(pid)
        report.rss_start = report.rss_peak = rss_bytes(pid)
        began = time.monotonic()
        await _load(target, probes, report, pid, began)
        report.seconds = time.monotonic() - began
        report.rss_end = rss_bytes(pid)
        report.sessions_end, report.fds_end = await _settle(stub, targets, pid, report)
    return report


async def _load(
    target: str, probes: list[valid.Probe], report: SoakReport, pid: int, began: float
) -> None:
    """The callers on their own channels (closed at the end), and an RSS sampler."""
    config = report.config
    stop = asyncio.Event()
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    try:
        callers = [
            asyncio.create_task(
                valid.caller(channels[i % CHANNELS], probes, report.traffic, stop, config.seed + i)
            )
            for i in range(config.callers)
        ]
        while (elapsed := time.monotonic() - began) < config.duration_s:
            await asyncio.sleep(1.0)
            rss = rss_bytes(pid)
            report.rss_peak = max(report.rss_peak, rss)
            if not report.rss_warm and elapsed >= config.warmup:
                report.rss_warm = rss
        stop.set()
        await asyncio.gather(*callers)
    finally:
        for channel in channels:
            await channel.close()


async def _settle(
    stub: pb_grpc.SeqServeStub, targets: list[Target], pid: int, report: SoakReport
) -> tuple[int, int]:
    """Open sessions and descriptors once back at their baseline, or after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        sessions, fds = await open_sessions(stub, targets), open_fds(pid)
        settled = sessions == report.sessions_baseline and fds <= report.fds_baseline
        if settled or time.monotonic() > deadline:
            return sessions, fds
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--warmup-s", type=float, default=0.0, help="0: a tenth of the duration")
    parser.add_argument("--repository", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    config = SoakConfig(args.duration_s, args.callers, args.warmup_s)
    server = start_server(args.repository)
    print(f"soaking {server.target} (pid {server.process.pid}) serving {args.repository}")
    try:
        report = asyncio.run(soak(server.target, server.process.pid, args.repository, config))
    finally:
        server.stop()
    print(report.summary())
    for problem in report.problems():
        print("PROBLEM:", problem)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
