"""The SDK's retry policy against a scripted in-process server: a shed call
(RESOURCE_EXHAUSTED) is retried after the server's `grpc-retry-pushback-ms`, a negative pushback
stops retries, and the client's default deadline applies to unary calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_client import ResourceExhaustedError, SeqServeClient
from seqserve_client.calls import DEFAULT_TIMEOUT_S
from seqserve_client.channel import SERVICE_CONFIG


class Shedding(pb_grpc.SeqServeServicer):
    """ListModels: refused `refusals` times with the given pushback, then answered."""

    def __init__(self) -> None:
        self.refusals = 0
        self.pushback = "0"
        self.calls: list[float] = []

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.refusals:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed")
        return pb.ListModelsResponse()


@pytest.fixture
def shedding() -> Iterator[tuple[Shedding, str]]:
    servicer = Shedding()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_SeqServeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_a_shed_call_is_retried_after_the_servers_pushback(
    shedding: tuple[Shedding, str],
) -> None:
    servicer, target = shedding
    servicer.refusals, servicer.pushback = 1, "400"
    with SeqServeClient(target) as client:
        assert client.list_models() == []
    assert len(servicer.calls) == 2
    assert servicer.calls[1] - servicer.calls[0] >= 0.35


def test_a_negative_pushback_stops_retries(shedding: tuple[Shedding, str]) -> None:
    servicer, target = shedding
    servicer.refusals, servicer.pushback = 5, "-1"
    with SeqServeClient(target) as client, pytest.raises(ResourceExhaustedError):
        client.list_models()
    assert len(servicer.calls) == 1


def test_the_service_config_throttles_retries_and_unary_calls_have_a_default_deadline() -> None:
    assert SERVICE_CONFIG["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    assert SeqServeClient("127.0.0.1:1").timeout == DEFAULT_TIMEOUT_S == 30.0
