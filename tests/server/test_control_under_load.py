"""Health and control calls stay responsive while Predict saturates the server (issue 25):
health, reflection, model metadata and v2 ServerLive / ServerReady answer from memory on the
event loop, never behind inference. A load generator in its own process keeps 256 Predict calls
in flight for LOAD_S seconds; this process probes each control call every 20 ms and reports the
latencies (run with -s to see them). The bound is loose: 2 shared cores also run the load, the
prober and whatever else the machine does; the numbers are what the issue asks for."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from seqserve.inference import grpc_service_pb2 as v2
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, served

LOAD_S = 8.0
P99_BOUND_S = 0.5  # loose: a shared 2-core machine; the goal is 20 ms
LOAD = """
import asyncio, sys, time
import grpc, numpy as np
from seqserve.v1 import seqserve_pb2 as pb, seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_batch

async def main(target, seconds):
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]
    request = pb.PredictRequest(model_name="aligned",
                                inputs=to_batch(np.ones((1, 50, 3), np.float32)))
    end, done = time.monotonic() + seconds, [0]
    async def caller(i):
        stub = pb_grpc.SeqServeStub(channels[i % 8])
        while time.monotonic() < end:
            try:
                await stub.Predict(request, timeout=5)
                done[0] += 1
            except grpc.RpcError:
                pass
    await asyncio.gather(*(caller(i) for i in range(256)))
    print(done[0] / seconds, flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def server(small_repository: Path) -> Iterator[ServerProcess]:
    with served(small_repository) as process:
        yield process


def probes(channel: grpc.Channel) -> dict[str, Callable[[], Any]]:
    """One control call of each kind, each a blocking call with a 5 s deadline."""
    health = health_pb2_grpc.HealthStub(channel)
    v1 = pb_grpc.SeqServeStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    def v2_call(method: str, request: Any, reply: Any) -> Callable[[], Any]:
        rpc = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply.FromString,
        )
        return lambda: rpc(request, timeout=5)

    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    return {
        "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
        "metadata": lambda: v1.GetModelMetadata(
            pb.GetModelMetadataRequest(model_name="aligned"), timeout=5
        ),
        "v2_live": v2_call("ServerLive", v2.ServerLiveRequest(), v2.ServerLiveResponse),
        "v2_ready": v2_call("ServerReady", v2.ServerReadyRequest(), v2.ServerReadyResponse),
        "reflection": lambda: list(reflection.ServerReflectionInfo(iter([listing]), timeout=5)),
    }


def probe_until(stop: Callable[[], bool], calls: dict[str, Callable[[], Any]]) -> dict[str, list]:
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    while not stop():
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
        time.sleep(0.02)
    return seconds


def summary(seconds: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """p50 and p99 in ms per probe."""
    return {
        name: (float(np.percentile(s, 50)) * 1e3, float(np.percentile(s, 99)) * 1e3)
        for name, s in seconds.items()
    }


@pytest.mark.slow
def test_control_calls_answer_promptly_while_predict_saturates(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        calls = probes(channel)
        idle_end = time.monotonic() + 2
        idle = summary(probe_until(lambda: time.monotonic() > idle_end, calls))
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, server.target, str(LOAD_S)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # the load ramps up (imports, connections)
        loaded = summary(probe_until(lambda: load.poll() is not None, calls))
        out, _ = load.communicate(timeout=60)
    rate = float(out.split()[-1])
    print(f"\nPredict under load: {rate:.0f}/s")
    for name in calls:
        print(
            f"{name:>10}: idle p50 {idle[name][0]:.1f} ms p99 {idle[name][1]:.1f} ms | "
            f"loaded p50 {loaded[name][0]:.1f} ms p99 {loaded[name][1]:.1f} ms"
        )
    assert rate > 50, "the load generator saturated nothing"
    assert all(p99 / 1e3 < P99_BOUND_S for _, p99 in loaded.values()), loaded
