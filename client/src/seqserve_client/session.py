"""Stateful streaming sessions: feed a live sequence step by step, get outputs as they come.

with client.session("co2_next_week") as s:
    y = s.step(x_t)                 # aligned: one output per step sent
    for y in s.stream(readings):    # iterator form
        ...

with client.session("m", static_inputs={"context": c}) as s:   # several inputs and outputs
    y = s.step({"seq": x_t})        # each sequence input's steps by name; a dict by output name

Only I/O lives here: the messages and the reply rule are `calls.SessionProtocol`, shared with
`AsyncSession` (aio.py), whose methods mirror these one for one.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import grpc

from seqserve.v1 import seqserve_pb2 as pb

from .calls import (
    SessionProtocol,
    StaticInputs,
    StepValues,
    decoded,
    ended_error,
    reset_done,
    session_output_from,
)
from .errors import from_rpc_error
from .results import SessionOutput, SessionValues
from .twins import SessionBase

_CLOSE = object()


class Session(SessionBase):
    """A session (see `SessionBase`), opened by `client.session()`. Not thread-safe."""

    _requests: queue.Queue[Any]  # what the call sends, in order; `_CLOSE` ends it

    def open(self) -> Session:
        """Start the call and wait for the server to open the session (once; then a no-op)."""
        if self._call is None:
            self._requests = queue.Queue()
            self._call = self._rpc(iter(self._requests.get, _CLOSE), timeout=self._timeout)
            self._send(self._protocol.opening)
            self._protocol.open(self._receive())
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
        """Send one step ([features]) or several ([steps, features]; token ids: [steps]), or for
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
        return session_output_from(self._receive()) if answered else None

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
        self._send(SessionProtocol.END_INPUT)
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
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(exc) from None

    # -- I/O -----------------------------------------------------------------------------

    def _send(self, request: pb.SessionRequest) -> None:
        self._requests.put(request)

    def _receive(self) -> pb.SessionResponse:
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            self._protocol.ended = True
            raise from_rpc_error(exc) from None
        except StopIteration:
            self._protocol.ended = True
            raise ended_error(None) from None
