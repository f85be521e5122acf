"""The data plane: what every protocol adapter calls for Predict and PredictStream. Numpy in,
numpy out, no transport.

Computation runs on each model's own compute thread (TensorFlow releases the GIL); only short
batches of a caller at a time run on the event loop (`inline_compute_s`, batching.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from .admission import AdmissionSettings
from .batch import Batch, NamedBatch
from .batching import DynamicBatcher, Values
from .classification import Ranked, check_top_k, rank
from .compute_threads import ModelThreads
from .errors import DeadlineExpired
from .limits import check_stream_messages
from .modes import Mode
from .observer import ModelObserver, ModelObservers
from .repository import ModelRepository, ReadyModel
from .sessions import STREAM_WINDOW
from .signature import SINGLE_INPUT_NAME
from .stepping.programs import StepProgram

STREAM_CHUNK = 8  # inputs computed together per streamed part: first outputs leave early


Inputs = Batch | dict[str, Batch]  # one input's batch, or (several inputs) batches by name


@dataclass(frozen=True)
class InferenceResult:
    """What Predict computed for a request's inputs."""

    model: str
    version: int
    mode: Mode
    outputs: Batch  # one vector or one sequence per input, in request order
    top_k: Ranked | None = None  # by labelled output: one entry per vector (or step), in order
    named: dict[str, Batch] | None = None  # models with several outputs: `outputs` by name


@dataclass(frozen=True)
class InferencePart:
    """Outputs of the inputs `indices` of a streamed prediction: whole, or (sequences) their
    steps from `first_step` on, of `lengths` steps in all."""

    indices: list[int]
    outputs: list[np.ndarray]
    top_k: list[Ranked] | None = None  # per input, by labelled output
    first_step: int = 0
    lengths: list[int] | None = None


StepPrograms = Callable[[ReadyModel], StepProgram | None]


class InferenceService:
    """Predict through each model's batcher; PredictStream a few inputs at a time, or, where the
    model has an incremental step program (`step_programs`, the sessions' own), a window of
    steps at a time."""

    def __init__(
        self,
        repository: ModelRepository,
        threads: ModelThreads,
        observers: Callable[[str], ModelObserver] | None = None,
        step_programs: StepPrograms | None = None,
        inline_compute_s: float = 0.0,
        admission: AdmissionSettings | None = None,
    ) -> None:
        self.repository = repository
        self._admission = admission or AdmissionSettings()
        self._inline_compute_s = inline_compute_s
        self._threads = threads
        self._observer_for = observers or ModelObservers()
        self._step_programs: StepPrograms = step_programs or (lambda target: None)
        self._batchers: dict[tuple[str, int], DynamicBatcher] = {}

    def _batcher(self, target: ReadyModel) -> DynamicBatcher:
        key = (target.name, target.version)
        if key not in self._batchers:
            config = target.config
            self._batchers[key] = DynamicBatcher(
                target.runtime.compute,
                self._threads.executor(target.name, target.version),
                config.max_batch_size,
                config.max_queue_delay_ms / 1000,
                config.max_queue_size,
                self._observer_for(target.name),
                name=target.name,
                max_in_flight=self._threads.threads_per_model,  # one merged batch per thread
                inline_below_s=self._inline_compute_s,
                admission=self._admission.for_model(config.default_deadline_s),
            )
        return self._batchers[key]

    def drop(self, model: str, version: int) -> DynamicBatcher | None:
        """Stop routing new work of the version to its batcher (the next request of a version
        loaded again gets a new one); the caller drains and closes what this returns."""
        return self._batchers.pop((model, version), None)

    def backlogged(self) -> bool:
        """Some model's batcher held more than a batch of rows waiting since the last look
        (the front door's congestion signal: core/call_admission.py)."""
        peaks = [(b.take_peak_depth(), b.max_batch_size) for b in self._batchers.values()]
        return any(peak > batch for peak, batch in peaks)

    def close(self) -> None:
        """Fail queued work fast: the server is stopping."""
        for batcher in self._batchers.values():
            batcher.close()

    async def predict(
        self, target: ReadyModel, inputs: Inputs, k: int = 0, deadline: float | None = None
    ) -> InferenceResult:
        """`deadline`: `time.monotonic()` seconds after which the work is dropped unrun."""
        runtime = target.runtime
        batch = runtime.validate(inputs)
        check_top_k(k, target.labels, "top_k")
        outputs = await self._run(target, batch, deadline)
        ranked = _rank(target, outputs.values, k) if k else None
        named = None
        if runtime.signature.several_outputs:
            split = runtime.signature.split(outputs.values)
            named = {name: Batch(values, outputs.lengths) for name, values in split.items()}
        return InferenceResult(target.name, target.version, runtime.mode, outputs, ranked, named)

    async def predict_stream(
        self, target: ReadyModel, inputs: Inputs, k: int = 0, deadline: float | None = None
    ) -> AsyncIterator[InferencePart]:
        """Compute a few inputs at a time so that the caller gets the first ones early; with an
        incremental step program of an aligned model, long sequences a window at a time."""
        runtime = target.runtime
        batch = runtime.validate(inputs)
        check_top_k(k, target.labels, "top_k")
        lengths = runtime.output_lengths(batch)
        output_steps = runtime.signature.packed_shape[0] if runtime.mode.gives_sequence else None
        check_stream_messages(
            target.limits.max_stream_messages, runtime.mode, output_steps, lengths
        )
        program = self._step_programs(target)
        stepped = program is not None and program.mode is Mode.MANY_TO_MANY_ALIGNED
        if stepped and program is not None:
            async for part in self._stepped_parts(target, batch, program, k, deadline):
                yield part
            return
        items = batch.items()
        for start in range(0, len(items), STREAM_CHUNK):
            chunk = _chunk(batch, items[start : start + STREAM_CHUNK])
            outputs = (await self._run(target, chunk, deadline)).items()
            ranked = [_rank(target, o, k) for o in outputs] if k else None
            yield InferencePart(list(range(start, start + len(outputs))), outputs, ranked)

    async def _stepped_parts(
        self,
        target: ReadyModel,
        batch: Batch | NamedBatch,
        program: StepProgram,
        k: int,
        deadline: float | None,
    ) -> AsyncIterator[InferencePart]:
        """Equal-length inputs stepped together (static inputs in their state); each window's
        outputs leave as computed."""
        loop = asyncio.get_running_loop()
        executor = self._threads.executor(target.name, target.version)
        observer = self._observer_for(target.name)
        signature = target.runtime.signature
        named = batch.batches if isinstance(batch, NamedBatch) else {SINGLE_INPUT_NAME: batch}
        items = {name: b.items() for name, b in named.items()}
        lengths = named[signature.sequence_inputs[0].name].item_lengths()
        for length, indices in _equal_length_groups(lengths, STREAM_CHUNK):
            stacked = {name: np.stack([rows[i] for i in indices]) for name, rows in items.items()}
            statics = {s.name: stacked[s.name] for s in signature.static_inputs}
            xs = tuple(stacked[s.name] for s in signature.sequence_inputs)
            state = program.initial_state(len(indices), statics)
            for first in range(0, xs[0].shape[1], STREAM_WINDOW):  # the steps there are
                if deadline is not None and deadline <= time.monotonic():
                    raise DeadlineExpired(f"the deadline passed while {target.name} streamed")
                cut = tuple(x[:, first : first + STREAM_WINDOW] for x in xs)
                window = cut if len(cut) > 1 else cut[0]
                started = time.perf_counter()
                state, y = await loop.run_in_executor(executor, program.step, state, window)
                observer.batch_executed(len(indices), time.perf_counter() - started)
                outputs = list(y)
                ranked = [_rank(target, o, k) for o in outputs] if k else None
                yield InferencePart(indices, outputs, ranked, first, [length] * len(indices))

    async def _run(
        self, target: ReadyModel, batch: Batch | NamedBatch, deadline: float | None
    ) -> Batch:
        """Through the model's batcher: merged with concurrent callers' work of the same shape;
        a dense batch goes as one block, a ragged one as a block per shape."""
        batcher = self._batcher(target)
        dense = _dense_values(batch)
        if dense is not None:
            (outputs,) = await batcher.submit([dense], deadline)
            return Batch(outputs)
        return Batch.from_items(await batcher.submit_items(batch.items(), deadline))


def _dense_values(batch: Batch | NamedBatch) -> Values | None:
    """The batch as the model's input arrays when none is ragged; None when one is."""
    if isinstance(batch, Batch):
        return None if batch.is_ragged else batch.values
    if any(b.is_ragged for b in batch.batches.values()):
        return None
    return tuple(b.values for b in batch.batches.values())


def _chunk(batch: Batch | NamedBatch, items: list) -> Batch | NamedBatch:
    """Some of a batch's items as a batch of the same kind."""
    if isinstance(batch, NamedBatch):
        return NamedBatch.from_items(tuple(batch.batches), items)
    return Batch.from_items(items)


def _equal_length_groups(lengths: np.ndarray, size: int) -> list[tuple[int, list[int]]]:
    """Indices of equal-length inputs, in groups of at most `size`, in order of first input."""
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths.tolist()):
        groups.setdefault(length, []).append(index)
    return [
        (length, indices[i : i + size])
        for length, indices in groups.items()
        for i in range(0, len(indices), size)
    ]


def _rank(target: ReadyModel, values: np.ndarray, k: int) -> Ranked:
    """Packed outputs' top-k by labelled output."""
    return rank(target.runtime.signature.split(values), target.labels, k)
