"""The whole zoo through one real server: Predict = PredictStream = session = eager Keras.

Every model of tests/support/model_zoo.py is saved into a repository as an operator would lay it out,
served with no config (the mode comes from the graph), and called through the SDK with random
batch sizes and variable lengths; every output is compared with the same file loaded in-process
and called eagerly, `model(x, training=False)`, one sequence at a time.
"""

from __future__ import annotations

import asyncio
import functools
import re
import urllib.request
from collections.abc import Callable, Iterator
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
from seqserve_api.tensors import encode_inputs
from seqserve_client import AsyncSeqServeClient, ModelMetadata, SeqServeClient, SeqServeError
from seqserve_client.errors import InvalidInputError
from tests.support.model_zoo import (
    EQUAL_LENGTHS,
    FEATURES,
    SEVERAL_INPUTS,
    SEVERAL_OUTPUTS,
    SEVERAL_SESSIONS,
    STEPPER_CASES,
    VOCAB,
    ZOO,
    save_zoo,
)
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served

TOL = 1e-5
MAX_LENGTH = 12


# Models the named tests below use, served whatever tests are selected.
NAMED = {"time_distributed_head", "lstm_aligned", "token_classifier", "token_tagger"}
NAMED |= {"token_unmasked_aligned", "token_conv_many_to_one"} | SEVERAL_OUTPUTS
NAMED |= SEVERAL_INPUTS | {"dense_one_to_one"}
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Only the models of the selected tests: each one costs seconds of load-time proof."""
    return save_zoo(tmp_path_factory.mktemp("zoo"), _selected_models(request.session) | NAMED)


@pytest.fixture(scope="module")
def zoo_server(zoo_root: Path) -> Iterator[ServerProcess]:
    with served(zoo_root) as process:
        yield process


@pytest.fixture(scope="module")
def zoo(zoo_server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(zoo_server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def eager(zoo_root: Path) -> Callable[..., keras.Model]:
    return loader(zoo_root)


def _selected_models(session: pytest.Session) -> set[str]:
    names = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if item.path == Path(__file__) and callspec is not None and "name" in callspec.params:
            names.add(callspec.params["name"])
    return names


def _cases(names: list[str]) -> list:
    """The architectures test_predict/test_sessions and test_stepper already cover run with
    the slow tests; the others by default."""
    slow = pytest.mark.slow
    return [pytest.param(n, marks=slow) if n in STEPPER_CASES else n for n in names]


Item = np.ndarray | dict[str, np.ndarray]  # one input, or (several inputs) arrays by name


def input_names(model: keras.Model) -> list[str]:
    """What the server calls a model's inputs: a dict's keys, else the Input layers' names."""
    if isinstance(model.input, dict):
        return list(model.input)
    return [t.name for t in model.inputs]


def keras_call(model: keras.Model, x: Item) -> object:
    """The eager model on one item (a batch of one)."""
    if not isinstance(x, dict):
        return model(x[np.newaxis], training=False)
    batched = {k: v[np.newaxis] for k, v in x.items()}
    if isinstance(model.input, dict):
        return model(batched, training=False)
    return model([batched[n] for n in input_names(model)], training=False)


def _keras(model: keras.Model, x: Item) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras_call(model, x))[0]


def _keras_by_name(model: keras.Model, x: Item) -> dict[str, np.ndarray]:
    """Every output of the model on one input by output name ("" for a single output)."""
    out = keras_call(model, x)
    if isinstance(out, dict):
        return {k: keras.ops.convert_to_numpy(v)[0] for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return {
            k: keras.ops.convert_to_numpy(v)[0]
            for k, v in zip(model.output_names, out, strict=True)
        }
    return {"": keras.ops.convert_to_numpy(out)[0]}


def _inputs(name: str, model: keras.Model, rng: np.random.Generator) -> list:
    """1-4 inputs: vectors, or sequences of random (or the fixed) lengths; token ids with
    padding ids among them, float steps with some all-zero (masked) steps. Several-input
    models: dicts of one array per input name."""
    _, mode, fixed = ZOO[name]
    tensor = model.inputs[0]
    count = int(rng.integers(1, 5))
    if name in SEVERAL_INPUTS:
        return [several_item(name, model, rng) for _ in range(count)]
    if not mode.startswith("many"):
        return [rng.normal(size=tensor.shape[1:]).astype(np.float32) for _ in range(count)]
    lengths = [fixed or int(rng.integers(1, MAX_LENGTH + 1)) for _ in range(count)]
    if len(tensor.shape) == 2:  # token ids
        return [rng.integers(0, VOCAB, size=n).astype(np.int32) for n in lengths]
    out = []
    for n in lengths:
        x = rng.normal(size=(n, tensor.shape[-1])).astype(np.float32)
        x[rng.random(n) < 0.2] = 0.0
        out.append(x)
    return out


def several_item(name: str, model: keras.Model, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One item of a several-input model: every sequence input at one length (models that need
    it) or each at its own; token ids inside the vocabulary."""
    shared = int(rng.integers(1, MAX_LENGTH + 1))
    item = {}
    for input_name, tensor in zip(input_names(model), _ordered_inputs(model), strict=True):
        n = shared if name in EQUAL_LENGTHS else int(rng.integers(1, MAX_LENGTH + 1))
        shape = tuple(tensor.shape[1:])
        n = shape[0] or n  # a fixed length (or fixed count of static ids)
        if "int" in str(tensor.dtype):
            item[input_name] = rng.integers(0, VOCAB, size=n).astype(np.int32)
        elif len(shape) == 1:
            item[input_name] = rng.normal(size=shape).astype(np.float32)
        else:
            item[input_name] = rng.normal(size=(n, shape[-1])).astype(np.float32)
    return item


def _ordered_inputs(model: keras.Model) -> list:
    return list(model.input.values()) if isinstance(model.input, dict) else list(model.inputs)


def by_input(items: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Items of a several-input model as the SDK takes them: each input's arrays by name."""
    return {k: [item[k] for item in items] for k in items[0]}


def _seed(name: str) -> int:
    return sum(map(ord, name))


def test_zoo_is_wide() -> None:
    assert len(ZOO) >= 25


@pytest.mark.parametrize("name", _cases(list(ZOO)))
def test_predict_and_stream_equal_keras(
    name: str, zoo: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    """Models with several outputs answer by output name, in Predict and PredictStream."""
    model = eager(name)
    rng = np.random.default_rng(_seed(name))
    inputs = _inputs(name, model, rng)
    want = [_keras_by_name(model, x) for x in inputs]
    meta = zoo.metadata(name)
    assert meta.mode == ZOO[name][1], meta
    assert meta.compute_path in ("traced", "graph", "per_length") and "equals Keras" in meta.proof

    sent = by_input(inputs) if name in SEVERAL_INPUTS else inputs
    served = zoo.predict(name, sent)
    by_name = served if isinstance(served, dict) else {"": served}
    assert set(by_name) == set(want[0])
    for output, outputs in by_name.items():
        assert len(outputs) == len(want)
        for got, ref in zip(outputs, want, strict=True):
            np.testing.assert_allclose(got, ref[output], atol=TOL, rtol=TOL)

    parts: dict[tuple[str, int], list[np.ndarray]] = {}
    for part in zoo.predict_stream(name, sent):
        parts.setdefault((part.output_name, part.input_index), []).append(part.values)
    for index, refs in enumerate(want):
        for output, ref in refs.items():
            got = parts[output, index]
            got_array = np.stack(got) if ref.ndim == 2 else got[0]
            np.testing.assert_allclose(got_array, ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize(
    "name",
    _cases(
        [
            n
            for n in ZOO
            if ZOO[n][1].startswith("many") and n not in SEVERAL_OUTPUTS | SEVERAL_INPUTS
        ]
    ),
)
def test_sessions_equal_keras_on_each_prefix(
    name: str, zoo: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    """Fed a few steps per message, a session's outputs are the model's on the prefix so far."""
    model = eager(name)
    _, mode, fixed = ZOO[name]
    x = _inputs(name, model, np.random.default_rng(_seed(name) + 1))[0]
    with zoo.session(name) as session:
        start = 0
        for size in (1, 3, 2, 4, 1, 5):
            end = min(len(x), start + size)
            if start >= end:
                break
            got = session.step(x[start:end])
            if mode == "many_to_many_aligned":
                if fixed is None:
                    np.testing.assert_allclose(got, _keras(model, x[:end])[start:end], atol=TOL)
            elif mode == "many_to_one" and got is not None and (fixed is None or end == fixed):
                np.testing.assert_allclose(got, _keras(model, x[:end]), atol=TOL, rtol=TOL)
            start = end
        if start < len(x):
            session.step(x[start:])
        if mode == "many_to_many_unaligned":
            np.testing.assert_allclose(session.end_input(), _keras(model, x), atol=TOL)


def test_metadata_lists_every_output(zoo: SeqServeClient) -> None:
    meta = zoo.metadata("two_heads")
    assert [(s.name, s.shape, s.sequence) for s in meta.outputs] == [
        ("label", (-1, 3), False),
        ("value", (-1, 1), False),
    ]
    assert [(s.name, s.shape, s.sequence) for s in meta.inputs] == [("input", (-1, -1, 3), True)]
    aligned = zoo.metadata("two_heads_aligned")
    assert {s.name: s.shape for s in aligned.outputs} == {"tag": (-1, -1, 2), "level": (-1, -1, 1)}
    assert all(s.sequence for s in aligned.outputs)
    single = zoo.metadata("lstm_aligned")
    assert [s.name for s in single.outputs] == ["output"] and single.output.shape == (-1, -1, 2)


def test_readme_several_outputs_example_runs(zoo: SeqServeClient) -> None:
    """The README's several-outputs snippet, run as written against the zoo's two_heads."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- readme-several-outputs", 1)[1].split("```python\n", 1)[1]
    scope: dict = {"client": zoo, "np": np}
    exec(block.split("```", 1)[0], scope)  # the project's own README
    assert scope["label"].shape == (2, 3) and scope["value"].shape == (2, 1)
    assert scope["names"] == ["label", "value"]


def _split_item(meta: ModelMetadata, item: Item) -> tuple[dict, dict]:
    """A several-input item as a session takes it: static inputs (at open), sequences (steps)."""
    named = item if isinstance(item, dict) else {"input": item}
    sequence = {s.name: s.sequence for s in meta.inputs}
    statics = {k: v for k, v in named.items() if not sequence[k]}
    return statics, {k: v for k, v in named.items() if sequence[k]}


def _cut(item: Item, sequences: dict, end: int) -> Item:
    """The item with every sequence input cut to its first `end` steps."""
    if not isinstance(item, dict):
        return item[:end]
    return {k: v[:end] if k in sequences else v for k, v in item.items()}


def _check_session_output(
    got: object, model: keras.Model, item: Item, start: int, end: int, fixed: int | None
) -> None:
    """A session's answer after steps [start, end): Keras on the prefix, by output name
    (aligned: the new steps; many-to-one: the running output, defined at a fixed length only)."""
    if fixed is not None and end != fixed:
        return
    want = _keras_by_name(model, item)
    by_name = got if isinstance(got, dict) else {"": got}
    assert set(by_name) == set(want), (set(by_name), set(want))
    aligned = next(iter(want.values())).ndim == 2
    for name, ref in want.items():
        expected = ref[start:end] if aligned else ref
        np.testing.assert_allclose(by_name[name], expected, atol=TOL, rtol=TOL)


CHUNKS = (1, 3, 2, 4, 1, 5)


@pytest.mark.parametrize("name", SEVERAL_SESSIONS)
def test_sessions_of_several_inputs_and_outputs_equal_keras(
    name: str, zoo: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    """Static inputs at open, sequence inputs stepped together, every output by name: after each
    message, Keras on the prefix fed so far; then a reset with new static inputs, again."""
    model, meta = eager(name), zoo.metadata(name)
    assert meta.session_support in ("session_incremental", "session_recompute"), meta
    fixed = ZOO[name][2]
    rng = np.random.default_rng(_seed(name) + 2)
    first, second = (_inputs(name, model, rng)[0] for _ in range(2))
    statics, _ = _split_item(meta, first)
    with zoo.session(name, static_inputs=statics or None) as session:
        for item in (first, second):
            statics, sequences = _split_item(meta, item)
            if item is second:
                session.reset(static_inputs=statics or None)
            total, start = len(next(iter(sequences.values()))), 0
            for size in CHUNKS * 3:
                end = min(total, start + size)
                if start >= end:
                    break
                steps = {k: v[start:end] for k, v in sequences.items()}
                got = session.step(steps if len(steps) > 1 else next(iter(steps.values())))
                prefix = _cut(item, sequences, end)
                _check_session_output(got, model, prefix, start, end, fixed)
                start = end


def test_asyncio_sessions_of_several_inputs_and_outputs(
    zoo_server: ServerProcess, eager: functools._lru_cache_wrapper
) -> None:
    """The asyncio twin: static inputs at open, steps by name, outputs by name."""
    rng = np.random.default_rng(11)
    model = eager("several_in_out")
    seq = rng.normal(size=(5, FEATURES)).astype(np.float32)
    context = rng.normal(size=3).astype(np.float32)

    async def run() -> list:
        async with (
            AsyncSeqServeClient(zoo_server.target) as c,
            c.session("several_in_out", static_inputs={"context": context}) as s,
        ):
            return [await s.step(seq[i : i + 1]) for i in range(len(seq))]

    for end, got in enumerate(asyncio.run(run()), start=1):
        _check_session_output(got, model, {"seq": seq[:end], "context": context}, 0, end, None)


def _session_error(
    zoo: SeqServeClient, name: str, statics: dict | None, steps: object
) -> SeqServeError:
    with pytest.raises(SeqServeError) as caught, zoo.session(name, static_inputs=statics) as s:
        s.step(steps)
    return caught.value


# (model, static inputs at open, steps, field, words the message must contain)
BAD_SESSION = {
    "missing static input": ("several_in_out", None, np.ones((1, FEATURES)), 'open.named_inputs["context"]', "every static input: context"),
    "unknown static input": ("several_in_out", {"context": np.ones(3), "other": np.ones(3)}, np.ones((1, FEATURES)), 'open.named_inputs["other"]', "only the inputs context"),
    "static input of a model without": ("lstm_aligned", {"x": np.ones(3)}, np.ones((1, 5)), 'open.named_inputs["x"]', "no static input"),
    "static input of the wrong shape": ("several_in_out", {"context": np.ones(4)}, np.ones((1, FEATURES)), 'open.named_inputs["context"].shape', "[3]"),
    "sequence input given as static": ("several_in_out", {"context": np.ones(3), "seq": np.ones(3)}, np.ones((1, FEATURES)), 'open.named_inputs["seq"]', "static inputs only"),
    "unequal step counts": ("two_aligned_sequences", None, {"a": np.ones((2, FEATURES)), "b": np.ones((3, 2))}, 'steps.named_values["b"]', "2 steps"),
    "missing sequence input": ("two_aligned_sequences", None, {"a": np.ones((2, FEATURES))}, 'steps.named_values["b"]', "every sequence input: a, b"),
    "unnamed steps of two sequences": ("two_aligned_sequences", None, np.ones((2, FEATURES)), "steps.named_values", "a, b"),
    "static input sent with steps": ("several_in_out", {"context": np.ones(3)}, {"seq": np.ones((1, FEATURES)), "context": np.ones((1, 3))}, 'steps.named_values["context"]', "given at open"),
    "static ids out of vocabulary": ("static_token_ids", {"user": np.array([1, VOCAB])}, np.ones((1, FEATURES)), 'open.named_inputs["user"].values', f"[0, {VOCAB})"),
    "nan static input": ("several_in_out", {"context": np.array([1.0, np.nan, 0.0])}, np.ones((1, FEATURES)), 'open.named_inputs["context"].values', "finite"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SESSION))
def test_bad_session_inputs_are_invalid_argument(zoo: SeqServeClient, case: str) -> None:
    """Each refusal names the field; the server keeps serving sessions after it."""
    name, statics, steps, field, words = BAD_SESSION[case]
    error = _session_error(zoo, name, statics, steps)
    assert error.code == INVALID, error
    assert error.field == field and words in str(error), error
    with zoo.session("two_heads") as session:
        assert set(session.step(np.zeros((2, FEATURES), np.float32))) == {"label", "value"}


def test_time_distributed_head_runs_the_graph_path(zoo: SeqServeClient) -> None:
    """Keras' traced TimeDistributed gives one step per sequence here; the proof caught it."""
    meta = zoo.metadata("time_distributed_head")
    assert meta.compute_path == "graph"
    assert "traced: probe" in meta.proof and "Keras gives" in meta.proof
    statuses = {s.name: s for s in zoo.list_models()}
    assert statuses["time_distributed_head"].compute_path == "graph"
    assert statuses["lstm_aligned"].compute_path == "traced"
    lengths = [5, 9, 13]
    rng = np.random.default_rng(3)
    served = zoo.predict("time_distributed_head", [rng.normal(size=(n, 5)) for n in lengths])
    assert [len(s) for s in served] == lengths


def test_compute_paths_are_exported_as_metrics(zoo_server: ServerProcess) -> None:
    url = f"http://127.0.0.1:{zoo_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for kind, path in (("predict", "graph"), ("session", "incremental")):
        labels = f'kind="{kind}",model="time_distributed_head",path="{path}",version="1"'
        assert f"seqserve_model_compute_path{{{labels}}} 1.0" in text
    labels = 'kind="session",model="token_tagger",path="recompute",version="1"'
    assert f"seqserve_model_compute_path{{{labels}}} 1.0" in text


def test_token_models_take_ids_as_declared(zoo: SeqServeClient) -> None:
    assert zoo.metadata("token_classifier").mode == "many_to_one"
    assert zoo.metadata("token_tagger").mode == "many_to_many_aligned"
    assert zoo.metadata("token_tagger").input.dtype == "int32"
    dense = zoo.predict("token_classifier", np.array([[3, 4, 5], [0, 7, 1]], np.int64))
    assert dense.shape == (2, 3)
    ragged = zoo.predict("token_tagger", [[1, 2, 3], [4, 5]])
    assert [r.shape for r in ragged] == [(3, 3), (2, 3)]


@pytest.mark.parametrize(
    "ids, where",
    [([[1, 2, VOCAB]], "inputs[0, 2]"), ([[1, -1, 2]], "inputs[0, 1]")],
)
def test_out_of_vocabulary_ids_are_invalid(zoo: SeqServeClient, ids: list, where: str) -> None:
    expected = rf"inputs\.values.*\[0, {VOCAB}\).*{re.escape(where)}"
    with pytest.raises(InvalidInputError, match=expected):
        zoo.predict("token_classifier", np.array(ids, np.int32))


def test_out_of_vocabulary_in_ragged_batch_and_session(zoo: SeqServeClient) -> None:
    with pytest.raises(InvalidInputError, match="inputs sequence 1 step 0"):
        zoo.predict("token_tagger", [[1, 2], [VOCAB + 5, 1, 2]])
    with (
        pytest.raises(InvalidInputError, match=r"steps\.values"),
        zoo.session("token_unmasked_aligned") as session,
    ):
        session.step(np.array([1, 2, 99]))


def test_float_ids_are_refused_for_token_models(zoo: SeqServeClient) -> None:
    with pytest.raises(InvalidInputError, match=r"inputs\.values\.dtype"):
        zoo.predict("token_classifier", np.ones((1, 3), np.float32))


def test_token_session_steps_one_token_at_a_time(
    zoo: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    model = eager("token_unmasked_aligned")
    ids = np.array([4, 8, 15, 16, 23], np.int32)
    for name in ("token_unmasked_aligned", "token_classifier", "token_conv_many_to_one"):
        assert zoo.metadata(name).session_support == "session_incremental", name
    with zoo.session("token_unmasked_aligned") as session:
        steps = [session.step([int(t)]) for t in ids]
    np.testing.assert_allclose(np.concatenate(steps), _keras(model, ids), atol=TOL)


@st.composite
def _ragged_batch(draw: st.DrawFn, features: tuple[int, ...] | None) -> list[np.ndarray]:
    """1-4 sequences of 1-10 steps: float steps in [-4, 4] (exact zeros allowed), or token ids
    (`features` None)."""
    count = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, 10), min_size=count, max_size=count))
    if features is None:
        ids = st.integers(0, VOCAB - 1)
        return [draw(hnp.arrays(np.int32, (n,), elements=ids)) for n in lengths]
    values = st.floats(-4, 4, width=32)
    return [draw(hnp.arrays(np.float32, (n, *features), elements=values)) for n in lengths]


@pytest.mark.parametrize("name", ["time_distributed_head", "token_tagger", "stacked_cells"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
@given(data=st.data())
def test_any_batch_equals_keras(
    name: str, data: st.DataObject, zoo: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    model = eager(name)
    shape = model.inputs[0].shape
    inputs = data.draw(_ragged_batch(None if len(shape) == 2 else tuple(shape[2:])))
    served = zoo.predict(name, inputs)
    for got, x in zip(served, inputs, strict=True):
        np.testing.assert_allclose(got, _keras(model, x), atol=TOL, rtol=TOL)


# -- several inputs -----------------------------------------------------------------------


def _seq2seq_items(rng: np.random.Generator, pairs: list[tuple[int, int]]) -> list[dict]:
    return [
        {
            "encoder": rng.normal(size=(t, FEATURES)).astype(np.float32),
            "decoder": rng.normal(size=(n, 2)).astype(np.float32),
        }
        for t, n in pairs
    ]


def test_metadata_lists_every_input_and_refuses_sessions_of_two_time_axes(
    zoo: SeqServeClient,
) -> None:
    meta = zoo.metadata("seq2seq_teacher_forcing")
    assert meta.mode == "many_to_many_unaligned"
    assert [(s.name, s.shape, s.sequence) for s in meta.inputs] == [
        ("encoder", (-1, -1, FEATURES), True),
        ("decoder", (-1, -1, 2), True),
    ]
    assert meta.input.name == ""  # no single-input view
    assert meta.session_support == "session_unsupported"
    assert "may differ in length" in meta.session_reason
    mixed = zoo.metadata("several_in_out")
    assert {s.name: s.sequence for s in mixed.inputs} == {"seq": True, "context": False}
    assert [s.name for s in mixed.outputs] == ["label", "value"]
    tagged = zoo.metadata("tokens_and_numbers")  # traced TimeDistributed is wrong: graph path
    assert tagged.compute_path == "graph" and "traced: probe" in tagged.proof
    assert [(s.name, s.dtype, s.vocabulary) for s in tagged.inputs] == [
        ("ids", "int32", VOCAB),
        ("level", "float32", 0),
    ]
    with pytest.raises(SeqServeError) as caught, zoo.session("seq2seq_teacher_forcing") as s:
        s.step({"encoder": np.zeros((2, FEATURES)), "decoder": np.zeros((2, 2))})
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no single step order" in str(caught.value)


def test_seq2seq_inputs_of_their_own_lengths(
    zoo: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    """Encoder T steps, decoder N steps, per item: N output steps, each Keras' number."""
    model = eager("seq2seq_teacher_forcing")
    items = _seq2seq_items(np.random.default_rng(5), [(7, 2), (3, 5), (11, 1)])
    sent = {k: [item[k] for item in items] for k in ("encoder", "decoder")}
    served = zoo.predict("seq2seq_teacher_forcing", sent)
    assert [len(y) for y in served] == [2, 5, 1]
    for got, item in zip(served, items, strict=True):
        np.testing.assert_allclose(got, _keras(model, item), atol=TOL, rtol=TOL)
    steps: dict[int, list[np.ndarray]] = {}
    for part in zoo.predict_stream("seq2seq_teacher_forcing", sent):
        steps.setdefault(part.input_index, []).append(part.values)
    for index, got in enumerate(served):
        np.testing.assert_allclose(np.stack(steps[index]), got, atol=TOL, rtol=TOL)


def test_single_input_model_takes_its_one_name(zoo: SeqServeClient) -> None:
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    named = zoo.predict("dense_one_to_one", {"input": x})
    np.testing.assert_allclose(named, zoo.predict("dense_one_to_one", x), atol=TOL)
    with pytest.raises(SeqServeError) as caught:
        zoo.predict("dense_one_to_one", {"x": x})
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
def test_bad_named_inputs_are_invalid_argument(zoo: SeqServeClient, case: str) -> None:
    model, inputs, field, words = BAD[case]
    for call in (zoo.predict, lambda m, x: list(zoo.predict_stream(m, x))):
        with pytest.raises(SeqServeError) as caught:
            call(model, inputs)
        assert caught.value.code == INVALID, caught.value
        assert caught.value.field == field and words in str(caught.value), caught.value


def test_inputs_and_named_inputs_together_are_invalid(zoo_server: ServerProcess) -> None:
    x = encode_inputs(np.ones((1, 4), np.float32))
    request = pb.PredictRequest(model_name="dense_one_to_one", inputs=x, named_inputs={"input": x})
    with (
        grpc.insecure_channel(zoo_server.target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.SeqServeStub(channel).Predict(request, timeout=30)
    assert caught.value.code() == INVALID and caught.value.details().startswith("inputs:")


def test_asyncio_client_takes_a_dict(
    zoo_server: ServerProcess, eager: functools._lru_cache_wrapper
) -> None:
    rng = np.random.default_rng(9)
    inputs = {"seq": [rng.normal(size=(n, FEATURES)).astype(np.float32) for n in (3, 6)]}
    inputs["context"] = rng.normal(size=(2, 3)).astype(np.float32)

    async def call() -> tuple:
        async with AsyncSeqServeClient(zoo_server.target) as c:
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


def test_readme_several_inputs_example_runs(zoo: SeqServeClient) -> None:
    """The README's several-inputs snippet, run as written against seq2seq_teacher_forcing."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- readme-several-inputs", 1)[1].split("```python\n", 1)[1]
    scope: dict = {"client": zoo, "np": np}
    exec(block.split("```", 1)[0], scope)  # the project's own README
    assert [len(y) for y in scope["outputs"]] == [4, 2]
    assert scope["names"] == ["encoder", "decoder"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
@given(data=st.data())
def test_any_seq2seq_batch_equals_keras(
    data: st.DataObject, zoo: SeqServeClient, eager: functools._lru_cache_wrapper
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
    served = zoo.predict("seq2seq_teacher_forcing", {"encoder": enc, "decoder": dec})
    model = eager("seq2seq_teacher_forcing")
    for i, got in enumerate(served):
        want = _keras(model, {"encoder": enc[i], "decoder": dec[i]})
        np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
