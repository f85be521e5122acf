"""The SDK's credentials: a token travels as `authorization: Bearer`, never over plaintext to
another machine. An in-process health server stands in for seqserve (no models needed)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from seqserve_client import AsyncSeqServeClient, SeqServeClient


class Recording(health.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.authorization: list[str | None] = []

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.authorization.append(dict(context.invocation_metadata()).get("authorization"))
        return super().Check(request, context)


@pytest.fixture
def plaintext_server() -> Iterator[tuple[str, Recording]]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    recording = Recording()
    health_pb2_grpc.add_HealthServicer_to_server(recording, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", recording
    server.stop(0)


def test_a_token_to_this_machine_over_plaintext_needs_the_opt_in(
    plaintext_server: tuple[str, Recording],
) -> None:
    target, recording = plaintext_server
    with SeqServeClient(target, token="s3cret", plaintext_token_on_localhost=True, timeout=10) as c:
        assert c.health()
    assert recording.authorization == ["Bearer s3cret"]


@pytest.mark.parametrize("client", [SeqServeClient, AsyncSeqServeClient])
@pytest.mark.parametrize(
    ("target", "opt_in"),
    [("127.0.0.1:8500", False), ("10.1.2.3:8500", True), ("localhost.example.com:8500", True)],
)
def test_a_token_over_plaintext_is_refused(client: type, target: str, opt_in: bool) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        client(target, token="s3cret", plaintext_token_on_localhost=opt_in)


def test_a_client_certificate_needs_its_key_and_credentials_exclude_the_rest() -> None:
    with pytest.raises(ValueError, match="go together"):
        SeqServeClient("localhost:8500", client_certificate=b"pem")
    with pytest.raises(ValueError, match="replaces"):
        SeqServeClient("localhost:8500", token="t", credentials=grpc.ssl_channel_credentials())
