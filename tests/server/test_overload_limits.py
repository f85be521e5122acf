"""Overload at the edges (issue 25): a caller's choice is no server ERROR, and the SDK never
waits silently at the server's per-connection stream limit.

One server of `aligned` (sessions raised to 2,000) with `--max-streams-per-connection 16`:
- sessions whose callers cancel them or let their deadline pass are counted in
  `seqserve_requests_abandoned_total{model,reason}`, one each, and log no ERROR;
- 600 sessions from one asyncio client all open, spread over channels of 16 streams each;
  capped at fewer channels, the rest fail at once with StreamLimitError naming the limit;
- a burst of unary calls past one connection's limit completes, or fails fast when capped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqserve_client import AsyncSeqServeClient, StreamLimitError
from tests.support.metrics import scrape, value
from tests.support.model_zoo import FEATURES, write_repository
from tests.support.server_process import ServerProcess, served

STREAMS = 16  # the server's --max-streams-per-connection here
SESSIONS = 600
ABANDONED = 8  # sessions per reason


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = write_repository(tmp_path_factory.mktemp("limited"), only={"aligned"})
    config = root / "aligned" / "config.yaml"
    settings = yaml.safe_load(config.read_text()) or {}
    config.write_text(yaml.safe_dump({**settings, "max_sessions": 2000}))
    with served(Path(root), "--max-streams-per-connection", str(STREAMS)) as process:
        yield process


def error_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.output().splitlines() if " ERROR " in line]


def abandoned(server: ServerProcess, reason: str) -> float:
    text = scrape(server)
    return value(text, "seqserve_requests_abandoned_total", model="aligned", reason=reason)


async def cancelled_and_expired(target: str) -> None:
    """ABANDONED sessions cancelled after a step, ABANDONED more whose 0.5 s deadline passes
    while the server waits for their next message."""
    step = np.ones((1, FEATURES), np.float32)
    async with AsyncSeqServeClient(target, timeout=30) as client:

        async def cancel() -> None:
            session = await client.session("aligned")
            await session.step(step)
            session.cancel()

        async def expire() -> None:
            session = await client.session("aligned", timeout=0.5)
            await session.step(step)
            await asyncio.sleep(1.5)
            session.cancel()  # long gone on the server: its deadline ended the call

        await asyncio.gather(*(cancel() for _ in range(ABANDONED)))
        await asyncio.gather(*(expire() for _ in range(ABANDONED)))


def test_abandoned_calls_are_counted_by_reason_and_log_no_error(limited: ServerProcess) -> None:
    errors = len(error_lines(limited))
    before = {r: abandoned(limited, r) for r in ("cancelled", "deadline")}
    asyncio.run(cancelled_and_expired(limited.target))
    wanted = {r: before[r] + ABANDONED for r in before}
    settle = time.monotonic() + 10
    while {r: abandoned(limited, r) for r in before} != wanted and time.monotonic() < settle:
        time.sleep(0.1)
    assert error_lines(limited)[errors:] == []
    assert {r: abandoned(limited, r) for r in before} == wanted


async def open_sessions(target: str, n: int, max_channels: int) -> tuple[int, list[Exception]]:
    """Open n sessions at once from one client; the number opened and the failures."""
    client = AsyncSeqServeClient(target, streams_per_channel=STREAMS, max_channels=max_channels)
    sessions = [client.session("aligned", timeout=60) for _ in range(n)]
    try:
        results = await asyncio.gather(*(s.open() for s in sessions), return_exceptions=True)
        failed = [r for r in results if isinstance(r, Exception)]
        opened = [s for s, r in zip(sessions, results, strict=True) if r is s]
        step = np.ones((1, FEATURES), np.float32)
        await asyncio.gather(*(s.step(step) for s in opened[:: max(1, len(opened) // 20)]))
        await asyncio.gather(*(s.close() for s in opened))
        return len(opened), failed
    finally:
        await client.close()


def test_six_hundred_sessions_from_one_client_all_open(limited: ServerProcess) -> None:
    channels = -(-SESSIONS // STREAMS)
    opened, failed = asyncio.run(open_sessions(limited.target, SESSIONS, channels))
    assert (opened, failed) == (SESSIONS, [])


def test_sessions_past_the_client_limit_fail_at_once(limited: ServerProcess) -> None:
    start = time.monotonic()
    opened, failed = asyncio.run(open_sessions(limited.target, 100, max_channels=4))
    assert opened == 4 * STREAMS
    assert len(failed) == 100 - 4 * STREAMS
    assert all(isinstance(f, StreamLimitError) for f in failed)
    assert "max_channels=4 x streams_per_channel=16" in str(failed[0])
    assert time.monotonic() - start < 60  # nothing waited for a stream that never ends


async def unary_burst(target: str, n: int, max_channels: int) -> tuple[int, list[Exception]]:
    x = np.ones((1, 50, FEATURES), np.float32)
    async with AsyncSeqServeClient(
        target, streams_per_channel=STREAMS, max_channels=max_channels
    ) as client:
        results = await asyncio.gather(
            *(client.predict("aligned", x) for _ in range(n)), return_exceptions=True
        )
        channels = len(client._pool.channels)
    failed = [r for r in results if isinstance(r, Exception)]
    return channels, failed


def test_a_burst_of_unary_calls_spreads_over_channels_or_fails_fast(
    limited: ServerProcess,
) -> None:
    channels, failed = asyncio.run(unary_burst(limited.target, 4 * STREAMS, max_channels=8))
    assert failed == [] and 2 <= channels <= 4
    channels, failed = asyncio.run(unary_burst(limited.target, 4 * STREAMS, max_channels=1))
    assert channels == 1
    assert len(failed) == 3 * STREAMS
    assert all(isinstance(f, StreamLimitError) for f in failed)
