"""Models with several inputs through the real server: named inputs in, Keras' numbers out.

The zoo's several-input models (tests/model_zoo.py) are served with no config; requests carry
`named_inputs` (the SDK takes a dict of input name -> array or list of arrays), each input with
lengths of its own where the model allows it. Outputs are compared with the same file called
eagerly in-process, `model(x, training=False)`, one item at a time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import encode_inputs, request_inputs
from seqserve_client import AsyncSeqServeClient, SeqServeClient, SeqServeError
from tests.model_zoo import FEATURES, ZOO
from tests.server_process import ServerProcess, start_server
from tests.test_zoo import keras_call

TOL = 1e-5
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVED = ("seq2seq_teacher_forcing", "two_aligned_sequences", "several_in_out", "lstm_aligned")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("several_inputs")
    for name in SERVED:
        (root / name / "1").mkdir(parents=True)
        ZOO[name][0]().save(root / name / "1" / "model.keras")
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    process = start_server(root)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def eager(root: Path) -> functools._lru_cache_wrapper:
    @functools.cache
    def load(name: str) -> keras.Model:
        return keras.saving.load_model(root / name / "1" / "model.keras", safe_mode=True)

    return load


def _keras(model: keras.Model, item: dict[str, np.ndarray]) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras_call(model, item))[0]


def _seq2seq_items(rng: np.random.Generator, pairs: list[tuple[int, int]]) -> list[dict]:
    return [
        {
            "encoder": rng.normal(size=(t, FEATURES)).astype(np.float32),
            "decoder": rng.normal(size=(n, 2)).astype(np.float32),
        }
        for t, n in pairs
    ]


def test_request_fields_of_the_shared_codec() -> None:
    x = np.ones((2, 3), np.float32)
    single = pb.PredictRequest(**request_inputs(x))
    assert single.HasField("inputs") and not single.named_inputs
    named = pb.PredictRequest(**request_inputs({"a": x, "b": [np.ones(2), np.ones(3)]}))
    assert not named.HasField("inputs") and set(named.named_inputs) == {"a", "b"}
    assert list(named.named_inputs["b"].lengths) == [2, 3]
    assert named.named_inputs["a"] == encode_inputs(x)


def test_metadata_lists_every_input_and_refuses_sessions(client: SeqServeClient) -> None:
    meta = client.metadata("seq2seq_teacher_forcing")
    assert meta.mode == "many_to_many_unaligned"
    assert [(s.name, s.shape, s.sequence) for s in meta.inputs] == [
        ("encoder", (-1, -1, FEATURES), True),
        ("decoder", (-1, -1, 2), True),
    ]
    assert meta.input.name == ""  # no single-input view
    assert meta.session_support == "session_unsupported" and "several" in meta.session_reason
    mixed = client.metadata("several_in_out")
    assert {s.name: s.sequence for s in mixed.inputs} == {"seq": True, "context": False}
    assert [s.name for s in mixed.outputs] == ["label", "value"]
    with pytest.raises(SeqServeError) as caught, client.session("two_aligned_sequences") as s:
        s.step(np.zeros((2, FEATURES), np.float32))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_seq2seq_inputs_of_their_own_lengths(
    client: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    """Encoder T steps, decoder N steps, per item: N output steps, each Keras' number."""
    model = eager("seq2seq_teacher_forcing")
    items = _seq2seq_items(np.random.default_rng(5), [(7, 2), (3, 5), (11, 1)])
    sent = {k: [item[k] for item in items] for k in ("encoder", "decoder")}
    served = client.predict("seq2seq_teacher_forcing", sent)
    assert [len(y) for y in served] == [2, 5, 1]
    for got, item in zip(served, items, strict=True):
        np.testing.assert_allclose(got, _keras(model, item), atol=TOL, rtol=TOL)
    steps: dict[int, list[np.ndarray]] = {}
    for part in client.predict_stream("seq2seq_teacher_forcing", sent):
        steps.setdefault(part.input_index, []).append(part.values)
    for index, got in enumerate(served):
        np.testing.assert_allclose(np.stack(steps[index]), got, atol=TOL, rtol=TOL)


def test_single_input_model_takes_its_one_name(client: SeqServeClient) -> None:
    x = np.random.default_rng(1).normal(size=(2, 4, FEATURES)).astype(np.float32)
    np.testing.assert_allclose(
        client.predict("lstm_aligned", {"input": x}), client.predict("lstm_aligned", x), atol=TOL
    )
    with pytest.raises(SeqServeError) as caught:
        client.predict("lstm_aligned", {"x": x})
    assert caught.value.code == INVALID and caught.value.field == 'named_inputs["x"]'


def _aligned(n: int = 4, b_steps: int | None = None, items: int = 2) -> dict[str, np.ndarray]:
    return {
        "a": np.ones((items, n, FEATURES), np.float32),
        "b": np.ones((items, b_steps or n, 2), np.float32),
    }


# (model, inputs, field, words the message must contain)
BAD = {
    "missing input": ("two_aligned_sequences", {"a": _aligned()["a"]}, 'named_inputs["b"]', "a, b"),
    "unknown input": ("two_aligned_sequences", {**_aligned(), "c": _aligned()["a"]}, 'named_inputs["c"]', "only the inputs a, b"),
    "unnamed inputs": ("two_aligned_sequences", _aligned()["a"], "named_inputs", "a, b"),
    "item counts differ": ("two_aligned_sequences", {"a": _aligned()["a"], "b": _aligned(items=3)["b"]}, 'named_inputs["b"]', "2 items"),
    "lengths differ": ("two_aligned_sequences", _aligned(4, 5), 'named_inputs["b"].lengths[0]', "4 steps"),
    "wrong features": ("two_aligned_sequences", {"a": _aligned()["a"], "b": _aligned()["a"]}, 'named_inputs["b"].values.shape', "2 features"),
    "vector as sequence": ("several_in_out", {"seq": _aligned()["a"], "context": [np.ones(3), np.ones(4)]}, 'named_inputs["context"].lengths', "vector"),
    "nan": ("seq2seq_teacher_forcing", {"encoder": np.full((1, 2, FEATURES), np.nan, np.float32), "decoder": np.ones((1, 2, 2), np.float32)}, 'named_inputs["encoder"].values', "finite"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_named_inputs_are_invalid_argument(client: SeqServeClient, case: str) -> None:
    model, inputs, field, words = BAD[case]
    for call in (client.predict, lambda m, x: list(client.predict_stream(m, x))):
        with pytest.raises(SeqServeError) as caught:
            call(model, inputs)
        assert caught.value.code == INVALID, caught.value
        assert caught.value.field == field and words in str(caught.value), caught.value


def test_inputs_and_named_inputs_together_are_invalid(server: ServerProcess) -> None:
    x = encode_inputs(np.ones((1, 2, FEATURES), np.float32))
    request = pb.PredictRequest(model_name="lstm_aligned", inputs=x, named_inputs={"input": x})
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.SeqServeStub(channel).Predict(request, timeout=30)
    assert caught.value.code() == INVALID and caught.value.details().startswith("inputs:")


def test_asyncio_client_takes_a_dict(
    server: ServerProcess, eager: functools._lru_cache_wrapper
) -> None:
    rng = np.random.default_rng(9)
    inputs = {"seq": [rng.normal(size=(n, FEATURES)).astype(np.float32) for n in (3, 6)]}
    inputs["context"] = rng.normal(size=(2, 3)).astype(np.float32)

    async def call() -> tuple:
        async with AsyncSeqServeClient(server.target) as c:
            served = await c.predict("several_in_out", inputs)
            parts = [p async for p in c.predict_stream("several_in_out", inputs)]
            return served, parts

    served, parts = asyncio.run(call())
    model = eager("several_in_out")
    for i in range(2):
        item = {"seq": inputs["seq"][i], "context": inputs["context"][i]}
        label, value = (keras.ops.convert_to_numpy(y)[0] for y in keras_call(model, item))
        np.testing.assert_allclose(served["label"][i], label, atol=TOL, rtol=TOL)
        np.testing.assert_allclose(served["value"][i], value, atol=TOL, rtol=TOL)
    assert {(p.output_name, p.input_index) for p in parts} == {
        (name, i) for name in ("label", "value") for i in range(2)
    }


def test_readme_several_inputs_example_runs(client: SeqServeClient) -> None:
    """The README's several-inputs snippet, run as written against seq2seq_teacher_forcing."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- readme-several-inputs", 1)[1].split("```python\n", 1)[1]
    scope: dict = {"client": client, "np": np}
    exec(block.split("```", 1)[0], scope)  # the project's own README
    assert [len(y) for y in scope["outputs"]] == [4, 2]
    assert scope["names"] == ["encoder", "decoder"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
@given(data=st.data())
def test_any_seq2seq_batch_equals_keras(
    data: st.DataObject, client: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    """Drawn item counts, encoder and decoder lengths (each its own) and values."""
    count = data.draw(st.integers(1, 4))
    lengths = st.lists(st.integers(1, 9), min_size=count, max_size=count)
    values = st.floats(-4, 4, width=32)
    enc = [
        data.draw(hnp.arrays(np.float32, (n, FEATURES), elements=values))
        for n in data.draw(lengths)
    ]
    dec = [data.draw(hnp.arrays(np.float32, (n, 2), elements=values)) for n in data.draw(lengths)]
    served = client.predict("seq2seq_teacher_forcing", {"encoder": enc, "decoder": dec})
    model = eager("seq2seq_teacher_forcing")
    for i, got in enumerate(served):
        want = _keras(model, {"encoder": enc[i], "decoder": dec[i]})
        np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
