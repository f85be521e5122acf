"""The SDK with text, no server: lists of texts, numpy str/object arrays and token lists go out as
STRING tensors laid out as token ids are; session steps take token strings; STRING outputs come
back as object arrays of `str`, through the sync and asyncio clients alike (a scripted server
that tags each token)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import TensorError, from_batch, from_tensor, to_tensor
from seqserve_client import AsyncSeqServeClient, SeqServeClient, calls

# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "texts",
    [
        ["some text", "héllo 🙂"],
        np.array(["some text", "héllo 🙂"]),
        np.array(["some text", "héllo 🙂"], dtype=object),
        np.array([b"some text", "héllo 🙂".encode()], dtype=object),
    ],
    ids=["list", "str_", "object-str", "object-bytes"],
)
def test_texts_travel_as_one_string_per_item(texts: Any) -> None:
    request = calls.predict("m", texts, 0).request
    assert request.inputs.values.dtype == pb.STRING
    values, lengths = from_batch(request.inputs)
    assert lengths is None and values.tolist() == [b"some text", "héllo 🙂".encode()]


def test_token_lists_travel_ragged_and_by_name() -> None:
    request = calls.predict("m", {"tokens": [["the", "cat"], ["a"]], "x": np.ones((2, 1))}, 0)
    tokens = request.request.named_inputs["tokens"]
    assert list(tokens.values.shape) == [3] and list(tokens.lengths) == [2, 1]
    assert list(tokens.values.string_values.values) == [b"the", b"cat", b"a"]
    assert request.request.named_inputs["x"].values.dtype == pb.FLOAT64


def test_one_text_alone_is_refused_before_sending() -> None:
    with pytest.raises(TensorError, match="a list of texts"):
        calls.predict("m", "hello", 0)  # type: ignore[arg-type]


def test_objects_that_are_not_text_are_refused_before_sending() -> None:
    with pytest.raises(TensorError, match="int at element 1"):
        calls.predict("m", np.array(["a", 1], dtype=object), 0)


@pytest.mark.parametrize(
    ("steps", "want"),
    [
        (["tok1", "tok2"], [b"tok1", b"tok2"]),
        ("tok", [b"tok"]),
        (np.array(["a", "b"], dtype=object), [b"a", b"b"]),
    ],
)
def test_session_steps_of_token_strings(steps: Any, want: list[bytes]) -> None:
    tensor = calls.steps_request(steps, False).steps.values
    assert tensor.dtype == pb.STRING and from_tensor(tensor).tolist() == want
    named = calls.steps_request({"tokens": steps}, False).steps.named_values["tokens"]
    assert from_tensor(named).tolist() == want


def test_static_text_inputs_travel_as_they_are() -> None:
    opening = calls.open_request("m", 0, False, 0, {"prompt": "once upon", "ids": [1]}).open
    prompt = opening.named_inputs["prompt"]
    assert prompt.dtype == pb.STRING and list(prompt.shape) == []
    assert from_tensor(prompt).tolist() == b"once upon"
    assert opening.named_inputs["ids"].dtype == pb.INT64


# -- replies ----------------------------------------------------------------------------------


def strings(values: list[str], shape: list[int] | None = None) -> pb.Tensor:
    return to_tensor(np.array(values, dtype=object).reshape(shape or [len(values)]))


def test_text_outputs_come_back_as_str() -> None:
    response = pb.PredictResponse(vectors=pb.VectorOutput(values=strings(["pos", "nég"])))
    got = calls.prediction_from(response).outputs
    assert isinstance(got, np.ndarray) and got.dtype == object
    assert got.tolist() == ["pos", "nég"] and all(type(s) is str for s in got)


def test_text_sequences_split_or_stack_like_numbers() -> None:
    ragged = pb.SequenceOutput(values=strings(["DET", "NOUN", "X"]), lengths=[2, 1])
    got = calls.prediction_from(pb.PredictResponse(sequences=ragged)).outputs
    assert isinstance(got, list) and [g.tolist() for g in got] == [["DET", "NOUN"], ["X"]]
    dense = pb.SequenceOutput(values=strings(["a", "b", "c", "d"]), lengths=[2, 2])
    got = calls.prediction_from(pb.PredictResponse(sequences=dense)).outputs
    assert isinstance(got, np.ndarray) and got.tolist() == [["a", "b"], ["c", "d"]]


def test_named_text_outputs_beside_numbers() -> None:
    response = pb.PredictResponse()
    response.named_outputs["label"].vectors.values.CopyFrom(strings(["cat"]))
    response.named_outputs["score"].vectors.values.CopyFrom(to_tensor(np.ones(1, np.float32)))
    got = calls.prediction_from(response).outputs
    assert isinstance(got, dict) and got["label"].tolist() == ["cat"]
    assert got["score"].dtype == np.float32


def test_stream_parts_and_session_outputs_of_text() -> None:
    part = calls.stream_part_from(pb.PredictStreamResponse(values=strings(["NOUN"])))
    assert part.values.tolist() == ["NOUN"]
    single = pb.SessionResponse(output=pb.SessionOutput(values=strings(["VERB"], [1, 1])))
    assert calls.session_output_from(single).values.tolist() == [["VERB"]]  # type: ignore[union-attr]
    named = pb.SessionResponse(output=pb.SessionOutput(named_outputs={"tag": strings(["X"])}))
    values = calls.session_output_from(named).values
    assert isinstance(values, dict) and values["tag"].tolist() == ["X"]


def test_text_output_that_is_not_utf8_names_the_field() -> None:
    tensor = pb.Tensor(dtype=pb.STRING, shape=[1], string_values=pb.StringValues(values=[b"\xff"]))
    response = pb.PredictResponse()
    response.named_outputs["tag"].vectors.values.CopyFrom(tensor)
    with pytest.raises(TensorError) as caught:
        calls.prediction_from(response)
    assert caught.value.field == "values" and "element 0" in caught.value.got


def test_metadata_says_string() -> None:
    spec = pb.TensorSpec(name="text", dtype=pb.STRING, shape=[-1])
    response = pb.GetModelMetadataResponse(
        input=spec, inputs=[spec], max_string_bytes=65536, max_request_string_bytes=2**26
    )
    meta = calls.metadata_from(response)
    assert meta.input.dtype == "string" and meta.inputs[0].dtype == "string"
    assert (meta.max_string_bytes, meta.max_request_string_bytes) == (65536, 2**26)


# -- through both clients -----------------------------------------------------------------------


def tag(tokens: np.ndarray) -> np.ndarray:
    """The scripted model: each token's tag ("NOUN" for words, "X" otherwise), as bytes."""
    return np.array([b"NOUN" if t.isalpha() else b"X" for t in tokens.ravel()], object).reshape(
        tokens.shape
    )


def predict_reply(request: pb.PredictRequest) -> pb.PredictResponse:
    values, lengths = from_batch(request.inputs)
    tags = tag(values)
    if lengths is None:
        return pb.PredictResponse(vectors=pb.VectorOutput(values=to_tensor(tags)))
    return pb.PredictResponse(
        sequences=pb.SequenceOutput(values=to_tensor(tags), lengths=lengths.tolist())
    )


class Tagger:
    """A session that tags each token string it is sent."""

    def answer(self, request: pb.SessionRequest) -> list[pb.SessionResponse]:
        if request.WhichOneof("kind") == "open":
            opened = pb.SessionOpened(session_id="s", model_name="m", mode=pb.MANY_TO_MANY_ALIGNED)
            return [pb.SessionResponse(opened=opened)]
        tags = tag(from_tensor(request.steps.values))
        return [pb.SessionResponse(output=pb.SessionOutput(values=to_tensor(tags)))]


def sync_session(script: Tagger) -> Callable[..., Iterator[pb.SessionResponse]]:
    def call(requests: Iterator[pb.SessionRequest], timeout: float | None) -> Any:
        for request in requests:
            yield from script.answer(request)

    return call


class AsyncCall:
    """A stand-in for a grpc.aio stream-stream call that ends OK once the writes are done."""

    def __init__(self, script: Tagger) -> None:
        self.script = script
        self.replies: deque[pb.SessionResponse] = deque()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        pass

    async def write(self, request: pb.SessionRequest) -> None:
        self.replies.extend(self.script.answer(request))

    async def read(self) -> Any:
        return self.replies.popleft() if self.replies else grpc.aio.EOF

    async def done_writing(self) -> None:
        pass

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def cancel(self) -> bool:
        return True


TOKENS = [["the", "cat", "2"], ["a"]]
WANT = [["NOUN", "NOUN", "X"], ["NOUN"]]


def run_sync() -> list[Any]:
    with SeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Predict"] = lambda request, timeout: predict_reply(request)
        client._rpcs["Session"] = sync_session(Tagger())
        got = [client.predict("m", TOKENS), client.predict("m", ["cat", "42"])]
        with client.session("m") as s:
            got += [s.step(["the", "cat"]), s.step("7")]
    return got


async def run_async() -> list[Any]:
    async def predict(request: pb.PredictRequest, timeout: float | None) -> pb.PredictResponse:
        return predict_reply(request)

    async with AsyncSeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Predict"] = predict
        client._rpcs["Session"] = lambda timeout: AsyncCall(Tagger())
        got = [await client.predict("m", TOKENS), await client.predict("m", ["cat", "42"])]
        async with client.session("m") as s:
            got += [await s.step(["the", "cat"]), await s.step("7")]
    return got


@pytest.mark.parametrize("twin", ["sync", "asyncio"])
def test_text_in_and_out_through_both_clients(twin: str) -> None:
    got = run_sync() if twin == "sync" else asyncio.run(run_async())
    assert [g.tolist() for g in got[0]] == WANT
    assert got[1].tolist() == ["NOUN", "X"]
    assert got[2].tolist() == ["NOUN", "NOUN"] and got[3].tolist() == ["X"]
    assert all(type(s) is str for s in got[1])
