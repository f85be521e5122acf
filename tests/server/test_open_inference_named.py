"""Models with several inputs and outputs over the Open Inference Protocol, through stock
`tritonclient` 2.73: every input by its name (ragged through `<input>_lengths`), every output by
its name; answers equal seqserve.v1's and Keras' (`model(x, training=False)`, one item at a time).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from seqserve.inference import grpc_service_pb2 as pb
from seqserve_client import SeqServeClient
from tests.support.model_zoo import save_zoo
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served, v2_client

MODELS = ("sequence_and_static", "seq2seq_teacher_forcing", "several_in_out", "two_heads")
TOL = 1e-5
EXACT = 1e-6  # v2 and v1 run the same compiled path

Item = dict[str, np.ndarray]  # one item: an array per input name


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_zoo(tmp_path_factory.mktemp("named"), MODELS)


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with served(root) as process:
        yield process


@pytest.fixture(scope="module")
def v2(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with v2_client(server.target) as client:
        yield client


@pytest.fixture(scope="module")
def v1(server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(server.target, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def eager(root: Path) -> Callable[..., keras.Model]:
    return loader(root)


def _tensor(name: str, x: np.ndarray) -> triton.InferInput:
    kind = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}[x.dtype]
    tensor = triton.InferInput(name, list(x.shape), kind)
    tensor.set_data_from_numpy(x)
    return tensor


def _rng_items(rng: np.random.Generator, shapes: dict[str, list[tuple[int, ...]]]) -> list[Item]:
    """Items of random values: `shapes` gives each input's shape per item."""
    names = list(shapes)
    count = len(shapes[names[0]])
    return [
        {n: rng.normal(size=shapes[n][i]).astype(np.float32) for n in names} for i in range(count)
    ]


# Per model: each input's shape per item (sequence inputs of lengths of their own where allowed).
CASES: dict[str, dict[str, list[tuple[int, ...]]]] = {
    "sequence_and_static": {"steps": [(5, 3), (3, 3)], "static": [(2,), (2,)]},
    "seq2seq_teacher_forcing": {"encoder": [(7, 3), (3, 3)], "decoder": [(4, 2), (2, 2)]},
    "several_in_out": {"seq": [(4, 3), (4, 3)], "context": [(3,), (3,)]},
    "two_heads": {"input": [(5, 3), (9, 3)]},
}


def _v2_inputs(items: list[Item], sequences: set[str], padded: bool) -> list[triton.InferInput]:
    """Each input by name: vectors stacked; sequences padded or concatenated, with lengths."""
    tensors = []
    for name in items[0]:
        rows = [item[name] for item in items]
        if name not in sequences:
            tensors.append(_tensor(name, np.stack(rows)))
            continue
        lengths = np.array([len(r) for r in rows], np.int64)
        if padded:
            values = np.zeros((len(rows), lengths.max(), *rows[0].shape[1:]), np.float32)
            for i, row in enumerate(rows):
                values[i, : len(row)] = row
        else:
            values = np.concatenate(rows)
        tensors += [_tensor(name, values), _tensor(name + "_lengths", lengths)]
    return tensors


def _per_item(result: triton.InferResult, name: str, count: int) -> list[np.ndarray]:
    """An output's rows, one per item: sequences cut (dense) or split (concatenated)."""
    values = result.as_numpy(name)
    lengths = result.as_numpy("output_lengths")
    if lengths is None:
        return list(values)
    if len(values) == count and values.ndim == 3:
        return [row[:n] for row, n in zip(values, lengths, strict=True)]
    return np.split(values, np.cumsum(lengths)[:-1])


def _v1_rows(answer: Any) -> list[np.ndarray]:
    return [np.asarray(row) for row in answer]


def _keras(model: keras.Model, item: Item, output_names: list[str]) -> dict[str, np.ndarray]:
    """The eager model on one item, outputs by name."""
    batched = {k: v[np.newaxis] for k, v in item.items()}
    if isinstance(model.input, dict):
        y = model(batched, training=False)
    elif len(model.inputs) == 1:
        y = model(next(iter(batched.values())), training=False)
    else:
        y = model([batched[t.name] for t in model.inputs], training=False)
    if isinstance(y, dict):
        return {k: keras.ops.convert_to_numpy(v)[0] for k, v in y.items()}
    ys = y if isinstance(y, list | tuple) else [y]
    return {n: keras.ops.convert_to_numpy(v)[0] for n, v in zip(output_names, ys, strict=True)}


def _outputs(v2: triton.InferenceServerClient, name: str) -> list[str]:
    names = [o.name for o in v2.get_model_metadata(name).outputs]
    return [n for n in names if n != "output_lengths"]


@pytest.mark.parametrize("name", MODELS)
def test_metadata_and_config_list_every_input_and_output(
    v2: triton.InferenceServerClient, v1: SeqServeClient, name: str
) -> None:
    ours = v1.metadata(name)
    metadata = v2.get_model_metadata(name)
    sequences = [s.name for s in ours.inputs if s.sequence]
    expected = [(s.name, list(s.shape)) for s in ours.inputs]
    expected += [(n + "_lengths", [-1]) for n in sequences]
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == expected
    assert {t.datatype for t in metadata.inputs[: len(ours.inputs)]} == {"FP32"}
    assert _outputs(v2, name) == [o.name for o in ours.outputs]
    config = v2.get_model_config(name).config
    assert [list(i.dims) for i in config.input[: len(ours.inputs)]] == [
        list(s.shape[1:]) for s in ours.inputs
    ]
    assert [i.optional for i in config.input] == [False] * len(ours.inputs) + [True] * len(
        sequences
    )
    assert [i.allow_ragged_batch for i in config.input][: len(ours.inputs)] == [
        s.sequence for s in ours.inputs
    ]


@pytest.mark.parametrize("padded", [False, True], ids=["concatenated", "padded"])
@pytest.mark.parametrize("name", MODELS)
def test_infer_by_name_equals_v1_and_keras(
    v2: triton.InferenceServerClient,
    v1: SeqServeClient,
    eager: Callable[..., keras.Model],
    name: str,
    padded: bool,
) -> None:
    items = _rng_items(np.random.default_rng(len(name)), CASES[name])
    sequences = {s.name for s in v1.metadata(name).inputs if s.sequence}
    result = v2.infer(name, _v2_inputs(items, sequences, padded))
    names = _outputs(v2, name)
    single = len(items[0]) == 1
    v1_inputs = (
        [item["input"] for item in items]
        if single
        else {n: [item[n] for item in items] for n in items[0]}
    )
    v1_answer = v1.predict(name, v1_inputs)
    v1_named = v1_answer if isinstance(v1_answer, dict) else {names[0]: v1_answer}
    for output in names:
        got = _per_item(result, output, len(items))
        for row, want in zip(got, _v1_rows(v1_named[output]), strict=True):
            np.testing.assert_allclose(row, want, rtol=EXACT, atol=EXACT)
        for row, item in zip(got, items, strict=True):
            expected = _keras(eager(name), item, names)[output]
            np.testing.assert_allclose(row, expected, rtol=TOL, atol=TOL)


def test_stream_infer_takes_every_input_by_name(
    v2: triton.InferenceServerClient, server: ServerProcess
) -> None:
    """ModelStreamInfer: whole answers, and stream_steps one response per output vector."""
    items = _rng_items(np.random.default_rng(3), CASES["several_in_out"])
    inputs = _v2_inputs(items, {"seq"}, padded=True)
    unary = v2.infer("several_in_out", inputs)
    answers: queue.Queue = queue.Queue()
    with triton.InferenceServerClient(server.target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("several_in_out", inputs, request_id="whole")
        client.async_stream_infer(
            "several_in_out", inputs, request_id="steps", parameters={"stream_steps": True}
        )
        client.stop_stream()
    got: dict[str, list] = {}
    while not answers.empty():
        result, error = answers.get()
        assert error is None
        got.setdefault(result.get_response().id, []).append(result)
    for output in ("label", "value"):
        np.testing.assert_array_equal(got["whole"][0].as_numpy(output), unary.as_numpy(output))
    assert len(got["steps"]) == len(items)
    for result in got["steps"]:
        index = result.get_response().parameters["input_index"].int64_param
        for output in ("label", "value"):
            want = unary.as_numpy(output)[index]
            np.testing.assert_allclose(result.as_numpy(output)[0], want, rtol=EXACT, atol=EXACT)


def _refusal(v2: triton.InferenceServerClient, inputs: list[triton.InferInput]) -> str:
    with pytest.raises(InferenceServerException) as caught:
        v2.infer("seq2seq_teacher_forcing", inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    return str(caught.value.message())


def test_missing_extra_and_mismatched_inputs_are_named(v2: triton.InferenceServerClient) -> None:
    encoder = _tensor("encoder", np.ones((2, 3, 3), np.float32))
    decoder = _tensor("decoder", np.ones((2, 2, 2), np.float32))
    missing = _refusal(v2, [encoder])
    assert "'decoder'" in missing and "every input: encoder, decoder" in missing
    extra = _refusal(v2, [encoder, decoder, _tensor("context", np.ones((2, 3), np.float32))])
    assert (
        "'context'" in extra
        and "'encoder', 'decoder', 'encoder_lengths', 'decoder_lengths'" in extra
    )
    fewer = _refusal(v2, [encoder, _tensor("decoder", np.ones((1, 2, 2), np.float32))])
    assert fewer.startswith("decoder: expected 2 items")
    features = _refusal(v2, [encoder, _tensor("decoder", np.ones((2, 2, 5), np.float32))])
    assert features.startswith("decoder.shape: expected 2 features")
    zero = _tensor("decoder_lengths", np.array([2, 0], np.int64))
    assert _refusal(v2, [encoder, decoder, zero]).startswith("decoder_lengths[1]: expected")


def test_unary_infer_refuses_stream_steps(v2: triton.InferenceServerClient) -> None:
    x = _tensor("input", np.ones((1, 4, 3), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        v2.infer("two_heads", [x], parameters={"stream_steps": True})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "stream_steps needs ModelStreamInfer" in str(caught.value.message())


def test_an_unparsable_stream_request_is_answered_and_the_stream_goes_on(
    server: ServerProcess,
) -> None:
    """A message that is not a ModelInferRequest gets its error response; the ones around it
    are answered."""
    good = pb.ModelInferRequest(model_name="two_heads", id="good")
    good.inputs.add(name="input", datatype="FP32", shape=[1, 2, 3])
    good.raw_input_contents.append(np.ones((1, 2, 3), np.float32).tobytes())
    messages = [good.SerializeToString(), b"\x0a\xff\xff\xff", good.SerializeToString()]
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda data: data,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        responses = list(call(iter(messages), timeout=60))
    errors = [r.error_message for r in responses if r.error_message]
    assert len(responses) == 3 and len(errors) == 1
    assert errors[0].startswith("INVALID_ARGUMENT: request: expected a ModelInferRequest")
    assert [r.infer_response.id for r in responses if not r.error_message] == ["good", "good"]


def test_readme_v2_several_inputs_example_runs(server: ServerProcess) -> None:
    """The README's v2 several-inputs snippet, run as written against the zoo models."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- readme-v2-several-inputs", 1)[1].split("```python\n", 1)[1]
    code = block.split("```", 1)[0].replace("127.0.0.1:8500", server.target)
    scope: dict = {}
    exec(code, scope)  # the project's own README
    assert scope["y"].shape == (6, 2) and list(scope["lengths"]) == [4, 2]
    assert scope["label"].shape == (2, 3) and scope["value"].shape == (2, 1)


def test_typed_contents_equal_raw_contents(
    v2: triton.InferenceServerClient, server: ServerProcess
) -> None:
    """Inputs in typed `contents` (what other v2 clients send) answer as raw contents do."""
    items = _rng_items(np.random.default_rng(5), CASES["sequence_and_static"])
    raw = v2.infer("sequence_and_static", _v2_inputs(items, {"steps"}, padded=False))
    request = pb.ModelInferRequest(model_name="sequence_and_static")
    steps = np.concatenate([item["steps"] for item in items])
    static = np.stack([item["static"] for item in items])
    request.inputs.add(name="static", datatype="FP32", shape=static.shape)
    request.inputs[-1].contents.fp32_contents.extend(static.ravel().tolist())
    request.inputs.add(name="steps", datatype="FP32", shape=steps.shape)
    request.inputs[-1].contents.fp32_contents.extend(steps.ravel().tolist())
    request.inputs.add(name="steps_lengths", datatype="INT64", shape=[len(items)])
    request.inputs[-1].contents.int64_contents.extend(len(item["steps"]) for item in items)
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = call(request, timeout=60)
    assert [o.name for o in response.outputs] == ["output"]
    typed = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, -1)
    np.testing.assert_array_equal(typed, raw.as_numpy("output"))


def test_sequences_refuse_several_inputs_with_the_reason(
    v2: triton.InferenceServerClient,
) -> None:
    inputs = _v2_inputs(
        _rng_items(np.random.default_rng(6), CASES["several_in_out"])[:1], set(), False
    )
    with pytest.raises(InferenceServerException) as caught:
        v2.infer("several_in_out", inputs, sequence_id=3, sequence_start=True)
    assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "several" in str(caught.value.message())
