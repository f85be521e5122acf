"""The asyncio client gives what the synchronous one gives."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from seqserve_client import AsyncSeqServeClient, SeqServeClient, SeqServeError
from tests.fixture_models import random_sequences

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
