"""One loaded Keras model: safe loading, signature checks, a compiled function, warm-up.

Inference goes through a `tf.function` with dynamic batch (and, where the model allows, time)
axes: on a small CPU a `model.predict` call costs ~50 ms of fixed overhead, the compiled function
about 1 ms.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import Batch
from .errors import InvalidInput, ModelLoadError
from .modes import Mode, resolve_mode

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

ACCEPTED_FLOATS = (np.float16, np.float32, np.float64)
# Each model has its own tf.function, traced once: TF's "retracing" warning counts them all.
tf.get_logger().setLevel("ERROR")


@dataclass(frozen=True)
class Signature:
    """Shapes without the batch axis; None marks a dynamic axis."""

    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    input_dtype: np.dtype
    output_dtype: np.dtype

    @property
    def features(self) -> int | None:
        return self.input_shape[-1]

    @property
    def fixed_steps(self) -> int | None:
        """The input length a fixed-length sequence model requires, else None."""
        return self.input_shape[0] if len(self.input_shape) == 2 else None


class ModelRuntime:
    """A model ready to compute: validated inputs in, numpy outputs out."""

    def __init__(
        self, model: keras.Model, mode: Mode, signature: Signature, max_sequence_length: int = 0
    ) -> None:
        self.model = model
        self.mode = mode
        self.signature = signature
        self.max_sequence_length = max_sequence_length
        spec = tf.TensorSpec([None, *signature.input_shape], signature.input_dtype)
        traced = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        # Calling the concrete function skips tf.function's dispatch: ~0.7 vs ~1.2 ms at batch 1.
        self._fn = traced.get_concrete_function()

    @classmethod
    def load(
        cls, path: Path, stated_mode: Mode | None = None, max_sequence_length: int = 0
    ) -> ModelRuntime:
        """Load with safe_mode (a Lambda layer can run any code), check, compile, warm up."""
        model = _load_keras(path)
        signature = _signature(model)
        mode = resolve_mode(stated_mode, signature.input_shape, signature.output_shape)
        runtime = cls(model, mode, signature, max_sequence_length)
        runtime.warm_up()
        return runtime

    # -- checks ----------------------------------------------------------------------------

    def validate(self, batch: Batch) -> Batch:
        """Check a decoded batch against the signature and limits; return it as the model dtype."""
        self._check_layout(batch)
        values = _as_model_dtype(batch.values, self.signature.input_dtype)
        _check_finite(values, batch)
        if self.mode.takes_sequence:
            self._check_lengths(batch.item_lengths())
        return Batch(values, batch.lengths)

    def _check_layout(self, batch: Batch) -> None:
        sig = self.signature
        if batch.size == 0:
            raise InvalidInput("inputs", "at least one input", "an empty batch")
        if self.mode.takes_sequence:
            want_rank = 2 if batch.is_ragged else 3
            layout = "[total_steps, features]" if batch.is_ragged else "[batch, steps, features]"
        else:
            if batch.is_ragged:
                raise InvalidInput(
                    "inputs.lengths", "none (this model takes vectors)", f"{batch.size} lengths"
                )
            want_rank, layout = 2, "[batch, features]"
        if batch.values.ndim != want_rank:
            raise InvalidInput(
                "inputs.values.shape", f"rank {want_rank} {layout}", str(list(batch.values.shape))
            )
        if sig.features is not None and batch.values.shape[-1] != sig.features:
            raise InvalidInput(
                "inputs.values.shape", f"{sig.features} features", f"{batch.values.shape[-1]}"
            )

    def _check_lengths(self, lengths: np.ndarray) -> None:
        for i, length in enumerate(lengths.tolist()):
            field = f"inputs.lengths[{i}]"
            if length <= 0:
                raise InvalidInput(field, "a sequence of at least 1 step", f"{length} steps")
            fixed = self.signature.fixed_steps
            if fixed is not None and length != fixed:
                raise InvalidInput(
                    field, f"exactly {fixed} steps (fixed-length model)", str(length)
                )
            limit = self.max_sequence_length
            if limit and length > limit:
                raise InvalidInput(
                    field, f"at most {limit} steps (max_sequence_length)", f"{length} steps"
                )

    # -- compute ---------------------------------------------------------------------------

    def compute(self, values: np.ndarray) -> np.ndarray:
        """Run the compiled function on a dense, validated batch."""
        return self._fn(tf.constant(values)).numpy()

    def warm_up(self) -> float:
        """Trace and run once so that the first request does not pay for it; seconds taken."""
        start = time.perf_counter()
        steps = self.signature.fixed_steps or 2
        shape = (1, *(steps if d is None else d for d in self.signature.input_shape))
        self.compute(np.zeros(shape, dtype=self.signature.input_dtype))
        return time.perf_counter() - start


def _load_keras(path: Path) -> keras.Model:
    if not path.is_file():
        raise ModelLoadError(f"no model file at {path}")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # keras raises many types for corrupt or unsafe files
        raise ModelLoadError(f"cannot load {path.name}: {type(exc).__name__}: {exc}") from exc
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelLoadError(
            f"seqserve serves models with one input and one output; this one has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    return model


def _signature(model: keras.Model) -> Signature:
    inp, out = model.inputs[0], model.outputs[0]
    return Signature(
        input_shape=tuple(inp.shape[1:]),
        output_shape=tuple(out.shape[1:]),
        input_dtype=np.dtype(keras.backend.standardize_dtype(inp.dtype)),
        output_dtype=np.dtype(keras.backend.standardize_dtype(out.dtype)),
    )


def _as_model_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if values.dtype.type not in ACCEPTED_FLOATS:
        raise InvalidInput(
            "inputs.values.dtype", "a floating type (float16/32/64)", str(values.dtype)
        )
    return values.astype(dtype, copy=False)


def _check_finite(values: np.ndarray, batch: Batch) -> None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    row, bad_value = int(first[0]), values[first]
    if batch.lengths is not None:
        seq = int(np.searchsorted(np.cumsum(batch.lengths), row, side="right"))
        where = f"inputs sequence {seq}"
    else:
        where = f"inputs[{row}]"
    raise InvalidInput("inputs.values", "finite numbers", f"{bad_value} in {where}")


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Thread pools must be set before TensorFlow runs its first op (0 keeps TF's choice)."""
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
