"""Health, reflection, listings and metadata: what generic tools and users see."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from seqserve_client import SeqServeClient
from tests.support.model_zoo import GOOD_MODELS


def test_health_overall_service_and_per_model(client: SeqServeClient, server) -> None:
    assert client.health()
    assert client.health("seqserve.v1.SeqServe")
    for name in GOOD_MODELS:
        assert client.health(name), name
    for failed in ("unsafe", "corrupt", "wrong_mode"):
        assert not client.health(failed)
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("unknown service must be NOT_FOUND")


def test_reflection_lists_and_describes_the_api(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"seqserve.v1.SeqServe", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("seqserve.v1.SeqServe")
        methods = {m.name for m in service.methods}
    assert {"Predict", "PredictStream", "Session", "ListModels", "GetModelMetadata"} <= methods


def test_list_models_reports_failures_with_reasons(client: SeqServeClient) -> None:
    listed = {(m.name, m.version): m for m in client.list_models()}
    for name in GOOD_MODELS:
        assert listed[(name, 1)].state == "ready", name
    assert listed[("aligned", 2)].state == "ready"
    assert listed[("unsafe", 1)].state == "failed"
    assert "safe_mode" in listed[("unsafe", 1)].error
    assert listed[("corrupt", 1)].state == "failed"
    assert (
        "contradict" in listed[("wrong_mode", 1)].error
        or "states mode" in listed[("wrong_mode", 1)].error
    )


def test_metadata(client: SeqServeClient) -> None:
    meta = client.metadata("classifier")
    assert meta.mode == "many_to_one"
    assert meta.input.shape == (-1, -1, 3) and meta.input.dtype == "float32"
    assert meta.output.shape == (-1, 4)
    assert meta.labels == ("w", "x", "y", "z")
    assert meta.max_sequence_length == 50
    assert meta.state == "ready" and not meta.streams_steps
    aligned = client.metadata("aligned")
    assert aligned.version == 2 and aligned.versions == (1, 2)
    assert aligned.streams_steps
    assert client.metadata("aligned", version=1).version == 1
    assert client.metadata("generator").session_support == "session_unsupported"
    assert client.metadata("cropped").input.shape == (-1, 10, 3)
    assert client.metadata("enc_dec").output.shape == (-1, 4, 1)
    assert client.metadata("iris_like").description == "one-to-one test"
    failed = client.metadata("unsafe")
    assert failed.state == "failed" and "Lambda" in failed.error


def test_modes_are_inferred(client: SeqServeClient) -> None:
    modes = {m.name: m.mode for m in client.list_models()}
    assert modes["iris_like"] == "one_to_one"
    assert modes["generator"] == "one_to_many"
    assert modes["classifier"] == "many_to_one"
    assert modes["gru"] == "many_to_many_aligned"
    assert modes["enc_dec"] == "many_to_many_unaligned"
    assert modes["cropped"] == "many_to_many_unaligned"
