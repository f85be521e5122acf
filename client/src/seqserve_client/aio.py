"""The asyncio client: the same calls as `SeqServeClient`, awaited.

async with AsyncSeqServeClient("127.0.0.1:8500") as client:
    y = await client.predict("digit_classifier", x)
    async with client.session("co2_next_week") as s:
        y_t = await s.step(x_t)

Only I/O lives here, mirroring client.py and session.py method for method: what each call sends
and what its reply means is in calls.py, shared with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb

from . import calls
from .calls import (
    DEFAULT_TIMEOUT_S,
    Call,
    Inputs,
    SessionProtocol,
    StepValues,
    TopK,
    decoded,
    ended_error,
    reset_done,
    session_output_from,
)
from .channel import open_channel, rpcs
from .errors import SeqServeError, from_rpc_error
from .results import (
    ModelMetadata,
    ModelStatus,
    Predicted,
    Prediction,
    SessionInfo,
    SessionOutput,
    StreamPart,
)

# grpc.aio's own status for a write that Core fails because the call has ended: it may replace
# the status the server sent (grpc/grpc#36066), which the sync client reports.
CORE_WRITE_FAILURE = "Internal error from Core"
SERVER_STATUS_WAIT_S = 5.0  # for the server's status to follow Core's; none comes on a local fault
R = TypeVar("R")


class AsyncSeqServeClient:
    """A connection to one seqserve server (or load balancer); share it between tasks.

    The constructor does no I/O (gRPC connects on the first call); every method is one call
    with a deadline of `timeout` seconds, the client's own unless the call gives one.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = open_channel(grpc.aio, target, credentials, options)
        self._rpcs = rpcs(self._channel)

    async def __aenter__(self) -> AsyncSeqServeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- predictions ---------------------------------------------------------------------

    async def predict(
        self, model: str, inputs: Inputs, *, version: int = 0, timeout: float | None = None
    ) -> Predicted:
        """Outputs as numpy: one array [batch, ...], or a list when output lengths differ; a
        dict of them by output name for a model with several outputs."""
        return await self._unary(calls.predict(model, inputs, version), timeout)

    async def classify(
        self,
        model: str,
        inputs: Inputs,
        *,
        top_k: int = 3,
        version: int = 0,
        timeout: float | None = None,
    ) -> TopK:
        """The k best (label, score) pairs per output vector, for models with labels."""
        return await self._unary(calls.classify(model, inputs, top_k, version), timeout)

    async def predict_full(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Prediction:
        """Outputs with the model, version and mode that computed them, and top_k pairs."""
        return await self._unary(calls.predict_full(model, inputs, version, top_k), timeout)

    async def predict_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamPart]:
        """Output parts as the server produces them: sequence outputs step by step."""
        call = calls.predict_stream(model, inputs, version, top_k)
        stream = self._rpcs[call.rpc](call.request, timeout=self._deadline(timeout))
        try:
            async for part in stream:
                yield call.read(part)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            stream.cancel()

    def session(
        self,
        model: str,
        *,
        version: int = 0,
        emit_on_request: bool = False,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> AsyncSession:
        """A stateful streaming session, opened (`AsyncSession.open`) by `async with` or
        `await`. Its deadline is `timeout`, none by default: sessions live long."""
        protocol = calls.SessionProtocol(model, version, emit_on_request, top_k)
        return AsyncSession(self._rpcs["Session"], protocol, timeout)

    # -- repository ----------------------------------------------------------------------

    async def list_models(self, *, timeout: float | None = None) -> list[ModelStatus]:
        """Every version of every model with its state, including those that failed to load."""
        return await self._unary(calls.list_models(), timeout)

    async def metadata(
        self, model: str, *, version: int = 0, timeout: float | None = None
    ) -> ModelMetadata:
        return await self._unary(calls.metadata(model, version), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """True when the server (or the named model, or service) is serving."""
        return await self._unary(calls.health(service), timeout)

    # -- I/O -----------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return calls.deadline(timeout, self.timeout)

    async def _unary(self, call: Call[R], timeout: float | None) -> R:
        try:
            response = await self._rpcs[call.rpc](call.request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return call.read(response)


class AsyncSession:
    """One session over a bidirectional stream. Not safe for concurrent use: one task drives it.

    The constructor does no I/O; `open()` starts the call and waits until the server has opened
    the session (`async with` and `await` call it). Its deadline, if any, covers the session.
    """

    def __init__(self, rpc: Callable[..., Any], protocol: SessionProtocol, timeout: float | None):
        self._rpc = rpc
        self._protocol = protocol
        self._timeout = timeout
        self._call: Any = None
        self._statuses: list[grpc.aio.AioRpcError] = []  # every status the call was given
        self._status_set = asyncio.Event()

    async def open(self) -> AsyncSession:
        """Start the call and wait for the server to open the session (once; then a no-op)."""
        if self._call is None:
            self._call = self._rpc(timeout=self._timeout)
            self._call.add_done_callback(self._keep_status)
            await self._send(self._protocol.opening)
            self._protocol.open(await self._receive())
        return self

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self.open().__await__()

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self.cancel()

    @property
    def info(self) -> SessionInfo:
        return self._protocol.info

    @property
    def mode(self) -> str:
        return self._protocol.info.mode

    @property
    def emit_on_request(self) -> bool:
        return self._protocol.emit_on_request

    async def step(self, values: StepValues, *, emit: bool = False) -> np.ndarray | None:
        """Send one step ([features]) or several ([steps, features]); the output it produces:
        aligned: [steps, out]; many-to-one: the running prediction (None when not asked for);
        unaligned: None (call `end_input` or `decode`)."""
        output = await self.step_full(values, emit=emit)
        return None if output is None else output.values

    async def step_full(self, values: StepValues, *, emit: bool = False) -> SessionOutput | None:
        """`step` with the output's step index and top_k pairs."""
        request, answered = self._protocol.steps(values, emit)
        await self._send(request)
        return session_output_from(await self._receive()) if answered else None

    async def stream(
        self, steps: Iterable[StepValues] | AsyncIterable[StepValues]
    ) -> AsyncIterator[np.ndarray | None]:
        """Feed steps one after another (from an iterable or an async one), yielding each
        one's output."""
        if isinstance(steps, AsyncIterable):
            async for values in steps:
                yield await self.step(values)
        else:
            for values in steps:
                yield await self.step(values)

    async def end_input(self) -> np.ndarray:
        """Unaligned models: the input is complete; the decoded sequence [steps, out]."""
        return decoded([output async for output in self.decode()])

    async def decode(self) -> AsyncIterator[SessionOutput]:
        """Unaligned models: the input is complete; the decoded sequence, one step at a time
        as it streams back."""
        await self._send(SessionProtocol.END_INPUT)
        while True:
            output = session_output_from(await self._receive())
            yield output
            if output.last:
                return

    async def reset(self) -> None:
        """Forget every step fed so far; the session stays open."""
        await self._send(SessionProtocol.RESET)
        reset_done(await self._receive())

    async def close(self) -> None:
        """End the session: the server frees its state at once. Raises the server's error if
        it ended the session with one the caller has not been given yet."""
        if self._call is None or self._protocol.ended:
            return
        self._protocol.ended = True
        try:
            await self._call.done_writing()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        failure = await self._failure()
        if failure is not None and failure.code() != grpc.StatusCode.CANCELLED:
            raise from_rpc_error(failure)

    def cancel(self) -> None:
        """End the session at once, without waiting for the server."""
        if self._call is not None:
            self._call.cancel()

    # -- I/O -----------------------------------------------------------------------------

    async def _send(self, request: pb.SessionRequest) -> None:
        """A write fails when the call has ended: raise the status the server ended it with."""
        try:
            await self._call.write(request)
        except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            self._protocol.ended = True
            raise await self._server_error() from None

    async def _receive(self) -> pb.SessionResponse:
        try:
            response = await self._call.read()
        except grpc.RpcError as exc:
            self._protocol.ended = True
            raise from_rpc_error(exc) from None
        if response is grpc.aio.EOF:
            self._protocol.ended = True
            raise ended_error(await self._failure())
        return response  # type: ignore[no-any-return]

    def _keep_status(self, call: Any) -> None:
        """Called each time the call's status is set, which grpc.aio may do twice."""
        self._statuses.append(
            grpc.aio.AioRpcError(
                _settled(call.code()),
                _settled(call.initial_metadata()),
                _settled(call.trailing_metadata()),
                _settled(call.details()),
            )
        )
        self._status_set.set()

    async def _server_error(self) -> SeqServeError:
        """The call's status, but the server's rather than Core's write failure when both come
        (in either order); Core's alone when the server sends none within a few seconds."""
        failure = await self._failure()
        if failure is None:
            return ended_error(None)
        try:
            async with asyncio.timeout(SERVER_STATUS_WAIT_S):
                while all(_core_write_failure(s) for s in self._statuses):
                    self._status_set.clear()
                    await self._status_set.wait()
        except TimeoutError:
            return from_rpc_error(failure)
        server = next(s for s in self._statuses if not _core_write_failure(s))
        return from_rpc_error(failure if server.code() == grpc.StatusCode.OK else server)

    async def _failure(self) -> grpc.RpcError | None:
        """Wait for the call to end; its status as an error, or None when it ended OK."""
        code = await self._call.code()
        if code == grpc.StatusCode.OK:
            return None
        return grpc.aio.AioRpcError(
            code,
            await self._call.initial_metadata(),
            await self._call.trailing_metadata(),
            await self._call.details(),
        )


def _core_write_failure(status: grpc.aio.AioRpcError) -> bool:
    return status.code() == grpc.StatusCode.INTERNAL and status.details() == CORE_WRITE_FAILURE


def _settled(awaitable: Awaitable[R]) -> R:
    """The value of a call accessor once the call has its status (it then never suspends), for
    use in a done callback, which cannot await."""
    step = awaitable.__await__()
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("the call has no status yet")
