"""The asyncio client: the same calls as `SeqServeClient`, awaited.

async with AsyncSeqServeClient("127.0.0.1:8500") as client:
    y = await client.predict("digit_classifier", x)
    async with client.session("co2_next_week") as s:
        y_t = await s.step(x_t)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .channel import channel_options
from .client import DEFAULT_TIMEOUT_S, Inputs, predict_request, prediction_from
from .errors import from_rpc_error
from .results import (
    ModelMetadata,
    ModelStatus,
    Predicted,
    Prediction,
    StreamPart,
    metadata_from_proto,
    status_from_proto,
    stream_part_from,
)
from .session import (
    SessionInfo,
    SessionOutput,
    expects_output,
    info_from,
    open_request,
    output_from,
    steps_request,
)

# grpc.aio's own status for a write that Core fails because the call has ended: it may replace
# the status the server sent (grpc/grpc#36066), which the sync client reports.
CORE_WRITE_FAILURE = "Internal error from Core"
SERVER_STATUS_WAIT_S = 5.0  # for the server's status to follow Core's; none comes on a local fault
T = TypeVar("T")


class AsyncSeqServeClient:
    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.timeout = timeout
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=channel_options(options))
            if credentials
            else grpc.aio.insecure_channel(target, options=channel_options(options))
        )
        self._stub = pb_grpc.SeqServeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncSeqServeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def predict(
        self, model: str, inputs: Inputs, *, version: int = 0, timeout: float | None = None
    ) -> Predicted:
        return (await self.predict_full(model, inputs, version=version, timeout=timeout)).outputs

    async def classify(
        self, model: str, inputs: Inputs, *, top_k: int = 3, version: int = 0
    ) -> list[list[tuple[str, float]]]:
        return (await self.predict_full(model, inputs, version=version, top_k=top_k)).top_k

    async def predict_full(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Prediction:
        request = predict_request(model, inputs, version, top_k)
        return prediction_from(await self._call(self._stub.Predict, request, timeout))

    async def predict_stream(
        self, model: str, inputs: Inputs, *, version: int = 0, top_k: int = 0
    ) -> AsyncIterator[StreamPart]:
        call = self._stub.PredictStream(
            predict_request(model, inputs, version, top_k), timeout=self.timeout
        )
        try:
            async for part in call:
                yield stream_part_from(part)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def list_models(self) -> list[ModelStatus]:
        response = await self._call(self._stub.ListModels, pb.ListModelsRequest(), None)
        return [status_from_proto(m) for m in response.models]

    async def metadata(self, model: str, *, version: int = 0) -> ModelMetadata:
        request = pb.GetModelMetadataRequest(model_name=model, model_version=version)
        return metadata_from_proto(await self._call(self._stub.GetModelMetadata, request, None))

    async def health(self, service: str = "") -> bool:
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(self._health.Check, request, None)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def session(
        self,
        model: str,
        *,
        version: int = 0,
        emit_on_request: bool = False,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> AsyncSession:
        """`async with client.session(model) as s:` opens a stateful streaming session."""
        return AsyncSession(
            self._stub, open_request(model, version, emit_on_request, top_k), timeout
        )

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


class AsyncSession:
    def __init__(self, stub: Any, opening: pb.SessionRequest, timeout: float | None) -> None:
        self._stub = stub
        self._opening = opening
        self._timeout = timeout
        self.emit_on_request = opening.open.emit_on_request
        self._call: Any = None
        self.info: SessionInfo | None = None
        self._statuses: list[grpc.aio.AioRpcError] = []  # every status the call was given
        self._status_set = asyncio.Event()

    async def __aenter__(self) -> AsyncSession:
        self._call = self._stub.Session(timeout=self._timeout)
        self._call.add_done_callback(self._keep_status)
        await self._write(self._opening)
        self.info = info_from(await self._read())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self.cancel()

    @property
    def mode(self) -> str:
        assert self.info is not None, "use `async with`"
        return self.info.mode

    async def step(
        self, values: np.ndarray | Sequence[int], *, emit: bool = False
    ) -> np.ndarray | None:
        output = await self.step_full(values, emit=emit)
        return None if output is None else output.values

    async def step_full(
        self, values: np.ndarray | Sequence[int], *, emit: bool = False
    ) -> SessionOutput | None:
        await self._write(steps_request(values, emit))
        if not expects_output(self.mode, self.emit_on_request, emit):
            return None
        return output_from(await self._read())

    async def stream(
        self, steps: Iterable[np.ndarray] | AsyncIterable[np.ndarray]
    ) -> AsyncIterator[np.ndarray | None]:
        if isinstance(steps, AsyncIterable):
            async for values in steps:
                yield await self.step(values)
        else:
            for values in steps:
                yield await self.step(values)

    async def end_input(self) -> np.ndarray:
        await self._write(pb.SessionRequest(end_input=pb.SessionEndInput()))
        rows = []
        while True:
            output = output_from(await self._read())
            if output.values is not None:
                rows.append(output.values)
            if output.last:
                return np.concatenate(rows)

    async def reset(self) -> None:
        await self._write(pb.SessionRequest(reset=pb.SessionReset()))
        await self._read()

    async def close(self) -> None:
        try:
            await self._call.done_writing()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        failure = await self._failure()
        if failure is not None and failure.code() != grpc.StatusCode.CANCELLED:
            raise from_rpc_error(failure)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def _write(self, request: pb.SessionRequest) -> None:
        """A write fails when the call has ended: raise the status the server ended it with."""
        try:
            await self._call.write(request)
        except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            raise from_rpc_error(await self._server_status()) from None

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

    async def _server_status(self) -> grpc.RpcError:
        """The call's status, but the server's rather than Core's write failure when both come
        (in either order); Core's alone when the server sends none within a few seconds."""
        failure = await self._ended_call()
        try:
            async with asyncio.timeout(SERVER_STATUS_WAIT_S):
                while all(_core_write_failure(s) for s in self._statuses):
                    self._status_set.clear()
                    await self._status_set.wait()
        except TimeoutError:
            return failure
        server = next(s for s in self._statuses if not _core_write_failure(s))
        return failure if server.code() == grpc.StatusCode.OK else server

    async def _read(self) -> pb.SessionResponse:
        try:
            response = await self._call.read()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if response is grpc.aio.EOF:
            raise from_rpc_error(await self._ended_call())
        return response

    async def _ended_call(self) -> grpc.RpcError:
        failure = await self._failure()
        if failure is None:
            return grpc.aio.AioRpcError(
                grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata(), "session ended"
            )
        return failure

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


def _settled(awaitable: Awaitable[T]) -> T:
    """The value of a call accessor once the call has its status (it then never suspends), for
    use in a done callback, which cannot await."""
    step = awaitable.__await__()
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("the call has no status yet")
