"""What the fuzzer knows about the served models: read from the server's own metadata, so the
same fuzzer runs against any repository (the bundled models or the test fixtures)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

DEFAULT_STEPS = 7  # a valid sequence's length where the model allows any


@dataclass(frozen=True)
class Input:
    """One of a model's inputs (the metadata's `inputs`)."""

    name: str
    shape: tuple[int, ...]  # -1: any size (axis 0 is the batch)
    dtype: int  # pb.DataType
    sequence: bool  # [batch, time, ...]; else static ([batch, features...] or [batch, n] ids)
    vocabulary: int

    @property
    def fixed_steps(self) -> int | None:
        return self.shape[1] if self.sequence and self.shape[1] > 0 else None

    def item(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """One item, no batch axis: a sequence input's `steps` steps, a static input whole;
        float32 values, or int32 ids inside the vocabulary."""
        shape = list(self.shape[1:])
        if self.sequence:
            shape[0] = steps
        if self.dtype in (pb.INT32, pb.INT64):
            return rng.integers(1, max(self.vocabulary, 2), size=shape, dtype=np.int32)
        return rng.normal(size=shape).astype(np.float32)


@dataclass(frozen=True)
class Target:
    """One ready model version and the shape of a valid input for it (`input_*`: the single
    input's view, empty for a model with several inputs; `inputs`: every input by name)."""

    name: str
    version: int
    mode: int  # pb.Mode
    input_shape: tuple[int, ...]  # -1: any size (axis 0 is the batch)
    input_dtype: int  # pb.DataType
    vocabulary: int  # token-id inputs: ids in [0, vocabulary); 0 otherwise
    labels: int
    max_sequence_length: int
    session_support: int  # pb.SessionSupport
    max_sessions: int
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ()  # every output's name

    @property
    def named(self) -> bool:
        """Several inputs: Predict takes `named_inputs`, sessions static inputs at open and
        every sequence input's steps in `named_values`."""
        return len(self.inputs) > 1

    @property
    def statics(self) -> list[Input]:
        return [i for i in self.inputs if not i.sequence]

    @property
    def sequences(self) -> list[Input]:
        return [i for i in self.inputs if i.sequence]

    @property
    def tokens(self) -> bool:
        """Token ids: [batch, steps] integers (no feature axis)."""
        return self.input_dtype in (pb.INT32, pb.INT64) and len(self.input_shape) == 2

    @property
    def is_sequence(self) -> bool:
        if self.named:
            return bool(self.sequences)
        return len(self.input_shape) == 3 or self.tokens

    @property
    def features(self) -> int:
        return self.input_shape[-1]

    @property
    def fixed_steps(self) -> int | None:
        if self.named:
            return next((i.fixed_steps for i in self.sequences), None)
        return self.input_shape[1] if self.is_sequence and self.input_shape[1] > 0 else None

    @property
    def steps(self) -> int:
        """A valid sequence length: the fixed one, else a short one within the limit."""
        if self.fixed_steps is not None:
            return self.fixed_steps
        limit = self.max_sequence_length
        return min(DEFAULT_STEPS, limit) if limit else DEFAULT_STEPS

    @property
    def sessions(self) -> bool:
        return self.session_support in (pb.SESSION_INCREMENTAL, pb.SESSION_RECOMPUTE)

    def valid_input(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """A dense input of `batch` rows that the model must accept: float32 values, or
        int32 token ids inside the vocabulary."""
        shape = [batch, *self.input_shape[1:]]
        if self.is_sequence:
            shape[1] = self.steps
        if self.tokens:
            return rng.integers(1, max(self.vocabulary, 2), size=shape, dtype=np.int32)
        return rng.normal(size=shape).astype(np.float32)

    def valid_steps(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """A session's next `steps` steps: [steps] token ids, or [steps, features] floats (a
        model with several inputs: its first sequence input's, or 3 features)."""
        if self.named:
            first = next(iter(self.sequences), None)
            return first.item(rng, steps) if first else np.ones((steps, 3), np.float32)
        if self.tokens:
            return rng.integers(1, max(self.vocabulary, 2), size=steps, dtype=np.int32)
        return rng.normal(size=(steps, self.features)).astype(np.float32)

    def valid_named(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        """Every input by name, `batch` items each ([batch, ...]), the sequence inputs of one
        length (which any model accepts)."""
        return {
            i.name: np.stack([i.item(rng, self.steps) for _ in range(batch)]) for i in self.inputs
        }

    def valid_statics(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A session's static inputs: one item each, no batch axis."""
        return {i.name: i.item(rng, 0) for i in self.statics}

    def valid_named_steps(self, rng: np.random.Generator, steps: int) -> dict[str, np.ndarray]:
        """A session's next `steps` steps of every sequence input, by name."""
        return {i.name: i.item(rng, steps) for i in self.sequences}


async def discover(channel: grpc.aio.Channel) -> list[Target]:
    """Every ready model version the server lists, with its metadata."""
    stub = pb_grpc.SeqServeStub(channel)
    listing = await stub.ListModels(pb.ListModelsRequest(), timeout=30)
    targets = []
    for status in listing.models:
        if status.state != pb.READY:
            continue
        request = pb.GetModelMetadataRequest(model_name=status.name, model_version=status.version)
        meta = await stub.GetModelMetadata(request, timeout=30)
        targets.append(
            Target(
                name=meta.name,
                version=meta.version,
                mode=meta.mode,
                input_shape=tuple(meta.input.shape),
                input_dtype=meta.input.dtype,
                vocabulary=meta.input.vocabulary,
                labels=len(meta.labels),
                max_sequence_length=meta.max_sequence_length,
                session_support=meta.session_support,
                max_sessions=meta.max_sessions,
                inputs=tuple(
                    Input(i.name, tuple(i.shape), i.dtype, i.sequence, i.vocabulary)
                    for i in meta.inputs
                ),
                outputs=tuple(o.name for o in meta.outputs),
            )
        )
    if not targets:
        raise RuntimeError("the server lists no ready model to fuzz")
    return targets
