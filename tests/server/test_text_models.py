"""Text models end to end (issue 24): one real server serving the text zoo, called with raw
strings through the SDK (sync and asyncio), seqserve.v1 stubs and stock tritonclient (BYTES).
Every answer is compared with Keras in-process on that item alone."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import tritonclient.grpc as triton

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_tensor
from seqserve_client import AsyncSeqServeClient, SeqServeClient
from tests.support.server_process import ServerProcess, served, v2_client
from tests.support.text_zoo import TEXT_ZOO, save_text_zoo, texts, token_lists

TOLERANCE = 1e-5
MAX_STRING_BYTES = 256  # the server's per-string bound in this module


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_text_zoo(tmp_path_factory.mktemp("text-served"))


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with served(root, "--max-string-bytes", str(MAX_STRING_BYTES)) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def keras_model(root: Path) -> Callable[[str], Any]:
    @functools.cache
    def load(name: str) -> Any:
        return keras.saving.load_model(root / name / "1" / "model.keras", safe_mode=True)

    return load


def _items(name: str, rng: np.random.Generator) -> list[Any]:
    """Three items of the model's inputs: texts, token lists or dicts of both."""
    if name in ("word_classifier", "char_classifier", "text_label"):
        return [*texts(rng, 2), "Été à 東京, naïve 🙂"]
    if name == "text_and_numbers":
        numbers = rng.normal(size=(3, 2)).astype(np.float32)
        return [{"text": t, "numbers": n} for t, n in zip(texts(rng, 3), numbers, strict=True)]
    lists = token_lists(rng, [3, 5, 5])
    if name == "tokens_and_values":
        return [
            {"tokens": t, "values": rng.normal(size=(len(t), 1)).astype(np.float32)} for t in lists
        ]
    return lists


def _batch(items: list[Any]) -> Any:
    """What the SDK takes: a list (ragged token lists too), or a dict of lists by input."""
    if not isinstance(items[0], dict):
        return items
    return {key: [item[key] for item in items] for key in items[0]}


def _keras_alone(model: Any, name: str, item: Any) -> np.ndarray:
    """Keras on one item (a batch of one)."""
    if isinstance(item, dict):
        x = {
            k: np.array([v.encode() if isinstance(v, str) else v], dtype=object)
            if isinstance(v, str) or k == "tokens"
            else np.asarray(v)[None]
            for k, v in item.items()
        }
        if name == "text_and_numbers":
            x["text"] = np.array([item["text"].encode()], dtype=object)
        if name == "tokens_and_values":
            x["tokens"] = np.array([[t.encode() for t in item["tokens"]]], dtype=object)
    elif isinstance(item, str):
        shape = (1, 1) if name == "char_classifier" else (1,)
        x = np.array([item.encode()], dtype=object).reshape(shape)
    else:
        x = np.array([[t.encode() for t in item]], dtype=object)
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))[0]


def _assert_served(got: Any, want: Any) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if want.dtype.kind in "OSU":  # strings: the server adds a feature axis of 1

        def text(items: np.ndarray) -> list[str]:
            return [w.decode() if isinstance(w, bytes) else w for w in items.reshape(-1)]

        assert text(got) == text(want)
        return
    np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("name", list(TEXT_ZOO))
def test_predict_from_raw_strings_equals_keras_on_each_item(
    client: SeqServeClient, keras_model: Callable[[str], Any], name: str
) -> None:
    meta = client.metadata(name)
    assert meta.mode == TEXT_ZOO[name][1]
    assert "string" in {spec.dtype for spec in meta.inputs}
    items = _items(name, np.random.default_rng(11))
    served = client.predict(name, _batch(items))
    for i, item in enumerate(items):
        _assert_served(served[i], _keras_alone(keras_model(name), name, item))


def test_predict_stream_of_a_token_string_tagger(
    client: SeqServeClient, keras_model: Callable[[str], Any]
) -> None:
    items = token_lists(np.random.default_rng(12), [4, 2])
    steps: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for part in client.predict_stream("token_string_tagger", items):
        steps[part.input_index].append(np.asarray(part.values).reshape(-1, 4))
    for i, item in enumerate(items):
        want = _keras_alone(keras_model("token_string_tagger"), "token_string_tagger", item)
        np.testing.assert_allclose(np.concatenate(steps[i]), want, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("name", [n for n, (_, _, steps) in TEXT_ZOO.items() if steps])
def test_sessions_step_token_strings(
    client: SeqServeClient, server: ServerProcess, keras_model: Callable[[str], Any], name: str
) -> None:
    """Sync and asyncio: one token, then a few, then one (a str), each answer Keras' on the
    tokens so far; many-to-one answers the running output."""
    assert client.metadata(name).session_support == "session_incremental"
    rng = np.random.default_rng(13)
    tokens = token_lists(rng, [6])[0]
    values = rng.normal(size=(6, 1)).astype(np.float32)
    cuts = [(0, 1), (1, 5), (5, 6)]

    def chunk(a: int, b: int) -> Any:
        if name == "tokens_and_values":
            return {"tokens": tokens[a:b], "values": values[a:b]}
        return tokens[a] if b - a == 1 and a == 5 else tokens[a:b]

    def want(a: int, b: int) -> np.ndarray:
        item: Any = tokens[:b]
        if name == "tokens_and_values":
            item = {"tokens": tokens[:b], "values": values[:b]}
        full = _keras_alone(keras_model(name), name, item)
        return full[a:b] if TEXT_ZOO[name][1] == "many_to_many_aligned" else full

    with client.session(name) as session:
        for a, b in cuts:
            got = session.step(chunk(a, b))
            np.testing.assert_allclose(np.asarray(got).reshape(want(a, b).shape), want(a, b),
                                       rtol=TOLERANCE, atol=TOLERANCE)  # fmt: skip

    async def run() -> list[Any]:
        async with AsyncSeqServeClient(server.target) as aio, aio.session(name) as session:
            return [await session.step(chunk(a, b)) for a, b in cuts]

    for got, (a, b) in zip(asyncio.run(run()), cuts, strict=True):
        np.testing.assert_allclose(np.asarray(got).reshape(want(a, b).shape), want(a, b),
                                   rtol=TOLERANCE, atol=TOLERANCE)  # fmt: skip


@pytest.mark.parametrize("name", ["word_classifier", "text_label", "tag_strings"])
def test_sessions_of_whole_texts_and_string_outputs_say_why_not(
    client: SeqServeClient, name: str
) -> None:
    meta = client.metadata(name)
    assert meta.session_support == "session_unsupported"
    assert "whole-text" in meta.session_reason or "string outputs" in meta.session_reason


# -- the Open Inference Protocol: tritonclient with BYTES ----------------------------------------


def _bytes_input(name: str, values: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(values.shape), "BYTES")
    tensor.set_data_from_numpy(values)
    return tensor


def test_tritonclient_sends_texts_as_bytes(
    server: ServerProcess, keras_model: Callable[[str], Any]
) -> None:
    items = texts(np.random.default_rng(14), 3)
    with v2_client(server.target) as v2:
        meta = v2.get_model_metadata("word_classifier")
        assert meta.inputs[0].datatype == "BYTES"
        result = v2.infer("word_classifier", [_bytes_input("input", np.array(items, dtype=object))])
        labels = v2.infer("text_label", [_bytes_input("input", np.array(items, dtype=object))])
    got, names = result.as_numpy("output"), labels.as_numpy("output")
    for i, text in enumerate(items):
        _assert_served(
            got[i], _keras_alone(keras_model("word_classifier"), "word_classifier", text)
        )
        _assert_served(names[i], _keras_alone(keras_model("text_label"), "text_label", text))
    assert names.dtype == object and isinstance(names.reshape(-1)[0], bytes)


def test_tritonclient_token_strings_and_a_sequence(
    server: ServerProcess, keras_model: Callable[[str], Any]
) -> None:
    tokens = token_lists(np.random.default_rng(15), [5])[0]
    x = np.array([tokens], dtype=object)
    model = keras_model("token_string_tagger")
    want = _keras_alone(model, "token_string_tagger", tokens)
    with v2_client(server.target) as v2:
        whole = v2.infer("token_string_tagger", [_bytes_input("input", x)]).as_numpy("output")
        np.testing.assert_allclose(whole[0], want, rtol=TOLERANCE, atol=TOLERANCE)
        steps = []
        for i, (a, b) in enumerate([(0, 2), (2, 5)]):
            answer = v2.infer("token_string_tagger", [_bytes_input("input", x[:, a:b])],
                              sequence_id=777, sequence_start=i == 0,
                              sequence_end=i == 1)  # fmt: skip
            steps.append(answer.as_numpy("output")[0])
    np.testing.assert_allclose(np.concatenate(steps), want, rtol=TOLERANCE, atol=TOLERANCE)


# -- bad text ------------------------------------------------------------------------------------


def _predict(server: ServerProcess, model: str, tensor: pb.Tensor) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SeqServeStub(channel)
        request = pb.PredictRequest(model_name=model, inputs=pb.Batch(values=tensor))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
    return caught.value


def _strings(values: list[bytes], shape: list[int]) -> pb.Tensor:
    return pb.Tensor(dtype=pb.STRING, shape=shape, string_values=pb.StringValues(values=values))


@pytest.mark.parametrize(
    ("model", "tensor", "code", "words"),
    [
        ("word_classifier", _strings([b"fine", b"bad \xff\xfe"], [2]),
         grpc.StatusCode.INVALID_ARGUMENT, ["inputs.values", "UTF-8", "inputs[1]"]),
        ("word_classifier", _strings([b"x" * (MAX_STRING_BYTES + 1)], [1]),
         grpc.StatusCode.INVALID_ARGUMENT, [str(MAX_STRING_BYTES), "inputs.values"]),
        ("word_classifier", _strings([b"a", b"b"], [1, 2]),
         grpc.StatusCode.INVALID_ARGUMENT, ["inputs.values.shape", "[batch] texts"]),
        ("word_classifier", to_tensor(np.ones((2,), np.float32)),
         grpc.StatusCode.INVALID_ARGUMENT, ["inputs.values.dtype", "text"]),
        ("token_string_tagger", to_tensor(np.ones((1, 3), np.int32)),
         grpc.StatusCode.INVALID_ARGUMENT, ["inputs.values.dtype", "text"]),
        ("word_classifier", _strings([b""], [1]),
         grpc.StatusCode.INVALID_ARGUMENT, ["inputs[0]", "Keras fails on this text too"]),
    ],
    ids=["invalid-utf8", "oversize", "wrong-rank", "numbers-to-text", "ids-to-tokens", "empty"],
)  # fmt: skip
def test_bad_text_is_refused_naming_the_field(
    server: ServerProcess, model: str, tensor: pb.Tensor, code: grpc.StatusCode, words: list[str]
) -> None:
    error = _predict(server, model, tensor)
    assert error.code() == code, error.details()
    for word in words:
        assert word in error.details(), error.details()


def test_text_to_a_numeric_input_is_refused(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SeqServeStub(channel)
        request = pb.PredictRequest(model_name="tokens_and_values")
        request.named_inputs["tokens"].values.CopyFrom(_strings([b"the", b"cat"], [1, 2]))
        request.named_inputs["values"].values.CopyFrom(_strings([b"1", b"2"], [1, 2, 1]))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'named_inputs["values"]' in caught.value.details()
    assert "got text" in caught.value.details()
