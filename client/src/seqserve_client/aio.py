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
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar

import grpc

from seqserve.v1 import seqserve_pb2 as pb

from . import calls
from .calls import (
    Call,
    Inputs,
    StaticInputs,
    StepValues,
    TopK,
    checkpoint_token,
    decoded,
    reset_done,
    session_output_from,
)
from .client import SeqServeClient
from .errors import from_rpc_error
from .results import (
    ModelMetadata,
    ModelStatus,
    Predicted,
    Prediction,
    SessionOutput,
    SessionValues,
    StreamPart,
)
from .resumption import (  # CORE_WRITE_FAILURE: grpc.aio's own status for a failed write
    CORE_WRITE_FAILURE,
    DEFAULT_CHECKPOINT_EVERY,
    Ended,
    Next,
    Reconnect,
)
from .session import Session
from .twins import ClientBase, SessionBase, mirrors

SERVER_STATUS_WAIT_S = 5.0  # for the server's status to follow Core's; none comes on a local fault
R = TypeVar("R")


class AsyncSeqServeClient(ClientBase):
    """A connection to one seqserve server (or load balancer), see `ClientBase`; share it
    between the tasks of one event loop."""

    _grpc = grpc.aio

    async def __aenter__(self) -> AsyncSeqServeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @mirrors(SeqServeClient.close)
    async def close(self) -> None:
        for channel in self._pool.channels:
            await channel.close()

    # -- predictions ---------------------------------------------------------------------

    @mirrors(SeqServeClient.predict)
    async def predict(
        self, model: str, inputs: Inputs, *, version: int = 0, timeout: float | None = None
    ) -> Predicted:
        return await self._unary(calls.predict(model, inputs, version), timeout)

    @mirrors(SeqServeClient.classify)
    async def classify(
        self,
        model: str,
        inputs: Inputs,
        *,
        top_k: int = 3,
        version: int = 0,
        timeout: float | None = None,
    ) -> TopK:
        return await self._unary(calls.classify(model, inputs, top_k, version), timeout)

    @mirrors(SeqServeClient.predict_full)
    async def predict_full(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Prediction:
        return await self._unary(calls.predict_full(model, inputs, version, top_k), timeout)

    @mirrors(SeqServeClient.predict_stream)
    async def predict_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamPart]:
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
        static_inputs: StaticInputs | None = None,
        timeout: float | None = None,
        resumable: bool = False,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        resume: bytes | None = None,
        reconnect: Reconnect | None = None,
    ) -> AsyncSession:
        """A stateful streaming session, opened (`AsyncSession.open`) by `async with` or
        `await`. `static_inputs`: a model's inputs without a time axis by name, one item each
        (a vector [features...] or token ids [n]), given once here. Its deadline is `timeout`,
        none by default: sessions live long.

        Resumable (`resumable=True`, README "Resumable sessions"): the server checkpoints the
        session every `checkpoint_every` steps; on a handoff (a replica stopping) or a lost
        connection the session resumes from its newest checkpoint on whichever replica the
        target reaches, sends again the messages the checkpoint lacks and delivers every output
        once, in order: the caller sees nothing. It keeps the messages since its newest
        checkpoint to do so: at most `checkpoint_every` between calls (it asks for a checkpoint
        itself when unanswered messages pile up past that). A server without a session key
        raises ResumptionUnavailable at open; a session that cannot be continued (token
        refused, `reconnect`'s attempts spent) raises SessionLost. `resume`: open from a token
        of `checkpoint()` or of a SessionMoved (the same `emit_on_request` as the session it
        came from) and send again the messages from `info.resumed_at_message` on."""
        protocol = calls.SessionProtocol(
            model,
            version,
            emit_on_request,
            top_k,
            static_inputs,
            resumable=resumable,
            checkpoint_every=checkpoint_every,
            resume=resume,
            reconnect=reconnect,
        )
        return AsyncSession(self._rpcs["Session"], protocol, timeout)

    # -- repository ----------------------------------------------------------------------

    @mirrors(SeqServeClient.list_models)
    async def list_models(self, *, timeout: float | None = None) -> list[ModelStatus]:
        return await self._unary(calls.list_models(), timeout)

    @mirrors(SeqServeClient.load_model)
    async def load_model(self, model: str, *, timeout: float | None = None) -> list[ModelStatus]:
        return await self._unary(calls.load_model(model), timeout)

    @mirrors(SeqServeClient.unload_model)
    async def unload_model(self, model: str, *, timeout: float | None = None) -> list[ModelStatus]:
        return await self._unary(calls.unload_model(model), timeout)

    @mirrors(SeqServeClient.metadata)
    async def metadata(
        self, model: str, *, version: int = 0, timeout: float | None = None
    ) -> ModelMetadata:
        return await self._unary(calls.metadata(model, version), timeout)

    @mirrors(SeqServeClient.health)
    async def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        return await self._unary(calls.health(service), timeout)

    # -- I/O -----------------------------------------------------------------------------

    async def _unary(self, call: Call[R], timeout: float | None) -> R:
        try:
            response = await self._rpcs[call.rpc](call.request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return call.read(response)


class AsyncSession(SessionBase):
    """A session (see `SessionBase`), opened by `async with` or `await`. One task drives it.

    Resumable, it resumes as `Session` does, with one difference of grpc.aio's: once a call has
    its status, the messages not yet read are gone (`read()` raises at once), so a session idle
    while its replica stops resumes from its last checkpoint read rather than the handoff: the
    outputs are the same, a few more messages are sent again."""

    _statuses: list[grpc.aio.AioRpcError]  # every status the current call was given
    _status_set: asyncio.Event

    @mirrors(Session.open)
    async def open(self) -> AsyncSession:
        if self._call is None:
            self._start()
            try:
                if not await self._write(self._protocol.opening):
                    self._protocol.open(await self._ended())
                self._protocol.open(await self._next())
            except BaseException:
                self.cancel()
                raise
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

    @mirrors(Session.step)
    async def step(self, values: StepValues, *, emit: bool = False) -> SessionValues | None:
        output = await self.step_full(values, emit=emit)
        return None if output is None else output.values

    @mirrors(Session.step_full)
    async def step_full(self, values: StepValues, *, emit: bool = False) -> SessionOutput | None:
        request, answered = self._protocol.steps(values, emit)
        await self._send(request)
        output = session_output_from(await self._receive()) if answered else None
        await self._keep_bound()
        return output

    @mirrors(Session.stream)
    async def stream(
        self, steps: Iterable[StepValues] | AsyncIterable[StepValues]
    ) -> AsyncIterator[SessionValues | None]:
        if isinstance(steps, AsyncIterable):
            async for values in steps:
                yield await self.step(values)
        else:
            for values in steps:
                yield await self.step(values)

    @mirrors(Session.end_input)
    async def end_input(self) -> SessionValues:
        return decoded([output async for output in self.decode()])

    @mirrors(Session.decode)
    async def decode(self) -> AsyncIterator[SessionOutput]:
        await self._send(self._protocol.end_input())
        while True:
            output = session_output_from(await self._receive())
            yield output
            if output.last:
                return

    @mirrors(Session.reset)
    async def reset(self, static_inputs: StaticInputs | None = None) -> None:
        await self._send(self._protocol.reset(static_inputs))
        reset_done(await self._receive())
        await self._keep_bound()

    @mirrors(Session.checkpoint)
    async def checkpoint(self) -> bytes:
        await self._send(self._protocol.checkpoint())
        return checkpoint_token(await self._receive())

    @mirrors(Session.close)
    async def close(self) -> None:
        if self._call is None or self._protocol.ended:
            return
        self._protocol.ended = True
        try:
            await self._call.done_writing()
            # what the server sent unasked (checkpoints): an OK status comes once it is read
            while await self._call.read() is not grpc.aio.EOF:
                pass
        except grpc.RpcError:
            pass  # the status tells
        failure = await self._failure()
        error = self._protocol.closing(None if failure is None else from_rpc_error(failure))
        if error is not None:
            raise error

    # -- I/O -----------------------------------------------------------------------------

    async def _keep_bound(self) -> None:
        if self._protocol.over_bound():
            await self.checkpoint()

    def _start(self) -> None:
        """A new call (the first, or one that resumes the session on whichever replica the
        channel reaches); the previous one is let go. Each call keeps its own statuses."""
        if self._call is not None:
            self._call.cancel()
        statuses: list[grpc.aio.AioRpcError] = []
        status_set = asyncio.Event()
        self._statuses, self._status_set = statuses, status_set
        self._call = self._rpc(timeout=self._call_timeout())
        self._call.add_done_callback(lambda call: _keep_status(call, statuses, status_set))

    async def _write(self, request: pb.SessionRequest) -> bool:
        """Write a request; False when the call has ended (a write then fails)."""
        try:
            await self._call.write(request)
        except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return False
        return True

    async def _send(self, request: pb.SessionRequest) -> None:
        """A write fails when the call has ended: raise the status the server ended it with.
        A resumable session finds out at its next read, as the sync one does: it reads what
        the call still holds first (a checkpoint, a handoff: the newest state), then resumes,
        sending this request again."""
        if not await self._write(request) and not self._protocol.resumable:
            self._protocol.receive(await self._ended())  # raises

    async def _next(self) -> pb.SessionResponse | Ended:
        try:
            response = await self._call.read()
        except grpc.RpcError:
            return await self._ended()
        if response is grpc.aio.EOF:
            failure = await self._failure()
            return Ended(None if failure is None else from_rpc_error(failure))
        return response  # type: ignore[no-any-return]

    async def _receive(self) -> pb.SessionResponse:
        while True:
            got = self._protocol.receive(await self._next())
            if got is Next.RECONNECT:
                await self._reconnect()
            elif got is not Next.READ:
                return got  # type: ignore[return-value]

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(self._protocol.reconnect_delay())
            self._start()
            if await self._write(self._protocol.reopening()):
                replay = self._protocol.reopened(await self._next())
            else:
                replay = self._protocol.reopened(await self._ended())
            if replay is not None:
                for request in replay:
                    if not await self._write(request):
                        break  # the next read finds the call ended, and resumes again
                return

    async def _ended(self) -> Ended:
        """How the call ended, once a write failed: the server's status rather than Core's
        write failure when both come (in either order); Core's alone when the server sends
        none within a few seconds."""
        failure = await self._failure()
        if failure is None:
            return Ended(None)
        try:
            async with asyncio.timeout(SERVER_STATUS_WAIT_S):
                while all(_core_write_failure(s) for s in self._statuses):
                    self._status_set.clear()
                    await self._status_set.wait()
        except TimeoutError:
            return Ended(from_rpc_error(failure))
        server = next(s for s in self._statuses if not _core_write_failure(s))
        return Ended(from_rpc_error(failure if server.code() == grpc.StatusCode.OK else server))

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


def _keep_status(
    call: Any, statuses: list[grpc.aio.AioRpcError], status_set: asyncio.Event
) -> None:
    """A call's done callback, called each time its status is set (grpc.aio may do it twice)."""
    statuses.append(
        grpc.aio.AioRpcError(
            _settled(call.code()),
            _settled(call.initial_metadata()),
            _settled(call.trailing_metadata()),
            _settled(call.details()),
        )
    )
    status_set.set()


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
