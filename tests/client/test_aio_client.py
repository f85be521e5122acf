"""The asyncio client gives what the synchronous one gives."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_client import AsyncSeqServeClient, InvalidInputError, SeqServeClient, SeqServeError
from tests.support.model_zoo import FEATURES, random_sequences

TOLERANCE = 1e-5


def test_asyncio_client_matches_the_sync_client(server, client: SeqServeClient) -> None:
    seqs = random_sequences(np.random.default_rng(20), [5, 3])
    x = random_sequences(np.random.default_rng(21), [11])[0]

    async def calls() -> dict:
        async with AsyncSeqServeClient(server.target) as c:
            with pytest.raises(SeqServeError) as caught:
                await c.predict("classifier", [np.ones((3, 9), np.float32)])
            async with c.session("enc_dec") as s:
                assert await s.step(x[:4]) is None
                await s.step(x[4:])
                decoded = await s.end_input()
            return {
                "health": await c.health(),
                "models": await c.list_models(),
                "meta": await c.metadata("classifier"),
                "predict": await c.predict("aligned", seqs),
                "classify": await c.classify("classifier", seqs, top_k=2),
                "parts": [p async for p in c.predict_stream("aligned", seqs)],
                "error": caught.value,
                "decoded": decoded,
            }

    got = asyncio.run(calls())
    assert got["health"]
    assert {m.name for m in got["models"]} == {m.name for m in client.list_models()}
    assert got["meta"] == client.metadata("classifier")
    for a, b in zip(got["predict"], client.predict("aligned", seqs), strict=True):
        np.testing.assert_allclose(a, b, atol=TOLERANCE)
    assert got["classify"] == client.classify("classifier", seqs, top_k=2)
    assert len(got["parts"]) == 5 + 3 and got["parts"][-1].last
    assert got["error"].code == grpc.StatusCode.INVALID_ARGUMENT
    assert got["error"].field == "inputs.values.shape"
    np.testing.assert_allclose(
        got["decoded"], client.predict("enc_dec", x[None])[0], atol=TOLERANCE
    )


def test_async_session_reports_the_servers_error_not_a_write_failure(server) -> None:
    """The server ends a session on a bad steps message while the caller still writes; grpc.aio
    then fails the write with its own INTERNAL (grpc/grpc#36066): the caller must get the
    server's INVALID_ARGUMENT with its field, as the sync client does. Without the fix most of
    these sessions reported INTERNAL."""
    bad = pb.SessionRequest(
        steps=pb.SessionSteps(values=pb.Tensor(dtype=6, shape=[1, FEATURES], raw=b"\0" * 12))
    )
    step = np.ones((1, FEATURES), np.float32)

    async def one(c: AsyncSeqServeClient) -> SeqServeError:
        with pytest.raises(SeqServeError) as caught:
            async with c.session("enc_dec") as s:  # no output per step: writes follow writes
                await s._write(bad)
                for _ in range(200):
                    await s.step(step)
        return caught.value

    async def sessions() -> list[SeqServeError]:
        async with AsyncSeqServeClient(server.target) as c:
            return [await one(c) for _ in range(10)]

    for error in asyncio.run(sessions()):
        assert isinstance(error, InvalidInputError), error
        assert error.field == "steps.values.dtype" and error.got.startswith("6"), error
        assert error.expected
