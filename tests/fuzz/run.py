"""Drive fuzz cases and valid traffic against a running server; collect what came back.

One asyncio loop in the caller's process: `concurrency` tasks send cases, `valid_callers` tasks
send valid traffic on a channel of their own, a sampler reads the server's RSS. Bounded by the
case count and by `time_limit_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tests.support.server_process import rss_bytes

from . import valid
from .cases import Case, make_case
from .targets import Target, discover

FORBIDDEN = ("INTERNAL", "UNKNOWN")
# Zoo models (tests/support/model_zoo.py) `python -m tests.fuzz` serves beside the repository's:
# several inputs (static ones, two sequence inputs on one time axis, static token ids, inputs of
# different lengths that refuse sessions) and several outputs, for the fields that name them.
ZOO_MODELS = (
    "several_in_out", "static_initial_state", "two_aligned_sequences", "static_token_ids",
    "seq2seq_teacher_forcing",
)  # fmt: skip
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


def with_zoo(repository: Path, zoo: tuple[str, ...], root: Path) -> Path:
    """A repository at `root`: the models of `repository` (linked) and the `zoo` models saved."""
    from tests.support.model_zoo import save_zoo

    for model in repository.iterdir():
        if model.is_dir() and any(v.is_dir() and v.name.isdigit() for v in model.iterdir()):
            (root / model.name).symlink_to(model.resolve(), target_is_directory=True)
    return save_zoo(root, zoo)


@dataclass
class FuzzConfig:
    cases: int = 300
    seed: int = 1
    concurrency: int = 8
    valid_callers: int = 2
    deadline_s: float = 10.0  # per case
    time_limit_s: float = 900.0
    rss_growth_limit: float = 0.10  # over the second half of the run
    rss_limit_bytes: int = 3 * 1024**3


@dataclass
class Finding:
    seed: int
    index: int
    rpc: str
    code: str
    tags: list[str]
    details: str

    def __str__(self) -> str:
        return (
            f"case {self.seed}:{self.index} {self.rpc} [{', '.join(self.tags)}] -> {self.code}: "
            f"{self.details[:200]}"
        )


@dataclass
class FuzzReport:
    config: FuzzConfig
    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    unparsed: Counter[str] = field(default_factory=Counter)  # codes for requests that do not parse
    findings: list[Finding] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    valid: valid.ValidStats = field(default_factory=valid.ValidStats)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)
    rss_half: int = 0
    alive: bool = True
    seconds: float = 0.0
    done: int = 0

    def problems(self) -> list[str]:
        """What breaks the promise: empty when the run passed."""
        out = [str(f) for f in self.findings[:20]]
        if len(self.findings) > 20:
            out.append(f"... {len(self.findings) - 20} more INTERNAL/UNKNOWN")
        if not self.alive:
            out.append("the server stopped answering")
        if self.done < self.config.cases:
            out.append(f"only {self.done} of {self.config.cases} cases ran in the time limit")
        if self.valid.failures or not self.valid.total:
            out += [f"valid: {f}" for f in self.valid.failures[:20]] or ["no valid traffic ran"]
        _, end, peak = self.rss_figures()
        if self.rss_half and end > self.rss_half * (1 + self.config.rss_growth_limit):
            out.append(f"RSS grew from {self.rss_half >> 20} MiB at half-time to {end >> 20} MiB")
        if peak > self.config.rss_limit_bytes:
            out.append(f"RSS peaked at {peak >> 20} MiB")
        return out

    def rss_figures(self) -> tuple[int, int, int]:
        values = [b for _, b in self.rss] or [0]
        return values[0], values[-1], max(values)

    def summary(self) -> str:
        start, end, peak = self.rss_figures()
        lines = [
            f"fuzz: {self.done} cases (seed {self.config.seed}) in {self.seconds:.1f} s",
            f"{'rpc':<18}{'cases':>7}  status codes",
        ]
        for rpc, codes in sorted(self.codes.items()):
            listed = ", ".join(f"{c} {n}" for c, n in codes.most_common())
            lines.append(f"{rpc:<18}{sum(codes.values()):>7}  {listed}")
        if self.unparsed:
            listed = ", ".join(f"{c} {n}" for c, n in self.unparsed.most_common())
            lines.append(f"{'(not parsing)':<18}{sum(self.unparsed.values()):>7}  {listed}")
        v = self.valid
        per_kind = ", ".join(f"{k} {v.ok[k]}/{v.calls[k]}" for k in sorted(v.calls))
        lines += [
            f"INTERNAL/UNKNOWN: {len(self.findings)}",
            f"past the {self.config.deadline_s:g} s case deadline: {len(self.slow)}",
            *(f"  {slow}" for slow in self.slow[:10]),
            f"valid traffic: {v.ok_percent:.2f}% OK of {v.total} ({per_kind}), equal to Keras",
            f"server RSS: {start >> 20} MiB at start, {self.rss_half >> 20} MiB at half-time, "
            f"{end >> 20} MiB at end, peak {peak >> 20} MiB",
            f"server alive: {self.alive}",
        ]
        return "\n".join(lines)


async def execute(
    channel: grpc.aio.Channel, sync_channel: grpc.Channel, case: Case, timeout: float
) -> tuple[str, str]:
    """Send one case as raw bytes; the status code it ends with and its details.

    Sessions go through the synchronous client (in a thread): when the server ends a stream
    while the asyncio client is still writing, that client reports its own INTERNAL ("Internal
    error from Core", grpc/grpc#36066) in place of the status the server sent.
    """
    if case.shape == "bidi":
        return await asyncio.to_thread(_bidi, sync_channel, case, timeout)
    try:
        if case.shape == "unary":
            await channel.unary_unary(case.method)(case.messages[0], timeout=timeout)
        elif case.shape == "server_stream":
            stream = channel.unary_stream(case.method)(case.messages[0], timeout=timeout)
            async for _ in stream:
                if case.method.endswith("/Watch"):  # answers once, then only on changes
                    stream.cancel()
                    return "OK", ""
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        return (code.name if code else "NONE"), exc.details() or ""
    return "OK", ""


def _bidi(channel: grpc.Channel, case: Case, timeout: float) -> tuple[str, str]:
    try:
        for _ in channel.stream_stream(case.method)(iter(case.messages), timeout=timeout):
            pass
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        return (code.name if code else "NONE"), exc.details() or ""  # type: ignore[attr-defined]
    return "OK", ""


async def fuzz(
    target: str,
    pid: int,
    repository: Path,
    config: FuzzConfig,
    log: bool = False,
    credentials: grpc.ChannelCredentials | None = None,
) -> FuzzReport:
    """Run `config.cases` cases with valid traffic beside them against the server at `target`
    (over TLS, with a token, when `credentials` are given)."""
    report = FuzzReport(config)
    began = time.monotonic()
    async with (
        _aio_channel(target, credentials) as fuzz_channel,
        _aio_channel(target, credentials) as valid_channel,
    ):
        sync_channel = (
            grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
            if credentials
            else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        targets = await discover(valid_channel)
        probes = valid.make_probes(valid.steady_targets(targets), repository, config.seed)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(pid, report, began, stop))
        callers = [
            asyncio.create_task(valid.caller(valid_channel, probes, report.valid, stop, i))
            for i in range(config.valid_callers)
        ]
        next_index = iter(range(config.cases))
        deadline = began + config.time_limit_s
        workers = [
            _worker((fuzz_channel, sync_channel), targets, next_index, report, deadline, log)
            for _ in range(config.concurrency)
        ]
        await asyncio.gather(*workers)
        stop.set()
        await asyncio.gather(*callers, sampler)
        report.alive = await _alive(valid_channel, pid)
        sync_channel.close()
    report.seconds = time.monotonic() - began
    return report


def _aio_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials:
        return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


async def _worker(
    channels: tuple[grpc.aio.Channel, grpc.Channel],
    targets: list[Target],
    indices: object,
    report: FuzzReport,
    deadline: float,
    log: bool,
) -> None:
    config = report.config
    for index in indices:  # type: ignore[attr-defined]  # shared iterator: each index once
        if time.monotonic() > deadline:
            return
        case = make_case(config.seed, index, targets)
        started = time.monotonic()
        code, details = await execute(*channels, case, config.deadline_s)
        elapsed = time.monotonic() - started
        report.done += 1
        if case.parses:
            report.codes[case.rpc][code] += 1
        else:
            report.unparsed[code] += 1
        finding = Finding(config.seed, index, case.rpc, code, case.tags, details)
        if code in FORBIDDEN:  # whether the request parses or not
            report.findings.append(finding)
        if code == "DEADLINE_EXCEEDED" and elapsed >= config.deadline_s * 0.99:
            report.slow.append(str(finding))
        if log and report.done % 1000 == 0:
            print(f"  {report.done} cases, {len(report.findings)} findings", flush=True)


async def _sample_rss(pid: int, report: FuzzReport, began: float, stop: asyncio.Event) -> None:
    while True:
        rss = rss_bytes(pid)
        if rss:
            report.rss.append((time.monotonic() - began, rss))
        if not report.rss_half and report.done >= report.config.cases // 2:
            report.rss_half = rss
        if stop.is_set():
            return
        await asyncio.sleep(0.5)


async def _alive(channel: grpc.aio.Channel, pid: int) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if not rss_bytes(pid):
        return False
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
