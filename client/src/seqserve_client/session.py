"""Stateful streaming sessions: feed a live sequence step by step, get outputs as they come.

with client.session("co2_next_week") as s:
    y = s.step(x_t)                 # aligned: one output per step sent
    for y in s.stream(readings):    # iterator form
        ...
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.session_protocol import steps_get_output
from seqserve_api.tensors import from_tensor, to_tensor

from .errors import from_rpc_error
from .results import mode_name, top_k_pairs

_CLOSE = object()


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    version: int
    mode: str
    session_support: str


@dataclass(frozen=True)
class SessionOutput:
    step: int  # index of the first step in `values` since open or reset
    values: np.ndarray | None  # None where the model gives no output yet (fixed-length models)
    top_k: list[list[tuple[str, float]]] = field(default_factory=list)
    last: bool = False


def open_request(model: str, version: int, emit_on_request: bool, top_k: int) -> pb.SessionRequest:
    return pb.SessionRequest(
        open=pb.SessionOpen(
            model_name=model, model_version=version, emit_on_request=emit_on_request, top_k=top_k
        )
    )


def steps_request(values: np.ndarray | Sequence[int], emit: bool) -> pb.SessionRequest:
    """Float steps: [steps, features] or one step [features]; token ids: [steps] integers."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32)
        if array.ndim == 1:
            array = array[np.newaxis]
    return pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(array), emit=emit))


def info_from(response: pb.SessionResponse) -> SessionInfo:
    opened = response.opened
    return SessionInfo(
        opened.session_id,
        opened.model_name,
        opened.model_version,
        mode_name(opened.mode),
        pb.SessionSupport.Name(opened.session_support).lower(),
    )


def output_from(response: pb.SessionResponse) -> SessionOutput:
    out = response.output
    values = from_tensor(out.values) if out.HasField("values") else None
    return SessionOutput(out.step, values, [top_k_pairs(t) for t in out.top_k], out.last)


def expects_output(mode: str, emit_on_request: bool, emit: bool) -> bool:
    """Whether the server answers a steps message (the protocol's rule, in seqserve_api)."""
    return steps_get_output(pb.Mode.Value(mode.upper()), emit_on_request, emit)


class Session:
    """One open session over a bidirectional stream. Not thread-safe: one caller drives it."""

    def __init__(self, stub: Any, opening: pb.SessionRequest, timeout: float | None) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(opening)
        self.emit_on_request = opening.open.emit_on_request
        self._ended = False  # the server ended the call (an error was raised to the caller)
        self._call = stub.Session(iter(self._requests.get, _CLOSE), timeout=timeout)
        self.info = info_from(self._receive())

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def mode(self) -> str:
        return self.info.mode

    def step(self, values: np.ndarray | Sequence[int], *, emit: bool = False) -> np.ndarray | None:
        """Send one step ([features]) or several ([steps, features]); the output it produces:
        aligned: [steps, out]; many-to-one: the running prediction (None when not asked for);
        unaligned: None (call `end_input`)."""
        output = self.step_full(values, emit=emit)
        return None if output is None else output.values

    def step_full(
        self, values: np.ndarray | Sequence[int], *, emit: bool = False
    ) -> SessionOutput | None:
        self._requests.put(steps_request(values, emit))
        if not expects_output(self.mode, self.emit_on_request, emit):
            return None
        return output_from(self._receive())

    def stream(self, steps: Iterable[np.ndarray]) -> Iterator[np.ndarray | None]:
        """Feed steps one after another, yielding each one's output."""
        for values in steps:
            yield self.step(values)

    def end_input(self) -> np.ndarray:
        """Unaligned models: the input is complete; the decoded sequence [steps, out]."""
        return np.concatenate([o.values for o in self.decode() if o.values is not None])

    def decode(self) -> Iterator[SessionOutput]:
        """Unaligned models: the decoded sequence, one step at a time as it streams back."""
        self._requests.put(pb.SessionRequest(end_input=pb.SessionEndInput()))
        while True:
            output = output_from(self._receive())
            yield output
            if output.last:
                return

    def reset(self) -> None:
        """Forget every step fed so far; the session stays open."""
        self._requests.put(pb.SessionRequest(reset=pb.SessionReset()))
        self._receive()

    def close(self) -> None:
        """End the session: the server frees its state at once."""
        self._requests.put(_CLOSE)
        if self._ended:
            return
        self._ended = True
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(exc) from None

    def cancel(self) -> None:
        self._call.cancel()

    def _receive(self) -> pb.SessionResponse:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            self._ended = True
            raise from_rpc_error(exc) from None
        except StopIteration:
            self._ended = True
            raise RuntimeError("the server ended the session") from None
