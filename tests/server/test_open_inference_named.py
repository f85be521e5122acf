"""Models with several inputs and outputs over the Open Inference Protocol, through stock
`tritonclient` 2.73: every input by its name (ragged through `<input>_lengths`), every output by
its name; answers equal seqserve.v1's and Keras' (`model(x, training=False)`, one item at a time).
Triton sequences of these models: every input on the `sequence_start` request (static inputs
[1, ...]), each sequence input's new steps after it, every output by name in each response.
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
from tests.support.model_zoo import VOCAB, ZOO, save_zoo
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served, v2_client

MODELS = ("sequence_and_static", "seq2seq_teacher_forcing", "several_in_out", "two_heads")
# Several inputs or outputs, with sessions: Triton sequences over them.
SEQUENCE_MODELS = (
    "two_heads", "two_heads_aligned", "sequence_and_static", "two_aligned_sequences",
    "tokens_and_numbers", "several_in_out", "static_initial_state", "static_token_ids",
    "static_per_step", "static_broadcast_add",
)  # fmt: skip
TOL = 1e-5
EXACT = 1e-6  # v2 and v1 run the same compiled path

Item = dict[str, np.ndarray]  # one item: an array per input name


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_zoo(tmp_path_factory.mktemp("named"), dict.fromkeys(MODELS + SEQUENCE_MODELS))


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


DATATYPES = {np.dtype("float32"): "FP32", np.dtype("int32"): "INT32", np.dtype("int64"): "INT64"}


def _tensor(name: str, x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), DATATYPES[x.dtype])
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


# -- Triton sequences over several inputs and outputs ---------------------------------------------


def _sequence_item(
    v2: triton.InferenceServerClient, name: str, rng: np.random.Generator
) -> tuple[Item, set[str]]:
    """One item of every input (sequence inputs sum(CHUNKS) steps long, or the model's fixed
    length) in the datatypes of the model's metadata; and which inputs are sequences (those
    with a `<input>_lengths` input)."""
    tensors = v2.get_model_metadata(name).inputs
    names = {t.name for t in tensors}
    sequences = {n for n in names if n + "_lengths" in names}
    lengths = {n + "_lengths" for n in sequences}
    steps = ZOO[name][2] or sum(CHUNKS)
    item = {}
    for tensor in tensors:
        if tensor.name in lengths:
            continue
        shape = [steps if d == -1 else d for d in tensor.shape[1:]]
        if tensor.datatype == "INT32":
            item[tensor.name] = rng.integers(1, VOCAB, size=shape).astype(np.int32)
        else:
            item[tensor.name] = rng.normal(size=shape).astype(np.float32)
    return item, sequences


CHUNKS = (1, 3, 2)  # steps per request; a fixed-length model gets the rest in a last one


def _chunks(name: str) -> list[tuple[int, int]]:
    """(start, end) of each request's steps."""
    sizes = list(CHUNKS)
    fixed = ZOO[name][2]
    if fixed is not None:
        sizes.append(fixed - sum(sizes))
    ends = np.cumsum(sizes).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _sequence_requests(
    name: str, item: Item, sequences: set[str], sequence: int | str
) -> list[dict[str, Any]]:
    """tritonclient's keyword arguments for each request of one sequence: every input on the
    start request (static ones as [1, ...]), the sequence inputs' new steps ([1, steps, ...])
    after it."""
    chunks = _chunks(name)
    requests = []
    for i, (start, end) in enumerate(chunks):
        inputs = [_tensor(n, item[n][np.newaxis, start:end]) for n in item if n in sequences]
        if i == 0:
            inputs += [_tensor(n, item[n][np.newaxis]) for n in item if n not in sequences]
        requests.append(
            {
                "model_name": name,
                "inputs": inputs,
                "sequence_id": sequence,
                "sequence_start": i == 0,
                "sequence_end": i == len(chunks) - 1,
            }
        )
    return requests


def _prefix(item: Item, sequences: set[str], end: int) -> Item:
    return {n: (x[:end] if n in sequences else x) for n, x in item.items()}


def _check_sequence(
    name: str,
    item: Item,
    sequences: set[str],
    results: list[triton.InferResult],
    outputs: list[str],
    model: keras.Model,
) -> None:
    """Each response, every output by name, against Keras on the prefix fed so far: an aligned
    model's new steps, a many-to-one model's running output. Keras runs a fixed-length model at
    its full length only: an aligned one's steps (causal) are compared with that run's."""
    _, mode, fixed = ZOO[name]
    chunks = _chunks(name)
    assert len(results) == len(chunks)
    for result, (start, end) in zip(results, chunks, strict=True):
        assert {o.name for o in result.get_response().outputs} >= set(outputs), name
        if fixed is not None and end != fixed and mode != "many_to_many_aligned":
            continue
        want = _keras(model, _prefix(item, sequences, fixed or end), outputs)
        for output in outputs:
            got = result.as_numpy(output)
            assert got is not None and got.shape[0] == 1, (name, output, got)
            expected = want[output][start:end] if mode == "many_to_many_aligned" else want[output]
            np.testing.assert_allclose(
                got[0], expected, rtol=TOL, atol=TOL, err_msg=f"{name}.{output}, steps {end}"
            )


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_through_infer_equals_keras_on_each_prefix(
    v2: triton.InferenceServerClient, eager: Callable[..., keras.Model], name: str
) -> None:
    """ModelInfer with sequence_id: static inputs on the start request only, then each
    sequence input's new steps; every response carries every output by name."""
    item, sequences = _sequence_item(v2, name, np.random.default_rng(len(name) + 100))
    assert sequences, name
    sequence = 7000 + SEQUENCE_MODELS.index(name)
    results = [v2.infer(**r) for r in _sequence_requests(name, item, sequences, sequence)]
    _check_sequence(name, item, sequences, results, _outputs(v2, name), eager(name))


def _stream(server: ServerProcess, requests: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """The requests on one ModelStreamInfer stream; every answer, in arrival order."""
    answers: queue.Queue = queue.Queue()
    with triton.InferenceServerClient(server.target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for index, request in enumerate(requests):
            client.async_stream_infer(**request, request_id=str(index))
        got = [answers.get(timeout=60) for _ in requests]
        client.stop_stream()
    return got


def test_sequence_through_a_stream_equals_keras(
    v2: triton.InferenceServerClient, server: ServerProcess, eager: Callable[..., keras.Model]
) -> None:
    """ModelStreamInfer: the requests of one sequence (static inputs first, then steps)
    answered in order, every output by name."""
    name = "static_initial_state"
    item, sequences = _sequence_item(v2, name, np.random.default_rng(21))
    answers = _stream(server, _sequence_requests(name, item, sequences, "device-21"))
    assert [error for _, error in answers] == [None] * len(answers)
    results = [result for result, _ in answers]
    assert [r.get_response().id for r in results] == [str(i) for i in range(len(results))]
    _check_sequence(name, item, sequences, results, _outputs(v2, name), eager(name))


def _refused(call: Callable[[], Any], code: str = "StatusCode.INVALID_ARGUMENT") -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == code, caught.value.message()
    return str(caught.value.message())


def test_sequence_start_needs_every_static_input(v2: triton.InferenceServerClient) -> None:
    steps = _tensor("steps", np.ones((1, 2, 3), np.float32))
    message = _refused(
        lambda: v2.infer("sequence_and_static", [steps], sequence_id=81, sequence_start=True)
    )
    assert message.startswith("inputs:") and "'static'" in message, message
    shape = _tensor("static", np.ones((1, 5), np.float32))
    message = _refused(
        lambda: v2.infer("sequence_and_static", [steps, shape], sequence_id=81, sequence_start=True)
    )
    assert message.startswith("static.shape:"), message


def test_a_static_input_on_a_later_request_is_refused_and_the_sequence_goes_on(
    v2: triton.InferenceServerClient, eager: Callable[..., keras.Model]
) -> None:
    name = "sequence_and_static"
    item, sequences = _sequence_item(v2, name, np.random.default_rng(82))
    first, *rest = _sequence_requests(name, item, sequences, 82)
    results = [v2.infer(**first)]
    again = {**rest[0], "inputs": [*rest[0]["inputs"], _tensor("static", item["static"][None])]}
    message = _refused(lambda: v2.infer(**again))
    assert message.startswith("static:") and "sequence_start request only" in message, message
    results += [v2.infer(**r) for r in rest]  # the refused request fed nothing
    _check_sequence(name, item, sequences, results, _outputs(v2, name), eager(name))


def test_sequence_inputs_need_equal_step_counts(v2: triton.InferenceServerClient) -> None:
    a = _tensor("a", np.ones((1, 2, 3), np.float32))
    b = _tensor("b", np.ones((1, 3, 2), np.float32))
    name = "two_aligned_sequences"
    message = _refused(lambda: v2.infer(name, [a, b], sequence_id=83, sequence_start=True))
    assert message.startswith("b:") and "2 steps" in message and "3 steps" in message, message
    b = _tensor("b", np.ones((1, 2, 2), np.float32))
    v2.infer(name, [a, b], sequence_id=83, sequence_start=True)
    short = _tensor("a", np.ones((1, 1, 3), np.float32))
    message = _refused(lambda: v2.infer(name, [short, b], sequence_id=83))
    assert message.startswith("b:") and "1 steps" in message, message
    missing = _refused(lambda: v2.infer(name, [a], sequence_id=83))
    assert missing.startswith("inputs:") and "'b'" in missing, missing
    v2.infer(name, [a, b], sequence_id=83, sequence_end=True)


def test_unknown_inputs_in_a_sequence_are_named(v2: triton.InferenceServerClient) -> None:
    name = "several_in_out"
    seq = _tensor("seq", np.ones((1, 2, 3), np.float32))
    context = _tensor("context", np.ones((1, 3), np.float32))
    stray = _tensor("weather", np.ones((1, 3), np.float32))
    message = _refused(
        lambda: v2.infer(name, [seq, context, stray], sequence_id=84, sequence_start=True)
    )
    assert message.startswith("inputs[2].name:") and "'weather'" in message, message
    v2.infer(name, [seq, context], sequence_id=84, sequence_start=True)
    message = _refused(lambda: v2.infer(name, [stray, seq], sequence_id=84))
    assert "'seq'" in message and "'seq_lengths'" in message, message
    assert message.startswith("inputs[0].name:") and "'weather'" in message, message
    v2.infer(name, [seq], sequence_id=84, sequence_end=True)


def test_sequences_refuse_inputs_of_different_lengths_with_the_reason(
    v2: triton.InferenceServerClient,
) -> None:
    """seq2seq_teacher_forcing's encoder and decoder have time axes of their own: no step order
    to feed them in; Predict serves it."""
    encoder = _tensor("encoder", np.ones((1, 3, 3), np.float32))
    decoder = _tensor("decoder", np.ones((1, 3, 2), np.float32))
    message = _refused(
        lambda: v2.infer(
            "seq2seq_teacher_forcing", [encoder, decoder], sequence_id=85, sequence_start=True
        ),
        "StatusCode.FAILED_PRECONDITION",
    )
    assert "differ in length" in message and "encoder, decoder" in message, message
    config = v2.get_model_config("seq2seq_teacher_forcing").config
    assert config.parameters["session_support"].string_value == "unsupported"
    assert not config.HasField("sequence_batching")
