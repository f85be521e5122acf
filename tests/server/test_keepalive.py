"""Long, quiet sessions keep their connection (issue 23): the server's ping policy lets the
callers' keepalive pings through, for SDK sessions (sync and asyncio) and Open Inference
sequences on a stream alike.

The fast tests shorten both ends by configuration: callers ping every second, the server
allows a ping every 0.5 s (gRPC's default of 2 strikes). Under gRPC's own policy, which the
server ran by mistake (one ping per 5 minutes while a call is open), the fourth ping of a quiet
call closed the connection with GOAWAY `too_many_pings`, ~3-4 s into the silence. The slow test
runs the production defaults: the SDK pings every 30 s, the server allows every 10 s."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton

from seqserve_client import AsyncSeqServeClient, SeqServeClient
from tests.support.model_zoo import FEATURES
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served

TOLERANCE = 1e-5
PING_MS = 1_000  # the callers' keepalive in the fast tests
QUIET_S = 6.0  # six pings, more than the old policy let through
SERVER_FLAGS = ("--min-ping-interval-s", "0.5")
SDK_OPTIONS = [("grpc.keepalive_time_ms", PING_MS)]


@pytest.fixture(scope="module")
def quick_pings(small_repository: Path) -> Iterator[ServerProcess]:
    with served(small_repository, *SERVER_FLAGS) as process:
        yield process


@pytest.fixture(scope="module")
def expected(small_repository: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The served `aligned` model computed in-process on a whole sequence."""
    model = loader(small_repository)("aligned")
    return lambda x: np.asarray(model(x[None], training=False))[0]


def sequence(seed: int, steps: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, FEATURES)).astype(np.float32)


def test_sync_session_outlives_a_quiet_gap(
    quick_pings: ServerProcess, expected: Callable[[np.ndarray], np.ndarray]
) -> None:
    x = sequence(1)
    with (
        SeqServeClient(quick_pings.target, options=SDK_OPTIONS) as client,
        client.session("aligned") as s,
    ):
        first = s.step(x[:2])
        time.sleep(QUIET_S)
        rest = s.step(x[2:])
    np.testing.assert_allclose(np.concatenate([first, rest]), expected(x), atol=TOLERANCE)


async def _quiet_session(target: str, x: np.ndarray, quiet_s: float, **client: Any) -> np.ndarray:
    async with AsyncSeqServeClient(target, **client) as c, c.session("aligned") as s:
        first = await s.step(x[:2])
        await asyncio.sleep(quiet_s)
        rest = await s.step(x[2:])
    return np.concatenate([first, rest])


def test_asyncio_session_outlives_a_quiet_gap(
    quick_pings: ServerProcess, expected: Callable[[np.ndarray], np.ndarray]
) -> None:
    x = sequence(2)
    got = asyncio.run(_quiet_session(quick_pings.target, x, QUIET_S, options=SDK_OPTIONS))
    np.testing.assert_allclose(got, expected(x), atol=TOLERANCE)


def _sequence_step(x: np.ndarray, *, start: bool, end: bool) -> dict[str, Any]:
    tensor = triton.InferInput("input", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None])
    return {
        "model_name": "aligned",
        "inputs": [tensor],
        "sequence_id": 23,
        "sequence_start": start,
        "sequence_end": end,
    }


def test_open_inference_sequence_stream_outlives_a_quiet_gap(
    quick_pings: ServerProcess, expected: Callable[[np.ndarray], np.ndarray]
) -> None:
    """A stock tritonclient with keepalive on, one sequence on one `ModelStreamInfer` stream."""
    x = sequence(3)
    pings = triton.KeepAliveOptions(keepalive_time_ms=PING_MS, http2_max_pings_without_data=0)
    client = triton.InferenceServerClient(quick_pings.target, keepalive_options=pings)
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer(**_sequence_step(x[:2], start=True, end=False))
        first, error = received.get(timeout=60)
        assert error is None, error
        time.sleep(QUIET_S)
        assert received.empty(), f"the stream ended while quiet: {received.get()[1]}"
        client.async_stream_infer(**_sequence_step(x[2:], start=False, end=True))
        rest, error = received.get(timeout=60)
        assert error is None, error
    finally:
        client.stop_stream()
        client.close()
    got = np.concatenate([first.as_numpy("output")[0], rest.as_numpy("output")[0]])
    np.testing.assert_allclose(got, expected(x), atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_keepalive_session_outlives_130_s_of_quiet(
    small_repository: Path, expected: Callable[[np.ndarray], np.ndarray]
) -> None:
    """As a sensor reporting every two minutes uses it: SDK and server defaults, a step, 130 s
    of quiet (four SDK pings), a step."""
    x = sequence(4)
    with served(small_repository) as server:
        got = asyncio.run(_quiet_session(server.target, x, 130.0))
    np.testing.assert_allclose(got, expected(x), atol=TOLERANCE)
