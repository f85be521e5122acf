"""Bad input gets the right status code and a message naming the field, expected and got, while
a concurrent valid caller keeps succeeding and the server keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_batch, to_tensor
from seqserve_client import SeqServeClient, SeqServeError
from tests.support.model_zoo import FEATURES

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def seqs(*lengths: int, features: int = FEATURES) -> list[np.ndarray]:
    return [np.ones((n, features), np.float32) for n in lengths]


def nan_batch() -> np.ndarray:
    x = np.ones((2, 4, FEATURES), np.float32)
    x[1, 2, 0] = np.nan
    return x


# (model, inputs, code, field, words the message must contain)
CASES = {
    "wrong rank": ("classifier", np.ones((2, 3), np.float32), INVALID, "inputs.values.shape", "rank 3"),
    "wrong features": ("classifier", seqs(4, features=5), INVALID, "inputs.values.shape", "3 features"),
    "wrong dtype": ("classifier", np.ones((1, 4, 3), np.int32), INVALID, "inputs.values.dtype", "int32"),
    "nan": ("classifier", nan_batch(), INVALID, "inputs.values", "nan"),
    "infinity": ("iris_like", np.array([[1, 2, np.inf, 4]], np.float32), INVALID, "inputs.values", "inf"),
    "empty batch": ("classifier", np.zeros((0, 4, 3), np.float32), INVALID, "inputs", "empty batch"),
    "empty sequence": ("aligned", seqs(3, 0), INVALID, "inputs.lengths[1]", "at least 1 step"),
    "too long": ("classifier", seqs(51), INVALID, "inputs.lengths[0]", "at most 50 steps"),
    "fixed length": ("fixed", seqs(5), INVALID, "inputs.lengths[0]", "exactly 6 steps"),
    "vector features": ("iris_like", np.ones((2, 7), np.float32), INVALID, "inputs.values.shape", "4 features"),
    "unknown model": ("nope", seqs(3), grpc.StatusCode.NOT_FOUND, "", "'nope'"),
    "failed model": ("unsafe", np.ones((1, 4), np.float32), grpc.StatusCode.FAILED_PRECONDITION, "", "Lambda"),
}  # fmt: skip


@pytest.fixture
def valid_caller(server) -> Iterator[dict[str, int]]:
    """A caller that keeps sending valid requests for as long as the test runs."""
    counts = {"ok": 0, "failed": 0}
    stop = threading.Event()

    def run() -> None:
        with SeqServeClient(server.target, timeout=30) as c:
            while not stop.is_set():
                try:
                    out = c.predict("aligned", seqs(5, 2))
                    counts["ok" if len(out) == 2 else "failed"] += 1
                except SeqServeError:
                    counts["failed"] += 1

    def answered_after(ok: int) -> bool:
        """Wait (bounded) until a valid call succeeds after `ok` had."""
        deadline = time.monotonic() + 30
        while counts["ok"] <= ok and not counts["failed"] and time.monotonic() < deadline:
            time.sleep(0.01)
        return counts["ok"] > ok

    thread = threading.Thread(target=run)
    thread.start()
    assert answered_after(0)  # the valid caller runs before the bad input is sent
    started = counts["ok"]
    yield counts
    served_after = answered_after(started)  # ... and is served after it
    stop.set()
    thread.join(30)
    assert counts["failed"] == 0
    assert served_after


@pytest.mark.parametrize("case", CASES)
def test_bad_input(client: SeqServeClient, valid_caller, case: str) -> None:
    model, inputs, code, field, words = CASES[case]
    with pytest.raises(SeqServeError) as caught:
        client.predict(model, inputs)
    error = caught.value
    assert error.code == code, error
    assert error.field == field
    assert words.lower() in error.message.lower()
    if code == INVALID:
        assert error.expected and error.got
        assert field in error.message


def test_unknown_version(client: SeqServeClient) -> None:
    with pytest.raises(SeqServeError) as caught:
        client.predict("aligned", seqs(3), version=9)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "version 9" in caught.value.message and "v1, v2" in caught.value.message


def test_a_huge_model_name_is_cut_in_the_answer(client: SeqServeClient) -> None:
    """The name is echoed cut to 128 characters, so the status stays deliverable (uncut, 5,000
    characters and every model's name pushed it past gRPC's 16 KiB header limit)."""
    with pytest.raises(SeqServeError) as caught:
        client.predict("m" * 50_000, seqs(3))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "50,000 characters" in caught.value.message
    assert len(caught.value.message) < 2_100


def test_top_k_without_labels(client: SeqServeClient) -> None:
    with pytest.raises(SeqServeError) as caught:
        client.classify("aligned", seqs(3), top_k=2)
    assert caught.value.code == INVALID and caught.value.field == "top_k"


def raw_call(server, request: pb.PredictRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.SeqServeStub(channel).Predict(request, timeout=30)
    return caught.value


def test_malformed_tensors(server, valid_caller) -> None:
    short = to_tensor(np.ones((2, 4), np.float32))
    short.raw = short.raw[:-4]
    cases = {
        "inputs.values.raw": pb.Batch(values=short),
        "inputs.values.dtype": pb.Batch(values=pb.Tensor(shape=[1, 4], raw=b"\0" * 16)),
        "inputs.lengths": to_batch(np.ones((5, 3), np.float32), [2, 2]),
        "inputs.values.float_values": pb.Batch(
            values=pb.Tensor(shape=[1, 4], float_values=pb.FloatValues(values=[1.0]))
        ),
    }
    for field, batch in cases.items():
        error = raw_call(server, pb.PredictRequest(model_name="classifier", inputs=batch))
        assert error.code() == INVALID, field
        assert error.details().startswith(field)
        status = rpc_status.from_call(error)
        violations = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
        request = error_details_pb2.BadRequest()
        violations[0].Unpack(request)
        assert request.field_violations[0].field == field


def test_message_over_size_limit(client: SeqServeClient, valid_caller) -> None:
    big = np.ones((1, 5 * 1024 * 1024 // (4 * FEATURES), FEATURES), np.float32)  # 5 MiB > 4 MiB
    with pytest.raises(SeqServeError) as caught:
        client.predict("aligned", big)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_reports_errors_too(client: SeqServeClient) -> None:
    with pytest.raises(SeqServeError) as caught:
        list(client.predict_stream("classifier", seqs(51)))
    assert caught.value.code == INVALID and caught.value.field == "inputs.lengths[0]"


def test_server_survives_bad_input(client: SeqServeClient, server) -> None:
    for _ in range(20):
        with pytest.raises(SeqServeError):
            client.predict("classifier", nan_batch())
    assert server.process.poll() is None
    assert client.health()
    assert len(client.predict("classifier", seqs(4, 2))) == 2


def test_expired_deadline(client: SeqServeClient) -> None:
    slow = [np.ones((2000, FEATURES), np.float32)] * 64  # far more than 5 ms of work
    with pytest.raises(SeqServeError) as caught:
        client.predict("aligned", slow, timeout=0.005)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(client.predict("aligned", seqs(5))) == 1


def test_full_queue_fails_fast_with_unavailable(server, client: SeqServeClient) -> None:
    """A model whose queue holds 8 sequences, flooded by concurrent 6-sequence requests."""
    import asyncio

    from seqserve_client import AsyncSeqServeClient

    async def flood() -> list[BaseException | object]:
        no_retries = [("grpc.enable_retries", 0)]  # the SDK retries UNAVAILABLE by default
        async with AsyncSeqServeClient(server.target, options=no_retries) as c:
            calls = [c.predict("limited", seqs(*[200] * 6)) for _ in range(40)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(flood())
    refused = [r for r in results if isinstance(r, SeqServeError)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert refused and served
    assert {e.code for e in refused} == {grpc.StatusCode.UNAVAILABLE}
    assert "queue" in refused[0].message and "full" in refused[0].message
    assert refused[0].reason == "OVERLOADED"  # google.rpc details reach the asyncio client too
    assert len(client.predict("limited", seqs(3))) == 1
