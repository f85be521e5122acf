"""Stateful streaming sessions: feed a live sequence step by step, get outputs as they come.

with client.session("co2_next_week") as s:
    y = s.step(x_t)                 # aligned: one output per step sent
    for y in s.stream(readings):    # iterator form
        ...

with client.session("m", static_inputs={"context": c}) as s:   # several inputs and outputs
    y = s.step({"seq": x_t})        # each sequence input's steps by name; a dict by output name

with client.session("m", resumable=True) as s:   # survives its replica (resumption.py)
    y = s.step(x_t)                 # a handoff or a lost connection: resumed, nothing lost

Only I/O lives here: the messages, the reply rule and when to resume are
`calls.SessionProtocol` (and resumption.py), shared with `AsyncSession` (aio.py), whose methods
mirror these one for one.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import grpc

from seqserve.v1 import seqserve_pb2 as pb

from .calls import (
    StaticInputs,
    StepValues,
    checkpoint_token,
    decoded,
    reset_done,
    session_output_from,
)
from .errors import from_rpc_error
from .results import SessionOutput, SessionValues
from .resumption import Ended, Next
from .twins import SessionBase

_CLOSE = object()


class Session(SessionBase):
    """A session (see `SessionBase`), opened by `client.session()`. Not thread-safe."""

    _requests: queue.Queue[Any]  # what the call sends, in order; `_CLOSE` ends it

    def open(self) -> Session:
        """Start the call and wait for the server to open the session (once; then a no-op)."""
        if self._call is None:
            self._start()
            self._send(self._protocol.opening)
            try:
                self._protocol.open(self._next())
            except BaseException:
                self._requests.put(_CLOSE)
                self.cancel()
                raise
        return self

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.cancel()

    def step(self, values: StepValues, *, emit: bool = False) -> SessionValues | None:
        """Send one step ([features]) or several ([steps, features]; token ids or token strings:
        [steps]; one token string: a str), or for
        a model with several sequence inputs a dict of each one's steps by input name (as many
        steps each); the output it produces: aligned: [steps, out]; many-to-one: the running
        prediction (None when not asked for); unaligned: None (call `end_input` or `decode`).
        A model with several outputs gives a dict of them by output name."""
        output = self.step_full(values, emit=emit)
        return None if output is None else output.values

    def step_full(self, values: StepValues, *, emit: bool = False) -> SessionOutput | None:
        """`step` with the output's step index and top_k pairs."""
        request, answered = self._protocol.steps(values, emit)
        self._send(request)
        output = session_output_from(self._receive()) if answered else None
        self._keep_bound()
        return output

    def stream(self, steps: Iterable[StepValues]) -> Iterator[SessionValues | None]:
        """Feed steps one after another, yielding each one's output."""
        for values in steps:
            yield self.step(values)

    def end_input(self) -> SessionValues:
        """Unaligned models: the input is complete; the decoded sequence [steps, out] (several
        outputs: a dict of each one's whole sequence by output name)."""
        return decoded(self.decode())

    def decode(self) -> Iterator[SessionOutput]:
        """Unaligned models: the input is complete; the decoded sequence, one step at a time
        as it streams back."""
        self._send(self._protocol.end_input())
        while True:
            output = session_output_from(self._receive())
            yield output
            if output.last:
                return

    def reset(self, static_inputs: StaticInputs | None = None) -> None:
        """Forget every step fed so far; the session stays open. `static_inputs` replaces the
        session's static inputs (all of them); None keeps them."""
        self._send(self._protocol.reset(static_inputs))
        reset_done(self._receive())
        self._keep_bound()

    def checkpoint(self) -> bytes:
        """A resume token of the session's state now (every message sent so far), sealed by a
        server with a session key (ResumptionUnavailable otherwise), for callers who keep
        tokens themselves: `client.session(model, resume=token)` continues the session from it
        on any replica sharing the key, until it expires."""
        self._send(self._protocol.checkpoint())
        return checkpoint_token(self._receive())

    def close(self) -> None:
        """End the session: the server frees its state at once. Raises the server's error if
        it ended the session with one the caller has not been given yet."""
        if self._call is None:
            return
        self._requests.put(_CLOSE)
        if self._protocol.ended:
            return
        self._protocol.ended = True
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as exc:
            error = self._protocol.closing(from_rpc_error(exc))
            if error is not None:
                raise error from None

    # -- I/O -----------------------------------------------------------------------------

    def _keep_bound(self) -> None:
        if self._protocol.over_bound():
            self.checkpoint()

    def _start(self) -> None:
        """A new call (the first, or one that resumes the session on whichever replica the
        channel reaches); the previous one is let go."""
        if self._call is not None:
            self._requests.put(_CLOSE)
            self._call.cancel()
        self._requests = queue.Queue()
        self._call = self._rpc(iter(self._requests.get, _CLOSE), timeout=self._call_timeout())

    def _send(self, request: pb.SessionRequest) -> None:
        self._requests.put(request)

    def _next(self) -> pb.SessionResponse | Ended:
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            return Ended(from_rpc_error(exc))
        except StopIteration:
            return Ended(None)

    def _receive(self) -> pb.SessionResponse:
        """The current call's answer; a resumable session resumes on the way if it must."""
        while True:
            got = self._protocol.receive(self._next())
            if got is Next.RECONNECT:
                self._reconnect()
            elif got is not Next.READ:
                return got  # type: ignore[return-value]

    def _reconnect(self) -> None:
        """Resume the session on a new call and send again what the replica lacks."""
        while True:
            time.sleep(self._protocol.reconnect_delay())
            self._start()
            self._send(self._protocol.reopening())
            replay = self._protocol.reopened(self._next())
            if replay is not None:
                for request in replay:
                    self._send(request)
                return
