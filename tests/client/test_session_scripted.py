"""Session and AsyncSession over a scripted call, no server: what they send for static inputs,
steps by input name and resets, and what they hand back for several outputs. The scripted
session answers as the wire protocol says a several-input, several-output model does; the
end-to-end behaviour through a real server is in tests/server/."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import from_tensor, to_tensor
from seqserve_client import AsyncSeqServeClient, SeqServeClient, SessionOutput


class ScriptedSession:
    """The server's side of one session in memory. Static input "context" [n]; sequence inputs
    "seq" [steps, 3] (and any others) by name; outputs "seen" (steps since open or reset) and
    "total" (the step's sum plus the context's) per step. Steps sent in `values` (one input)
    get one output in `values`: the "total" alone."""

    def __init__(self, mode: pb.Mode.ValueType) -> None:
        self.mode = mode
        self.received: list[pb.SessionRequest] = []
        self.context = np.zeros(0, np.float32)
        self.seen = 0

    def answer(self, request: pb.SessionRequest) -> list[pb.SessionResponse]:
        self.received.append(request)
        kind = request.WhichOneof("kind")
        if kind == "open":
            self._set_context(request.open.named_inputs)
            opened = pb.SessionOpened(session_id="s1", model_name="m", mode=self.mode)
            return [pb.SessionResponse(opened=opened)]
        if kind == "reset":
            self._set_context(request.reset.named_inputs)
            self.seen = 0
            return [pb.SessionResponse(reset=pb.SessionResetDone())]
        if kind == "end_input":
            outputs = self._outputs(np.ones((2, 3), np.float32))
            first = {name: values[:1] for name, values in outputs.items()}
            rest = {name: values[1:] for name, values in outputs.items()}
            return [self._reply(0, first), self._reply(1, rest, last=True)]
        steps = request.steps
        if steps.HasField("values"):
            total = self._outputs(from_tensor(steps.values))["total"]
            return [pb.SessionResponse(output=pb.SessionOutput(values=to_tensor(total)))]
        start = self.seen
        outputs = self._outputs(from_tensor(steps.named_values["seq"]))
        if self.mode == pb.MANY_TO_MANY_UNALIGNED:
            return []
        return [self._reply(start, outputs)]

    def _set_context(self, named: Any) -> None:
        if named:
            self.context = from_tensor(named["context"])

    def _outputs(self, seq: np.ndarray) -> dict[str, np.ndarray]:
        seen = np.arange(self.seen + 1, self.seen + len(seq) + 1, dtype=np.float32)[:, None]
        self.seen += len(seq)
        total = seq.sum(axis=1, keepdims=True) + self.context.sum()
        return {"total": total.astype(np.float32), "seen": seen}

    def _reply(
        self, step: int, outputs: dict[str, np.ndarray], last: bool = False
    ) -> pb.SessionResponse:
        named = {name: to_tensor(values) for name, values in outputs.items()}
        return pb.SessionResponse(
            output=pb.SessionOutput(step=step, named_outputs=named, last=last)
        )


def sync_call(script: ScriptedSession) -> Callable[..., Iterator[pb.SessionResponse]]:
    """A stand-in for the sync stream-stream callable: requests in, replies out, in turn."""

    def call(requests: Iterator[pb.SessionRequest], timeout: float | None) -> Any:
        for request in requests:
            yield from script.answer(request)

    return call


class AsyncCall:
    """A stand-in for a grpc.aio stream-stream call that ends OK once the writes are done."""

    def __init__(self, script: ScriptedSession) -> None:
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


CONTEXT = {"context": [1.0, 2.0]}  # sums to 3
STEPS = {"seq": np.ones((2, 3)), "level": np.zeros((2, 1))}


def aligned_sync(script: ScriptedSession) -> list[Any]:
    with SeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Session"] = sync_call(script)
        with client.session("m", static_inputs=CONTEXT) as s:
            got = [s.step(STEPS), s.step_full({"seq": np.ones(3)})]
            s.reset({"context": np.array([10.0])})
            got.append(s.step({"seq": np.zeros(3)}))
            s.reset()
            got += [s.step({"seq": np.zeros(3)}), s.step(np.ones((1, 3)))]
            got += list(s.stream([{"seq": np.ones(3)}, {"seq": np.ones(3)}]))
    return got


async def aligned_async(script: ScriptedSession) -> list[Any]:
    async with AsyncSeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Session"] = lambda timeout: AsyncCall(script)
        async with client.session("m", static_inputs=CONTEXT) as s:
            got = [await s.step(STEPS), await s.step_full({"seq": np.ones(3)})]
            await s.reset({"context": np.array([10.0])})
            got.append(await s.step({"seq": np.zeros(3)}))
            await s.reset()
            got += [await s.step({"seq": np.zeros(3)}), await s.step(np.ones((1, 3)))]
            got += [y async for y in s.stream([{"seq": np.ones(3)}, {"seq": np.ones(3)}])]
    return got


@pytest.mark.parametrize("twin", ["sync", "asyncio"])
def test_static_inputs_steps_by_name_and_outputs_by_name(twin: str) -> None:
    script = ScriptedSession(pb.MANY_TO_MANY_ALIGNED)
    got = aligned_sync(script) if twin == "sync" else asyncio.run(aligned_async(script))

    sent = script.received
    assert [r.WhichOneof("kind") for r in sent] == [
        "open", "steps", "steps", "reset", "steps", "reset", "steps", "steps", "steps", "steps",
    ]  # fmt: skip
    context = from_tensor(sent[0].open.named_inputs["context"])
    assert context.dtype == np.float32 and context.shape == (2,)
    assert sorted(sent[1].steps.named_values) == ["level", "seq"]
    assert not sent[1].steps.HasField("values")
    assert from_tensor(sent[2].steps.named_values["seq"]).shape == (1, 3)  # one step promoted
    assert from_tensor(sent[3].reset.named_inputs["context"]).dtype == np.float32
    assert not sent[5].reset.named_inputs  # reset() keeps the session's static inputs
    assert sent[7].steps.HasField("values") and not sent[7].steps.named_values

    first, full = got[0], got[1]
    assert isinstance(first, dict) and list(first) == ["seen", "total"]
    np.testing.assert_array_equal(first["total"], [[6], [6]])  # 3 ones + the context's 3
    np.testing.assert_array_equal(first["seen"], [[1], [2]])
    assert isinstance(full, SessionOutput) and full.step == 2 and isinstance(full.values, dict)
    np.testing.assert_array_equal(full.values["seen"], [[3]])
    np.testing.assert_array_equal(got[2]["total"], [[10]])  # the new context
    np.testing.assert_array_equal(got[2]["seen"], [[1]])  # counted from the reset
    np.testing.assert_array_equal(got[3]["total"], [[10]])  # kept by reset()
    assert isinstance(got[4], np.ndarray)  # one output: an array, as before
    np.testing.assert_array_equal(got[4], [[13]])
    assert [y["seen"].tolist() for y in got[5:]] == [[[3]], [[4]]]


def unaligned_sync(script: ScriptedSession) -> tuple[Any, ...]:
    with SeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Session"] = sync_call(script)
        with client.session("m", static_inputs=CONTEXT) as s:
            sent = s.step(STEPS)
            whole = s.end_input()
            s.reset()
            parts = list(s.decode())
    return sent, whole, parts


async def unaligned_async(script: ScriptedSession) -> tuple[Any, ...]:
    async with AsyncSeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Session"] = lambda timeout: AsyncCall(script)
        async with client.session("m", static_inputs=CONTEXT) as s:
            sent = await s.step(STEPS)
            whole = await s.end_input()
            await s.reset()
            parts = [part async for part in s.decode()]
    return sent, whole, parts


@pytest.mark.parametrize("twin", ["sync", "asyncio"])
def test_unaligned_end_input_gives_each_outputs_whole_sequence(twin: str) -> None:
    script = ScriptedSession(pb.MANY_TO_MANY_UNALIGNED)
    run = unaligned_sync(script) if twin == "sync" else asyncio.run(unaligned_async(script))
    sent, whole, parts = run
    assert sent is None  # steps only update the state
    assert isinstance(whole, dict) and list(whole) == ["seen", "total"]
    np.testing.assert_array_equal(whole["seen"], [[3], [4]])  # both parts, concatenated
    np.testing.assert_array_equal(whole["total"], [[6], [6]])
    assert [p.step for p in parts] == [0, 1] and parts[-1].last
    assert all(isinstance(p.values, dict) for p in parts)
    assert [p.values["seen"].tolist() for p in parts] == [[[1]], [[2]]]
