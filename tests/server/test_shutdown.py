"""SIGTERM under load loses nothing: every call the server accepted completes, every other call
gets UNAVAILABLE before it starts, and a client with retries sees no failure (issue 10 found 22
calls ending CANCELLED: `grpc.aio`'s stop kills calls it has queued but not started)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_batch
from tests.support.channels import RETRYING
from tests.support.model_zoo import FEATURES
from tests.support.server_process import ServerProcess, free_port, start_server

CALLERS = 32


def two_replicas(repository: Path) -> tuple[ServerProcess, ServerProcess]:
    """Two servers on one port (SO_REUSEPORT), as in a rolling restart: one stops, one stays."""
    port = str(free_port())
    started: list[ServerProcess] = []
    threads = [
        threading.Thread(target=lambda: started.append(
            start_server(repository, "--port", port, "--reuse-port", "true")
        ))
        for _ in range(2)
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 2, "both replicas start"
    return started[0], started[1]


async def load(target: str, stopping: ServerProcess, seconds_after: float) -> list[Counter[str]]:
    """32 callers in a closed loop, each on a connection of its own, half of them retrying;
    SIGTERM to `stopping` after 3 s; the loop ends `seconds_after` its exit."""
    request = pb.PredictRequest(
        model_name="aligned", inputs=to_batch(np.ones((4, 50, FEATURES), np.float32))
    )
    plain: Counter[str] = Counter()
    retrying: Counter[str] = Counter()
    end = [float("inf")]

    async def caller(retries: bool) -> None:
        options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
        if retries:
            options += RETRYING
        codes = retrying if retries else plain
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.SeqServeStub(channel)
            while time.monotonic() < end[0]:
                try:
                    await stub.Predict(request, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[f"{exc.code().name}: {exc.details()}"] += 1

    async def terminate() -> None:
        await asyncio.sleep(3)
        stopping.process.send_signal(signal.SIGTERM)
        while stopping.process.poll() is None:
            await asyncio.sleep(0.05)
        end[0] = time.monotonic() + seconds_after

    await asyncio.gather(terminate(), *(caller(i % 2 == 1) for i in range(CALLERS)))
    return [plain, retrying]


def test_sigterm_under_load_completes_or_refuses_every_call(small_repository: Path) -> None:
    first, second = two_replicas(small_repository)
    try:
        plain, retrying = asyncio.run(load(first.target, first, seconds_after=1.0))
        assert first.process.wait(30) == 0
    finally:
        first.stop()
        second.stop()
    unavailable = [c for c in plain if c.startswith("UNAVAILABLE")]
    assert set(plain) - {"OK", *unavailable} == set(), f"only OK or UNAVAILABLE: {plain}"
    assert retrying.keys() == {"OK"}, f"a client with retries sees no failure: {retrying}"
    assert plain["OK"] > 100 and retrying["OK"] > 100
    assert "held calls refused" in first.output()
