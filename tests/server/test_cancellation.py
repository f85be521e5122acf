"""Callers that go away mid-call leave nothing behind: 1,000 streams and sessions cancelled at
random points (before any answer, after the first, mid-stream) leave 0 open sessions, 0 items
queued in any batcher and 0 calls in flight, and the server answers as before."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_batch, to_tensor
from seqserve_client import SeqServeClient
from tests.support.metrics import scrape, value
from tests.support.model_zoo import FEATURES
from tests.support.server_process import ServerProcess

CALLS = 1000
CONCURRENCY = 64
SESSION_MODELS = ["aligned", "gru", "classifier", "stacked"]


async def cancelled_stream(stub: pb_grpc.SeqServeStub, r: random.Random) -> int:
    """A long PredictStream (8 x 200 steps) cancelled after 0, 1 or a few parts."""
    x = np.ones((8, 200, FEATURES), np.float32)
    call = stub.PredictStream(pb.PredictRequest(model_name="aligned", inputs=to_batch(x)))
    for _ in range(r.choice([0, 0, 1, 5])):
        await call.read()
    call.cancel()
    return 0


async def cancelled_session(stub: pb_grpc.SeqServeStub, r: random.Random) -> int:
    """A session cancelled before or after it opened, or in the middle of its steps; 1 if the
    server had opened it."""
    call = stub.Session()
    await call.write(pb.SessionRequest(open=pb.SessionOpen(model_name=r.choice(SESSION_MODELS))))
    opened = 0
    if r.random() < 0.8:
        opened = int((await call.read()).WhichOneof("kind") == "opened")
        steps = np.ones((r.choice([1, 5]), FEATURES), np.float32)
        for _ in range(r.choice([0, 1, 3])):
            await call.write(pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(steps))))
    if r.random() < 0.5:
        await asyncio.sleep(r.random() * 0.005)
    call.cancel()
    return opened


async def cancel_many(target: str) -> int:
    r = random.Random(10)
    gate = asyncio.Semaphore(CONCURRENCY)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SeqServeStub(channel)

        async def one(i: int) -> int:
            async with gate:
                kind = cancelled_stream if i % 2 else cancelled_session
                return await kind(stub, r)

        return sum(await asyncio.gather(*(one(i) for i in range(CALLS))))


def left_behind(server: ServerProcess) -> dict[str, float]:
    text = scrape(server)
    return {
        name: value(text, name)
        for name in ("seqserve_open_sessions", "seqserve_queue_depth", "seqserve_inflight_requests")
    }


def test_a_thousand_cancelled_streams_and_sessions_leave_nothing_behind(
    server: ServerProcess, client: SeqServeClient
) -> None:
    opened = asyncio.run(cancel_many(server.target))
    assert opened > 200, "sessions were open when their callers went away"
    deadline = time.monotonic() + 10
    while any(left_behind(server).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left_behind(server) == dict.fromkeys(left_behind(server), 0.0)
    assert all(client.metadata(m).open_sessions == 0 for m in SESSION_MODELS)
    x = np.ones((1, 5, FEATURES), np.float32)
    assert client.predict("aligned", x).shape == (1, 5, 2)
