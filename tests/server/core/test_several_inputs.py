"""Several inputs, in-process: the shared codec's request fields, the batcher merging items of
several arrays, and the mode rule. Served end to end (named inputs through the real server,
compared with eager Keras; bad named inputs) in tests/test_zoo.py, section "several inputs"."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import encode_inputs, request_inputs
from seqserve_server.core.batch import Batch, NamedBatch
from seqserve_server.core.batching import DynamicBatcher, Values
from seqserve_server.core.errors import ModelLoadError
from seqserve_server.core.modes import Mode, reconcile_mode, several_inputs_mode
from seqserve_server.core.proof import prove, several_probes
from seqserve_server.core.runtime import PATHS, ModelRuntime
from tests.support.model_zoo import ZOO


def test_request_fields_of_the_shared_codec() -> None:
    x = np.ones((2, 3), np.float32)
    single = pb.PredictRequest(**request_inputs(x))
    assert single.HasField("inputs") and not single.named_inputs
    named = pb.PredictRequest(**request_inputs({"a": x, "b": [np.ones(2), np.ones(3)]}))
    assert not named.HasField("inputs") and set(named.named_inputs) == {"a", "b"}
    assert list(named.named_inputs["b"].lengths) == [2, 3]
    assert named.named_inputs["a"] == encode_inputs(x)


def _encoder_decoder(values: Values) -> np.ndarray:
    """A stand-in model of two inputs: each decoder step plus the encoder's mean."""
    enc, dec = values
    return dec + enc.mean(axis=1, keepdims=True)[..., :1]


def test_batcher_merges_items_whose_every_input_has_one_shape() -> None:
    rng = np.random.default_rng(0)
    calls: list[tuple[tuple[int, ...], ...]] = []

    def compute(values: Values) -> np.ndarray:
        calls.append(tuple(v.shape for v in values))
        return _encoder_decoder(values)

    requests = [
        [(rng.normal(size=(t, 3)), rng.normal(size=(n, 2)))]
        for t, n in [(5, 2), (5, 2), (4, 2), (5, 2)]
    ]

    async def main() -> list[list[np.ndarray]]:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(compute, executor, 8, 0.0, 64, name="m")
            return await asyncio.gather(*(batcher.submit_items(r, None) for r in requests))

    results = asyncio.run(main())
    # The first goes alone; the rest queue meanwhile and merge by (encoder, decoder) shape.
    assert sorted(calls) == sorted(
        [((1, 5, 3), (1, 2, 2)), ((2, 5, 3), (2, 2, 2)), ((1, 4, 3), (1, 2, 2))]
    )
    for request, (got,) in zip(requests, results, strict=True):
        enc, dec = request[0]
        np.testing.assert_allclose(got, _encoder_decoder((enc[None], dec[None]))[0])


def test_named_batch_items_pair_up_each_inputs_items() -> None:
    enc = Batch(np.arange(10.0).reshape(5, 2), np.array([2, 3]))
    ctx = Batch(np.ones((2, 4)))
    batch = NamedBatch({"enc": enc, "ctx": ctx})
    items = batch.items()
    assert batch.size == 2 and [tuple(a.shape for a in i) for i in items] == [
        ((2, 2), (4,)),
        ((3, 2), (4,)),
    ]
    again = NamedBatch.from_items(("enc", "ctx"), items)
    np.testing.assert_array_equal(again.batches["enc"].values, enc.values)
    assert again.batches["enc"].lengths is not None and again.batches["ctx"].lengths is None


@pytest.mark.parametrize(
    "any_sequence, output_rank, aligned, mode",
    [
        (True, 1, False, Mode.MANY_TO_ONE),
        (True, 2, True, Mode.MANY_TO_MANY_ALIGNED),
        (True, 2, False, Mode.MANY_TO_MANY_UNALIGNED),
        (False, 1, False, Mode.ONE_TO_ONE),
        (False, 2, False, Mode.ONE_TO_MANY),
    ],
)
def test_mode_rule_for_several_inputs(
    any_sequence: bool, output_rank: int, aligned: bool, mode: Mode
) -> None:
    assert several_inputs_mode(any_sequence, output_rank, aligned) is mode


def test_a_stated_mode_must_agree() -> None:
    inferred = several_inputs_mode(True, 2, True)
    assert reconcile_mode(Mode.MANY_TO_MANY_UNALIGNED, inferred, "") is Mode.MANY_TO_MANY_UNALIGNED
    with pytest.raises(ModelLoadError, match="states mode many_to_one"):
        reconcile_mode(Mode.MANY_TO_ONE, inferred, "inputs a, b")


@pytest.mark.slow  # per-length traces a function per probe length: ~20-50 s on 2 cores
def test_every_compute_path_is_exact_for_several_inputs(tmp_path: Path) -> None:
    """Traced, node-by-node graph and per-length functions each equal Keras on the several-input
    probes (encoder and decoder at equal and at different lengths); a model whose sequence
    inputs must share a length is probed at equal lengths only."""
    for name, equal in (("seq2seq_teacher_forcing", False), ("two_aligned_sequences", True)):
        path = tmp_path / f"{name}.keras"
        ZOO[name][0]().save(path)
        runtime = ModelRuntime.load(path)
        assert runtime.signature.equal_lengths is equal
        cases = several_probes([s.kind for s in runtime.input_specs], equal)
        spreads = {tuple(a.shape[1] for a in c.x) for c in cases if isinstance(c.x, tuple)}
        assert any(len(set(s)) > 1 for s in spreads) is not equal
        for _, build in PATHS:
            prove(build(runtime), cases, runtime.reference)  # raises ProofFailed, naming the probe
        assert runtime.signature.output_follows == ("decoder" if not equal else "a")
