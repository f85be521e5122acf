"""The Open Inference Protocol (KServe v2, Triton's `inference.GRPCInferenceService`): decode the
request, call the core through the facade, encode the response.

Request parameters it reads: `top_k` (int), `stream_steps` (bool, ModelStreamInfer only: one
response per output step or vector; ModelInfer refuses it, as Triton refuses a decoupled model
there), and Triton's `sequence_id`/`sequence_start`/`sequence_end`. Inputs and outputs travel
by name, each sequence input with its optional `<input>_lengths` (requests.py).
`priority` and `timeout` are accepted and not used (the gRPC deadline bounds a call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

import grpc
import numpy as np

from seqserve.inference import grpc_service_pb2 as pb

from ...metrics import ServerMetrics
from ..auth import CALLER
from ..instrumentation import observed
from ..status import grpc_errors
from .core_facade import Core, InvalidInput, Mode, ModelView, SequenceHandle, TensorView
from .describe import config, metadata, repository_index
from .errors import stream_error
from .requests import (
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
    STREAM_STEPS,
    TOP_K,
    Inputs,
    Unparsed,
    bool_parameter,
    int_parameter,
    read_inputs,
    retry_key,
    sequence_id,
    to_batches,
    version_number,
)
from .responses import OUTPUT_LENGTHS, header, prediction, requested, set_parameter, step
from .sequences import Sequences
from .statistics import Statistics

log = logging.getLogger(__name__)

SERVER_NAME = "seqserve"
EXTENSIONS = ["model_repository", "statistics", "sequence", "parameters"]
FINAL = "triton_final_response"
STREAM_IN_FLIGHT = 64  # requests of one ModelStreamInfer call computed at once


def _server_version() -> str:
    try:
        return version("seqserve-server")
    except PackageNotFoundError:
        return "unknown"


class OpenInferenceServicer:
    def __init__(self, core: Core, metrics: ServerMetrics) -> None:
        self.core = core
        self.metrics = metrics
        self.sequences = Sequences(core)
        self.statistics = Statistics()

    # -- instrumentation labels (v2 versions are strings) ---------------------------------

    def known_model(self, name: str) -> bool:
        return self.core.has(name)

    def known_version(self, name: str, version: int | str) -> bool:
        number = int(version) if isinstance(version, int) or version.isdigit() else -1
        return number > 0 and self.core.has(name, number)

    # -- health and metadata ---------------------------------------------------------------

    @observed
    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @observed
    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Ready once the models are loaded (the service is registered only then)."""
        return pb.ServerReadyResponse(ready=True)

    @observed
    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        number = version_number(request.version, "version")
        return pb.ModelReadyResponse(ready=self.core.ready(request.name, number))

    @observed
    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_server_version(), extensions=EXTENSIONS
        )

    @observed
    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self.core.model(request.name, version_number(request.version, "version"))
        return metadata(model, self.core.versions(request.name))

    @observed
    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = self.core.model(request.name, version_number(request.version, "version"))
        return pb.ModelConfigResponse(config=config(model))

    @observed
    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        versions = self.core.versions(request.name or None)
        if request.version:
            number = version_number(request.version, "version")
            versions = [v for v in versions if v.version == number]
        return self.statistics.to_proto(versions)

    @observed
    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return repository_index(self.core.versions(), request.ready)

    @observed
    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self.core.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @observed
    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self.core.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -------------------------------------------------------------------------

    @observed
    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if bool_parameter(request, STREAM_STEPS):  # as Triton refuses decoupled models here
            raise InvalidInput(
                f"parameters[{STREAM_STEPS!r}]",
                "stream_steps needs ModelStreamInfer (one response per step); false or unset "
                "in ModelInfer",
                "true",
            )
        return await self._infer(request, _deadline(context))

    @observed
    @grpc_errors
    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[pb.ModelInferRequest | Unparsed],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests (parsed one by one: handlers.py) run concurrently (up to STREAM_IN_FLIGHT;
        the requests of one sequence in order), so they batch with each other; responses leave
        as ready, matched by `id`."""
        ready: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(self._run_stream(requests, context, ready))
        try:
            while (response := await ready.get()) is not None:
                yield response
            await reader
        finally:
            reader.cancel()

    async def _run_stream(
        self,
        requests: AsyncIterator[pb.ModelInferRequest | Unparsed],
        context: grpc.aio.ServicerContext,
        ready: asyncio.Queue[pb.ModelStreamInferResponse | None],
    ) -> None:
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest | Unparsed) -> None:
            try:
                async for response in self._answers(request, _deadline(context)):
                    await ready.put(response)
            finally:
                slots.release()

        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
        finally:
            for task in running:
                task.cancel()
            await ready.put(None)

    async def _answers(
        self, request: pb.ModelInferRequest | Unparsed, deadline: float | None
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One request's responses; an error answers it in `error_message` (the stream goes
        on). With `stream_steps`, one response per output step (or vector); the last one of
        the request is marked `triton_final_response`."""
        if isinstance(request, Unparsed):
            failed = pb.ModelInferResponse()
            message = stream_error(request.refusal())
            yield pb.ModelStreamInferResponse(error_message=message, infer_response=failed)
            return
        try:
            if bool_parameter(request, STREAM_STEPS):
                async for response in self._stepped(request, deadline):
                    yield pb.ModelStreamInferResponse(infer_response=response)
            else:
                response = await self._infer(request, deadline)
                set_parameter(response, FINAL, True)
                yield pb.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:  # noqa: BLE001 - every error answers its request
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            yield pb.ModelStreamInferResponse(
                error_message=stream_error(exc), infer_response=failed
            )

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        number = version_number(request.model_version)
        sequence = sequence_id(request)
        if sequence:
            return await self._sequence_step(request, number, sequence)
        if bool_parameter(request, SEQUENCE_START) or bool_parameter(request, SEQUENCE_END):
            raise InvalidInput(
                f"parameters[{SEQUENCE_ID!r}]",
                "a sequence id beside sequence_start or sequence_end",
                "none (or 0)",
            )
        model = self.core.model(request.model_name, number)
        started = time.perf_counter()
        try:
            wanted = requested(request, model, int_parameter(request, TOP_K))
            batches = to_batches(read_inputs(request, model), model)
            outputs = await self.core.predict(model, batches, wanted.rank, deadline)
        except Exception:
            self._record(model, False, started, 0)
            raise
        self._record(model, True, started, next(iter(batches.values())).size)
        return prediction(header(request, model, outputs.version), outputs, model, wanted)

    async def _stepped(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> AsyncIterator[pb.ModelInferResponse]:
        """One response per output vector, or per step of an output sequence, as computed."""
        if sequence_id(request):
            raise InvalidInput(
                STREAM_STEPS, "false in a sequence (it answers each request)", "true"
            )
        model = self.core.model(request.model_name, version_number(request.model_version))
        wanted = requested(request, model, int_parameter(request, TOP_K)).without(OUTPUT_LENGTHS)
        batches = to_batches(read_inputs(request, model), model)
        sequence = model.mode.gives_sequence
        pending: pb.ModelInferResponse | None = None
        async for part in self.core.predict_parts(model, batches, wanted.rank, deadline):
            for offset, (index, outputs) in enumerate(zip(part.indices, part.outputs, strict=True)):
                rows = next(iter(outputs.values()))
                count = len(rows) if sequence else 1
                total = part.lengths[offset] if part.lengths else part.first_step + count
                ranked = part.top_k[offset] if part.top_k else None
                for row in range(count):
                    values = {n: (o[row] if sequence else o) for n, o in outputs.items()}
                    response = step(
                        header(request, model, model.version),
                        values,
                        {n: r[row : row + 1] for n, r in ranked.items()} if ranked else None,
                        wanted,
                    )
                    number = part.first_step + row
                    set_parameter(response, "input_index", index)
                    set_parameter(response, "step", number)
                    set_parameter(response, "last", number == total - 1)
                    set_parameter(response, FINAL, False)
                    if pending is not None:
                        yield pending
                    pending = response
        if pending is not None:
            set_parameter(pending, FINAL, True)
            yield pending

    async def _sequence_step(
        self, request: pb.ModelInferRequest, number: int, sequence: int | str
    ) -> pb.ModelInferResponse:
        """Feed a request's steps ([1, steps, ...]) to its sequence's session (taken from the
        shared session store first where this replica does not hold it: sequences.py)."""
        name, end = request.model_name, bool_parameter(request, SEQUENCE_END)
        key, caller = (name, sequence), CALLER.get()
        inputs: dict[str, Inputs] | None = None
        if bool_parameter(request, SEQUENCE_START):
            model = self.core.model(name, number)
            inputs = read_inputs(request, model)
            statics = {v.name: inputs[v.name].values for v in model.inputs if not v.sequence}
            k = int_parameter(request, TOP_K)
            opened = self.sequences.start(name, number, sequence, k, statics, caller)
        else:
            opened = self.sequences.get(name, sequence)
        started = time.perf_counter()
        handle: SequenceHandle | None = None
        try:
            async with opened.lock:  # taken before any wait: requests go in arrival order
                handle = await self.sequences.ready(key, opened, caller)
                retry = retry_key(request)
                reply = self.sequences.replayed(key, opened, handle, retry)
                if reply is not None:  # applied before, its answer lost: answer it again
                    response = pb.ModelInferResponse.FromString(reply)
                else:
                    if inputs is None:
                        inputs = _later_inputs(request, handle.model)
                    fed = False
                    try:
                        response = await self._feed(request, handle, end, inputs)
                        self.sequences.remember(handle, retry, end, response.SerializeToString())
                        fed = True
                    finally:
                        await self.sequences.written(key, opened, end, fed)
            self._record(handle.model, True, started, 1)
            return response
        except Exception:
            if handle is not None:
                self._record(handle.model, False, started, 0)
            raise
        finally:
            if end:
                self.sequences.end(key, opened)

    async def _feed(
        self,
        request: pb.ModelInferRequest,
        handle: SequenceHandle,
        end: bool,
        inputs: dict[str, Inputs],
    ) -> pb.ModelInferResponse:
        """Each sequence input's new steps ([1, steps, ...]) to the sequence's session."""
        model = handle.model
        wanted = requested(request, model, handle.k)
        if wanted.rank > handle.k:
            got = f"{wanted.rank} (the sequence started with top_k {handle.k})"
            raise InvalidInput("outputs", f"at most top_k {handle.k} classes", got)
        steps = {
            view.name: _new_steps(inputs[view.name], view) for view in model.inputs if view.sequence
        }
        output = None
        first = next(iter(steps))
        if len(steps[first]):
            output = await self.core.step(handle, steps)
        elif not end:
            raise InvalidInput(first, "at least one step", "0 steps")
        if end and model.mode is Mode.MANY_TO_MANY_UNALIGNED:
            output = await self.core.finish(handle)
        response = header(request, model, model.version)
        if output is None:
            return response
        return step(response, output.named, output.top_k, wanted)

    def _record(self, model: ModelView, ok: bool, started: float, inputs: int) -> None:
        seconds = time.perf_counter() - started
        self.statistics.record(model.name, model.version, ok, seconds, inputs)


def _later_inputs(request: pb.ModelInferRequest, model: ModelView) -> dict[str, Inputs]:
    """A sequence's later request: its sequence inputs' new steps; static inputs came with
    sequence_start and are kept."""
    sequences = [view.name for view in model.inputs if view.sequence]
    for tensor in request.inputs:
        if any(view.name == tensor.name and not view.sequence for view in model.inputs):
            raise InvalidInput(
                tensor.name, "on the sequence_start request only (a static input, kept for the "
                "whole sequence)", "on a later request",
            )  # fmt: skip
    return read_inputs(request, model, sequences)


def _new_steps(inputs: Inputs, view: TensorView) -> np.ndarray:
    """One sequence input's new steps from its [1, steps, ...] tensor."""
    values = inputs.values
    if inputs.lengths is not None or values.ndim < 1 or len(values) != 1:
        got = f"shape {list(values.shape)}"
        raise InvalidInput(view.name, "[1, steps, ...]: one sequence's new steps", got)
    return values[0]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on the core's clock (time.monotonic)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
