"""Model management through real gRPC: seqserve.v1 LoadModel/UnloadModel, the Open Inference
Protocol through stock `tritonclient`, and `--repository-poll-s` picking up versions while
traffic runs. The server runs on its own temp repository (this module changes it)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_batch
from seqserve_client import AsyncSeqServeClient, ModelNotFoundError, SeqServeClient
from seqserve_client.errors import FailedPreconditionError
from tests.support.metrics import scrape, value
from tests.support.model_zoo import aligned, write_repository
from tests.support.on_disk import save_corrupt, save_model
from tests.support.server_process import ServerProcess, served

POLL_S = 0.3
TRAFFIC_S = 3.0  # of Predict calls, from each of two threads, while a version is swapped in


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("managed"), {"aligned", "iris_like"})


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with served(root, "--repository-poll-s", str(POLL_S), "--model-control", "explicit") as process:
        yield process


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.SeqServeStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SeqServeStub(channel)


def _statuses(stub: pb_grpc.SeqServeStub, name: str) -> dict[int, pb.ModelStatus]:
    return {m.version: m for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == name}


def _health(server: ServerProcess, name: str) -> int:
    with grpc.insecure_channel(server.target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return check(health_pb2.HealthCheckRequest(service=name), timeout=10).status


def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _predict(stub: pb_grpc.SeqServeStub, name: str, x: np.ndarray) -> pb.PredictResponse:
    return stub.Predict(pb.PredictRequest(model_name=name, inputs=to_batch(x)), timeout=30)


def _move_in(model_dir: Path, number: int, write: Callable[[Path], None]) -> None:
    """Write a version beside the model, then move it into place at once (as operators should:
    a poll must never see a half-written file)."""
    staging = model_dir.parent / f".staging-{number}"
    write(staging)
    staging.rename(model_dir / str(number))


IRIS = np.ones((2, 4), np.float32)
SEQ = np.ones((1, 6, 3), np.float32)


def test_v1_unload_and_load(server: ServerProcess, stub: pb_grpc.SeqServeStub) -> None:
    before = _predict(stub, "iris_like", IRIS)
    answer = stub.UnloadModel(pb.UnloadModelRequest(model_name="iris_like"))
    assert [(v.version, v.state) for v in answer.versions] == [(1, pb.UNLOADED)]
    status = _statuses(stub, "iris_like")[1]
    assert status.state == pb.UNLOADED
    assert abs(status.state_changed_unix_ms / 1000 - time.time()) < 60
    with pytest.raises(grpc.RpcError) as caught:
        _predict(stub, "iris_like", IRIS)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unloaded" in caught.value.details()
    assert _health(server, "iris_like") == health_pb2.HealthCheckResponse.NOT_SERVING
    answer = stub.LoadModel(pb.LoadModelRequest(model_name="iris_like"))
    assert [(v.version, v.state) for v in answer.versions] == [(1, pb.READY)]
    assert _health(server, "iris_like") == health_pb2.HealthCheckResponse.SERVING
    after = _predict(stub, "iris_like", IRIS)
    assert after.vectors == before.vectors
    metadata = stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name="iris_like"))
    assert metadata.state == pb.READY
    assert metadata.state_changed_unix_ms >= status.state_changed_unix_ms
    with pytest.raises(grpc.RpcError) as caught:
        stub.LoadModel(pb.LoadModelRequest(model_name="no_such_model"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    metrics = scrape(server)
    changes = "seqserve_model_changes_total"
    assert value(metrics, changes, model="iris_like", event="unloaded") == 1
    assert value(metrics, changes, model="iris_like", event="loaded") == 2  # at start, reload


def test_sdk_clients_unload_and_load(server: ServerProcess) -> None:
    with SeqServeClient(server.target) as client:
        unloaded = client.unload_model("iris_like")
        assert [(s.version, s.state) for s in unloaded] == [(1, "unloaded")]
        with pytest.raises(FailedPreconditionError):
            client.predict("iris_like", IRIS)
        assert [(s.version, s.state) for s in client.load_model("iris_like")] == [(1, "ready")]

    async def both_ways() -> list[str]:
        async with AsyncSeqServeClient(server.target) as client:
            states = [s.state for s in await client.unload_model("iris_like")]
            states += [s.state for s in await client.load_model("iris_like")]
            with pytest.raises(ModelNotFoundError):
                await client.load_model("no_such_model")
            return states

    assert asyncio.run(both_ways()) == ["unloaded", "ready"]


def test_tritonclient_load_unload_and_index(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.target)
    try:
        client.unload_model("iris_like")
        assert not client.is_model_ready("iris_like")
        index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
        assert index[("iris_like", "1")].state == "UNAVAILABLE"
        assert "unloaded" in index[("iris_like", "1")].reason
        client.load_model("iris_like")
        assert client.is_model_ready("iris_like")
        index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
        assert index[("iris_like", "1")].state == "READY"
    finally:
        client.close()


def test_unload_ends_an_open_session_clearly(server: ServerProcess) -> None:
    with SeqServeClient(server.target) as client, client.session("aligned") as session:
        session.step(np.ones((2, 3), np.float32), emit=True)
        with grpc.insecure_channel(server.target) as channel:
            pb_grpc.SeqServeStub(channel).UnloadModel(pb.UnloadModelRequest(model_name="aligned"))
        with pytest.raises(FailedPreconditionError, match="session ended: the model was unloaded"):
            session.step(np.ones((2, 3), np.float32), emit=True)
    with grpc.insecure_channel(server.target) as channel:
        pb_grpc.SeqServeStub(channel).LoadModel(pb.LoadModelRequest(model_name="aligned"))


def test_polling_swaps_in_a_new_version_under_traffic_without_failures(
    root: Path, stub: pb_grpc.SeqServeStub
) -> None:
    counts = {"ok": 0, "failed": 0}
    versions: set[int] = set()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                versions.add(_predict(stub, "aligned", SEQ).model_version)
                counts["ok"] += 1
            except grpc.RpcError:
                counts["failed"] += 1

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        _move_in(root / "aligned", 2, lambda path: save_model(path, aligned, seed=2))
        _until(lambda: 2 in versions)
        time.sleep(TRAFFIC_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(f"hot swap: {counts['failed']} failed of {counts['ok'] + counts['failed']} Predict calls")
    assert counts["failed"] == 0
    assert versions == {1, 2}
    assert counts["ok"] > 10


def test_a_broken_new_version_leaves_the_old_one_serving(
    root: Path, stub: pb_grpc.SeqServeStub
) -> None:
    _move_in(root / "aligned", 3, save_corrupt)
    _until(lambda: 3 in _statuses(stub, "aligned"))
    status = _statuses(stub, "aligned")[3]
    assert status.state == pb.FAILED and status.error
    assert _predict(stub, "aligned", SEQ).model_version == 2


def test_version_policy_specific_then_latest(root: Path, stub: pb_grpc.SeqServeStub) -> None:
    config_path = root / "aligned" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump(config | {"version_policy": {"specific": [1]}}))
    _until(lambda: _statuses(stub, "aligned")[2].state == pb.UNLOADED)
    assert _predict(stub, "aligned", SEQ).model_version == 1
    config_path.write_text(yaml.safe_dump(config | {"version_policy": {"latest": 1}}))
    _until(lambda: _statuses(stub, "aligned")[1].state == pb.UNLOADED)
    states = {n: s.state for n, s in _statuses(stub, "aligned").items()}
    assert states == {1: pb.UNLOADED, 2: pb.UNLOADED, 3: pb.FAILED}  # latest 1 is the broken 3
    with pytest.raises(grpc.RpcError) as caught:
        _predict(stub, "aligned", SEQ)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_polling_picks_up_a_new_model_and_its_removal(
    root: Path, server: ServerProcess, stub: pb_grpc.SeqServeStub
) -> None:
    staging = root / ".staging-copy"
    shutil.copytree(root / "iris_like", staging)
    staging.rename(root / "iris_copy")
    _until(lambda: _statuses(stub, "iris_copy").get(1, pb.ModelStatus()).state == pb.READY)
    assert _predict(stub, "iris_copy", IRIS).vectors == _predict(stub, "iris_like", IRIS).vectors
    assert _health(server, "iris_copy") == health_pb2.HealthCheckResponse.SERVING
    (root / "iris_copy").rename(root / ".gone")
    _until(lambda: not _statuses(stub, "iris_copy"))
    assert _health(server, "iris_copy") == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as caught:
        _predict(stub, "iris_copy", IRIS)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_versions_replaced_and_unloaded_under_traffic_fail_no_request(
    root: Path, stub: pb_grpc.SeqServeStub
) -> None:
    """A config change reloads iris_like's version 1 in place; then version 2 arrives and, with
    `latest: 1`, version 1 is unloaded: all while two threads call Predict."""
    model_dir = root / "iris_like"
    failures: list[str] = []
    calls: list[int] = []
    versions: set[int] = set()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                versions.add(_predict(stub, "iris_like", IRIS).model_version)
                calls.append(1)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")

    loaded_at = _statuses(stub, "iris_like")[1].state_changed_unix_ms
    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        config = yaml.safe_load((model_dir / "config.yaml").read_text())
        (model_dir / "config.yaml").write_text(
            yaml.safe_dump(config | {"version_policy": {"latest": 1}})
        )
        _until(lambda: _statuses(stub, "iris_like")[1].state_changed_unix_ms > loaded_at)
        _move_in(model_dir, 2, lambda path: shutil.copytree(model_dir / "1", path))
        _until(lambda: _statuses(stub, "iris_like")[1].state == pb.UNLOADED)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(f"reload + unload: {len(failures)} failed of {len(calls) + len(failures)} Predict calls")
    assert failures == []
    assert 2 in versions
