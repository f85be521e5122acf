"""Resumable sessions (issue 23) over scripted calls, no server: a fake cluster of replicas that
speaks the wire protocol of SessionOpen.resume / checkpoint_every, SessionCheckpoint and handoff
(a replica's state lives in its call and dies with it; a token carries it to the next call),
with faults injected per call: a handoff, a connection lost after some responses, a stream
ended without a status, refused or unreachable reopens. Every run is compared with the same
script run without faults: each output delivered once, in order, none missing. Through a real
server: tests/server/test_resumable_sdk.py."""

from __future__ import annotations

import asyncio
import json
import queue
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import from_tensor, to_tensor
from seqserve_client import (
    AsyncSeqServeClient,
    Reconnect,
    ResumptionUnavailable,
    SeqServeClient,
    SessionLost,
    SessionMoved,
    UnavailableError,
    calls,
)
from seqserve_client.errors import SeqServeError
from seqserve_client.resumption import (
    CORE_WRITE_FAILURE,
    Ended,
    Next,
    Replay,
    backoff,
    lost_connection,
)

FAST = Reconnect(backoff_s=0.0)  # no waiting between attempts in these tests
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# -- the fake cluster -------------------------------------------------------------------------


@dataclass
class State:
    """A session's state as a replica holds it and a token carries it."""

    mode: int
    emit_on_request: bool
    total: float = 0.0  # sum of every value fed since open or reset, plus the context
    seen: int = 0  # steps since open or reset
    context: float = 0.0
    messages: int = 0  # steps and reset messages processed since the first open
    finished: bool = False
    version: int = 3


def token_of(state: State) -> bytes:
    return b"TOKEN" + json.dumps(asdict(state)).encode()


def state_of(token: bytes) -> State:
    return State(**json.loads(token[len(b"TOKEN") :]))


class Failed(Exception):
    """The replica ends the call with this status (after the responses it made)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details


@dataclass
class Fault:
    """What goes wrong on one call. `lose_after`: the connection is lost after this many
    responses (the opened one counts); `handoff_at`: the replica stops when the steps or reset
    message of this index arrives; `open_error`: the open is refused (or unreachable);
    `ok_end`: the lost connection shows as a stream that ended without a status."""

    lose_after: int | None = None
    handoff_at: int | None = None
    open_error: tuple[grpc.StatusCode, str] | None = None
    ok_end: bool = False
    decode_parts: int | None = None  # lost after this many parts of an end_input's answer
    slow_reader: bool = False  # asyncio: the status came before the caller read what preceded
    lost_code: grpc.StatusCode = UNAVAILABLE
    lost_details: str = "Socket closed"


class Replica:
    """The server's side of one call: the session's state in memory, the checkpoint rule."""

    def __init__(self, cluster: Cluster, fault: Fault) -> None:
        self.cluster = cluster
        self.fault = fault
        self.state: State | None = None
        self.every = 0
        self.since = 0  # steps since the last checkpoint (or open, resume, reset)
        self.produced = 0
        self.received: list[pb.SessionRequest] = []

    def answer(self, request: pb.SessionRequest) -> list[pb.SessionResponse]:
        """The responses to one request; Failed (after `.pending`) when the call ends."""
        self.received.append(request)
        out = self._answer(request)
        limit = self.fault.lose_after
        if limit is not None and self.produced + len(out) >= limit:
            self.pending = out[: limit - self.produced]
            self.produced = limit
            raise Failed(self.fault.lost_code, self.fault.lost_details)
        self.produced += len(out)
        return out

    def _answer(self, request: pb.SessionRequest) -> list[pb.SessionResponse]:
        kind = request.WhichOneof("kind")
        self.pending: list[pb.SessionResponse] = []
        if kind == "open":
            return [self._open(request.open)]
        state = self.state
        assert state is not None
        if kind in ("steps", "reset") and self.fault.handoff_at == state.messages:
            self.pending = [pb.SessionResponse(handoff=self._checkpoint())]
            raise Failed(UNAVAILABLE, "session moved: the server is stopping")
        if kind == "checkpoint":
            return [pb.SessionResponse(checkpoint=self._checkpoint())]
        if kind == "reset":
            state.messages += 1
            state.total = state.seen = 0
            state.finished = False
            if request.reset.named_inputs:
                state.context = float(from_tensor(request.reset.named_inputs["context"]).sum())
            state.total = state.context
            self.since = 0
            return [pb.SessionResponse(reset=pb.SessionResetDone())]
        if kind == "end_input":
            state.finished = True
            parts = [
                self._output(i, np.array([[state.seen, state.total + i]], np.float32), i == 2)
                for i in range(3)
            ]
            if self.fault.decode_parts is not None:
                self.pending = parts[: self.fault.decode_parts]
                raise Failed(self.fault.lost_code, self.fault.lost_details)
            return parts
        if state.finished:
            raise Failed(grpc.StatusCode.INVALID_ARGUMENT, "steps after end_input")
        values = from_tensor(request.steps.values)
        first = state.seen
        rows = []
        for row in values:
            state.total += float(row.sum())
            state.seen += 1
            rows.append([state.seen, state.total])
        state.messages += 1
        out = []
        if state.mode == pb.MANY_TO_MANY_ALIGNED:
            out.append(self._output(first, np.array(rows, np.float32)))
        elif state.mode == pb.MANY_TO_ONE and (request.steps.emit or not state.emit_on_request):
            out.append(self._output(state.seen - 1, np.array(rows[-1], np.float32)))
        self.since += len(values)
        if self.every and self.since >= self.every:
            out.append(pb.SessionResponse(checkpoint=self._checkpoint()))
        return out

    def _open(self, opening: pb.SessionOpen) -> pb.SessionResponse:
        if self.fault.open_error is not None:
            raise Failed(*self.fault.open_error)
        self.every = opening.checkpoint_every
        if opening.resume:
            if self.cluster.refusal is not None:
                raise Failed(*self.cluster.refusal)
            self.state = state_of(opening.resume)
            resumed_step, resumed_message = self.state.seen, self.state.messages
        else:
            context = opening.named_inputs.get("context")
            total = 0.0 if context is None else float(from_tensor(context).sum())
            self.state = State(
                self.cluster.mode, opening.emit_on_request, total=total, context=total
            )
            resumed_step = resumed_message = 0
        return pb.SessionResponse(
            opened=pb.SessionOpened(
                session_id=f"s{len(self.cluster.replicas)}",
                model_name=opening.model_name,
                model_version=self.state.version,
                mode=self.state.mode,
                resumable=self.cluster.has_key,
                resumed_at_step=resumed_step,
                resumed_at_message=resumed_message,
            )
        )

    def _checkpoint(self) -> pb.SessionCheckpoint:
        assert self.state is not None
        self.since = 0
        return pb.SessionCheckpoint(
            token=token_of(self.state), steps=self.state.seen, messages=self.state.messages
        )

    def _output(self, step: int, values: np.ndarray, last: bool = False) -> pb.SessionResponse:
        return pb.SessionResponse(
            output=pb.SessionOutput(step=step, values=to_tensor(values), last=last)
        )


class Cluster:
    """Replicas behind one target: each call reaches a new one; `faults[i]` is the i-th call's."""

    def __init__(self, mode: int, faults: list[Fault] | None = None, has_key: bool = True) -> None:
        self.mode = mode
        self.faults = faults or []
        self.has_key = has_key
        self.refusal: tuple[grpc.StatusCode, str] | None = None
        self.replicas: list[Replica] = []
        self.timeouts: list[float | None] = []

    def replica(self, timeout: float | None) -> Replica:
        n = len(self.replicas)
        replica = Replica(self, self.faults[n] if n < len(self.faults) else Fault())
        self.replicas.append(replica)
        self.timeouts.append(timeout)
        return replica

    def sync_call(self, requests: Iterator[pb.SessionRequest], timeout: float | None) -> Any:
        return SyncCall(self.replica(timeout), requests)

    def async_call(self, timeout: float | None) -> Any:
        return AsyncCall(self.replica(timeout))

    def calls(self) -> list[list[pb.SessionRequest]]:
        return [r.received for r in self.replicas]


def status_error(code: grpc.StatusCode, details: str) -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def waiting(requests: Iterator[pb.SessionRequest]) -> Iterator[pb.SessionRequest]:
    """The session's requests (`iter(queue.get, CLOSE)`), failing the test rather than hanging
    when the session waits for an answer to nothing it sent."""
    get, close = requests.__reduce__()[1]  # type: ignore[misc]
    while True:
        try:
            request = get.__self__.get(timeout=5)
        except queue.Empty:
            raise AssertionError("the session waits for an answer nothing will give") from None
        if request is close:
            return
        yield request


class SyncCall:
    """A stand-in for the sync stream-stream call: requests in, responses out, in turn."""

    def __init__(self, replica: Replica, requests: Iterator[pb.SessionRequest]) -> None:
        self.responses = self._run(replica, requests)

    def _run(self, replica: Replica, requests: Iterator[pb.SessionRequest]) -> Any:
        for request in waiting(requests):
            try:
                yield from replica.answer(request)
            except Failed as failed:
                yield from replica.pending
                if replica.fault.ok_end:
                    return
                raise status_error(failed.code, failed.details) from None

    def __iter__(self) -> SyncCall:
        return self

    def __next__(self) -> pb.SessionResponse:
        return next(self.responses)  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        return True


class AsyncCall:
    """A stand-in for a grpc.aio stream-stream call. Once the replica ends the call, reads
    give what it sent, then its status; writes fail with grpc.aio's own error (grpc/grpc#36066)
    and the done callbacks get the replica's status."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.responses: deque[pb.SessionResponse] = deque()
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    async def write(self, request: pb.SessionRequest) -> None:
        if self.status is not None:
            raise status_error(grpc.StatusCode.INTERNAL, CORE_WRITE_FAILURE)
        try:
            self.responses.extend(self.replica.answer(request))
        except Failed as failed:
            self.responses.extend(self.replica.pending)
            self._end(
                grpc.StatusCode.OK if self.replica.fault.ok_end else failed.code, failed.details
            )

    async def read(self) -> Any:
        if self.responses:
            response = self.responses.popleft()
            if not self.responses and self.status is not None:
                self._done()  # an OK status is delivered once every message was read
            return response
        if self.status is None or self.status[0] == grpc.StatusCode.OK:
            return grpc.aio.EOF  # (a test would hang on a real call: nothing is due)
        raise status_error(*self.status)

    async def done_writing(self) -> None:
        if self.status is None:
            self._end(grpc.StatusCode.OK, "")

    def _end(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        if code != grpc.StatusCode.OK and self.replica.fault.slow_reader:
            self.responses.clear()  # grpc.aio: what was not read is gone once the call ends
        if not self.responses:
            self._done()

    def _done(self) -> None:
        for callback in self.callbacks:
            callback(self)

    async def code(self) -> grpc.StatusCode:
        if self.status is None or self.status[0] == grpc.StatusCode.OK:
            # gRPC delivers an OK status once every message was read: a real call would hang
            assert not self.responses, "waiting for an OK status with messages unread"
        return self.status[0] if self.status else grpc.StatusCode.OK

    async def details(self) -> str:
        return self.status[1] if self.status else ""

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    def cancel(self) -> bool:
        if self.status is None:
            self._end(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        return True


# -- scripts: what a caller does, run on either twin ------------------------------------------

Op = tuple[
    Any, ...
]  # ("step", values, emit) | ("reset", context or None) | ("decode",) | ("checkpoint",)


def steps(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)


def result_of(got: Any) -> Any:
    """Outputs as plain lists (comparable), SessionOutputs by step, values, last."""
    if got is None or isinstance(got, bytes):
        return got
    if isinstance(got, list):
        return [(p.step, p.values.tolist(), p.last) for p in got]
    return (got.step, got.values.tolist(), got.last)


@dataclass
class Run:
    results: list[Any] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # messages the session keeps after each call
    error: SeqServeError | None = None


def sync_run(cluster: Cluster, script: list[Op], **options: Any) -> Run:
    run = Run()
    with SeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Session"] = cluster.sync_call
        try:
            with client.session("m", **{"reconnect": FAST, **options}) as s:
                for op in script:
                    if op[0] == "step":
                        got: Any = s.step_full(op[1], emit=op[2])
                    elif op[0] == "reset":
                        got = s.reset(None if op[1] is None else {"context": [op[1]]})
                    elif op[0] == "decode":
                        got = list(s.decode())
                    else:
                        got = s.checkpoint()
                    run.results.append(result_of(got))
                    run.kept.append(len(s._protocol.replay.kept))
        except SeqServeError as exc:
            run.error = exc
    return run


def async_run(cluster: Cluster, script: list[Op], **options: Any) -> Run:
    async def main() -> Run:
        run = Run()
        async with AsyncSeqServeClient("127.0.0.1:1") as client:
            client._rpcs["Session"] = cluster.async_call
            try:
                async with client.session("m", **{"reconnect": FAST, **options}) as s:
                    for op in script:
                        if op[0] == "step":
                            got: Any = await s.step_full(op[1], emit=op[2])
                        elif op[0] == "reset":
                            context = None if op[1] is None else {"context": [op[1]]}
                            got = await s.reset(context)
                        elif op[0] == "decode":
                            got = [part async for part in s.decode()]
                        else:
                            got = await s.checkpoint()
                        run.results.append(result_of(got))
                        run.kept.append(len(s._protocol.replay.kept))
            except SeqServeError as exc:
                run.error = exc
        return run

    return asyncio.run(main())


RUNS = {"sync": sync_run, "asyncio": async_run}
TWINS = pytest.mark.parametrize("twin", list(RUNS))


def without_tokens(results: list[Any]) -> list[Any]:
    return [r for r in results if not isinstance(r, bytes)]


def check_same_as_uninterrupted(
    twin: str, mode: int, script: list[Op], faults: list[Fault], **options: Any
) -> tuple[Run, Cluster]:
    """The run with faults gives what the run without gives; the bound holds after each call."""
    options = {"resumable": True, **options}
    plain = RUNS[twin](Cluster(mode), script, **options)
    assert plain.error is None, plain.error
    cluster = Cluster(mode, faults)
    run = RUNS[twin](cluster, script, **options)
    assert run.error is None, run.error
    assert without_tokens(run.results) == without_tokens(plain.results)
    every = options.get("checkpoint_every", calls.DEFAULT_CHECKPOINT_EVERY)
    assert max(run.kept, default=0) <= every, run.kept
    return run, cluster


def opens(cluster: Cluster) -> list[pb.SessionOpen]:
    return [received[0].open for received in cluster.calls()]


def kinds(requests: list[pb.SessionRequest]) -> list[str]:
    return [r.WhichOneof("kind") or "" for r in requests]


ALIGNED_SCRIPT: list[Op] = [("step", steps(i, 1 + i % 3), False) for i in range(14)]


# -- handoff and lost connections -------------------------------------------------------------


@TWINS
def test_a_handoff_mid_stream_resumes_on_the_next_replica(twin: str) -> None:
    """The replica stops at message 9: it hands the state after message 8 off instead of
    answering; the session resumes from that token, sends message 9 on, and the caller sees
    every output once."""
    _run, cluster = check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_ALIGNED, ALIGNED_SCRIPT, [Fault(handoff_at=9)], checkpoint_every=4
    )
    first, second = opens(cluster)
    assert first.checkpoint_every == 4 and not first.resume
    assert state_of(second.resume).messages == 9  # the handoff's token, not the last checkpoint
    assert second.model_name == "m" and second.checkpoint_every == 4
    resent = cluster.calls()[1][1:]
    assert kinds(resent) == ["steps"] * 5  # messages 9 to 13, each once
    np.testing.assert_array_equal(from_tensor(resent[0].steps.values), ALIGNED_SCRIPT[9][1])


def test_an_asyncio_session_that_never_read_the_handoff_resumes_from_its_last_checkpoint() -> None:
    """grpc.aio drops what a call has not read once its status arrives: the handoff (and the
    checkpoint after message 8) with it. The session resumes from the checkpoint it read last
    (after message 5), sends more again, and gives the same outputs."""
    fault = Fault(handoff_at=9, slow_reader=True)
    _, cluster = check_same_as_uninterrupted(
        "asyncio", pb.MANY_TO_MANY_ALIGNED, ALIGNED_SCRIPT, [fault], checkpoint_every=4
    )
    assert state_of(opens(cluster)[1].resume).messages == 6
    assert kinds(cluster.calls()[1][1:]) == ["steps"] * 8  # messages 6 to 13


@TWINS
def test_a_connection_lost_after_answers_replays_from_the_last_checkpoint(twin: str) -> None:
    """Lost after 12 responses (opened, 9 outputs, 2 checkpoints: the last one after message
    5): messages 6 to 8 are sent again and their answers, which the caller has, dropped."""
    _run, cluster = check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_ALIGNED, ALIGNED_SCRIPT, [Fault(lose_after=12)], checkpoint_every=4
    )
    second = opens(cluster)[1]
    held = state_of(second.resume).messages
    resent = cluster.calls()[1][1:]
    assert held < 9 and len(resent) == 14 - held  # the ones after the token, no more
    assert cluster.replicas[1].state is not None and cluster.replicas[1].state.messages == 14


@TWINS
@pytest.mark.parametrize(
    "fault",
    [
        Fault(lose_after=7, ok_end=True),  # the stream ended without a status
        Fault(
            lose_after=7,
            lost_code=grpc.StatusCode.INTERNAL,
            lost_details="Received RST_STREAM with error code 2",
        ),
        Fault(
            lose_after=7,
            lost_code=grpc.StatusCode.CANCELLED,
            lost_details="Received RST_STREAM with error code 8",
        ),
    ],
    ids=["ended-without-status", "rst-stream-internal", "rst-stream-cancelled"],
)
def test_other_lost_connections_resume_too(twin: str, fault: Fault) -> None:
    check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_ALIGNED, ALIGNED_SCRIPT, [fault], checkpoint_every=4
    )


@TWINS
def test_lost_before_any_checkpoint_replays_from_the_first_open(twin: str) -> None:
    """No token yet: the only exact way back is the first open again (same static inputs and
    settings, pinned to the version it opened on) and every message since."""
    script: list[Op] = [("step", steps(i, 1), False) for i in range(6)]
    _run, cluster = check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_ALIGNED, script, [Fault(lose_after=4)],
        checkpoint_every=8, static_inputs={"context": [1.5, 0.5]}, top_k=0,
    )  # fmt: skip
    first, second = opens(cluster)
    assert not second.resume and second.model_version == 3  # the version it opened on
    assert first.model_version == 0
    assert second.named_inputs == first.named_inputs and second.checkpoint_every == 8
    assert kinds(cluster.calls()[1][1:]) == ["steps"] * 6  # messages 0 to 2 again, then 3 on


@TWINS
def test_emit_on_request_sessions_replay_messages_that_got_no_answer(twin: str) -> None:
    """Many-to-one with emit_on_request: most messages get no answer, so their checkpoints
    stay unread; past checkpoint_every kept messages the SDK asks for one itself. A loss then
    replays unanswered and answered messages alike, delivering only the answer owed."""
    script: list[Op] = [("step", steps(i, 1), i % 5 == 4) for i in range(23)]
    for lose_after in (2, 3, 5, 8):
        run, cluster = check_same_as_uninterrupted(
            twin, pb.MANY_TO_ONE, script, [Fault(lose_after=lose_after)],
            checkpoint_every=3, emit_on_request=True,
        )  # fmt: skip
        assert len(cluster.replicas) == 2
        asked = [r for calls_ in cluster.calls() for r in calls_ if r.HasField("checkpoint")]
        assert asked  # the bound needed a checkpoint request
        assert [r for r in run.results if r is not None] == [
            r
            for r in RUNS[twin](Cluster(pb.MANY_TO_ONE), script, emit_on_request=True).results
            if r is not None
        ]  # the same outputs as a session that is not resumable


@TWINS
def test_resets_in_the_replay_buffer_are_sent_again(twin: str) -> None:
    script: list[Op] = [
        ("step", steps(1, 2), False), ("reset", 10.0), ("step", steps(2, 1), False),
        ("step", steps(3, 2), False), ("reset", None), ("step", steps(4, 1), False),
        ("reset", -2.0), ("step", steps(5, 3), False),
    ]  # fmt: skip
    for fault in (
        Fault(lose_after=5),
        Fault(lose_after=8),
        Fault(handoff_at=4),
        Fault(handoff_at=6),
    ):
        _run, cluster = check_same_as_uninterrupted(
            twin, pb.MANY_TO_MANY_ALIGNED, script, [fault], checkpoint_every=100
        )
        assert "reset" in kinds(cluster.calls()[1])


@TWINS
def test_end_input_and_decode_after_a_resume(twin: str) -> None:
    """Unaligned: steps get no answer; the state the replica resumes holds them, and the
    decoded parts the caller already has are not given twice."""
    script: list[Op] = [("step", steps(i, 2), False) for i in range(5)] + [("decode",)]
    script += [("reset", None), ("step", steps(9, 3), False), ("decode",)]
    for lose_after in (1, 2, 3, 4, 5, 6):  # before, during and after the first decode
        check_same_as_uninterrupted(
            twin, pb.MANY_TO_MANY_UNALIGNED, script, [Fault(lose_after=lose_after)],
            checkpoint_every=2,
        )  # fmt: skip
    run, cluster = check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_UNALIGNED, script, [Fault(lose_after=3), Fault(lose_after=4)],
        checkpoint_every=2,
    )  # fmt: skip
    assert [part[0] for part in run.results[5]] == [0, 1, 2]  # each part once
    assert kinds(cluster.calls()[2])[-1] == "end_input"  # sent again with the replay


@TWINS
@pytest.mark.parametrize("delivered", [0, 1, 2])
def test_a_decode_cut_short_gives_each_part_once(twin: str, delivered: int) -> None:
    """The connection is lost after `delivered` decoded parts reached the caller: the resumed
    replica decodes again, and those parts are dropped."""
    script: list[Op] = [("step", steps(1, 3), False), ("step", steps(2, 2), False), ("decode",)]
    run, cluster = check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_UNALIGNED, script, [Fault(decode_parts=delivered)]
    )
    assert [part[0] for part in run.results[2]] == [0, 1, 2]
    assert kinds(cluster.calls()[1]) == ["open", "steps", "steps", "end_input"]


@TWINS
def test_several_faults_in_a_row_and_a_reopen_that_fails(twin: str) -> None:
    faults = [
        Fault(lose_after=6),
        Fault(open_error=(UNAVAILABLE, "connection refused")),
        Fault(handoff_at=7),
        Fault(lose_after=3),
    ]
    _run, cluster = check_same_as_uninterrupted(
        twin, pb.MANY_TO_MANY_ALIGNED, ALIGNED_SCRIPT, faults, checkpoint_every=3
    )
    assert len(cluster.replicas) == 5


@TWINS
def test_each_call_gets_what_is_left_of_the_sessions_deadline(twin: str) -> None:
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED, [Fault(lose_after=3)])
    run = RUNS[twin](cluster, ALIGNED_SCRIPT[:4], resumable=True, timeout=60.0)
    assert run.error is None
    first, second = cluster.timeouts
    assert first == 60.0 and second is not None and 50 < second <= 60.0


# -- what cannot be resumed -------------------------------------------------------------------


@TWINS
@pytest.mark.parametrize(
    "refusal",
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "resume token expired"),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "resume token is for version 2 of 'm'; it is not served",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "not a resume token: unknown key (rotated out?)"),
    ],
)
def test_a_refused_token_ends_the_session_with_session_lost(
    twin: str, refusal: tuple[grpc.StatusCode, str]
) -> None:
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED, [Fault(lose_after=8)])
    cluster.refusal = refusal
    run = RUNS[twin](cluster, ALIGNED_SCRIPT, resumable=True, checkpoint_every=2)
    error = run.error
    assert isinstance(error, SessionLost), error
    assert error.code == refusal[0] and refusal[1] in error.message
    assert "the resume token was refused" in str(error)
    delivered = len(run.results)
    assert error.messages == delivered  # every call that returned; the failed one did not
    assert error.last_step == sum(len(op[1]) for op in ALIGNED_SCRIPT[:delivered]) - 1
    assert f"last step delivered: {error.last_step}" in str(error)
    assert error.token is not None and error.token_messages == state_of(error.token).messages
    assert isinstance(error.cause, SeqServeError) and error.cause.code == refusal[0]
    assert len(cluster.replicas) == 2  # a refusal is not retried


@TWINS
def test_spent_attempts_end_the_session_with_session_lost(twin: str) -> None:
    refused = Fault(open_error=(UNAVAILABLE, "failed to connect to all addresses"))
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED, [Fault(lose_after=5)] + [refused] * 10)
    run = RUNS[twin](
        cluster,
        ALIGNED_SCRIPT,
        resumable=True,
        checkpoint_every=2,
        reconnect=Reconnect(attempts=3, backoff_s=0.001),
    )
    error = run.error
    assert isinstance(error, SessionLost) and error.code == UNAVAILABLE
    assert "gave up after 3 reconnection attempts" in str(error)
    assert "failed to connect to all addresses" in str(error)
    assert error.attempts == 4 and len(cluster.replicas) == 1 + 3
    assert len(run.results) == error.messages


@TWINS
def test_a_session_error_is_not_resumed(twin: str) -> None:
    """What the session sent was wrong (steps after end_input): the same messages would fail
    again, so the caller gets the server's error, as without resumption."""
    script: list[Op] = [
        ("step", steps(1, 2), False),
        ("decode",),
        ("step", steps(2, 1), False),
        ("decode",),
    ]
    cluster = Cluster(pb.MANY_TO_MANY_UNALIGNED)
    run = RUNS[twin](cluster, script, resumable=True)
    assert run.error is not None and run.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not isinstance(run.error, SessionLost) and len(cluster.replicas) == 1


@TWINS
def test_a_server_without_a_session_key_refuses_resumable_at_open(twin: str) -> None:
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED, has_key=False)
    run = RUNS[twin](cluster, ALIGNED_SCRIPT[:1], resumable=True)
    assert isinstance(run.error, ResumptionUnavailable)
    assert run.error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no session key" in run.error.message and run.results == []
    plain = RUNS[twin](Cluster(pb.MANY_TO_MANY_ALIGNED, has_key=False), [("checkpoint",)])
    assert isinstance(plain.error, ResumptionUnavailable)  # and no token to give


def test_a_replica_without_a_key_cannot_take_a_session_over() -> None:
    class Keyless(Cluster):
        def replica(self, timeout: float | None) -> Replica:
            self.has_key = not self.replicas
            return super().replica(timeout)

    run = sync_run(
        Keyless(pb.MANY_TO_MANY_ALIGNED, [Fault(lose_after=5)]), ALIGNED_SCRIPT, resumable=True
    )
    assert isinstance(run.error, SessionLost) and "has no session key" in str(run.error)


@TWINS
def test_a_plain_session_that_is_handed_off_raises_session_moved_with_the_token(twin: str) -> None:
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED, [Fault(handoff_at=3)])
    run = RUNS[twin](cluster, ALIGNED_SCRIPT)
    error = run.error
    assert isinstance(error, SessionMoved) and isinstance(error, UnavailableError)
    assert error.messages == 3 and state_of(error.token).messages == 3
    assert len(cluster.replicas) == 1 and len(run.results) == 3

    # the caller continues it with the token, sending the messages from 3 on again
    resumed = RUNS[twin](Cluster(pb.MANY_TO_MANY_ALIGNED), ALIGNED_SCRIPT[3:], resume=error.token)
    whole = RUNS[twin](Cluster(pb.MANY_TO_MANY_ALIGNED), ALIGNED_SCRIPT)
    assert run.results + resumed.results == whole.results


# -- checkpoint() and resume= -----------------------------------------------------------------


@TWINS
def test_checkpoint_gives_a_token_that_resume_continues(twin: str) -> None:
    head: list[Op] = [("step", steps(i, 2), False) for i in range(5)]
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED)
    run = RUNS[twin](cluster, [*head, ("checkpoint",)], resumable=True, checkpoint_every=3)
    token = run.results[-1]
    assert isinstance(token, bytes) and state_of(token).messages == 5

    tail: list[Op] = [("step", steps(i, 1), False) for i in range(5, 9)]
    later = Cluster(pb.MANY_TO_MANY_ALIGNED, [Fault(lose_after=3)])
    resumed = RUNS[twin](later, tail, resume=token, resumable=True, checkpoint_every=3)
    whole = RUNS[twin](Cluster(pb.MANY_TO_MANY_ALIGNED), head + tail)
    assert run.results[:-1] + resumed.results == whole.results
    assert opens(later)[0].resume == token
    assert state_of(opens(later)[1].resume).messages >= 5  # resumed again, from its own tokens


def test_resume_opens_report_where_the_token_stands() -> None:
    token = token_of(State(pb.MANY_TO_MANY_ALIGNED, False, seen=7, messages=4))
    with SeqServeClient("127.0.0.1:1") as client:
        client._rpcs["Session"] = Cluster(pb.MANY_TO_MANY_ALIGNED).sync_call
        with client.session("m", resume=token) as s:
            assert (s.info.resumed_at_message, s.info.resumed_at_step) == (4, 7)
            assert s.info.resumable and s.info.version == 3
            out = s.step_full(np.ones((1, 2)))
            assert out is not None and out.step == 7


@TWINS
def test_a_refused_resume_at_open_raises_the_servers_error(twin: str) -> None:
    cluster = Cluster(pb.MANY_TO_MANY_ALIGNED)
    cluster.refusal = (grpc.StatusCode.FAILED_PRECONDITION, "resume token expired")
    run = RUNS[twin](cluster, [], resume=b"TOKEN{}")
    assert run.error is not None and run.error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert run.error.message == "resume token expired"


def test_checkpoint_every_must_bound_the_buffer() -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        calls.SessionProtocol("m", 0, False, 0, resumable=True, checkpoint_every=0)
    assert (
        calls.SessionProtocol("m", 0, False, 0, checkpoint_every=0).opening.open.checkpoint_every
        == 0
    )
    opening = calls.SessionProtocol("m", 0, False, 0, resumable=True).opening.open
    assert opening.checkpoint_every == calls.DEFAULT_CHECKPOINT_EVERY == 8
    plain = calls.SessionProtocol("m", 0, False, 0).opening.open
    assert plain.checkpoint_every == 0 and not plain.resume


# -- random scripts and faults ----------------------------------------------------------------


@st.composite
def scripts(draw: st.DrawFn) -> tuple[int, bool, list[Op]]:
    mode = draw(
        st.sampled_from([pb.MANY_TO_MANY_ALIGNED, pb.MANY_TO_ONE, pb.MANY_TO_MANY_UNALIGNED])
    )
    emit_on_request = mode == pb.MANY_TO_ONE and draw(st.booleans())
    script: list[Op] = []
    finished = False
    for i in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["step"] * 6 + ["reset", "decode", "checkpoint"]))
        if kind == "decode" and mode != pb.MANY_TO_MANY_UNALIGNED:
            kind = "step"
        if kind == "step" and finished:
            kind = "reset"
        if kind == "step":
            script.append(("step", steps(i, draw(st.integers(1, 4))), draw(st.booleans())))
        elif kind == "reset":
            script.append(("reset", draw(st.sampled_from([None, 1.0, -3.5]))))
            finished = False
        elif kind == "decode":
            script.append(("decode",))
            finished = True
        else:
            script.append(("checkpoint",))
    return mode, emit_on_request, script


faults = st.lists(
    st.one_of(
        st.builds(Fault, lose_after=st.integers(1, 15), ok_end=st.booleans()),
        st.builds(Fault, handoff_at=st.integers(0, 25)),
        st.builds(Fault, decode_parts=st.integers(0, 2)),
        st.builds(Fault, lose_after=st.integers(2, 15), slow_reader=st.just(True)),
        st.just(Fault(open_error=(UNAVAILABLE, "connection refused"))),
    ),
    max_size=3,
)


@TWINS
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scripts(), faults=faults, every=st.integers(1, 5))
def test_any_script_under_any_faults_gives_every_output_once(
    twin: str, case: tuple[int, bool, list[Op]], faults: list[Fault], every: int
) -> None:
    mode, emit_on_request, script = case
    while faults and faults[0].open_error:  # the first open failing is not a resumption
        faults = faults[1:]
    check_same_as_uninterrupted(
        twin, mode, script, faults, checkpoint_every=every, emit_on_request=emit_on_request
    )


# -- the bookkeeping alone --------------------------------------------------------------------


def test_backoff_doubles_from_the_second_attempt_with_jitter() -> None:
    policy = Reconnect()
    assert [backoff(policy, n, lambda a, b: b) for n in range(1, 6)] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert backoff(policy, 3, lambda a, b: a) == pytest.approx(0.1)  # jitter halves at most
    assert backoff(policy, 30, lambda a, b: b) == policy.max_backoff_s


def test_which_failures_are_the_connections() -> None:
    def error(code: grpc.StatusCode, message: str) -> SeqServeError:
        return SeqServeError(code, message)

    assert lost_connection(None)
    assert lost_connection(error(UNAVAILABLE, "session moved: the server is stopping"))
    assert lost_connection(error(grpc.StatusCode.INTERNAL, CORE_WRITE_FAILURE))
    assert lost_connection(error(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"))
    assert lost_connection(
        error(grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8")
    )
    for code, message in [
        (grpc.StatusCode.INTERNAL, "internal error"),
        (grpc.StatusCode.CANCELLED, "Locally cancelled by application!"),
        (grpc.StatusCode.INVALID_ARGUMENT, "steps.values"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "session closed: no message for 300 s"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "max_sessions"),
    ]:
        assert not lost_connection(error(code, message)), message


def checkpoint(messages: int) -> pb.SessionCheckpoint:
    return pb.SessionCheckpoint(token=b"t%d" % messages, messages=messages)


def test_replay_keeps_the_messages_after_the_newest_token() -> None:
    replay = Replay(2, True, Reconnect())
    requests = [calls.steps_request(np.ones((1, 2)), False) for _ in range(5)]
    for request in requests[:3]:
        replay.sent(request, True, 1)
        assert replay.delivers(pb.SessionResponse(output=pb.SessionOutput()))
    assert [e.index for e in replay.kept] == [0, 1, 2] and replay.over_bound()
    replay.checkpointed(checkpoint(2))
    assert [e.index for e in replay.kept] == [2] and replay.token == b"t2"
    replay.checkpointed(checkpoint(1))  # older: ignored
    assert replay.token == b"t2"
    with pytest.raises(ValueError, match="3 were sent"):
        replay.checkpointed(checkpoint(4))
    replay.sent(requests[3], False, 1)  # answered later by nothing
    replay.sent(requests[4], True, 1)
    assert replay.replay_from(2) == [requests[2], requests[3], requests[4]]
    assert replay.skip == 1  # message 2's answer was delivered; 4's is owed
    with pytest.raises(SessionLost, match="resumed at message 1; the SDK holds messages 2 to 4"):
        replay.replay_from(1)
    assert (replay.completed, replay.last_step) == (4, 3)


def test_a_token_past_the_owed_answer_cannot_be_replayed_exactly() -> None:
    replay = Replay(8, True, Reconnect())
    replay.sent(calls.steps_request(np.ones((1, 2)), False), True, 1)
    with pytest.raises(SessionLost, match="holds message 0, whose answer never came"):
        replay.replay_from(1)


def test_session_protocol_reads_checkpoints_between_answers() -> None:
    protocol = calls.SessionProtocol("m", 0, False, 0, resumable=True, checkpoint_every=1)
    opened = pb.SessionOpened(model_name="m", mode=pb.MANY_TO_MANY_ALIGNED, resumable=True)
    info = protocol.open(pb.SessionResponse(opened=opened))
    assert info.resumable
    protocol.steps(np.ones((1, 2)), False)
    assert protocol.receive(pb.SessionResponse(checkpoint=checkpoint(0))) is Next.READ
    answer = pb.SessionResponse(output=pb.SessionOutput())
    assert protocol.receive(answer) is answer
    assert protocol.receive(Ended(None)) is Next.RECONNECT
    assert protocol.reopening().open.resume == b"t0"
